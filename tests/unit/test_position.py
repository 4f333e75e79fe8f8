from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from state.events import Kind, StockEvent
from state.position import (
    NEVER,
    OpenPosition,
    Outcome,
    Position,
    fold,
    from_primitive,
    to_primitive,
)
from tests.reference import distinct, reference_on_hand, reference_reserved

HOUR = 3_600_000
BIG_LATENESS = 10**12


def sale(eid: str, at: int, units: int = 1, source: str = "pos") -> StockEvent:
    return StockEvent(source, eid, "sku1", "store1", Kind.SALE, at, -units)


def count(eid: str, at: int, units: int, source: str = "cc") -> StockEvent:
    return StockEvent(source, eid, "sku1", "store1", Kind.COUNT, at, units, ref=f"c-{eid}")


def fold_all(events, lateness=BIG_LATENESS, position=None):
    position = position or Position()
    outcomes = []
    watermark = NEVER  # one input stream: its watermark is the newest event time seen
    for event in events:
        watermark = max(watermark, event.effective_at)
        position, outcome = fold(position, event, lateness_ms=lateness, watermark=watermark)
        outcomes.append(outcome)
    return position, outcomes


def movement(eid: str, at: int, units: int, source: str = "wms") -> StockEvent:
    return StockEvent(source, eid, "sku1", "store1", Kind.MOVEMENT, at, units, ref="ADJUSTMENT")


def _event(i: int, kind: str, at: int, qty: int) -> StockEvent:
    if kind == "count":
        return count(f"c{i}", at, qty)
    if kind == "reserve":
        return StockEvent("reservations", f"r{i}", "sku1", "store1", Kind.RESERVE, at, qty - 4 or 2)
    if kind == "movement":
        return movement(f"m{i}", at, qty - 3 or 4)
    if kind == "snapshot":
        return StockEvent("erp", f"e{i}", "sku1", "store1", Kind.SNAPSHOT, at, qty)
    return sale(f"s{i}", at, qty - 5 or 1)


# distinct events (ids from the list index): a redelivery repeats an event, it never changes it
events_strategy = st.lists(
    st.tuples(
        st.sampled_from(["sale", "sale", "sale", "movement", "reserve", "count", "snapshot"]),
        st.integers(0, 20).map(lambda m: m * 60_000),
        st.integers(0, 10),
    ),
    max_size=40,
).map(lambda rows: [_event(i, *row) for i, row in enumerate(rows)])


@settings(max_examples=300, deadline=None)
@given(events_strategy, st.randoms(use_true_random=False))
def test_fold_equals_reference_for_any_arrival_order(events, rnd):
    shuffled = list(events)
    rnd.shuffle(shuffled)
    position, _ = fold_all(shuffled)
    view = position.view()
    assert view.on_hand == reference_on_hand(events)
    assert view.reserved == reference_reserved(events)
    assert view.applied == len(distinct(events))
    assert position.view() == fold_all(events)[0].view()


@settings(max_examples=200, deadline=None)
@given(events_strategy, st.randoms(use_true_random=False))
def test_duplicated_deliveries_change_nothing(events, rnd):
    once, _ = fold_all(events)
    doubled = list(events) + [e for e in events if rnd.random() < 0.5]
    rnd.shuffle(doubled)
    twice, outcomes = fold_all(doubled)
    assert twice.view() == once.view()
    assert outcomes.count(Outcome.DUPLICATE) == len(doubled) - len(distinct(doubled))


@settings(max_examples=200, deadline=None)
@given(events_strategy, st.integers(0, 30).map(lambda m: m * 60_000), st.randoms())
def test_with_a_short_lateness_every_event_is_still_accounted_once(events, lateness, rnd):
    shuffled = list(events)
    rnd.shuffle(shuffled)
    position, outcomes = fold_all(shuffled, lateness=lateness)
    assert position.view().applied == len(distinct(events))
    assert position.view().late == outcomes.count(Outcome.LATE)
    # settling is invisible: the persisted form round-trips
    assert from_primitive(to_primitive(position)) == position


def test_count_is_an_as_of_snapshot():
    t = 10 * HOUR
    # a sale before the count that arrives after it is already inside the count
    position, _ = fold_all([sale("a", t - 5), count("c", t, 7), sale("b", t - 1), sale("d", t + 1)])
    view = position.view()
    assert view.on_hand == 6  # 7 counted, then the sale after t
    assert view.last_count_at == t
    # recorded as of t was -2 (two sales before t): discrepancy = 7 - (-2)
    assert view.last_discrepancy == 9


def test_late_event_is_applied_and_marked():
    lateness = HOUR
    position, outcomes = fold_all([sale("a", 5 * HOUR), sale("old", HOUR)], lateness=lateness)
    assert outcomes == [Outcome.APPLIED, Outcome.LATE]
    assert position.view().on_hand == -2
    assert position.view().late == 1


def test_dedupe_memory_survives_settling_for_one_window():
    lateness = HOUR
    first = sale("a", 0)
    position, _ = fold_all([first, sale("b", int(1.5 * HOUR))], lateness=lateness)
    assert position.pending == (position.pending[0],)  # "a" settled
    position, outcome = fold(position, first, lateness_ms=lateness, watermark=int(1.5 * HOUR))
    assert outcome is Outcome.DUPLICATE


def test_an_empty_position_has_no_time():
    assert Position().view().as_of == NEVER
    random.seed(1)


@settings(max_examples=200, deadline=None)
@given(events_strategy, st.randoms(use_true_random=False))
def test_streams_consumed_at_different_speeds_give_the_reference(events, rnd):
    """Sales, movements and counts come from three topics; one may be consumed far ahead of
    another. With the watermark = min over streams that still have data, nothing becomes late."""
    lateness = 60_000
    streams = {
        kind: sorted((e for e in events if e.kind is kind), key=lambda e: e.effective_at)
        for kind in Kind
    }
    newest = dict.fromkeys(Kind, NEVER)
    position, outcomes = Position(), []
    while any(streams.values()):
        name = rnd.choice([n for n, s in streams.items() if s])
        event = streams[name].pop(0)
        newest[name] = max(newest[name], event.effective_at)
        waiting = [newest[n] for n, s in streams.items() if s]
        watermark = min(waiting) if waiting else max(newest.values())
        position, outcome = fold(position, event, lateness_ms=lateness, watermark=watermark)
        outcomes.append(outcome)
    assert Outcome.LATE not in outcomes
    assert position.view().on_hand == reference_on_hand(events)


def test_sales_history_is_kept_for_velocity_and_a_return_is_not_a_sighting():
    position, _ = fold_all([sale("a", 1_000, 2), sale("b", 5_000, 1), sale("r", 9_000, -1)])
    view = position.view()
    assert (view.units_sold, view.first_sale_at, view.last_sale_at) == (2, 1_000, 5_000)


def test_a_count_reports_its_discrepancy_when_it_settles_not_before():
    lateness = 5 * 60_000
    position = OpenPosition(Position())
    for event in [sale("a", 0, 2), count("c1", 60_000, 10), sale("b", 120_000, 1)]:
        position.fold(event, lateness_ms=lateness, watermark=event.effective_at)
    assert position.settled_counts == []  # still inside the lateness window
    position.advance(60_000 + lateness + 1, lateness_ms=lateness)
    (settled,) = position.settled_counts
    assert (settled.event.event_id, settled.recorded, settled.discrepancy) == ("c1", -2, 12)
    assert (settled.units_moved, settled.previous_count_at) == (2, None)
    assert settled.last_sighting_at == 0  # the sale before it; the later one is not


def test_a_superseded_count_is_no_evidence():
    position = OpenPosition(Position())
    position.fold(count("new", 120_000, 5), lateness_ms=0, watermark=200_000)  # settles
    assert [c.event.event_id for c in position.settled_counts] == ["new"]
    position.settled_counts.clear()
    position.fold(count("old", 60_000, 9), lateness_ms=0, watermark=120_000)  # late, older
    assert position.settled_counts == []


# --- ERP snapshots: reconciled as of their time, never applied -------------------------------


def snapshot(eid: str, at: int, units: int) -> StockEvent:
    return StockEvent("erp", eid, "sku1", "store1", Kind.SNAPSHOT, at, units)


def drifts_of(events, lateness: int) -> tuple[Position, list]:
    """Fold in arrival order with an OpenPosition, collecting the drifts as they settle."""
    open_position, found = OpenPosition(Position()), []
    watermark = NEVER
    for event in events:
        watermark = max(watermark, event.effective_at)
        open_position.fold(event, lateness_ms=lateness, watermark=watermark)
        found += open_position.drifts
        open_position.drifts.clear()
    open_position.advance(2**62, lateness_ms=lateness)  # settle everything
    found += open_position.drifts
    return open_position.close(lateness_ms=lateness), found


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(-3, 5).filter(bool), min_size=1, max_size=20), st.data())
def test_a_snapshot_is_compared_as_of_its_time_in_any_arrival_order(units, data) -> None:
    movements = [movement(f"m{i}", (i + 1) * 1000, u) for i, u in enumerate(units)]
    cut = data.draw(st.integers(0, len(movements)))
    at = cut * 1000 + 500  # after the first `cut` movements
    snap = snapshot("e1", at, 40)
    arrival = data.draw(st.permutations([count("c0", 0, 20), *movements, snap]))
    position, found = drifts_of(arrival, lateness=10**9)  # everything within the lateness bound
    recorded = 20 + sum(units[:cut])
    assert [(d.event, d.recorded, d.exact, d.drift) for d in found] == [
        (snap, recorded, True, 40 - recorded)
    ]
    assert position.view().on_hand == 20 + sum(units)  # never applied


def test_a_snapshot_behind_the_horizon_is_reported_inexact() -> None:
    # m1 (2h) has settled when the 1h snapshot arrives (horizon 6h - 1h): the settled on hand
    # it is compared with includes m1, which came after it; m2 (6h) is still pending
    events = [count("c0", 0, 10), movement("m1", 2 * HOUR, -2), movement("m2", 6 * HOUR, -1)]
    _, found = drifts_of([*events, snapshot("late", HOUR, 7)], lateness=HOUR)
    assert [(d.recorded, d.exact, d.drift) for d in found] == [(8, False, -1)]


def test_a_redelivered_snapshot_is_a_duplicate() -> None:
    snap = snapshot("e1", 2000, 3)
    position, outcomes = fold_all([count("c0", 0, 3), snap, snap])
    assert outcomes[-1] is Outcome.DUPLICATE and position.view().on_hand == 3
