"""The first slice end to end: POS sales, WMS movements (transfers routed to their destination
through invsync.transfers), cycle counts and reservations -> positions -> availability.<channel>.

The oracle is ``tests.reference``: a fold over the produced events written independently of
``state/``. Every assertion polls the real output topics with a deadline.
"""

from __future__ import annotations

import json
import random
import signal
import struct
import urllib.request
from typing import Any

import pytest
from confluent_kafka.admin import AdminClient

from state.events import (
    StockEvent,
    count_from_record,
    movement_from_record,
    sale_from_record,
    snapshot_from_record,
)
from streams import records, topics
from tests.integration.conftest import Deployment
from tests.integration.kafka_io import latest_by_key, poll_until, produce, read_all, read_all_with
from tests.reference import reference_in_transit, reference_positions

T0 = 1_767_225_600_000  # 2026-01-01T00:00Z
MINUTE = 60_000

Item = tuple[topics.TopicSpec, str, dict[str, Any] | bytes]


def sale(i: int, sku: str, loc: str, at: int, qty: int) -> Item:
    value = records.pos_sale(f"s{i}", f"pos-{loc}", sku, loc, at, qty)
    return topics.POS_SALES, topics.make_key(sku, loc), value


def count(i: int, sku: str, loc: str, at: int, qty: int) -> Item:
    value = records.cycle_count(
        f"c{i}", "counter", sku, loc, counted_at=at, reported_at=at + MINUTE, counted=qty,
        count_id=f"cnt{i}",
    )  # fmt: skip
    return topics.CYCLE_COUNTS, topics.make_key(sku, loc), value


NEXT_STORE = {"S0": "S1", "S1": "S2", "S2": "S0"}


def movement(i: int, sku: str, loc: str, at: int, kind: str, qty: int) -> Item:
    """A WMS movement; a transfer gets its own id (never matched: a TRANSFER_OUT stays in
    transit at the next store, a TRANSFER_IN is a receipt whose shipment was not seen)."""
    transfer = f"t{i}" if kind.startswith("TRANSFER_") else None
    other = NEXT_STORE.get(loc, "S0" if loc != "S0" else "S1") if transfer else None
    value = records.wms_movement(
        f"m{i}", "wms-1", sku, loc, at, kind, qty, transfer_id=transfer, counterpart_location=other
    )
    return topics.WMS_MOVEMENTS, topics.make_key(sku, loc), value


def workload(seed: int, n: int, start: int = T0, duplicates: float = 0.05) -> list[Item]:
    """Sales, WMS movements and counts over 30 keys, shuffled within a few minutes, with re-sent
    duplicates."""
    rnd = random.Random(seed)
    keys = [(f"SKU{k % 10}", f"S{k // 10}") for k in range(30)]
    items: list[Item] = []
    for i in range(n):
        sku, loc = rnd.choice(keys)
        at = start + i * 1000
        roll = rnd.random()
        if roll < 0.1:
            items.append(count(seed * 10**6 + i, sku, loc, at, rnd.randint(0, 40)))
        elif roll < 0.2:
            kind, qty = rnd.choice(
                [
                    ("RECEIPT", 12),
                    ("PICK", 2),
                    ("TRANSFER_OUT", 3),
                    ("TRANSFER_IN", 4),
                    ("DAMAGE", 1),
                    ("ADJUSTMENT", -2),
                ]
            )
            items.append(movement(seed * 10**6 + i, sku, loc, at, kind, qty))
        else:
            items.append(sale(seed * 10**6 + i, sku, loc, at, rnd.choice([1, 1, 2, 3, -1])))
    # out of order by at most ~2 minutes of event time (the lateness bound is 10)
    jitter = [i + (rnd.randint(0, 120) if rnd.random() < 0.1 else 0) for i in range(n)]
    items = [item for _, item in sorted(zip(jitter, items, strict=True), key=lambda p: p[0])]
    # a source re-sends an event shortly after the original (a retry), never an edited copy
    for _ in range(int(n * duplicates)):
        i = rnd.randrange(len(items))
        items.insert(min(len(items), i + rnd.randint(1, 50)), items[i])
    return items


def holds(seed: int, n: int, start: int = T0) -> list[Item]:
    """Reservations on the workload's keys: every hold created, 40% ended (released or
    committed) half a second later; none expires (expiry a day after the stock events)."""
    rnd = random.Random(seed)
    items: list[Item] = []
    for i in range(n):
        sku, loc, rid = f"SKU{rnd.randrange(10)}", f"S{rnd.randrange(3)}", f"h{seed}-{i}"
        at = start + i * 5000
        value = {
            "event_id": f"o{seed}-{i}", "source": "oms", "sku": sku, "location": loc,
            "occurred_at": at, "reservation_id": rid, "action": "created",
            "quantity": rnd.randint(1, 3), "expires_at": at + 10**10, "channel": "web",
        }  # fmt: skip
        items.append((topics.RESERVATIONS, rid, value))
        if rnd.random() < 0.4:
            end = value | {
                "event_id": f"e{seed}-{i}", "occurred_at": at + 500, "quantity": 0,
                "action": rnd.choice(["released", "committed"]), "expires_at": None,
            }  # fmt: skip
            items.append((topics.RESERVATIONS, rid, end))
    return items


def reference_holds(items: list[Item]) -> tuple[dict[str, int], dict[str, int]]:
    """key -> units held by open holds, key -> reserved deltas applied (an open and, once
    ended, an end per hold). Valid for ``holds()``: no expiry, ends only of known holds."""
    state: dict[str, list[Any]] = {}  # reservation id -> [key, quantity, ended]
    for spec, _key, value in items:
        if spec.name != topics.RESERVATIONS.name or not isinstance(value, dict):
            continue
        key = topics.make_key(value["sku"], value["location"])
        if value["action"] == "created":
            state.setdefault(value["reservation_id"], [key, value["quantity"], False])
        else:
            state[value["reservation_id"]][2] = True
    reserved: dict[str, int] = {}
    deltas: dict[str, int] = {}
    for key, quantity, ended in state.values():
        reserved[key] = reserved.get(key, 0) + (0 if ended else quantity)
        deltas[key] = deltas.get(key, 0) + (2 if ended else 1)
    return reserved, deltas


def as_events(items: list[Item]) -> list[StockEvent]:
    events = []
    for spec, _key, value in items:
        assert isinstance(value, dict)
        if spec.name == topics.RESERVATIONS.name:
            continue  # see reference_holds
        parse = {
            topics.POS_SALES.name: sale_from_record,
            topics.WMS_MOVEMENTS.name: movement_from_record,
            topics.CYCLE_COUNTS.name: count_from_record,
            topics.ERP_SNAPSHOTS.name: snapshot_from_record,
        }[spec.name]
        events.append(parse(value))
    return events


class Mismatch(dict[str, Any]):
    """Falsy, so ``poll_until`` keeps polling, and shown when the deadline passes."""

    def __bool__(self) -> bool:
        return False


def availability_matches(dep: Deployment, items: list[Item]) -> bool | Mismatch:
    """Latest record per key == reference (on hand, version = distinct events applied incl.
    reserved deltas and routed shipment notices, reserved units, units in transit; nothing
    expires: the workload spans less than the transfer timeout)."""
    reserved, deltas = reference_holds(items)
    events = as_events(items)
    in_transit = reference_in_transit(events)
    expected = {
        k: (on_hand, version + deltas.get(k, 0), reserved.get(k, 0), in_transit.get(k, 0))
        for k, (on_hand, version) in reference_positions(events).items()
    }
    topic = topics.availability("web").full_name(dep.settings)
    latest = latest_by_key(read_all(dep.settings, topic))
    got = {
        k: (r["on_hand"], r["version"], r["reserved"], r["in_transit"]) for k, r in latest.items()
    }
    if got == expected:
        return True
    wrong = {
        k: {"expected": v, "got": got.get(k), "late": latest.get(k, {}).get("late_events")}
        for k, v in expected.items()
        if got.get(k) != v
    }
    return Mismatch(keys_wrong=len(wrong), sample=dict(list(wrong.items())[:5]))


def assert_availability_reaches_reference(dep: Deployment, items: list[Item], timeout_s=180):
    try:
        poll_until(lambda: availability_matches(dep, items), timeout_s, "availability = reference")
    except AssertionError:
        print(dep.logs())
        raise


def dead_letters(dep: Deployment) -> list[dict[str, Any]]:
    return read_all(dep.settings, topics.DEAD_LETTERS.full_name(dep.settings))


@pytest.mark.parametrize("store", ["rocksdb", "memory"])
def test_availability_equals_reference_fold_and_duplicates_change_nothing(deployment, store):
    # both stores: the fold reads and writes partition stores itself (streams/partition_store.py)
    deployment.env["INVSYNC_STORE"] = store
    items = workload(seed=1, n=2000)
    produce(deployment.settings, items)
    deployment.start_worker()
    assert_availability_reaches_reference(deployment, items)
    # the versions equal the number of distinct events: no duplicate was applied twice
    assert dead_letters(deployment) == []


def test_poison_is_dead_lettered_and_the_worker_goes_on(deployment):
    sku, loc = "SKU1", "S1"
    key = topics.make_key(sku, loc)
    good_before = [sale(1, sku, loc, T0, 2)]
    unknown_schema = b"\x00" + struct.pack(">I", 0x7FFFFFF0) + b"\x02\x04"
    negative_count = count(2, sku, loc, T0 + MINUTE, -5)
    missing_sku = sale(3, sku, loc, T0 + 2 * MINUTE, 1)
    assert isinstance(missing_sku[2], dict)
    missing_sku[2]["sku"] = ""
    poison: list[Item] = [
        (topics.POS_SALES, key, b"\xde\xad\xbe\xef not avro"),
        (topics.CYCLE_COUNTS, key, unknown_schema),
        negative_count,
        missing_sku,
    ]
    good_after = [sale(4, sku, loc, T0 + 3 * MINUTE, 1), count(5, sku, loc, T0 + 4 * MINUTE, 9)]
    produce(deployment.settings, good_before + poison + good_after)
    deployment.start_worker()
    assert_availability_reaches_reference(deployment, good_before + good_after)
    letters = poll_until(
        lambda: len(dead_letters(deployment)) >= 4 and dead_letters(deployment),
        30,
        "four dead letters",
    )
    assert sorted(r["reason"] for r in letters) == sorted(
        ["undecodable", "unknown_schema", "invalid_quantity", "missing_key"]
    )
    for letter in letters:
        assert letter["source_topic"].startswith(deployment.settings.topic_prefix)
        assert letter["raw_value"], "the raw bytes are kept for replay"
        assert letter["raw_key"] == key.encode()
    assert {r["source_offset"] for r in letters if r["reason"] == "undecodable"} == {1}
    assert deployment.workers[0].poll() is None, "the worker is still running"
    url = f"http://127.0.0.1:{deployment.web_ports['w1']}/metrics"
    text = urllib.request.urlopen(url, timeout=5).read().decode()
    assert 'invsync_dead_letters_total{reason="undecodable"} 1.0' in text


def test_restart_with_wiped_state_rebuilds_from_the_changelog(deployment):
    first = workload(seed=2, n=1000) + holds(seed=2, n=100)
    produce(deployment.settings, first)
    worker = deployment.start_worker("w1")
    assert_availability_reaches_reference(deployment, first)
    deployment.stop_worker(worker)
    second = workload(seed=3, n=1000, start=T0 + 1000 * 1000) + holds(
        seed=3, n=100, start=T0 + 1000 * 1000
    )
    produce(deployment.settings, second)
    deployment.start_worker("w1", wipe_state=True)
    assert_availability_reaches_reference(deployment, first + second)


def test_killed_worker_restarts_without_losing_or_doubling(deployment):
    stock, reservations = workload(seed=4, n=3000), holds(seed=4, n=200)
    items = stock[:1500] + reservations[:120] + stock[1500:] + reservations[120:]
    produce(deployment.settings, items[:1620])
    worker = deployment.start_worker("w1")
    poll_until(
        lambda: read_all(
            deployment.settings, topics.availability("web").full_name(deployment.settings)
        ),
        60,
        "first output",
    )
    produce(deployment.settings, items[1620:])
    deployment.stop_worker(worker, signal.SIGKILL)
    deployment.start_worker("w1")
    assert_availability_reaches_reference(deployment, items)


def _group_members(dep: Deployment) -> int:
    admin = AdminClient({"bootstrap.servers": dep.settings.kafka_bootstrap})
    group = dep.settings.app_id
    desc = admin.describe_consumer_groups([group])[group].result(timeout=10)
    return sum(1 for m in desc.members if m.assignment.topic_partitions)


def test_a_second_worker_takes_partitions_and_nothing_is_lost_or_doubled(deployment):
    items = workload(seed=5, n=3000)
    produce(deployment.settings, items[:1000])
    deployment.start_worker("w1")
    assert_availability_reaches_reference(deployment, items[:1000])
    deployment.start_worker("w2")
    poll_until(lambda: _group_members(deployment) == 2, 180, "two workers with partitions")
    produce(deployment.settings, items[1000:])
    assert_availability_reaches_reference(deployment, items)


def test_settled_counts_report_their_discrepancy_once_per_count(deployment):
    items: list[Item] = [sale(1, "SKU1", "S1", T0, 3), sale(2, "SKU1", "S1", T0 + MINUTE, 2)]
    items.append(count(3, "SKU1", "S1", T0 + 5 * MINUTE, 20))  # recorded -5 as of then: +25
    items += [sale(10 + i, "SKU1", "S1", T0 + (6 + i) * MINUTE, 1) for i in range(60)]
    items.append(count(4, "SKU1", "S1", T0 + 30 * MINUTE, 0))  # recorded 20 - 24 = -4: +4
    items += [sale(100 + i, "SKU1", "S1", T0 + (70 + i) * MINUTE, 1) for i in range(5)]
    produce(deployment.settings, items + items[:3])  # and a few redelivered
    deployment.start_worker()
    topic = topics.COUNT_DISCREPANCIES.full_name(deployment.settings)

    def reported() -> Any:
        got = {(r["count_id"], r["recorded"], r["discrepancy"], r["units_moved"])
               for r in read_all(deployment.settings, topic)}  # fmt: skip
        want = {("cnt3", -5, 25, 5), ("cnt4", -4, 4, 24)}
        return got == want or Mismatch(got=got, want=want)

    poll_until(reported, 120, "both counts to settle and report")

    # kept in the daily windows of the location's discrepancy table (Faust's JSON changelog)
    changelog = f"{deployment.settings.app_id}-count-discrepancies-changelog"

    def kept() -> Any:
        values = read_all_with(deployment.settings, changelog, lambda data: {"v": json.loads(data)})
        ids = {count_id for record in values for count_id in record["v"]}
        return ids == {"cnt3", "cnt4"} or Mismatch(ids=ids)

    poll_until(kept, 60, "both counts kept in the windowed table")


def test_erp_deltas_net_to_the_reference_on_hand_with_stable_ids(deployment):
    """Every closed netting window reaches erp.stock-deltas once per id (a redelivery repeats
    the same body), and the deltas of a key add up to its on hand."""
    items = workload(seed=6, n=1500)
    keys = sorted({key for _, key, _ in items})
    later = T0 + 1500 * 1000 + 24 * 60 * MINUTE  # one receipt per key a day later closes windows
    closing = [
        movement(100_000 + i, *topics.split_key(key), later, "RECEIPT", 1)
        for i, key in enumerate(keys)
    ]
    produce(deployment.settings, items)
    deployment.start_worker("w1")
    assert_availability_reaches_reference(deployment, items)
    produce(deployment.settings, closing)  # after the rest: each partition's watermark moves on
    expected = {k: on_hand for k, (on_hand, _) in reference_positions(as_events(items)).items()}
    erp_topic = topics.ERP_STOCK_DELTAS.full_name(deployment.settings)

    def netted() -> bool | Mismatch:
        bodies: dict[str, dict[str, Any]] = {}
        for delta in read_all(deployment.settings, erp_topic):
            assert bodies.setdefault(delta["delta_id"], delta) == delta, "one id, two bodies"
        got: dict[str, int] = {}
        for delta in bodies.values():
            key = topics.make_key(delta["sku"], delta["location"])
            got[key] = got.get(key, 0) + delta["net_quantity"]
            assert delta["net_quantity"] == sum(delta["reasons"].values())
        if got == expected:
            return True
        wrong = {k: (v, got.get(k)) for k, v in expected.items() if got.get(k) != v}
        return Mismatch(keys_wrong=len(wrong), sample=dict(list(wrong.items())[:5]))

    poll_until(netted, 180, "ERP deltas net to the reference on hand")


def snapshot(i: int, sku: str, loc: str, at: int, on_hand: int) -> Item:
    value = records.erp_snapshot(
        f"e{i}", "erp", sku, loc, as_of=at, reported_at=at + 30 * MINUTE, on_hand=on_hand
    )
    return topics.ERP_SNAPSHOTS, topics.make_key(sku, loc), value


def test_erp_snapshots_report_drift_as_of_their_time_and_never_overwrite(deployment):
    """A snapshot is compared with the position as of its time (movements after it, even
    produced before it, are not counted); it is reported once and on hand is not changed."""
    items: list[Item] = [count(1, "SKU1", "S1", T0, 20), sale(2, "SKU1", "S1", T0 + MINUTE, 3)]
    items += [sale(10 + i, "SKU1", "S1", T0 + (10 + i) * MINUTE, 1) for i in range(5)]
    # as of T0 + 5 min the record says 17; the ERP says 15 (and 17 for SKU2, in agreement)
    items.append(snapshot(3, "SKU1", "S1", T0 + 5 * MINUTE, 15))
    items += [count(4, "SKU2", "S1", T0, 17), snapshot(5, "SKU2", "S1", T0 + 5 * MINUTE, 17)]
    # later sales of both keys move each partition's watermark (newest - the 30 min skew of a
    # quiet topic) past the snapshots by more than the lateness bound
    items += [sale(100 + i, f"SKU{1 + i % 2}", "S1", T0 + (60 + i) * MINUTE, 1) for i in range(4)]
    produce(deployment.settings, [*items, items[-5]])  # and a snapshot redelivered
    deployment.start_worker()
    topic = topics.ERP_DRIFT.full_name(deployment.settings)

    def reported() -> Any:
        got = [(r["snapshot_id"], r["erp_on_hand"], r["recorded_on_hand"], r["drift"], r["exact"])
               for r in read_all(deployment.settings, topic)]  # fmt: skip
        want = [("e3", 15, 17, -2, True), ("e5", 17, 17, 0, True)]
        if sorted(got) == want:
            return True
        # a partition's watermark moves only with its input: if its last batch was folded while
        # another topic still looked unread, a little more traffic lets it move (as in any
        # live stream)
        n = len(items)
        nudge = [
            sale(1000 + n + i, f"SKU{1 + i}", "S1", T0 + (70 + n) * MINUTE, 1) for i in range(2)
        ]
        items.extend(nudge)
        produce(deployment.settings, nudge)
        return Mismatch(got=got, want=want)

    poll_until(reported, 120, "both snapshots to settle and report their drift")
    assert_availability_reaches_reference(deployment, items)  # on hand untouched by the ERP


@pytest.mark.parametrize("sweep_keys", [None, 3], ids=["sweep-default", "sweep-3-per-batch"])
def test_windows_close_when_a_keys_later_events_are_fetched_before_the_rest(deployment, sweep_keys):
    """Each key's last event (a day later) is produced with the workload, so it may be folded
    while the partition's other topics still hold time back: the key gets no later event, yet
    its windows must close once the partition's watermark passes them (the due-key sweep).
    With 3 due keys a batch, most of the sweep is left to the timer that runs once the input
    has stopped (every event was produced up front)."""
    if sweep_keys is not None:
        deployment.env["INVSYNC_SWEEP_KEYS"] = str(sweep_keys)
    items = workload(seed=8, n=600)
    keys = sorted({key for _, key, _ in items})
    later = T0 + 600 * 1000 + 24 * 60 * MINUTE
    closing = [
        movement(100_000 + i, *topics.split_key(key), later, "RECEIPT", 1)
        for i, key in enumerate(keys)
    ]
    produce(deployment.settings, items + closing)
    deployment.start_worker("w1")
    # the closing receipts' own window stays open: nothing comes after them
    expected = {k: on_hand for k, (on_hand, _) in reference_positions(as_events(items)).items()}
    erp_topic = topics.ERP_STOCK_DELTAS.full_name(deployment.settings)

    def netted() -> Any:
        got: dict[str, int] = {}
        for delta in read_all(deployment.settings, erp_topic):
            key = topics.make_key(delta["sku"], delta["location"])
            got[key] = got.get(key, 0) + delta["net_quantity"]
        wrong = {k: (v, got.get(k)) for k, v in expected.items() if got.get(k) != v}
        return (
            True if not wrong else Mismatch(keys_wrong=len(wrong), sample=list(wrong.items())[:3])
        )

    poll_until(netted, 120, "every window before the receipts delivered")
