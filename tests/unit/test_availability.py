"""A position projected for a channel: offered quantity, status and the confidence behind it."""

from __future__ import annotations

from state.availability import location_type, project, velocity_per_day
from state.confidence import DAY_MS
from state.events import Kind, StockEvent
from state.position import Ledger, apply

T0 = 1_767_225_600_000
HOUR = 3_600_000


def ledger_of(*events: StockEvent) -> Ledger:
    ledger = Ledger()
    for event in sorted(events, key=StockEvent.order_key):
        ledger = apply(ledger, event)
    return ledger


def sale(i: int, at: int, units: int = 1, loc: str = "S001") -> StockEvent:
    return StockEvent("pos", f"s{i}", "SKU1", loc, Kind.SALE, at, -units)


def count(at: int, units: int, loc: str = "S001") -> StockEvent:
    return StockEvent("cc", f"c{at}", "SKU1", loc, Kind.COUNT, at, units, ref="c")


def test_a_fast_seller_gone_silent_is_frozen_and_loses_confidence():
    # sells ~10/day for a week after a count of 100, then nothing for two days
    events = [count(T0, 100)] + [sale(i, T0 + i * 2 * HOUR + HOUR) for i in range(84)]
    ledger = ledger_of(*events)
    assert 9 < velocity_per_day(ledger) < 13
    fresh = project("bopis", "SKU1", "S001", ledger, stream_time=ledger.as_of + HOUR,
                    min_confidence=0.9)  # fmt: skip
    silent = project("bopis", "SKU1", "S001", ledger, stream_time=ledger.as_of + 2 * DAY_MS,
                     min_confidence=0.9)  # fmt: skip
    assert not fresh.frozen and silent.frozen
    assert fresh.offered >= 5 and fresh.confidence >= 0.9
    assert (silent.offered, silent.status) == (0, "out")  # the phantom-stock signature
    assert silent.phantom_probability > 0.9


def test_a_slow_mover_is_not_frozen_by_the_same_silence():
    events = [count(T0, 20)] + [sale(i, T0 + i * 5 * DAY_MS) for i in range(1, 4)]
    ledger = ledger_of(*events)
    silent = project("web", "SKU1", "S001", ledger, stream_time=ledger.as_of + 2 * DAY_MS)
    assert not silent.frozen and silent.phantom_probability < 0.1


def test_offered_never_exceeds_atp_and_status_follows_it():
    ledger = ledger_of(count(T0, 3), sale(1, T0 + HOUR, 2))
    record = project("web", "SKU1", "S001", ledger, stream_time=T0 + 2 * HOUR)
    assert (record.atp, record.offered, record.status) == (1, 1, "low")
    strict = project("web", "SKU1", "S001", ledger, stream_time=T0 + 2 * HOUR, min_confidence=0.999)
    assert strict.offered <= record.offered and strict.status in ("out", "low")
    empty = project("web", "SKU1", "S001", ledger_of(count(T0, 0)), stream_time=T0)
    assert (empty.offered, empty.status, empty.confidence) == (0, "out", 1.0)


def test_a_dc_record_is_trusted_more_than_a_store_record():
    store = ledger_of(count(T0, 50), *[sale(i, T0 + i * HOUR, 1) for i in range(1, 20)])
    dc = ledger_of(
        count(T0, 50, loc="DC01"), *[sale(i, T0 + i * HOUR, 1, loc="DC01") for i in range(1, 20)]
    )
    at = T0 + 21 * HOUR
    assert location_type("DC01") == "dc" and location_type("S001") == "store"
    store_record = project("web", "SKU1", "S001", store, stream_time=at, min_confidence=0.95)
    dc_record = project("web", "SKU1", "DC01", dc, stream_time=at, min_confidence=0.95)
    assert dc_record.offered > store_record.offered
    assert dc_record.variance < store_record.variance


def test_time_is_the_stream_time_so_a_replay_gives_the_same_record():
    ledger = ledger_of(count(T0, 10), sale(1, T0 + HOUR))
    assert project("web", "SKU1", "S001", ledger, stream_time=T0 + DAY_MS) == project(
        "web", "SKU1", "S001", ledger, stream_time=T0 + DAY_MS
    )


def test_reserved_units_are_not_offered():
    hold = StockEvent("reservations", "r1:open", "SKU1", "S001", Kind.RESERVE, T0 + HOUR, 4, "r1")
    ledger = ledger_of(count(T0, 10), hold)
    record = project("web", "SKU1", "S001", ledger, stream_time=T0 + 2 * HOUR)
    assert (record.on_hand, record.reserved, record.atp, record.offered) == (10, 4, 6, 6)
