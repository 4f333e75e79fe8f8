"""The stock position of one sku at one location, and the fold that applies events to it.

Guarantees (each is a property test in ``tests/unit``):

* **Order independence within the lateness bound.** Events whose ``effective_at`` is not older
  than the key's horizon (watermark - lateness) wait in ``pending`` in event-time order, so the
  view does not depend on the order they arrived in. Older ones are applied at once on top of the
  settled ledger and counted as ``late``; they are never dropped.
* **As-of counts.** A count at ``t`` replaces recorded on hand as of ``t``; a movement before ``t``
  that arrives after the count is not applied again (it adjusts the count's discrepancy instead);
  movements at or after ``t`` apply on top.
* **ERP snapshots are reconciled, never applied.** A snapshot at ``t`` changes nothing but the
  version; when it settles, every event before ``t`` has been applied in order, so its
  :class:`Drift` compares the ERP with the recorded on hand exactly as of ``t``.
* **Idempotence.** An event whose ``(source, event_id)`` is pending, or was settled less than one
  lateness window ago, is a duplicate and changes nothing.

Limits: the dedupe memory reaches back one lateness window behind the horizon; a duplicate older
than that is applied again as a late event (the stream layer separately skips Kafka redeliveries
by offset). A late count is taken as of its ``counted_at`` but cannot subtract settled movements
between ``counted_at`` and the horizon. At most ``MAX_PENDING`` events wait per key; beyond that
the oldest settle early.
"""

from __future__ import annotations

from bisect import insort
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, NamedTuple

from state.events import Kind, StockEvent
from state.netting import DEFAULT_WINDOW_MS, Netting, OpenWindow

NEVER = -(2**62)
MAX_PENDING = 5_000
# WMS movements that are demand (a DC's sales): they feed the velocity like POS sales do
DEMAND_MOVEMENTS = frozenset({"PICK", "SHIP"})


class Outcome(StrEnum):
    APPLIED = "applied"
    DUPLICATE = "duplicate"
    LATE = "late"


class Ledger(NamedTuple):
    """Recorded stock after a run of events, with what a count told us last (immutable)."""

    on_hand: int = 0
    last_count_at: int | None = None
    last_count_id: str = ""
    last_discrepancy: int | None = None  # counted - recorded, as of last_count_at
    moved_since_count: int = 0  # units moved in either direction since the last count
    applied: int = 0  # distinct events accounted for; the position's version
    late: int = 0  # of which applied after the lateness bound
    as_of: int = NEVER  # newest effective_at accounted for
    units_sold: int = 0  # net units demanded: POS sales - returns + WMS picks/ships (velocity)
    first_sale_at: int | None = None
    last_sale_at: int | None = None  # the last sale or pick: the stock was there
    reserved: int = 0  # units held by open reservations (never negative: see reservations.py)
    selling_ms: int = 0  # time the item could sell (between sightings; see apply): velocity's


def apply(ledger: Ledger, event: StockEvent, *, late: bool = False) -> Ledger:
    """Ledger after one event, with the as-of semantics of counts (a count says nothing about
    reservations: a reserved delta only changes ``reserved``)."""
    if event.kind is Kind.SNAPSHOT:  # reconciled by the caller (drift), never applied
        return ledger._replace(
            applied=ledger.applied + 1,
            late=ledger.late + late,
            as_of=max(ledger.as_of, event.effective_at),
        )
    if event.kind is Kind.RESERVE:
        return ledger._replace(
            reserved=ledger.reserved + event.quantity,
            applied=ledger.applied + 1,
            late=ledger.late + late,
            as_of=max(ledger.as_of, event.effective_at),
        )
    on_hand, count_at, count_id, discrepancy, moved, applied, n_late, as_of = (
        ledger.on_hand, ledger.last_count_at, ledger.last_count_id, ledger.last_discrepancy,
        ledger.moved_since_count, ledger.applied + 1, ledger.late + late,
        max(ledger.as_of, event.effective_at),
    )  # fmt: skip
    sold, first_sale, last_sale = ledger.units_sold, ledger.first_sale_at, ledger.last_sale_at
    at, selling = event.effective_at, ledger.selling_ms
    sighted = max(t for t in (last_sale, count_at, NEVER) if t is not None)
    if event.kind is Kind.SALE or (event.kind is Kind.MOVEMENT and event.ref in DEMAND_MOVEMENTS):
        sold -= event.quantity
        first_sale = at if first_sale is None else min(first_sale, at)
        if event.quantity < 0:  # a return is not evidence that the item is on the shelf
            last_sale = at if last_sale is None else max(last_sale, at)
            if NEVER < sighted < at:  # on the shelf from the last sighting to this sale
                selling += at - sighted
    elif event.kind is Kind.COUNT and event.quantity > 0 and NEVER < sighted < at:
        selling += at - sighted  # found on the shelf: the quiet time was selling time
    superseded = count_at is not None and event.effective_at < count_at
    if event.kind is Kind.COUNT:
        if not superseded:  # an older count than the one held is history, not news
            on_hand, count_at, count_id = event.quantity, event.effective_at, event.ref
            discrepancy, moved = event.quantity - ledger.on_hand, 0
    elif superseded:  # already inside the count; recorded-as-of-count would have included it
        discrepancy = (discrepancy or 0) - event.quantity
    else:
        on_hand += event.quantity
        moved += abs(event.quantity)
    return Ledger(on_hand, count_at, count_id, discrepancy, moved, applied, n_late, as_of, sold,
                  first_sale, last_sale, ledger.reserved, selling)  # fmt: skip


EMPTY_LEDGER = Ledger()


@dataclass(frozen=True, slots=True)
class Position:
    """Settled ledger + the events still inside the lateness window, in event-time order."""

    settled: Ledger = EMPTY_LEDGER
    horizon: int = NEVER  # events with effective_at < horizon are settled
    stream_time: int = NEVER  # the newest watermark this position was advanced to
    pending: tuple[StockEvent, ...] = ()
    settled_ids: tuple[tuple[str, str, int], ...] = ()  # (source, event_id, effective_at)
    netting: OpenWindow | None = None  # the ERP window being netted (state/netting.py)

    def view(self) -> Ledger:
        """The current ledger: settled, with the pending events applied in order."""
        ledger = self.settled
        for event in self.pending:
            ledger = apply(ledger, event)
        return ledger

    @property
    def version(self) -> int:
        return self.settled.applied + len(self.pending)


class SettledCount(NamedTuple):
    """A count as it settled (passed the horizon, or arrived late): the evidence it gives about
    the location's accuracy. ``discrepancy`` = counted - recorded as of ``counted_at``."""

    event: StockEvent
    recorded: int  # on hand recorded as of counted_at, before the count
    discrepancy: int
    units_moved: int  # units moved since the previous count, up to this one
    previous_count_at: int | None  # None: the position's first count


class Drift(NamedTuple):
    """An ERP snapshot reconciled against the position as of its time: ``drift`` = ERP on hand
    - recorded on hand. ``exact`` is False for a snapshot that arrived behind the horizon: the
    settled on hand it is compared with may include movements after its time."""

    event: StockEvent
    recorded: int
    exact: bool

    @property
    def drift(self) -> int:
        return self.event.quantity - self.recorded


def _settled_count(before: Ledger, after: Ledger, event: StockEvent) -> SettledCount | None:
    took_effect = (after.last_count_at, after.last_count_id) == (event.effective_at, event.ref)
    if event.kind is not Kind.COUNT or not took_effect:
        return None  # not a count, or superseded by a newer one
    return SettledCount(event, before.on_hand, event.quantity - before.on_hand,
                        before.moved_since_count, before.last_count_at)  # fmt: skip


class OpenPosition:
    """A position while events fold into it: mutable, with an index of the ids it has seen and
    the current view kept up to date when events arrive in order.

    :meth:`close` returns the position to store and leaves this object equal to
    ``OpenPosition(closed)``, so a caller may keep it open across batches (a cache) instead of
    reopening the stored value. The cost per event is O(log n) plus a list insert, not a copy.
    Counts that settle are collected in ``settled_counts``, ERP snapshots that settle in
    ``drifts``, and ERP deltas of windows that complete in ``netting.deltas``, for the caller to
    take.
    """

    __slots__ = ("_view", "drifts", "horizon", "ids", "netting", "pending", "settled",
                 "settled_counts", "settled_ids", "stream_time")  # fmt: skip

    def __init__(self, position: Position, net_window_ms: int = DEFAULT_WINDOW_MS) -> None:
        self.settled = position.settled
        self.horizon = position.horizon
        self.stream_time = position.stream_time
        self.pending = list(position.pending)
        self.settled_ids = list(position.settled_ids)
        self.ids = {(e.source, e.event_id) for e in self.pending}
        self.ids.update((src, eid) for src, eid, _ in self.settled_ids)
        self._view: Ledger | None = None
        self.settled_counts: list[SettledCount] = []
        self.drifts: list[Drift] = []
        self.netting = Netting(position.netting, net_window_ms)

    @property
    def version(self) -> int:
        return self.settled.applied + len(self.pending)

    def view(self) -> Ledger:
        """The current ledger: settled, with the pending events applied in order."""
        if self._view is None:
            ledger = self.settled
            for event in self.pending:
                ledger = apply(ledger, event)
            self._view = ledger
        return self._view

    def fold(self, event: StockEvent, *, lateness_ms: int, watermark: int) -> Outcome:
        """Apply one event.

        ``watermark`` is the event time up to which the key's partition has seen *every* input
        (see ``streams/watermarks.py``): the horizon follows it, never one stream alone, so a
        stream consumed ahead of another cannot make the other's events late.
        """
        ident = (event.source, event.event_id)
        if ident in self.ids:
            return Outcome.DUPLICATE
        self.netting.key = (event.sku, event.location)
        self.ids.add(ident)
        pending = self.pending
        if event.effective_at < self.horizon:
            before, self.settled = self.settled, apply(self.settled, event, late=True)
            if (counted := _settled_count(before, self.settled, event)) is not None:
                self.settled_counts.append(counted)
            elif event.kind is Kind.SNAPSHOT:
                self.drifts.append(Drift(event, before.on_hand, exact=False))
            self.netting.settled(event, self.settled.on_hand - before.on_hand, late=True)
            self.settled_ids.append((event.source, event.event_id, event.effective_at))
            self._view = None
            outcome = Outcome.LATE
        elif not pending or pending[-1].order_key() < event.order_key():
            pending.append(event)  # the common case: in order; the view extends
            if self._view is not None:
                self._view = apply(self._view, event)
            outcome = Outcome.APPLIED
        else:
            insort(pending, event, key=StockEvent.order_key)
            self._view = None
            outcome = Outcome.APPLIED
        self.advance(watermark, lateness_ms=lateness_ms)
        return outcome

    def advance(self, watermark: int, *, lateness_ms: int) -> None:
        """Move the horizon to ``watermark - lateness`` and settle what fell behind it (the
        view does not change: settling applies the same events in the same order)."""
        if watermark > self.stream_time:
            self.stream_time = watermark
        horizon = max(self.horizon, watermark - lateness_ms)
        pending = self.pending
        if len(pending) > MAX_PENDING:
            horizon = max(horizon, pending[len(pending) - MAX_PENDING].effective_at)
        self.horizon = horizon
        cut = 0
        settled = self.settled
        while cut < len(pending) and pending[cut].effective_at < horizon:
            event = pending[cut]
            before, settled = settled, apply(settled, event)
            if event.kind is Kind.COUNT and (counted := _settled_count(before, settled, event)):
                self.settled_counts.append(counted)
            elif event.kind is Kind.SNAPSHOT:  # every event before it is applied: as of its time
                self.drifts.append(Drift(event, before.on_hand, exact=True))
            self.netting.settled(event, settled.on_hand - before.on_hand, late=False)
            self.settled_ids.append((event.source, event.event_id, event.effective_at))
            cut += 1
        if cut:
            self.settled = settled
            del pending[:cut]
        self.netting.advance(horizon)

    def close(self, *, lateness_ms: int) -> Position:
        """The position to store; forgets ids settled more than one lateness window ago."""
        forget_before = self.horizon - lateness_ms
        ids = self.settled_ids
        if any(at < forget_before for _, _, at in ids):
            kept = [i for i in ids if i[2] >= forget_before]
            self.ids.difference_update((src, eid) for src, eid, at in ids if at < forget_before)
            self.settled_ids = ids = kept
        return Position(self.settled, self.horizon, self.stream_time, tuple(self.pending),
                        tuple(ids), self.netting.open)  # fmt: skip


def fold(
    position: Position, event: StockEvent, *, lateness_ms: int, watermark: int
) -> tuple[Position, Outcome]:
    """One event into a closed position (convenience for tests; batches use OpenPosition)."""
    open_position = OpenPosition(position)
    outcome = open_position.fold(event, lateness_ms=lateness_ms, watermark=watermark)
    return open_position.close(lateness_ms=lateness_ms), outcome


# --- persistence: a compact, JSON-friendly form (the table's value) -----------------------

_FORMAT = 4  # 2: + sales history (units_sold, first/last sale); 3: + reserved; 4: + netting


_KINDS = {kind.value: kind for kind in Kind}


def to_primitive(position: Position) -> list[Any]:
    return [
        _FORMAT,
        list(position.settled),
        position.horizon,
        position.stream_time,
        [tuple(e) for e in position.pending],  # kind is a str enum: serialised as its value
        [list(i) for i in position.settled_ids],
        None if position.netting is None else [position.netting.start, position.netting.reasons],
    ]


def from_primitive(data: list[Any]) -> Position:
    fmt, s, horizon, stream_time, pending, ids, *rest = data
    netting = rest[0] if rest else None
    if fmt not in (1, 2, 3, _FORMAT):  # older ledgers lack the newer fields: defaults apply
        raise ValueError(f"unknown position format {fmt}")
    kinds = _KINDS
    return Position(
        settled=Ledger(*s),
        horizon=horizon,
        stream_time=stream_time,
        pending=tuple(
            StockEvent(src, eid, sku, loc, kinds[kind], at, qty, ref)
            for src, eid, sku, loc, kind, at, qty, ref in pending
        ),
        settled_ids=tuple((src, eid, at) for src, eid, at in ids),
        netting=None
        if netting is None
        else OpenWindow(netting[0], tuple((reason, units) for reason, units in netting[1])),
    )
