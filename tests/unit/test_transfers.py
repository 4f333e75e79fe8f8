"""Units in transit between a TRANSFER_OUT and its TRANSFER_IN (state/position.py), against the
reference of tests/reference.py, which is written from the definition, not from the fold.

Two locations ship to each other. The harness plays the stream layer: each location's position
folds its own events and the shipment notices routed to it, in an arrival order where every
event comes less than one lateness window after every later one it follows (so none is late);
a TRANSFER_OUT's notice is routed when the origin folds it, and again when the TRANSFER_OUT is
redelivered.
"""

from __future__ import annotations

import heapq
import random
from collections import Counter
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from state.events import Kind, StockEvent, transit_notice
from state.position import (
    NEVER,
    EndedTransfer,
    Ledger,
    OpenPosition,
    Outcome,
    Position,
    Transfer,
    apply,
    from_primitive,
    to_primitive,
    transfer_deadline,
)
from tests.reference import (
    distinct,
    reference_expired,
    reference_in_transit,
    reference_on_hand,
    reference_positions,
)

MINUTE = 60_000
HOUR = 60 * MINUTE
LATENESS = 10 * MINUTE
TIMEOUT = 24 * HOUR
SKU = "SKU1"
LOCATIONS = ("DC1", "S1")
BIG = 2**62


def transfer_out(i: int, tid: str, at: int, units: int, origin: str, dest: str) -> StockEvent:
    return StockEvent(f"wms-{origin}", f"o{i}", SKU, origin, Kind.MOVEMENT, at, -units,
                      "TRANSFER_OUT", tid, dest)  # fmt: skip


def transfer_in(i: int, tid: str, at: int, units: int, dest: str, origin: str = "") -> StockEvent:
    return StockEvent(f"wms-{dest}", f"i{i}", SKU, dest, Kind.MOVEMENT, at, units,
                      "TRANSFER_IN", tid, origin)  # fmt: skip


def notice(i: int, tid: str, at: int, units: int, dest: str = "S1") -> StockEvent:
    return StockEvent("transfers", f"n{i}", SKU, dest, Kind.TRANSIT, at, units, "", tid, "DC1")


def sale(i: int, at: int, loc: str, units: int = 1) -> StockEvent:
    return StockEvent(f"pos-{loc}", f"s{i}", SKU, loc, Kind.SALE, at, -units)


def count(i: int, at: int, loc: str, units: int) -> StockEvent:
    return StockEvent(f"cc-{loc}", f"c{i}", SKU, loc, Kind.COUNT, at, units, f"cnt{i}")


# --- generated networks -----------------------------------------------------------------------

FATES = ("full", "full", "full", "short", "over", "lost", "early", "late_receipt")


@st.composite
def networks(draw: Any) -> list[StockEvent]:
    """Transfers both ways between the two locations over three days (one TRANSFER_OUT each,
    at most one receipt: full, short, over, never (lost), before the shipment in event time
    (clock skew under half the lateness bound), or after the deadline); some receipts of
    transfers never shipped; sales and counts at both ends."""
    events: list[StockEvent] = []
    n = draw(st.integers(0, 8))
    for j in range(n):
        origin, dest = draw(st.sampled_from([LOCATIONS, LOCATIONS[::-1]]))
        at = draw(st.integers(0, 72 * 60)) * MINUTE
        units = draw(st.integers(1, 10))
        fate = draw(st.sampled_from(FATES))
        tid = f"T{j}"
        events.append(transfer_out(j, tid, at, units, origin, dest))
        if fate == "lost":
            continue
        received = {"short": max(0, units - draw(st.integers(1, 3))), "over": units + 1}
        delay = {
            "early": -draw(st.integers(1, LATENESS // 2 // MINUTE)) * MINUTE,
            "late_receipt": TIMEOUT + draw(st.integers(0, 120)) * MINUTE,
        }.get(fate, draw(st.integers(1, 36 * 60)) * MINUTE)
        quantity = received.get(fate, units)
        if quantity:
            events.append(transfer_in(j, tid, max(0, at + delay), quantity, dest, origin))
    for j in range(draw(st.integers(0, 2))):  # a receipt whose shipment nobody reported
        dest = draw(st.sampled_from(LOCATIONS))
        at = draw(st.integers(0, 72 * 60)) * MINUTE
        events.append(transfer_in(100 + j, f"U{j}", at, draw(st.integers(1, 5)), dest))
    for j in range(draw(st.integers(0, 12))):
        loc = draw(st.sampled_from(LOCATIONS))
        at = draw(st.integers(0, 96 * 60)) * MINUTE
        if draw(st.booleans()):
            events.append(sale(j, at, loc, draw(st.integers(1, 3))))
        else:
            events.append(count(j, at, loc, draw(st.integers(0, 40))))
    return events


class Network:
    """Two positions and the routing between them, folded in a bounded-disorder arrival order."""

    def __init__(self, lateness: int = LATENESS, timeout: int = TIMEOUT) -> None:
        self.lateness = lateness
        self.positions = {
            loc: OpenPosition(Position(), transfer_timeout_ms=timeout) for loc in LOCATIONS
        }
        self.watermark = dict.fromkeys(LOCATIONS, NEVER)
        self.ended: dict[str, list[EndedTransfer]] = {loc: [] for loc in LOCATIONS}
        self.outcomes: Counter[Outcome] = Counter()
        self.routed: list[StockEvent] = []

    def run(self, events: list[StockEvent], rnd: random.Random, redeliver: float = 0.2) -> None:
        """Each event (and a redelivery of some) arrives at its event time + a jitter below the
        lateness bound; a TRANSFER_OUT's notice arrives at the destination later, still within
        the bound of its shipment."""
        queue: list[tuple[float, int, StockEvent, bool]] = []
        seq = 0
        for event in events:
            for _ in range(2 if rnd.random() < redeliver else 1):
                seq += 1
                arrival = event.effective_at + rnd.random() * self.lateness * 0.5
                heapq.heappush(queue, (arrival, seq, event, False))
        while queue:
            arrival, _, event, is_notice = heapq.heappop(queue)
            outcome = self.fold(event)
            if not is_notice and event.ref == "TRANSFER_OUT" and event.kind is Kind.MOVEMENT:
                # routed when applied, and again when redelivered (a duplicate here): the stream
                # layer re-emits on a redelivery by offset
                routed = transit_notice(event)
                self.routed.append(routed)
                seq += 1
                later = arrival + rnd.random() * (event.effective_at + self.lateness - arrival)
                heapq.heappush(queue, (later, seq, routed, True))
            self.outcomes[outcome] += 1

    def fold(self, event: StockEvent) -> Outcome:
        position = self.positions[event.location]
        watermark = self.watermark[event.location] = max(
            self.watermark[event.location], event.effective_at
        )
        outcome = position.fold(event, lateness_ms=self.lateness, watermark=watermark)
        self.take(event.location)
        assert position.view().in_transit >= 0
        assert position.settled.in_transit >= 0
        return outcome

    def take(self, loc: str) -> None:
        position = self.positions[loc]
        position.close(lateness_ms=self.lateness)  # as every batch does: forgets what it may
        self.ended[loc] += position.ended_transfers
        position.ended_transfers.clear()

    def finish(self) -> None:
        """Let event time run far past every deadline."""
        for loc, position in self.positions.items():
            position.advance(BIG, lateness_ms=self.lateness)
            self.take(loc)

    def horizon(self, loc: str) -> int:
        return self.watermark[loc] - self.lateness


@settings(max_examples=300, deadline=None)
@given(networks(), st.randoms(use_true_random=False))
def test_in_transit_on_hand_and_version_equal_the_reference(events, rnd):
    network = Network()
    network.run(events, rnd)
    assert network.outcomes[Outcome.LATE] == 0  # the arrival order stays within the bound
    for loc, position in network.positions.items():
        key = f"{SKU}|{loc}"
        view = position.view()
        horizon = network.horizon(loc)
        own = [e for e in events if e.location == loc]
        in_transit = reference_in_transit(events, horizon=horizon, timeout_ms=TIMEOUT)
        assert view.in_transit == in_transit.get(key, 0)
        assert view.in_transit == sum(t.in_transit for t in view.transfers)
        assert view.on_hand == reference_on_hand(own)
        expected = reference_positions(events, horizon=horizon, timeout_ms=TIMEOUT)
        assert position.version == expected.get(key, (0, 0))[1]
        expired = reference_expired(events, horizon=horizon, timeout_ms=TIMEOUT).get(key, set())
        reported = {e.transfer.transfer_id for e in network.ended[loc] if e.outcome == "expired"}
        assert reported == expired


@settings(max_examples=300, deadline=None)
@given(networks(), st.randoms(use_true_random=False))
def test_every_transfer_ends_once_received_or_expired_and_nothing_stays(events, rnd):
    network = Network()
    network.run(events, rnd)
    network.finish()
    shipped = {(e.counterpart, e.transfer_id) for e in distinct(events) if e.ref == "TRANSFER_OUT"}
    unshipped = {
        (e.location, e.transfer_id)
        for e in distinct(events)
        if e.ref == "TRANSFER_IN" and (e.location, e.transfer_id) not in shipped
    }
    ended = Counter(
        ((loc, e.transfer.transfer_id), e.outcome)
        for loc, found in network.ended.items()
        for e in found
    )
    by_transfer = Counter(ident for ident, outcome in ended if outcome != "unshipped")
    assert set(by_transfer) == shipped and set(by_transfer.values()) <= {1}
    assert {ident for ident, outcome in ended if outcome == "unshipped"} == unshipped
    for (ident, outcome), n in ended.items():
        assert n == 1, (ident, outcome)
    for position in network.positions.values():
        assert position.view().in_transit == 0
        assert position.settled.transfers == ()  # bounded: every ended transfer forgotten


# --- one position: any arrival order, duplicates, persistence --------------------------------


@st.composite
def inbound(draw: Any) -> list[StockEvent]:
    """Notices and receipts of a few transfers into S1 (either may come first in event time),
    with sales and counts; ids from the list index (a redelivery repeats an event)."""
    events: list[StockEvent] = []
    for j in range(draw(st.integers(0, 6))):
        tid = f"T{draw(st.integers(0, 4))}"  # transfers may share an id: notices add up
        at = draw(st.integers(0, 600)) * MINUTE
        if draw(st.booleans()):
            events.append(notice(j, tid, at, draw(st.integers(1, 9))))
        if draw(st.booleans()):
            events.append(transfer_in(j, tid, at + draw(st.integers(-30, 600)) * MINUTE, 3, "S1"))
    for j in range(draw(st.integers(0, 8))):
        at = draw(st.integers(0, 900)) * MINUTE
        if draw(st.booleans()):
            events.append(sale(j, at, "S1"))
        else:
            events.append(count(j, at, "S1", draw(st.integers(0, 9))))
    return events


def fold_in(events: list[StockEvent], lateness: int, timeout: int = TIMEOUT) -> OpenPosition:
    position = OpenPosition(Position(), transfer_timeout_ms=timeout)
    watermark = NEVER
    for event in events:
        watermark = max(watermark, event.effective_at)
        position.fold(event, lateness_ms=lateness, watermark=watermark)
        position.close(lateness_ms=lateness)
    return position


@settings(max_examples=300, deadline=None)
@given(inbound(), st.randoms(use_true_random=False))
def test_any_arrival_order_with_duplicates_gives_the_same_ledger(events, rnd):
    # a lateness bound longer than the whole input: nothing settles, any order is "in time"
    shuffled = events + [e for e in events if rnd.random() < 0.3]
    rnd.shuffle(shuffled)
    position = fold_in(shuffled, lateness=10**12)
    assert position.view() == fold_in(events, lateness=10**12).view()
    assert position.view().in_transit == reference_in_transit(events).get(f"{SKU}|S1", 0)
    assert position.version == len(distinct(events))


@settings(max_examples=200, deadline=None)
@given(inbound(), st.integers(0, 6).map(lambda h: h * HOUR), st.randoms(use_true_random=False))
def test_a_short_lateness_and_timeout_keep_every_invariant_and_round_trip(events, timeout, rnd):
    shuffled = list(events)
    rnd.shuffle(shuffled)  # late events: applied on top of the settled ledger
    position = fold_in(shuffled, lateness=30 * MINUTE, timeout=timeout)
    view = position.view()
    assert view.in_transit >= 0
    assert view.in_transit == sum(t.in_transit for t in view.transfers)
    closed = position.close(lateness_ms=30 * MINUTE)
    assert from_primitive(to_primitive(closed)) == closed
    assert from_primitive(orjson_round_trip(to_primitive(closed))) == closed


def orjson_round_trip(data: list[Any]) -> list[Any]:
    import orjson

    return orjson.loads(orjson.dumps(data))  # as stored: tuples become lists


# --- examples -------------------------------------------------------------------------------


def test_units_are_in_transit_from_the_notice_to_the_receipt():
    position = fold_in([notice(1, "T1", 0, 12), sale(1, HOUR, "S1")], lateness=LATENESS)
    assert position.view().in_transit == 12
    position.fold(transfer_in(1, "T1", 20 * HOUR, 12, "S1"), lateness_ms=LATENESS,
                  watermark=20 * HOUR)  # fmt: skip
    view = position.view()
    assert (view.in_transit, view.on_hand) == (0, 11)
    position.advance(21 * HOUR, lateness_ms=LATENESS)  # the receipt settles: the transfer ended
    assert [(e.transfer.transfer_id, e.outcome, e.lost) for e in position.ended_transfers] == [
        ("T1", "received", 0)
    ]


def test_a_receipt_before_its_notice_leaves_no_phantom_in_transit():
    receipt, late_notice = transfer_in(1, "T1", 20 * HOUR, 5, "S1"), notice(1, "T1", 2 * HOUR, 5)
    position = fold_in([receipt], lateness=LATENESS)
    assert position.view().in_transit == 0
    # the notice comes long after (the origin's partition lagged): late, it finds the receipt
    outcome = position.fold(late_notice, lateness_ms=LATENESS, watermark=20 * HOUR)
    position.advance(21 * HOUR, lateness_ms=LATENESS)
    assert outcome is Outcome.LATE
    assert position.view().in_transit == 0 and position.view().on_hand == 5
    assert [e.outcome for e in position.ended_transfers] == ["received"]


def test_a_short_receipt_closes_the_transfer_and_reports_the_loss():
    events = [notice(1, "T1", 0, 10), transfer_in(1, "T1", 5 * HOUR, 8, "S1")]
    position = fold_in(events, lateness=LATENESS)
    position.advance(6 * HOUR, lateness_ms=LATENESS)
    assert position.view().in_transit == 0 and position.view().on_hand == 8
    (ended,) = position.ended_transfers
    assert (ended.outcome, ended.lost) == ("short", 2)
    # a second receipt of the same transfer only adds on hand
    position.ended_transfers.clear()
    position.fold(transfer_in(2, "T1", 7 * HOUR, 2, "S1"), lateness_ms=LATENESS,
                  watermark=7 * HOUR)  # fmt: skip
    position.advance(8 * HOUR, lateness_ms=LATENESS)
    assert position.view().on_hand == 10 and position.view().in_transit == 0
    assert position.ended_transfers == []


def test_a_transfer_never_received_expires_at_its_deadline_with_a_new_version():
    position = fold_in([count(1, 0, "S1", 4), notice(1, "T1", HOUR, 6)], lateness=LATENESS)
    deadline = HOUR + TIMEOUT
    assert transfer_deadline(position.settled, TIMEOUT) is None  # the notice is still pending
    position.advance(HOUR + LATENESS + 1, lateness_ms=LATENESS)
    assert transfer_deadline(position.settled, TIMEOUT) == deadline
    version = position.version
    position.advance(deadline + LATENESS, lateness_ms=LATENESS)  # horizon == deadline: not yet
    assert position.view().in_transit == 6 and position.version == version
    position.advance(deadline + LATENESS + 1, lateness_ms=LATENESS)  # a quiet key: swept
    view = position.view()
    assert (view.in_transit, view.on_hand, position.version) == (0, 4, version + 1)
    assert view.as_of == deadline
    (ended,) = position.ended_transfers
    assert (ended.outcome, ended.lost, ended.transfer.expired) == ("expired", 6, True)
    # a receipt after the deadline is too late to close it: on hand only
    position.ended_transfers.clear()
    position.fold(transfer_in(1, "T1", deadline + 2 * HOUR, 6, "S1"), lateness_ms=LATENESS,
                  watermark=deadline + 2 * HOUR)  # fmt: skip
    assert position.view().in_transit == 0 and position.view().on_hand == 10
    position.advance(deadline + 3 * HOUR, lateness_ms=LATENESS)
    assert position.ended_transfers == []


def test_a_receipt_at_the_deadline_comes_after_the_expiry_one_before_it_in_time():
    for received_at, outcome in ((HOUR + TIMEOUT, "expired"), (HOUR + TIMEOUT - 1, "received")):
        events = [notice(1, "T1", HOUR, 6), transfer_in(1, "T1", received_at, 6, "S1")]
        for arrival in (events, events[::-1]):  # within the lateness bound of each other
            position = fold_in(arrival, lateness=10**12)
            position.advance(BIG, lateness_ms=LATENESS)
            assert [e.outcome for e in position.ended_transfers] == [outcome]


def test_a_redelivered_notice_is_a_duplicate():
    first = notice(1, "T1", 0, 3)
    position = fold_in([first], lateness=LATENESS)
    assert position.fold(first, lateness_ms=LATENESS, watermark=0) is Outcome.DUPLICATE
    assert position.view().in_transit == 3


def test_counts_do_not_touch_units_in_transit():
    events = [notice(1, "T1", 0, 7), count(1, HOUR, "S1", 2), transfer_in(1, "T1", 30, 7, "S1"),
              notice(2, "T2", 0, 5)]  # fmt: skip
    # T1's receipt is before the count: inside it, so on hand is the count's, yet T1 closes;
    # T2 is still on its way, whatever the count found on the shelf
    view = fold_in(events, lateness=10**12).view()
    assert (view.on_hand, view.in_transit) == (2, 5)


def test_old_positions_read_with_nothing_in_transit():
    position = fold_in([sale(1, 0, "S1"), notice(1, "T1", 0, 4)], lateness=LATENESS)
    closed = position.close(lateness_ms=LATENESS)
    data = to_primitive(closed)
    assert data[0] == 5
    old = [4, data[1][:13], *data[2:4], [list(e)[:8] for e in data[4][:1]], *data[5:]]
    restored = from_primitive(old)
    assert restored.settled.in_transit == 0 and restored.settled.transfers == ()
    assert restored.pending[0].transfer_id == ""


def test_the_ledger_of_a_transfer_in_without_an_id_is_unchanged():
    # older pending receipts (format 4) carry no transfer id: on hand only
    event = StockEvent("wms", "i1", SKU, "S1", Kind.MOVEMENT, 0, 4, "TRANSFER_IN")
    assert apply(Ledger(), event).transfers == ()
    assert apply(Ledger(), event).on_hand == 4


def test_transfers_are_kept_sorted_and_forgotten_when_nothing_can_change_them():
    events = [notice(1, "T2", 0, 1), notice(2, "T1", 0, 1), transfer_in(1, "T1", HOUR, 1, "S1")]
    position = fold_in(events, lateness=LATENESS)
    assert [t.transfer_id for t in position.view().transfers] == ["T1", "T2"]
    assert position.view().transfers[0] == Transfer("T1", 1, 0, 1, HOUR)
    position.advance(HOUR + 2 * LATENESS + 1, lateness_ms=LATENESS)
    position.close(lateness_ms=LATENESS)  # T1 closed two windows ago: forgotten; T2 is open
    assert [t.transfer_id for t in position.settled.transfers] == ["T2"]
