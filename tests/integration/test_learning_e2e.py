"""Issue 4 through the real stack: accuracy learned per location type from settled counts
(streams/learning.py) and demand velocity from the netted ERP deltas (streams/velocity.py).

Every assertion polls with a deadline. A partition's watermark moves only with its own input,
so the checks nudge every key with a later event while they wait (as live traffic would).
"""

from __future__ import annotations

import json
import signal
import time
import urllib.error
import urllib.request
from typing import Any

from state.confidence import PRIORS
from state.velocity import HOUR_MS, demand_rate, demand_units, hour_start
from streams import topics
from tests.integration.conftest import Deployment
from tests.integration.kafka_io import (
    latest_by_key,
    poll_until,
    produce,
    read_all,
    read_all_with,
)
from tests.integration.test_worker_e2e import MINUTE, T0, Item, Mismatch, count, movement, sale

STORE_KEYS = [(f"SKU{i}", f"S{1 + i % 3}") for i in range(6)]
DC_KEYS = [("SKU9", "DC1")]


def counted_history(n: int, sku: str, loc: str, start: int) -> list[Item]:
    """A receipt of 100, a first count (teaches nothing), 30 sales, a count 5 short, 20 sales,
    a count 3 short: two discrepancies to learn from (-5 after 30 units moved, -3 after 20)."""
    base = n * 1000
    items = [movement(base, sku, loc, start, "RECEIPT", 100),
             count(base + 1, sku, loc, start + MINUTE, 100)]  # fmt: skip
    items += [sale(base + 10 + i, sku, loc, start + (2 + i) * MINUTE, 1) for i in range(30)]
    items.append(count(base + 2, sku, loc, start + 40 * MINUTE, 65))  # recorded 70
    items += [sale(base + 50 + i, sku, loc, start + (41 + i) * MINUTE, 1) for i in range(20)]
    items.append(count(base + 3, sku, loc, start + 70 * MINUTE, 42))  # recorded 45
    return items


class Nudger:
    """A later receipt for every key (at most one round every few seconds), so each
    partition's watermark moves past what it holds."""

    def __init__(self, dep: Deployment, keys: list[tuple[str, str]], start: int) -> None:
        self.dep, self.keys, self.at, self.n = dep, keys, start, 0
        self.last = 0.0

    def __call__(self) -> None:
        if time.monotonic() - self.last < 3.0:
            return
        self.last = time.monotonic()
        self.at += MINUTE
        self.n += 1
        produce(self.dep.settings, [
            movement(900_000 + self.n * 100 + i, sku, loc, self.at, "RECEIPT", 1)
            for i, (sku, loc) in enumerate(self.keys)
        ])  # fmt: skip


def accuracy_records(dep: Deployment) -> list[dict[str, Any]]:
    return read_all(dep.settings, topics.ACCURACY.full_name(dep.settings))


def test_accuracy_is_learned_once_per_count_across_a_crash_and_used_by_the_fold(deployment):
    # the keys produced after the crash start a day later: never behind a watermark
    later = T0 + 24 * 60 * MINUTE
    stores = [counted_history(i, sku, loc, T0 if i < 3 else later)
              for i, (sku, loc) in enumerate(STORE_KEYS)]  # fmt: skip
    dcs = [counted_history(100 + i, sku, loc, later) for i, (sku, loc) in enumerate(DC_KEYS)]
    keys = STORE_KEYS + DC_KEYS
    nudge = Nudger(deployment, STORE_KEYS[:3], T0 + 4 * 60 * MINUTE)
    produce(deployment.settings, [item for history in stores[:3] for item in history])
    worker = deployment.start_worker("w1")
    nudge()

    def some_learned() -> Any:
        latest = latest_by_key(accuracy_records(deployment))
        if latest.get("store", {}).get("observations", 0) >= 1:
            return True
        nudge()
        return Mismatch(latest=latest)

    poll_until(some_learned, 120, "a first learned state")
    # killed mid-way: evidence may be redelivered, positions refolded, counts settled again
    deployment.stop_worker(worker, signal.SIGKILL)
    produce(deployment.settings, [item for history in stores[3:] + dcs for item in history])
    nudge.keys, nudge.at, nudge.last = keys, later + 4 * 60 * MINUTE, 0.0
    deployment.start_worker("w1")
    nudge()
    want = {"store": 2 * len(STORE_KEYS), "dc": 2 * len(DC_KEYS)}

    def all_learned() -> Any:
        latest = latest_by_key(accuracy_records(deployment))
        got = {kind: record["observations"] for kind, record in latest.items()}
        if got == want:
            return latest
        nudge()
        return Mismatch(got=got, want=want)

    latest = poll_until(all_learned, 180, "every discrepancy learned")
    # never more than once: no state on the compacted topic ever counted a count twice
    seen = {kind: max(r["observations"] for r in accuracy_records(deployment)
                      if r["_key"] == kind) for kind in want}  # fmt: skip
    assert seen == want
    store = latest["store"]
    assert store["loss_mean"] > PRIORS["store"].loss_mean  # the counts came up short
    assert latest["dc"]["loss_mean"] > PRIORS["dc"].loss_mean
    discrepancies = read_all(deployment.settings, topics.COUNT_DISCREPANCIES.full_name(
        deployment.settings))  # fmt: skip
    assert len({r["count_id"] for r in discrepancies}) == 3 * len(keys)

    # availability records projected after that carry the learned loss rate, not the prior's
    availability = topics.availability("web").full_name(deployment.settings)
    sku, loc = STORE_KEYS[0]
    key = topics.make_key(sku, loc)

    def projected_with_learned() -> Any:
        record = latest_by_key(read_all(deployment.settings, availability)).get(key, {})
        if abs(record.get("loss_rate", 0.0) - store["loss_mean"]) < 1e-12:
            return record
        nudge()
        return Mismatch(loss_rate=record.get("loss_rate"), learned=store["loss_mean"])

    record = poll_until(projected_with_learned, 120, "a record with the learned loss rate")
    assert record["loss_rate"] != PRIORS["store"].loss_rate

    # a count that reaches the evidence topic again (at a new offset) is not learned again
    evidence = topics.ACCURACY_EVIDENCE
    raw = read_all_with(deployment.settings, evidence.full_name(deployment.settings),
                        lambda data: {"raw": data})  # fmt: skip
    again = next(r for r in raw if r["_key"] == "store")
    port = deployment.web_ports["w1"]
    duplicate = 'invsync_accuracy_evidence_total{location_type="store",outcome="duplicate"}'
    before = metric(port, duplicate)  # a crash can make the fold settle a count again
    produce(deployment.settings, [(evidence, "store", again["raw"])])
    poll_until(lambda: metric(port, duplicate) == before + 1, 60, "the count recognised")
    assert metric(port, 'invsync_accuracy_observations{location_type="store"}') == want["store"]
    final = latest_by_key(accuracy_records(deployment))
    assert {kind: r["observations"] for kind, r in final.items()} == want


def metric(port: int, series: str) -> float:
    """The value of one series on a worker's /metrics (0 if absent)."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    for line in text.splitlines():
        if line.startswith(series + " "):
            return float(line.split()[-1])
    return 0.0


def _position(port: int, sku: str, loc: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(
            f"http://127.0.0.1:{port}/v1/positions/{sku}/{loc}", timeout=30
        ) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())
    except OSError as exc:  # not listening yet
        return 0, str(exc)


def test_demand_velocity_comes_from_the_hourly_windows_of_the_netted_deltas(deployment):
    deployment.env["INVSYNC_DEMAND_VELOCITY"] = "true"  # off by default
    # recent event times: Faust expires windows by the wall clock (7 days)
    base = hour_start(int(time.time() * 1000)) - 2 * 24 * HOUR_MS
    store, dc = ("SKU1", "S1"), ("SKU1", "DC1")
    items: list[Item] = [movement(1, *store, base, "RECEIPT", 500),
                         movement(2, *dc, base, "RECEIPT", 500)]  # fmt: skip
    demand: dict[tuple[str, str], dict[int, int]] = {store: {}, dc: {}}
    for h in range(2, 31):  # hours 2..30 after base: some in the last day, all in the week
        at = base + h * HOUR_MS + 7 * MINUTE
        qty = 1 + h % 4
        items.append(sale(100 + h, *store, at, qty))
        items.append(movement(200 + h, *dc, at, "PICK" if h % 2 else "SHIP", qty + 1))
        if h in (3, 5):  # redelivered by the source within the lateness bound: counted once
            items.append(items[-1])
        demand[store][hour_start(at)] = demand[store].get(hour_start(at), 0) + qty
        demand[dc][hour_start(at)] = demand[dc].get(hour_start(at), 0) + qty + 1
        if h % 5 == 0:  # a return an hour later in the same window: nets against the sale
            items.append(sale(300 + h, *store, at + 20 * MINUTE, -1))
            demand[store][hour_start(at)] -= 1
    produce(deployment.settings, items)
    deployment.start_worker("w1")
    nudge = Nudger(deployment, [store, dc], base + 40 * HOUR_MS)
    nudge()
    port = deployment.web_ports["w1"]
    assert demand_units({"sale": -3, "return": 1, "pick": -2, "receipt": 9}) == 4

    def velocity_matches() -> Any:
        got, want = {}, {}
        for key in (store, dc):
            status, body = _position(port, *key)
            velocity = body.get("demand_velocity") if status == 200 else None
            if velocity is None:
                got[key] = (status, body)
                continue
            reference = demand_rate(demand[key], velocity["as_of"]).to_record()
            got[key], want[key] = velocity, reference
        if got and got == want:
            return got
        nudge()
        return Mismatch(got=got, want=want)

    got = poll_until(velocity_matches, 180, "velocity = the reference demand")
    assert got[store]["units_7d"] == sum(demand[store].values())
    assert 0 < got[store]["units_24h"] < got[store]["units_7d"]
