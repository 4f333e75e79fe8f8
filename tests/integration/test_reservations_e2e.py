"""Reservations through the real broker: holds keyed by reservation_id become reserved units at
their sku|location, released/committed/expired holds give them back, an idle partition still
expires holds, and what cannot apply is dead-lettered (issue 4)."""

from __future__ import annotations

from typing import Any

from streams import topics
from tests.integration.conftest import Deployment
from tests.integration.kafka_io import latest_by_key, poll_until, produce, read_all
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
