"""Reservations through the real broker: holds keyed by reservation_id become reserved units at
their sku|location, released/committed/expired holds give them back, an idle partition still
expires holds, and what cannot apply is dead-lettered (issue 4)."""

from __future__ import annotations

from typing import Any

from streams import topics
from streams.query_api import key_partition
from tests.integration.conftest import Deployment
from tests.integration.kafka_io import latest_by_key, poll_until, produce, read_all, read_all_with
from tests.integration.test_worker_e2e import MINUTE, T0, Mismatch, count, sale

DAY = 24 * 60 * MINUTE
Item = tuple[topics.TopicSpec, str, dict[str, Any] | bytes]


def reservation(
    i: int, rid: str, action: str, sku: str, loc: str, at: int, qty: int = 0,
    expires_at: int | None = None,
) -> Item:  # fmt: skip
    value = {
        "event_id": f"r{i}", "source": "oms", "sku": sku, "location": loc, "occurred_at": at,
        "reservation_id": rid, "action": action, "quantity": qty, "expires_at": expires_at,
        "channel": "web",
    }  # fmt: skip
    return topics.RESERVATIONS, rid, value


def availability(dep: Deployment) -> dict[str, dict[str, Any]]:
    channel = dep.settings.channels[0]
    return latest_by_key(
        read_all(dep.settings, topics.availability(channel).full_name(dep.settings))
    )


def test_holds_reserve_units_until_they_end_and_nothing_leaks(deployment: Deployment) -> None:
    deployment.env["INVSYNC_RESERVATION_IDLE_S"] = "2"
    stock = [count(1, "SKU1", "S1", T0, 10), count(2, "SKU2", "S1", T0, 8),
             sale(3, "SKU1", "S1", T0 + MINUTE, 1)]  # fmt: skip
    holds = [
        reservation(1, "A", "created", "SKU1", "S1", T0 + 2 * MINUTE, 3, T0 + DAY),
        reservation(2, "B", "created", "SKU1", "S1", T0 + 2 * MINUTE, 2, T0 + DAY),
        reservation(3, "C", "created", "SKU2", "S1", T0 + 2 * MINUTE, 5, T0 + DAY),
        reservation(4, "D", "created", "SKU2", "S1", T0 + 2 * MINUTE, 1, T0 + DAY),
        reservation(5, "B", "released", "SKU1", "S1", T0 + 3 * MINUTE),
        reservation(6, "C", "committed", "SKU2", "S1", T0 + 3 * MINUTE),
        reservation(1, "A", "created", "SKU1", "S1", T0 + 2 * MINUTE, 3, T0 + DAY),  # resent
        reservation(7, "Z", "released", "SKU2", "S1", T0 + 3 * MINUTE),  # unknown hold
        # a short hold: its partition goes quiet, so only the idle timer can expire it
        reservation(8, "E", "created", "SKU2", "S1", T0 + 4 * MINUTE, 2, T0 + 4 * MINUTE + 3000),
    ]
    produce(deployment.settings, stock + holds)
    deployment.start_worker()

    def settled() -> Any:
        records = availability(deployment)
        got = {k: (r["on_hand"], r["reserved"], r["atp"]) for k, r in records.items()}
        # A (3) holds SKU1; B released. C committed, E expired by the idle timer, D (1) holds.
        want = {"SKU1|S1": (9, 3, 6), "SKU2|S1": (8, 1, 7)}
        return True if got == want else Mismatch(got=got, want=want)

    poll_until(settled, 120, "reserved = open holds, the short hold expired")
    letters = read_all(deployment.settings, topics.DEAD_LETTERS.full_name(deployment.settings))
    assert [d["reason"] for d in letters] == ["unknown_reservation"]
    assert letters[0]["source_topic"] == topics.RESERVATIONS.full_name(deployment.settings)


def test_ended_reservations_are_forgotten_after_the_retention(deployment: Deployment) -> None:
    """An ended hold leaves the table (a tombstone on its changelog) once stream time is the
    retention past its end and expiry; an open one stays, and the reserved units are right."""
    deployment.env["INVSYNC_RESERVATION_RETAIN_MS"] = str(60 * MINUTE)
    # ids on one partition, so one stream time passes them all (keys are reservation ids)
    partitions = deployment.settings.partitions
    ids = [f"H{i}" for i in range(200)]
    same = [i for i in ids if key_partition(i.encode(), partitions) == 0][:3]
    old, keep, later = same
    holds = [
        reservation(1, old, "created", "SKU1", "S1", T0, 2, T0 + 10 * MINUTE),
        reservation(2, old, "released", "SKU1", "S1", T0 + MINUTE),
        reservation(3, keep, "created", "SKU1", "S1", T0 + MINUTE, 1, T0 + 3 * DAY),
        # stream time moves two hours on: the ended hold's retention (end/expiry + 1 h) passes
        reservation(4, later, "created", "SKU2", "S1", T0 + 2 * 60 * MINUTE, 1, T0 + 3 * DAY),
    ]
    produce(deployment.settings, [count(1, "SKU1", "S1", T0, 10), *holds])
    deployment.start_worker()
    changelog = f"{deployment.settings.app_id}-reservations-changelog"

    def forgotten() -> Any:
        records = read_all_with(deployment.settings, changelog, lambda data: {"v": data})
        latest = {r["_key"]: r["v"] for r in records}
        if old in latest and latest[old] is None and latest.get(keep) is not None:
            return True
        return Mismatch(latest={k: v is not None for k, v in latest.items()})

    poll_until(forgotten, 120, "the ended hold to be forgotten, the open ones kept")
