# syntax=docker/dockerfile:1
# The invsync image. `docker run invsync` runs `invsync worker`; any other command is an
# argument: `docker run invsync topics create`, `docker run invsync simulate --events 0`.
# Settings come from INVSYNC_* environment variables (invsync/settings.py).

FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# A compiler for any dependency without a wheel for this platform; not in the final image.
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential \
 && rm -rf /var/lib/apt/lists/*
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /app

# Dependencies first: this layer is rebuilt only when pyproject.toml changes.
COPY pyproject.toml README.md ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" > /tmp/requirements.txt \
 && pip install -r /tmp/requirements.txt

COPY invsync ./invsync
COPY state ./state
COPY streams ./streams
COPY sinks ./sinks
COPY schemas ./schemas
COPY docs/openapi.yaml ./docs/openapi.yaml
# Editable: streams/topics.py reads schemas/avro next to the source tree (not package data).
# Byte-compiled here because the root filesystem is read-only at run time.
RUN pip install --no-deps -e . \
 && python -m compileall -q invsync state streams sinks


FROM python:3.11-slim
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    INVSYNC_STATE_DIR=/var/lib/invsync/state \
    INVSYNC_WEB_PORT=6066
RUN groupadd --system --gid 10001 invsync \
 && useradd --system --uid 10001 --gid invsync --home-dir /app --no-create-home \
      --shell /usr/sbin/nologin invsync \
 && mkdir -p /var/lib/invsync/state \
 && chown -R invsync:invsync /var/lib/invsync
COPY --from=build /opt/venv /opt/venv
COPY --from=build /app /app
WORKDIR /app
# Table state (RocksDB): a volume, so that a restarted container reopens it instead of
# replaying the whole changelog.
VOLUME ["/var/lib/invsync/state"]
USER 10001:10001
EXPOSE 6066
# /livez: the process and its event loop answer (served by the worker on INVSYNC_WEB_PORT).
HEALTHCHECK --interval=10s --timeout=5s --start-period=90s --retries=3 \
  CMD python -c "import os, urllib.request as u; u.urlopen('http://127.0.0.1:%s/livez' % os.environ.get('INVSYNC_WEB_PORT', '6066'), timeout=3)"
ENTRYPOINT ["invsync"]
CMD ["worker"]
