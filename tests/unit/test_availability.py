"""A position projected for a channel: offered quantity, status and the confidence behind it."""

from __future__ import annotations

import pytest

from state.availability import (
    VELOCITY_PRIOR_DAYS,
    VELOCITY_PRIOR_UNITS,
    assess_ledger,
    location_type,
    project,
    velocity,
    velocity_per_day,
)
from state.confidence import DAY_MS, PRIORS
from state.events import Kind, StockEvent
from state.position import Ledger, apply
from state.trading_hours import TradingHours

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


def pick(i: int, at: int, units: int = 1, loc: str = "DC1") -> StockEvent:
    return StockEvent("wms", f"p{i}", "SKU1", loc, Kind.MOVEMENT, at, -units, ref="PICK")


def test_velocity_counts_selling_time_only():
    """Units per day of the time the item could sell: the gaps that ended in a sale or in a
    count that found stock; not the silence since, nor a spell a count ended on an empty shelf."""
    selling = [count(T0, 50)] + [sale(i, T0 + (i + 1) * DAY_MS, 2) for i in range(10)]
    base = velocity(ledger_of(*selling))
    assert base.per_day == (20 + VELOCITY_PRIOR_UNITS) / (10 + VELOCITY_PRIOR_DAYS)
    assert base.evidence == 20 + VELOCITY_PRIOR_UNITS
    # 20 quiet days ended by a count that found the shelf empty: not selling time
    emptied = ledger_of(*selling, count(T0 + 30 * DAY_MS, 0))
    assert velocity(emptied) == base
    # ... ended by a count that found stock: it was there and did not sell
    found = ledger_of(*selling, count(T0 + 30 * DAY_MS, 5))
    assert velocity(found).per_day == (20 + VELOCITY_PRIOR_UNITS) / (30 + VELOCITY_PRIOR_DAYS)


def test_dc_picks_are_demand():
    events = [count(T0, 500, "DC1")] + [pick(i, T0 + (i + 1) * HOUR, 3) for i in range(48)]
    ledger = ledger_of(*events)
    assert ledger.units_sold == 144 and ledger.last_sale_at == T0 + 48 * HOUR
    days = 2 + VELOCITY_PRIOR_DAYS  # two days of selling time, plus the prior's
    assert velocity(ledger).per_day == (144 + VELOCITY_PRIOR_UNITS) / days


def test_silence_is_measured_in_trading_hours():
    events = [count(T0, 100)] + [sale(i, T0 + i * HOUR + 9 * HOUR) for i in range(12)]
    ledger = ledger_of(*events)  # T0 is midnight UTC; sales 09:00-20:00, last at 20:00
    night = ledger.as_of + 12 * HOUR  # 08:00 next day: the shop was closed since 22:00
    store = TradingHours(8, 22)
    calendar = assess_ledger(ledger, stream_time=night, accuracy=PRIORS["store"])
    trading = assess_ledger(ledger, stream_time=night, accuracy=PRIORS["store"],
                            trading_hours=store)  # fmt: skip
    assert calendar.explanation.since_last_sale_ms == 12 * HOUR
    assert trading.explanation.since_last_sale_ms == round(2 * HOUR * 24 / 14)
    assert trading.phantom_probability < calendar.phantom_probability


def notice(i: int, at: int, units: int, loc: str = "S001") -> StockEvent:
    return StockEvent(
        "transfers", f"n{i}", "SKU1", loc, Kind.TRANSIT, at, units, "", f"T{i}", "DC1"
    )


def test_the_record_carries_in_transit_and_only_channels_that_count_it_offer_it():
    from dataclasses import replace

    from state.channel_policy import AtpFormula, default_channel

    ledger = ledger_of(count(T0, 10), notice(1, T0 + HOUR, 6))
    at = T0 + 2 * HOUR
    default = project("web", "SKU1", "S001", ledger, stream_time=at)
    assert (default.on_hand, default.in_transit, default.atp) == (10, 6, 10)  # as before
    assert default.to_record()["in_transit"] == 6
    terms = AtpFormula(frozenset({"on_hand", "in_transit", "reserved"}))
    counting = replace(default_channel("ship"), atp=terms)
    ship = project("ship", "SKU1", "S001", ledger, stream_time=at, policy=counting)
    assert (ship.atp, ship.offered, ship.in_transit) == (16, 16, 6)
    # the confidence is that of the shelf part (10 on hand), the inbound part at face value
    assert ship.confidence == pytest.approx(default.confidence)


def test_the_availability_schema_has_every_record_field():
    import orjson

    from streams.topics import schema_text

    fields = [f["name"] for f in orjson.loads(schema_text("availability_record"))["fields"]]
    ledger = ledger_of(count(T0, 1), notice(1, T0, 2))
    record = project("web", "SKU1", "S001", ledger, stream_time=T0).to_record()
    assert fields == list(record)


def test_one_assessment_serves_every_channel():
    # the fold assesses a position once and projects it for each channel with that assessment
    events = [count(T0, 30)] + [sale(i, T0 + i * 3 * HOUR) for i in range(1, 12)]
    ledger = ledger_of(*events)
    at = ledger.as_of + 20 * HOUR
    assessment = assess_ledger(ledger, stream_time=at, accuracy=PRIORS["store"])
    for channel, minimum in (("web", 0.8), ("bopis", 0.95), ("marketplace", 0.99)):
        given = project(channel, "SKU1", "S001", ledger, stream_time=at, min_confidence=minimum,
                        assessment=assessment)  # fmt: skip
        made = project(channel, "SKU1", "S001", ledger, stream_time=at, min_confidence=minimum)
        assert given == made
    later = assess_ledger(ledger, stream_time=at + 3 * DAY_MS, accuracy=PRIORS["store"])
    stale = project("web", "SKU1", "S001", ledger, stream_time=at, assessment=later)
    assert stale.confidence < made.confidence  # the assessment given is the one used
