"""Run every dashboard panel query against a real Prometheus scraping a live process.

    python -m ops.dashboard_live http://127.0.0.1:6066/metrics
    python -m ops.dashboard_live http://127.0.0.1:6066/metrics invsync-erp=http://127.0.0.1:6067/metrics

Starts /usr/bin/prometheus (temporary data directory, a generated config scraping each URL every
second, listening on 127.0.0.1:19090), waits until every target has been scraped a few times
(polling with a deadline), then evaluates each panel query of ops/grafana/invsync.json through
the HTTP API. Exit 0 if every query returned data; exit 1 listing the panels whose query returned
nothing (an empty result, or only NaN: a quantile over a histogram that saw nothing); exit 2 if
Prometheus could not be started or could not scrape. The Prometheus it started is always stopped.

A bare URL is scraped as job "invsync" (the worker); `JOB=URL` names the job. Grafana's
`$__rate_interval`, `$__interval` and `$__range` are replaced by `--rate-interval`.
Standard library (and invsync's own port check) only, so it runs without the dashboard SDK.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import math
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from invsync.stack import port_free

DASHBOARD_JSON = Path(__file__).resolve().parent / "grafana" / "invsync.json"
PROMETHEUS = "/usr/bin/prometheus"
DEFAULT_PORT = 19090
WORKER_JOB = "invsync"
_GRAFANA_VAR = re.compile(r"\$(?:\{(\w+)\}|(\w+))")
_DURATION_VARS = ("__rate_interval", "__interval", "__range")


class LiveCheckError(Exception):
    """Prometheus could not be started, or did not scrape the targets in time."""


@dataclass(frozen=True)
class PanelQuery:
    row: str
    panel: str
    ref_id: str
    expr: str

    @property
    def label(self) -> str:
        return f"{self.row} / {self.panel} [{self.ref_id}]"


@dataclass(frozen=True)
class Target:
    job: str
    url: str

    @classmethod
    def parse(cls, text: str) -> Target:
        job, sep, url = text.partition("=")
        if not sep or "://" in job:
            job, url = WORKER_JOB, text
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise argparse.ArgumentTypeError(f"{text!r}: expected http://host:port/path")
        return cls(job, url)


def panel_queries(dashboard: dict[str, Any]) -> list[PanelQuery]:
    """Every target expression of every panel (rows' nested panels included), in order."""
    found: list[PanelQuery] = []

    def visit(panels: list[dict[str, Any]], row: str) -> None:
        for panel in panels:
            if panel.get("type") == "row":
                row = str(panel.get("title", ""))
                visit(panel.get("panels") or [], row)
                continue
            for target in panel.get("targets") or []:
                expr = target.get("expr")
                if expr:
                    found.append(
                        PanelQuery(row, str(panel.get("title", "")), target.get("refId", "?"), expr)
                    )

    visit(dashboard.get("panels") or [], "")
    return found


def expand(expr: str, rate_interval: str = "1m") -> str:
    """Replace Grafana's interval variables; any other dashboard variable is an error."""

    def replace(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        if name in _DURATION_VARS:
            return rate_interval
        raise ValueError(f"unknown Grafana variable ${name} in {expr!r}")

    return _GRAFANA_VAR.sub(replace, expr)


def scrape_config(targets: list[Target]) -> str:
    """A Prometheus config (JSON is YAML) scraping each target every second."""
    jobs: dict[str, list[urllib.parse.SplitResult]] = {}
    for target in targets:
        jobs.setdefault(target.job, []).append(urllib.parse.urlsplit(target.url))
    scrape_configs = []
    for job, urls in jobs.items():
        for index, url in enumerate(urls):
            scrape_configs.append(
                {
                    "job_name": job if len(urls) == 1 else f"{job}-{index}",
                    "scheme": url.scheme,
                    "metrics_path": url.path or "/metrics",
                    "static_configs": [{"targets": [url.netloc], "labels": {"job": job}}],
                }
            )
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "scrape_configs": scrape_configs,
    }
    return json.dumps(config, indent=2) + "\n"


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Linux: have the kernel send SIGTERM to Prometheus if this process dies (even SIGKILL)."""
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class Prometheus:
    """A Prometheus server in a temporary directory, stopped on exit from the `with` block."""

    def __init__(self, targets: list[Target], port: int, binary: str = PROMETHEUS) -> None:
        self.targets = targets
        self.port = port
        self.binary = binary
        self.base = f"http://127.0.0.1:{port}"
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: Path | None = None

    def __enter__(self) -> Prometheus:
        if not (os.path.isfile(self.binary) and os.access(self.binary, os.X_OK)):
            raise LiveCheckError(f"{self.binary} not found: apt-get install -y prometheus")
        if not port_free(self.port):
            raise LiveCheckError(f"127.0.0.1:{self.port} is in use: pass --port")
        self._tmp = tempfile.TemporaryDirectory(prefix="invsync-prometheus-")
        tmp = Path(self._tmp.name)
        (tmp / "prometheus.yml").write_text(scrape_config(self.targets))
        self._log = tmp / "prometheus.log"
        with self._log.open("wb") as log:
            self._proc = subprocess.Popen(
                [
                    self.binary,
                    f"--config.file={tmp / 'prometheus.yml'}",
                    f"--storage.tsdb.path={tmp / 'data'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                    "--storage.tsdb.retention.time=1h",
                    "--log.level=warn",
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent if sys.platform == "linux" else None,
            )
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def log_tail(self, lines: int = 20) -> str:
        if self._log is None or not self._log.exists():
            return ""
        return "\n".join(self._log.read_text(errors="replace").splitlines()[-lines:])

    def _check_alive(self) -> None:
        if self._proc is not None and self._proc.poll() is not None:
            raise LiveCheckError(
                f"prometheus exited with {self._proc.returncode}:\n{self.log_tail()}"
            )

    def api(self, path: str, **params: str) -> Any:
        url = f"{self.base}{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                body = json.load(response)
        except urllib.error.HTTPError as error:
            body = json.load(error)
        if body.get("status") != "success":
            raise LiveCheckError(f"{path} {params}: {body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        data = self.api("/api/v1/query", query=expr)
        if data["resultType"] in ("scalar", "string"):
            return [{"metric": {}, "value": data["result"]}]
        return list(data["result"])

    def wait_ready(self, deadline: float) -> None:
        while True:
            self._check_alive()
            try:
                with urllib.request.urlopen(f"{self.base}/-/ready", timeout=2) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                raise LiveCheckError(f"prometheus not ready in time:\n{self.log_tail()}")
            time.sleep(0.1)

    def wait_scraped(self, min_scrapes: int, deadline: float) -> None:
        """Until every target was scraped successfully at least `min_scrapes` times.

        Fails at once when a target's first `min_scrapes` scrapes all failed (wrong URL, nothing
        listening), else at the deadline.
        """
        expected = len(self.targets)
        while True:
            self._check_alive()
            ok = self.query(f"sum_over_time(up[1h]) >= {min_scrapes}")
            if len(ok) >= expected:
                return
            failed = self.query(
                f"count_over_time(up[1h]) >= {min_scrapes} unless max_over_time(up[1h]) > 0"
            )
            if failed or time.monotonic() > deadline:
                raise LiveCheckError(
                    f"targets not scraped {min_scrapes} times"
                    f"{'' if failed else ' in time'}: {self.scrape_errors()}"
                )
            time.sleep(0.2)

    def scrape_errors(self) -> dict[str, str]:
        try:
            data = self.api("/api/v1/targets")
        except (LiveCheckError, urllib.error.URLError, OSError) as error:
            return {"targets": str(error)}
        return {
            t["scrapeUrl"]: t.get("lastError") or t.get("health", "")
            for t in data.get("activeTargets", [])
            if t.get("health") != "up"
        }


def has_data(result: list[dict[str, Any]]) -> bool:
    """At least one sample that is not NaN."""
    return any(not math.isnan(float(sample["value"][1])) for sample in result)


def check(
    prometheus: Prometheus, queries: list[PanelQuery], rate_interval: str
) -> Iterator[tuple[PanelQuery, str | None]]:
    """(query, None) when it returned data, else (query, why not)."""
    for query in queries:
        try:
            result = prometheus.query(expand(query.expr, rate_interval))
        except (LiveCheckError, ValueError) as error:
            yield query, f"error: {error}"
            continue
        if not result:
            yield query, "empty result"
        elif not has_data(result):
            yield query, f"only NaN ({len(result)} series)"
        else:
            yield query, None


def run(
    targets: list[Target],
    *,
    dashboard: Path = DASHBOARD_JSON,
    port: int = DEFAULT_PORT,
    binary: str = PROMETHEUS,
    timeout: float = 60.0,
    min_scrapes: int = 3,
    rate_interval: str = "1m",
    out: Any = sys.stdout,
) -> list[PanelQuery]:
    """Queries that returned no data (an empty list: every panel has data)."""
    queries = panel_queries(json.loads(dashboard.read_text()))
    if not queries:
        raise LiveCheckError(f"{dashboard}: no panel queries")
    started = time.monotonic()
    deadline = started + timeout
    with Prometheus(targets, port, binary) as prometheus:
        print(
            f"prometheus (pid {prometheus.pid}) on 127.0.0.1:{port} scraping "
            + ", ".join(f"{t.url} as job {t.job}" for t in targets)
            + " every 1s",
            file=out,
        )
        prometheus.wait_ready(deadline)
        prometheus.wait_scraped(min_scrapes, deadline)
        print(
            f"scraped {min_scrapes} times in {time.monotonic() - started:.1f} s; "
            f"running {len(queries)} panel queries",
            file=out,
        )
        missing = []
        for query, why in check(prometheus, queries, rate_interval):
            print(
                f"{'ok' if why is None else 'NO DATA':8} {query.label}: {why or 'data'}", file=out
            )
            if why is not None:
                missing.append(query)
    print(
        f"{len(queries) - len(missing)} of {len(queries)} panel queries returned data; "
        f"prometheus stopped after {time.monotonic() - started:.1f} s",
        file=out,
    )
    return missing


def _raise_on_term(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[1].strip())
    parser.add_argument(
        "targets", nargs="+", type=Target.parse, metavar="URL|JOB=URL", help="metrics URL(s)"
    )
    parser.add_argument("--dashboard", type=Path, default=DASHBOARD_JSON)
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    parser.add_argument("--prometheus", default=PROMETHEUS)
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for scrapes")
    parser.add_argument("--min-scrapes", type=int, default=3)
    parser.add_argument("--rate-interval", default="1m", help="value of $__rate_interval")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _raise_on_term)
    try:
        missing = run(
            args.targets,
            dashboard=args.dashboard,
            port=args.port,
            binary=args.prometheus,
            timeout=args.timeout,
            min_scrapes=args.min_scrapes,
            rate_interval=args.rate_interval,
        )
    except LiveCheckError as error:
        print(f"dashboard_live: {error}", file=sys.stderr)
        return 2
    if missing:
        print("panels with no data:", file=sys.stderr)
        for query in missing:
            print(f"  {query.label}: {query.expr}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
