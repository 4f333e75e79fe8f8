"""Units in transit through the real broker, registry and worker: a TRANSFER_OUT at a DC is
routed (``invsync.transfers``) to its destination's position on another partition, shows there
as ``in_transit`` until the TRANSFER_IN, and expires when never received.

The oracle is ``tests.reference`` (written from the definition, not from the fold). Every
assertion polls the real output topics (or the worker's /metrics) with a deadline.
"""

from __future__ import annotations

import re
import urllib.request
from typing import Any

from aiokafka.partitioner import murmur2

from streams import records, topics
from tests.integration.conftest import Deployment
from tests.integration.kafka_io import latest_by_key, poll_until, produce, read_all
from tests.integration.test_worker_e2e import MINUTE, T0, Item, Mismatch, as_events, count, sale
from tests.reference import reference_in_transit, reference_positions

HOUR = 60 * MINUTE
TIMEOUT = 6 * HOUR  # INVSYNC_TRANSFER_TIMEOUT_MS for this deployment
PARTITIONS = 4
DC = "DC1"


def partition(key: str) -> int:
    return (murmur2(key.encode()) & 0x7FFFFFFF) % PARTITIONS


def store_apart(sku: str, taken: set[str]) -> str:
    """A store whose key for ``sku`` is on another partition than the DC's."""
    for i in range(1, 100):
        store = f"S{i:03d}"
        if store not in taken and partition(f"{sku}|{store}") != partition(f"{sku}|{DC}"):
            return store
    raise AssertionError("no store on another partition")


def transfer(
    i: int, kind: str, sku: str, loc: str, at: int, qty: int, tid: str, other: str
) -> Item:
    value = records.wms_movement(
        f"x{i}", f"wms-{loc}", sku, loc, at, kind, qty, transfer_id=tid, counterpart_location=other
    )
    return topics.WMS_MOVEMENTS, topics.make_key(sku, loc), value


def availability(dep: Deployment) -> dict[str, dict[str, Any]]:
    return latest_by_key(read_all(dep.settings, topics.availability("web").full_name(dep.settings)))


def record_shows(dep: Deployment, key: str, **want: int) -> Any:
    """The key's latest availability record if it has every ``want`` field value, else a
    (falsy) Mismatch."""
    record = availability(dep).get(key)
    got = {name: None if record is None else record[name] for name in want}
    return record if got == want else Mismatch(key=key, got=got, want=want)


def metric(dep: Deployment, name: str, **labels: str) -> float:
    url = f"http://127.0.0.1:{dep.web_ports['w1']}/metrics"
    text = urllib.request.urlopen(url, timeout=5).read().decode()
    selector = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    found = re.search(rf"^{name}\{{{selector}\}} (\S+)$", text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def test_units_are_in_transit_at_the_destination_until_received_or_expired(deployment):
    deployment.env["INVSYNC_TRANSFER_TIMEOUT_MS"] = str(TIMEOUT)
    settings = deployment.settings
    s1 = store_apart("SKU1", set())
    s2 = store_apart("SKU1", {s1})
    s3 = store_apart("SKU2", {s1, s2})
    key = {name: f"{sku}|{loc}" for name, sku, loc in (
        ("dc1", "SKU1", DC), ("dc2", "SKU2", DC), ("s1", "SKU1", s1), ("s2", "SKU1", s2),
        ("s3", "SKU2", s3),
    )}  # fmt: skip
    opening: list[Item] = [
        count(1, "SKU1", DC, T0, 100), count(2, "SKU2", DC, T0, 50),
        count(3, "SKU1", s1, T0, 5), count(4, "SKU1", s2, T0, 5), count(5, "SKU2", s3, T0, 0),
    ]  # fmt: skip
    shipped = [
        transfer(1, "TRANSFER_OUT", "SKU1", DC, T0 + HOUR, 10, "T1", s1),
        transfer(2, "TRANSFER_OUT", "SKU2", DC, T0 + HOUR, 4, "T3", s3),  # never received
    ]
    bad = records.wms_movement("x9", "wms-DC1", "SKU1", DC, T0 + HOUR, "TRANSFER_OUT", 1, "T9")
    produce(settings, [*opening, *shipped, (topics.WMS_MOVEMENTS, key["dc1"], bad)])
    deployment.start_worker("w1")
    produced = [*opening, *shipped]

    # in flight: the destinations (other partitions than the DC) show the units in transit;
    # ATP of the default channel (on hand - reserved) does not count them
    try:
        poll_until(lambda: record_shows(deployment, key["s1"], in_transit=10, on_hand=5, atp=5),
                   120, "S1's record to show 10 in transit")  # fmt: skip
        poll_until(lambda: record_shows(deployment, key["s3"], in_transit=4, on_hand=0), 60,
                   "S3's record to show 4 in transit")  # fmt: skip
        poll_until(lambda: record_shows(deployment, key["dc1"], on_hand=90, in_transit=0), 60,
                   "the DC's on hand to drop by the units shipped")  # fmt: skip
    except AssertionError:
        print(deployment.logs())
        raise
    notices = read_all(settings, topics.TRANSFERS.full_name(settings))
    assert sorted((n["_key"], n["quantity"], n["origin"]) for n in notices) == [
        (key["s1"], 10, DC), (key["s3"], 4, DC)
    ]  # fmt: skip
    for notice in notices:  # on the destination's partition, not the DC's
        origin = f"{notice['sku']}|{DC}"
        assert notice["_partition"] == partition(notice["_key"]) != partition(origin)

    # the receipt, 2 units short: nothing left in transit
    received = [transfer(3, "TRANSFER_IN", "SKU1", s1, T0 + 5 * HOUR, 8, "T1", DC)]
    produce(settings, received)
    produced += received
    poll_until(lambda: record_shows(deployment, key["s1"], in_transit=0, on_hand=13), 60,
               "S1's record to show the receipt")  # fmt: skip

    # a receipt before its shipment notice (the DC reports late): never in transit
    early = [transfer(4, "TRANSFER_IN", "SKU1", s2, T0 + 2 * HOUR, 6, "T2", DC)]
    produce(settings, early)
    before = poll_until(lambda: record_shows(deployment, key["s2"], in_transit=0, on_hand=11),
                        60, "S2's record to show the receipt")  # fmt: skip
    late_out = [transfer(5, "TRANSFER_OUT", "SKU1", DC, T0 + 90 * MINUTE, 6, "T2", s2)]
    produce(settings, late_out)
    produced += early + late_out
    version = before["version"] + 1  # the notice is applied (one more event), adds nothing
    poll_until(lambda: record_shows(deployment, key["s2"], version=version, in_transit=0,
                                    on_hand=11), 60, "S2's notice to be applied")  # fmt: skip

    # event time moves past T3's deadline (shipped + 6 h) on every partition: T3 expires at its
    # quiet key (a new version), and every receipt and notice settles
    later = T0 + TIMEOUT + 3 * HOUR
    nudges: list[Item] = []
    for p in range(PARTITIONS):
        sku = next(f"N{i}" for i in range(1000) if partition(f"N{i}|S900") == p)
        nudges.append(sale(9000 + p, sku, "S900", later, 1))
    produce(settings, nudges)
    produced += nudges
    poll_until(lambda: record_shows(deployment, key["s3"], in_transit=0, version=3), 120,
               "T3 to expire at S3")  # fmt: skip

    # on hand at both ends, versions (notices and the expiry included) and in transit: the
    # reference, with a horizon past T3's deadline
    events = as_events(produced)
    horizon = T0 + HOUR + TIMEOUT + 1
    expected = reference_positions(events, horizon=horizon, timeout_ms=TIMEOUT)
    transit = reference_in_transit(events, horizon=horizon, timeout_ms=TIMEOUT)

    def matches() -> Any:
        latest = availability(deployment)
        got = {k: (r["on_hand"], r["version"], r["in_transit"]) for k, r in latest.items()}
        want = {k: (on_hand, v, transit.get(k, 0)) for k, (on_hand, v) in expected.items()}
        return got == want or Mismatch(got=got, want=want)

    poll_until(matches, 60, "every record = the reference")
    assert expected[key["dc1"]][0] == 100 - 10 - 6 and expected[key["s1"]][0] == 13

    # what ended, and how: T1 short by 2, T2 received in full, T3 expired (4 units lost)
    def ended() -> Any:
        got = {
            outcome: metric(deployment, "invsync_transfers_ended_total",
                            location_type="store", outcome=outcome)
            for outcome in ("received", "short", "expired")
        }  # fmt: skip
        loss = metric(deployment, "invsync_transit_loss_units_total", location_type="store")
        want = {"received": 1.0, "short": 1.0, "expired": 1.0}
        return (got == want and loss == 6.0) or Mismatch(got=got, loss=loss)

    poll_until(ended, 60, "the transfers' ends counted")
    letters = read_all(settings, topics.DEAD_LETTERS.full_name(settings))
    assert [(r["reason"], r["raw_key"]) for r in letters] == [
        ("invalid_transfer", key["dc1"].encode())
    ]
