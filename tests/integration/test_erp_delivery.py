"""ERP delivery through real processes (issue 5): the ERP simulator (``invsync/erp_simulator.py``)
and the dispatcher (``python -m sinks.erp``) run as their own processes against the shared broker
and registry. Nothing is mocked: faults are the simulator's (503s, hangs past the client timeout,
connections dropped after the delta was applied), crashes are SIGKILLs.

Every test checks the same contract: each delta id is applied by the ERP exactly once, the ERP's
net per sku-location equals the sum of the distinct deltas produced, per sku-location in produced
order, and the dead-letter topic holds only what the ERP rejected or could not be decoded.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from confluent_kafka import Consumer, TopicPartition

from streams import topics
from tests.integration.conftest import ROOT, Deployment, free_port
from tests.integration.kafka_io import poll_until, produce, read_all
from tests.integration.test_worker_e2e import Mismatch

T0 = 1_790_000_000_000  # epoch millis
MINUTE = 60_000
Item = tuple[topics.TopicSpec, str, dict[str, Any] | bytes]


@dataclass
class ErpSim:
    """The ERP simulator as a separate process, restartable on the same port and sqlite file."""

    port: int
    db: Path
    log: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> ErpSim:
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "invsync.erp_simulator", "--port", str(self.port),
                 "--db", str(self.db)],
                cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        poll_until(self._ready, 20, f"ERP simulator on port {self.port}", interval_s=0.1)
        return self

    def _ready(self) -> bool:
        assert self.proc is not None and self.proc.poll() is None, self.log.read_text()
        try:
            return httpx.get(f"{self.base}/livez", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(timeout=20)
        self.proc = None

    def state(self) -> dict[str, Any]:
        response = httpx.get(f"{self.base}/v1/state", timeout=5)
        response.raise_for_status()
        return dict(response.json())

    def faults(self, *plan: dict[str, Any]) -> None:
        httpx.post(
            f"{self.base}/v1/faults", json={"plan": list(plan)}, timeout=5
        ).raise_for_status()

    def post(self, delta: dict[str, Any]) -> httpx.Response:
        headers = {"Idempotency-Key": delta["delta_id"]}
        return httpx.post(f"{self.base}/v1/stock-deltas", json=delta, headers=headers, timeout=5)


def start_dispatcher(
    dep: Deployment, erp: ErpSim, name: str
) -> tuple[subprocess.Popen[bytes], int]:
    """``python -m sinks.erp`` with short timeouts and backoff; stopped by the fixture."""
    port = free_port()
    env = dict(os.environ) | dep.env | {
        "INVSYNC_ERP_URL": f"{erp.base}/v1/stock-deltas",
        "INVSYNC_ERP_SINK_PORT": str(port),
        "INVSYNC_ERP_TIMEOUT_S": "1",
        "INVSYNC_ERP_MAX_ATTEMPTS": "3",
        "INVSYNC_ERP_BACKOFF_MAX_S": "0.3",
    }  # fmt: skip
    with (dep.tmp / f"worker-{name}.log").open("ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "sinks.erp"], cwd=ROOT, env=env, stdout=log,
            stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    dep.workers.append(proc)  # the deployment fixture stops it (SIGTERM) and shows its log
    return proc, port


def metric(port: int, name: str) -> float:
    """The value of one sample on the dispatcher's /metrics (0 if absent or not up yet)."""
    try:
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2).text
    except httpx.HTTPError:
        return 0.0
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return 0.0


def delta(sku: str, loc: str, window: int, qty: int, **override: Any) -> Item:
    """A stock delta with a deterministic id (sku, location, window)."""
    value = {
        "delta_id": f"d-{sku}-{loc}-{window:04d}", "sku": sku, "location": loc,
        "window_start": T0 + window * MINUTE, "window_end": T0 + (window + 1) * MINUTE,
        "net_quantity": qty, "reasons": {"sale": qty} if qty <= 0 else {"receipt": qty},
    } | override  # fmt: skip
    return topics.ERP_STOCK_DELTAS, topics.make_key(sku, loc), value


def stream(n: int, keys: int = 6) -> list[Item]:
    """``n`` deltas over ``keys`` sku-locations, with mixed reasons and signs."""
    items = []
    for i in range(n):
        sku, loc = f"SKU{i % keys}", f"S{i % 2}"
        qty = (i * 7) % 11 - 5
        reasons = {"sale": -3, "receipt": qty + 3} if i % 4 == 0 else None
        items.append(delta(sku, loc, i, qty, **({"reasons": reasons} if reasons else {})))
    return items


def reference(items: list[Item]) -> tuple[dict[str, int], dict[str, list[str]]]:
    """What the ERP must end up with: net per sku|location and the order of first applications,
    from the first occurrence of each delta id (replays and conflicting re-uses change nothing);
    deltas the ERP rejects as inconsistent (reasons do not sum up) are left out."""
    net: dict[str, int] = {}
    order: dict[str, list[str]] = {}
    seen: set[str] = set()
    for _spec, _key, value in items:
        if isinstance(value, bytes) or value["delta_id"] in seen:
            continue
        if sum(value["reasons"].values()) != value["net_quantity"]:
            continue
        seen.add(value["delta_id"])
        key = f"{value['sku']}|{value['location']}"
        net[key] = net.get(key, 0) + value["net_quantity"]
        order.setdefault(key, []).append(value["delta_id"])
    return net, order


def erp_matches(erp: ErpSim, items: list[Item]) -> bool | Mismatch:
    net, order = reference(items)
    state = erp.state()
    want_ids = {i for ids in order.values() for i in ids}
    if set(state["accepted"]) != want_ids or state["net"] != net or state["order"] != order:
        missing = sorted(want_ids - set(state["accepted"]))
        return Mismatch(missing=missing[:10], n_missing=len(missing), net=state["net"], want=net)
    return True


def committed_offsets(dep: Deployment) -> dict[int, int]:
    settings = dep.settings
    topic = topics.ERP_STOCK_DELTAS.full_name(settings)
    consumer = Consumer(
        {"bootstrap.servers": settings.kafka_bootstrap, "group.id": f"{settings.app_id}-erp",
         "enable.auto.commit": False}
    )  # fmt: skip
    try:
        tps = [TopicPartition(topic, p) for p in range(settings.partitions)]
        # nothing committed (a partition without records) reads as 0
        return {tp.partition: max(tp.offset, 0) for tp in consumer.committed(tps, timeout=10)}
    finally:
        consumer.close()


def end_offsets(dep: Deployment) -> dict[int, int]:
    settings = dep.settings
    topic = topics.ERP_STOCK_DELTAS.full_name(settings)
    consumer = Consumer({"bootstrap.servers": settings.kafka_bootstrap, "group.id": "ends"})
    try:
        return {
            p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
            for p in range(settings.partitions)
        }
    finally:
        consumer.close()


def all_committed(dep: Deployment, ends: dict[int, int]) -> bool | Mismatch:
    committed = committed_offsets(dep)
    return True if committed == ends else Mismatch(committed=committed, ends=ends)


def dead_letters(dep: Deployment) -> list[dict[str, Any]]:
    return read_all(dep.settings, topics.DEAD_LETTERS.full_name(dep.settings))


def assert_applied_once(erp: ErpSim) -> dict[str, Any]:
    state = erp.state()
    twice = {i: n for i, n in state["accepted"].items() if n != 1}
    assert not twice, f"applied more than once: {twice}"
    return state


def test_every_delta_is_accepted_once_through_faults_and_only_rejections_are_dead_lettered(
    deployment: Deployment, erp: ErpSim
) -> None:
    erp.start()
    erp.faults(
        {"mode": "error5xx", "count": 4},
        {"mode": "timeout", "count": 1, "seconds": 2.5},  # client timeout is 1 s
        {"mode": "ok", "count": 5},
        {"mode": "drop_after_accept", "count": 2},  # applied, but the client never hears
        {"mode": "error5xx", "count": 2},
        {"mode": "ok", "count": 10},
        {"mode": "drop_after_accept", "count": 1},
    )
    items = stream(60)
    replays = items[10:20]  # the same records again: the ERP has them, nothing changes
    first = items[3][2]
    assert isinstance(first, dict)
    conflicting = delta(first["sku"], first["location"], 3, first["net_quantity"] + 1)
    inconsistent = delta("SKU9", "S1", 90, -2, reasons={"sale": -1})  # 422: reasons sum to -1
    poison = (topics.ERP_STOCK_DELTAS, topics.make_key("SKU1", "S1"), b"not avro at all")
    all_items = [*items[:30], poison, *replays, conflicting, *items[30:], inconsistent]
    produce(deployment.settings, all_items)

    _proc, port = start_dispatcher(deployment, erp, "erp-1")
    poll_until(lambda: erp_matches(erp, all_items), 90, "every delta accepted, net = reference")
    state = assert_applied_once(erp)
    assert state["faults"] == [], "every injected fault was hit"
    assert sum(state["requests"].values()) > len(state["accepted"]) + len(replays), "retries"

    letters = poll_until(lambda: len(dead_letters(deployment)) == 3 and dead_letters(deployment),
                         30, "three dead letters")  # fmt: skip
    by_reason = sorted((d["reason"], d["detail"]) for d in letters)
    assert [reason for reason, _ in by_reason] == ["erp_rejected", "erp_rejected", "undecodable"]
    details = " ".join(detail for _, detail in by_reason)
    assert "HTTP 409" in details and first["delta_id"] in details
    assert "HTTP 422" in details
    source = topics.ERP_STOCK_DELTAS.full_name(deployment.settings)
    assert {d["source_topic"] for d in letters} == {source}
    assert any(d["raw_value"] == b"not avro at all" for d in letters)

    ends = end_offsets(deployment)
    poll_until(lambda: all_committed(deployment, ends), 30, "offsets committed to the end")
    produced_ok = len(all_items) - 3  # every record but the three dead letters got a 2xx
    assert metric(port, "invsync_erp_deltas_accepted_total") == produced_ok
    assert metric(port, 'invsync_sink_retries_total{sink="erp"}') > 0
    assert metric(port, 'invsync_dead_letters_total{reason="erp_rejected"}') == 2
    assert metric(port, 'invsync_sink_in_flight{sink="erp"}') == 0


def test_kill_mid_stream_and_restart_loses_nothing_and_applies_nothing_twice(
    deployment: Deployment, erp: ErpSim
) -> None:
    erp.start()
    # slow answers so the kill lands mid-stream, with an ambiguous outcome in the middle
    erp.faults(
        {"mode": "slow", "count": 40, "seconds": 0.05},
        {"mode": "drop_after_accept", "count": 1},
        {"mode": "slow", "count": 400, "seconds": 0.05},
    )
    items = stream(240, keys=8)
    produce(deployment.settings, items)
    first, _ = start_dispatcher(deployment, erp, "erp-1")
    poll_until(lambda: len(erp.state()["accepted"]) >= 60, 60, "a quarter accepted",
               interval_s=0.05)  # fmt: skip
    first.kill()
    first.wait(timeout=10)
    at_kill = len(erp.state()["accepted"])
    assert at_kill < len(items), "the kill came too late to test anything"

    start_dispatcher(deployment, erp, "erp-2")
    poll_until(lambda: erp_matches(erp, items), 120, "every delta accepted after the restart")
    state = assert_applied_once(erp)
    resent = [i for i, n in state["requests"].items() if n > 1]
    assert resent, "deltas were re-sent (ambiguous outcomes, uncommitted at the kill)"
    assert dead_letters(deployment) == []
    ends = end_offsets(deployment)
    poll_until(lambda: all_committed(deployment, ends), 30, "offsets committed to the end")


def test_a_second_dispatcher_joining_and_the_first_leaving_hand_over_partitions_cleanly(
    deployment: Deployment, erp: ErpSim
) -> None:
    """Rebalances mid-stream: a revoked partition's delivery stops, what it finished is committed
    before the partition moves, the new owner resumes there; order per key holds throughout."""
    erp.start()
    erp.faults({"mode": "slow", "count": 1000, "seconds": 0.1})
    items = stream(320, keys=8)
    produce(deployment.settings, items)
    first, port1 = start_dispatcher(deployment, erp, "erp-1")
    poll_until(lambda: len(erp.state()["accepted"]) >= 20, 60, "deliveries under way",
               interval_s=0.05)  # fmt: skip
    second, port2 = start_dispatcher(deployment, erp, "erp-2")  # the group rebalances mid-stream

    def shared() -> bool:
        assigned = "invsync_erp_assigned_partitions"
        return 0 < metric(port1, assigned) < 4 and metric(port2, assigned) > 0

    poll_until(shared, 60, "the partitions shared by both dispatchers", interval_s=0.1)
    first.send_signal(signal.SIGTERM)  # graceful: its partitions are revoked and committed
    assert first.wait(timeout=30) == 0
    assert len(erp.state()["accepted"]) < len(items), "the hand-over came too late"
    poll_until(lambda: erp_matches(erp, items), 120, "every delta accepted after the hand-over")
    assert_applied_once(erp)
    assert dead_letters(deployment) == []
    ends = end_offsets(deployment)
    poll_until(lambda: all_committed(deployment, ends), 30, "offsets committed to the end")
    assert second.poll() is None


def test_erp_down_for_a_while_lag_grows_nothing_dead_lettered_then_catches_up(
    deployment: Deployment, erp: ErpSim
) -> None:
    erp.start()
    erp.stop()  # the port is known, nothing listens: connections are refused
    items = stream(40)
    produce(deployment.settings, items)
    _proc, port = start_dispatcher(deployment, erp, "erp-1")

    def blocked_past_max_attempts() -> bool:
        # two rounds of erp_max_attempts failed attempts on one delta, and still waiting
        failures = metric(port, 'invsync_sink_failures_total{sink="erp"}')
        lag = sum(metric(port, f'invsync_erp_lag_messages{{partition="{p}"}}') for p in range(4))
        return failures >= 2 and lag == len(items)

    poll_until(blocked_past_max_attempts, 60, "the dispatcher retrying past erp_max_attempts")
    assert httpx.get(f"http://127.0.0.1:{port}/livez", timeout=2).status_code == 200
    assert dead_letters(deployment) == []
    assert set(committed_offsets(deployment).values()) == {0}

    erp.start()  # same port, same sqlite file
    poll_until(lambda: erp_matches(erp, items), 60, "caught up once the ERP is back")
    assert_applied_once(erp)
    assert dead_letters(deployment) == []
    ends = end_offsets(deployment)
    poll_until(lambda: all_committed(deployment, ends), 30, "offsets committed to the end")
    lag = [f'invsync_erp_lag_messages{{partition="{p}"}}' for p in range(4)]
    poll_until(lambda: sum(metric(port, name) for name in lag) == 0, 20, "lag back to 0")


def test_the_simulator_keeps_accepted_ids_across_a_kill(erp: ErpSim) -> None:
    erp.start()
    body = {
        "delta_id": "d-1", "sku": "A", "location": "S1", "net_quantity": -3,
        "reasons": {"sale": -3}, "window_start": "2026-11-23T10:00:00.000Z",
        "window_end": "2026-11-23T10:01:00.000Z",
    }  # fmt: skip
    assert erp.post(body).status_code == 201
    assert erp.post(body | {"delta_id": "d-2"}).status_code == 201
    erp.stop(signal.SIGKILL)  # acknowledged means committed: nothing may be lost
    erp.start()
    assert erp.post(body).status_code == 200
    conflict = erp.post(body | {"net_quantity": -4, "reasons": {"sale": -4}})
    assert conflict.status_code == 409 and "different body" in conflict.json()["message"]
    state = erp.state()
    assert state["accepted"] == {"d-1": 1, "d-2": 1}
    assert state["net"] == {"A|S1": -6}
    assert state["requests"] == {"d-1": 3, "d-2": 1}
    assert httpx.get(f"{erp.base}/v1/net", params={"sku": "A", "location": "S1"}).json() == {
        "sku": "A", "location": "S1", "net_quantity": -6,
    }  # fmt: skip
