"""Integration fixtures: the real local stack, an isolated deployment per test, worker processes.

Each test gets its own topic prefix and consumer group on the shared broker, so tests do not see
each other's records. Workers run as separate ``invsync worker`` processes, as in production.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from invsync import stack
from invsync.settings import Settings, load_settings
from streams.admin import create_topics

ROOT = Path(__file__).resolve().parents[2]
INVSYNC = Path(sys.executable).parent / "invsync"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/integration" in str(item.fspath):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def local_stack() -> None:
    """Start the local stack if it is not running (idempotent; `make test` starts it first)."""
    stack.up(load_settings())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Deployment:
    """An isolated invsync deployment on the shared broker: topics, settings and workers."""

    env: dict[str, str]
    tmp: Path
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)
    web_ports: dict[str, int] = field(default_factory=dict)

    @property
    def settings(self) -> Settings:
        return Settings(
            **{
                k[len("INVSYNC_") :].lower(): v
                for k, v in self.env.items()
                if k.startswith("INVSYNC_")
            }
        )  # type: ignore[arg-type]

    def start_worker(self, name: str = "w1", wipe_state: bool = False) -> subprocess.Popen[bytes]:
        state = self.tmp / f"state-{name}"
        if wipe_state and state.exists():
            import shutil

            shutil.rmtree(state)
        env = (
            dict(os.environ)
            | self.env
            | {
                "INVSYNC_STATE_DIR": str(state),
                "INVSYNC_WEB_PORT": str(self.web_ports.setdefault(name, free_port())),
            }
        )
        log = (self.tmp / f"worker-{name}.log").open("ab")
        proc = subprocess.Popen(
            [str(INVSYNC), "worker"],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.workers.append(proc)
        return proc

    def stop_worker(self, proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
        if proc.poll() is None:
            proc.send_signal(sig)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)

    def logs(self) -> str:
        return "\n".join(
            p.read_text(errors="replace")[-4000:] for p in sorted(self.tmp.glob("worker-*.log"))
        )


@pytest.fixture
def deployment(local_stack: None, tmp_path: Path) -> Iterator[Deployment]:
    run = uuid.uuid4().hex[:8]
    env = {
        "INVSYNC_TOPIC_PREFIX": f"t{run}.",
        "INVSYNC_APP_ID": f"invsync-test-{run}",
        "INVSYNC_PARTITIONS": "4",
        "INVSYNC_LOG_LEVEL": "info",
    }
    dep = Deployment(env=env, tmp=tmp_path)
    create_topics(dep.settings)
    yield dep
    for proc in dep.workers:
        dep.stop_worker(proc)
    if any(p.returncode not in (0, -signal.SIGTERM, -signal.SIGKILL) for p in dep.workers):
        print(dep.logs())


@pytest.fixture
def erp(tmp_path: Path) -> Iterator[Any]:
    """The ERP simulator as its own process (``tests.integration.test_erp_delivery.ErpSim``,
    started by the test); killed if SIGTERM does not stop it."""
    from tests.integration.test_erp_delivery import ErpSim

    sim = ErpSim(free_port(), tmp_path / "erp.sqlite", tmp_path / "worker-erp-simulator.log")
    try:
        yield sim
    finally:
        proc = sim.proc
        try:
            sim.stop()
        finally:
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
