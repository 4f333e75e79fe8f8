"""ERP netting (state/netting.py): deltas add up to on hand, are final when emitted, and are the
same for any arrival order within the lateness bound."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from state.netting import delta_id
from state.position import NEVER, OpenPosition, Position
from tests.reference import reference_on_hand
from tests.unit.test_position import events_strategy, movement, sale

WINDOW = 300_000
LATENESS = 600_000
END = 10**13  # a watermark past every window


def fold_and_flush(events, lateness=LATENESS):
    """Fold ``events`` one batch at a time (closing and reopening the position between them, as
    the worker does), then advance past every window. Returns the ERP deltas emitted."""
    position, deltas, watermark = Position(), [], NEVER
    for event in events:
        open_position = OpenPosition(position, WINDOW)
        watermark = max(watermark, event.effective_at)
        open_position.fold(event, lateness_ms=lateness, watermark=watermark)
        deltas += open_position.netting.deltas
        position = open_position.close(lateness_ms=lateness)
    open_position = OpenPosition(position, WINDOW)
    if events:
        open_position.netting.key = (events[0].sku, events[0].location)
    open_position.advance(END, lateness_ms=lateness)
    return deltas + open_position.netting.deltas, open_position.close(lateness_ms=lateness)


@settings(max_examples=300, deadline=None)
@given(events_strategy, st.randoms(use_true_random=False))
def test_deltas_add_up_to_on_hand_for_any_order_within_lateness(events, rnd):
    shuffled = list(events)
    rnd.shuffle(shuffled)  # all events lie within 20 minutes: inside a big lateness bound
    deltas, position = fold_and_flush(shuffled, lateness=10**12)
    assert sum(d.net_quantity for d in deltas) == reference_on_hand(events)
    assert deltas == fold_and_flush(events, lateness=10**12)[0]  # order does not matter
    assert len({d.delta_id for d in deltas}) == len(deltas)
    assert position.netting is None
    for d in deltas:
        assert d.window_start % WINDOW == 0 and d.window_end == d.window_start + WINDOW
        assert sum(d.reasons.values()) == d.net_quantity


@settings(max_examples=200, deadline=None)
@given(events_strategy)
def test_late_events_get_their_own_deltas_and_nothing_is_lost(events):
    deltas, position = fold_and_flush(events, lateness=0)  # every out-of-order event is late
    assert sum(d.net_quantity for d in deltas) == position.view().on_hand
    assert len({d.delta_id for d in deltas}) == len(deltas)


def test_a_window_is_emitted_once_the_horizon_passes_its_end():
    position = OpenPosition(Position(), WINDOW)
    position.fold(sale("a", 10_000, 2), lateness_ms=LATENESS, watermark=10_000)
    position.fold(movement("b", 20_000, 5), lateness_ms=LATENESS, watermark=20_000)
    assert position.netting.deltas == []  # the window may still change
    position.fold(sale("c", 950_000, 1), lateness_ms=LATENESS, watermark=950_000)
    [delta] = position.netting.deltas
    assert (delta.window_start, delta.window_end, delta.net_quantity) == (0, WINDOW, 3)
    assert delta.reasons == {"sale": -2, "adjustment": 5}
    assert delta.delta_id == delta_id("sku1", "store1", 0)
