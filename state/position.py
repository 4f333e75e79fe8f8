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
* **In transit** (``Ledger.in_transit``: units inbound to this location). A shipment notice
  (:attr:`Kind.TRANSIT`, routed here from the origin's ``TRANSFER_OUT``) opens its transfer; the
  first ``TRANSFER_IN`` here with the same ``transfer_id`` closes it, whichever arrives first:
  a receipt before its notice is remembered, and the notice then finds the transfer received
  and adds nothing. A transfer closes at its first receipt: a short receipt leaves nothing in
  transit, the difference is transit loss (:attr:`OpenPosition.ended_transfers`); further
  receipts of it only add on hand. A transfer not received ``transfer_timeout_ms`` of event time
  after it was shipped **expires** when the horizon passes that deadline (like an event at the
  deadline: a receipt at or after it comes too late to close it), so nothing stays in transit
  forever, also at a key that goes quiet (the stream layer advances positions when a deadline
  is due). An expiry is a derived event: it counts in ``applied`` (so the version moves and the
  record is re-published) and is the same after any replay. Counts do not touch in-transit
  units: they are not on the shelf.

Limits: the dedupe memory reaches back one lateness window behind the horizon; a duplicate older
than that is applied again as a late event (the stream layer separately skips Kafka redeliveries
by offset). A late count is taken as of its ``counted_at`` but cannot subtract settled movements
between ``counted_at`` and the horizon. At most ``MAX_PENDING`` events wait per key; beyond that
the oldest settle early. Transfers are remembered (bounded) like settled ids: a closed one until
the horizon is one lateness window past its last event, an expired one one more timeout past
its deadline (a receipt after the expiry is still recognised as its receipt), a receipt still
waiting for its notice past ``received_at + transfer_timeout_ms``. So a notice
redelivered after its transfer was received and forgotten (a TRANSFER_OUT replayed by offset
more than two lateness windows of the destination's stream time after the receipt) opens it
again, until its deadline; a notice arriving after its receipt was forgotten expires at once
unless it was shipped after that receipt in event time. A ``transfer_id`` names one shipment of
a sku to a destination: two TRANSFER_OUTs of the same id and sku add up while it is open.
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
DEFAULT_TRANSFER_TIMEOUT_MS = 14 * 86_400_000  # INVSYNC_TRANSFER_TIMEOUT_MS
# WMS movements that are demand (a DC's sales): they feed the velocity like POS sales do
DEMAND_MOVEMENTS = frozenset({"PICK", "SHIP"})


class Outcome(StrEnum):
    APPLIED = "applied"
    DUPLICATE = "duplicate"
    LATE = "late"


class Transfer(NamedTuple):
    """One transfer into this location, as far as its events told us (immutable).

    ``shipped_at`` is None until a shipment notice is applied, ``received_at`` until a receipt
    is; both are the earliest of their kind. Open (in transit) = shipped, not received, not
    expired. Closed = shipped and received. ``expired``: the deadline passed before a receipt.
    """

    transfer_id: str
    shipped: int = 0  # units of its shipment notices
    shipped_at: int | None = None
    received: int = 0  # units of its receipts (TRANSFER_IN here)
    received_at: int | None = None
    expired: bool = False

    @property
    def in_transit(self) -> int:
        """Units in transit: all shipped while open, else 0."""
        open_ = self.shipped_at is not None and self.received_at is None and not self.expired
        return self.shipped if open_ else 0

    @property
    def closed(self) -> bool:
        return self.shipped_at is not None and self.received_at is not None


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
    in_transit: int = 0  # units of open transfers into this location (see Transfer)
    transfers: tuple[Transfer, ...] = ()  # open and recently ended, sorted by transfer_id

    @property
    def last_sighting(self) -> int | None:
        """When the stock was last seen there: the last sale (or pick) or count; None: never."""
        if self.last_sale_at is None or self.last_count_at is None:
            return self.last_count_at if self.last_sale_at is None else self.last_sale_at
        return max(self.last_sale_at, self.last_count_at)


def _book_transfer(
    ledger: Ledger, transfer_id: str, *, shipped: int = 0, received: int = 0, at: int
) -> tuple[int, tuple[Transfer, ...]]:
    """(in_transit, transfers) after a notice (``shipped`` > 0) or a receipt (``received``)."""
    transfers = ledger.transfers
    index, entry = None, Transfer(transfer_id)
    for i, known in enumerate(transfers):
        if known.transfer_id == transfer_id:
            index, entry = i, known
            break
    if shipped:
        first = at if entry.shipped_at is None else min(entry.shipped_at, at)
        booked = entry._replace(shipped=entry.shipped + shipped, shipped_at=first)
    else:
        first = at if entry.received_at is None else min(entry.received_at, at)
        booked = entry._replace(received=entry.received + received, received_at=first)
    in_transit = ledger.in_transit - entry.in_transit + booked.in_transit
    if index is None:
        return in_transit, tuple(sorted((*transfers, booked)))
    return in_transit, (*transfers[:index], booked, *transfers[index + 1 :])


def apply(ledger: Ledger, event: StockEvent, *, late: bool = False) -> Ledger:
    """Ledger after one event, with the as-of semantics of counts (a count says nothing about
    reservations: a reserved delta only changes ``reserved``; nor about units in transit: a
    shipment notice or a receipt changes the transfer it names, whatever the counts)."""
    if event.kind is Kind.TRANSIT:
        in_transit, transfers = _book_transfer(
            ledger, event.transfer_id, shipped=event.quantity, at=event.effective_at
        )
        return ledger._replace(
            in_transit=in_transit,
            transfers=transfers,
            applied=ledger.applied + 1,
            late=ledger.late + late,
            as_of=max(ledger.as_of, event.effective_at),
        )
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
    in_transit, transfers = ledger.in_transit, ledger.transfers
    if event.transfer_id and event.ref == "TRANSFER_IN" and event.kind is Kind.MOVEMENT:
        in_transit, transfers = _book_transfer(
            ledger, event.transfer_id, received=event.quantity, at=event.effective_at
        )
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
                  first_sale, last_sale, ledger.reserved, selling, in_transit,
                  transfers)  # fmt: skip


EMPTY_LEDGER = Ledger()


def transfer_deadline(ledger: Ledger, timeout_ms: int) -> int | None:
    """The earliest deadline (shipped_at + timeout) of the ledger's open transfers, or None."""
    if not ledger.in_transit:
        return None
    return min(
        t.shipped_at + timeout_ms
        for t in ledger.transfers
        if t.in_transit and t.shipped_at is not None
    )


def expire_transfers(ledger: Ledger, before: int, timeout_ms: int) -> tuple[Ledger, list[Transfer]]:
    """The ledger with every open transfer whose deadline is < ``before`` expired (each one a
    derived event: ``applied`` + 1, ``as_of`` up to its deadline), and those transfers."""
    deadline = transfer_deadline(ledger, timeout_ms)
    if deadline is None or deadline >= before:
        return ledger, []
    ended: list[Transfer] = []
    kept: list[Transfer] = []
    as_of, in_transit = ledger.as_of, ledger.in_transit
    for entry in ledger.transfers:
        if entry.in_transit and entry.shipped_at is not None:
            due = entry.shipped_at + timeout_ms
            if due < before:
                entry = entry._replace(expired=True)
                ended.append(entry)
                as_of = max(as_of, due)
                in_transit -= entry.shipped
        kept.append(entry)
    expired = ledger._replace(
        in_transit=in_transit, transfers=tuple(kept), applied=ledger.applied + len(ended),
        as_of=as_of,
    )  # fmt: skip
    return expired, ended


def forget_transfers(ledger: Ledger, before: int, timeout_ms: int) -> tuple[Ledger, list[Transfer]]:
    """The ledger without the transfers nothing can change any more (see the module
    docstring): closed ones whose last event, expired ones whose ``deadline + timeout``, and
    receipts without a notice whose ``received_at + timeout`` is < ``before``; and the receipts
    so forgotten (their notice never came)."""
    if not ledger.transfers:
        return ledger, []
    kept: list[Transfer] = []
    unshipped: list[Transfer] = []
    for t in ledger.transfers:
        if t.shipped_at is not None and t.received_at is not None:
            last = max(t.shipped_at, t.received_at)
        elif t.expired and t.shipped_at is not None:  # its receipt may still come: recognised
            last = t.shipped_at + 2 * timeout_ms
        elif t.received_at is not None:  # a receipt waiting for its notice
            last = t.received_at + timeout_ms
            if last < before:
                unshipped.append(t)
        else:  # open: it expires first
            last = before
        if last >= before:
            kept.append(t)
    if len(kept) == len(ledger.transfers):
        return ledger, []
    return ledger._replace(transfers=tuple(kept)), unshipped


class EndedTransfer(NamedTuple):
    """A transfer that ended on the settled ledger, for the caller to count: ``outcome`` is
    ``received`` (in full), ``short``, ``over`` (closed by a receipt, or by a notice finding its
    receipt), ``expired`` (not received by its deadline), or ``unshipped`` (a receipt whose
    notice never came, forgotten). ``lost`` is the units shipped and not received: the
    difference of a short receipt, everything shipped of an expired transfer."""

    transfer: Transfer
    outcome: str

    @property
    def lost(self) -> int:
        if self.outcome == "expired":
            return self.transfer.shipped
        if self.outcome == "short":
            return self.transfer.shipped - self.transfer.received
        return 0


def _closed_by(before: Ledger, after: Ledger, transfer_id: str) -> Transfer | None:
    """The transfer ``transfer_id`` if applying one event closed it (not already closed or
    expired before), else None."""
    was = next((t for t in before.transfers if t.transfer_id == transfer_id), None)
    if was is not None and (was.closed or was.expired):
        return None
    now = next((t for t in after.transfers if t.transfer_id == transfer_id), None)
    return now if now is not None and now.closed and not now.expired else None


def _outcome(transfer: Transfer) -> str:
    if transfer.received == transfer.shipped:
        return "received"
    return "short" if transfer.received < transfer.shipped else "over"


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
    last_sighting_at: int | None = None  # the last sale or count before it: the stock was there


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
    sighted = before.last_sighting
    sighted = None if sighted is None else min(sighted, event.effective_at)
    return SettledCount(event, before.on_hand, event.quantity - before.on_hand,
                        before.moved_since_count, before.last_count_at, sighted)  # fmt: skip


class OpenPosition:
    """A position while events fold into it: mutable, with an index of the ids it has seen and
    the current view kept up to date when events arrive in order.

    :meth:`close` returns the position to store and leaves this object equal to
    ``OpenPosition(closed)``, so a caller may keep it open across batches (a cache) instead of
    reopening the stored value. The cost per event is O(log n) plus a list insert, not a copy.
    Counts that settle are collected in ``settled_counts``, ERP snapshots that settle in
    ``drifts``, transfers that end (received, expired, or a receipt forgotten without its notice)
    in ``ended_transfers``, and ERP deltas of windows that complete in ``netting.deltas``, for
    the caller to take. Each is reported once, when it happens on the settled ledger.
    """

    __slots__ = ("_view", "drifts", "ended_transfers", "horizon", "ids", "netting", "pending",
                 "settled", "settled_counts", "settled_ids", "stream_time",
                 "transfer_timeout_ms")  # fmt: skip

    def __init__(
        self,
        position: Position,
        net_window_ms: int = DEFAULT_WINDOW_MS,
        transfer_timeout_ms: int = DEFAULT_TRANSFER_TIMEOUT_MS,
    ) -> None:
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
        self.ended_transfers: list[EndedTransfer] = []
        self.transfer_timeout_ms = transfer_timeout_ms
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
            elif event.transfer_id:
                self._note_closed(before, self.settled, event)
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
        """Move the horizon to ``watermark - lateness`` and settle what fell behind it, with the
        transfers whose deadline it passed expiring in event-time order among those events (the
        view does not change but for those expiries: settling applies the same events in the
        same order)."""
        if watermark > self.stream_time:
            self.stream_time = watermark
        horizon = max(self.horizon, watermark - lateness_ms)
        pending = self.pending
        if len(pending) > MAX_PENDING:
            horizon = max(horizon, pending[len(pending) - MAX_PENDING].effective_at)
        self.horizon = horizon
        cut = 0
        settled = self.settled
        expired = False
        while cut < len(pending) and pending[cut].effective_at < horizon:
            event = pending[cut]
            if settled.in_transit:  # a deadline at or before the event passes first
                settled, hit = self._expire(settled, event.effective_at + 1)
                expired = expired or hit
            before, settled = settled, apply(settled, event)
            if event.kind is Kind.COUNT and (counted := _settled_count(before, settled, event)):
                self.settled_counts.append(counted)
            elif event.kind is Kind.SNAPSHOT:  # every event before it is applied: as of its time
                self.drifts.append(Drift(event, before.on_hand, exact=True))
            elif event.transfer_id:
                self._note_closed(before, settled, event)
            self.netting.settled(event, settled.on_hand - before.on_hand, late=False)
            self.settled_ids.append((event.source, event.event_id, event.effective_at))
            cut += 1
        if settled.in_transit:
            settled, hit = self._expire(settled, horizon)
            expired = expired or hit
        if cut or expired:
            self.settled = settled
            del pending[:cut]
        if expired:
            self._view = None
        self.netting.advance(horizon)

    def _expire(self, ledger: Ledger, before: int) -> tuple[Ledger, bool]:
        """``ledger`` with the transfers due before ``before`` expired (reported)."""
        ledger, ended = expire_transfers(ledger, before, self.transfer_timeout_ms)
        self.ended_transfers.extend(EndedTransfer(t, "expired") for t in ended)
        return ledger, bool(ended)

    def _note_closed(self, before: Ledger, after: Ledger, event: StockEvent) -> None:
        closed = _closed_by(before, after, event.transfer_id)
        if closed is not None:
            self.ended_transfers.append(EndedTransfer(closed, _outcome(closed)))

    def close(self, *, lateness_ms: int) -> Position:
        """The position to store; forgets ids settled more than one lateness window ago, and
        the transfers nothing can change any more (:func:`forget_transfers`)."""
        forget_before = self.horizon - lateness_ms
        ids = self.settled_ids
        if any(at < forget_before for _, _, at in ids):
            kept = [i for i in ids if i[2] >= forget_before]
            self.ids.difference_update((src, eid) for src, eid, at in ids if at < forget_before)
            self.settled_ids = ids = kept
        if self.settled.transfers:
            settled, unshipped = forget_transfers(
                self.settled, forget_before, self.transfer_timeout_ms
            )
            if settled is not self.settled:
                self.settled, self._view = settled, None
                self.ended_transfers.extend(EndedTransfer(t, "unshipped") for t in unshipped)
        return Position(self.settled, self.horizon, self.stream_time, tuple(self.pending),
                        tuple(ids), self.netting.open)  # fmt: skip


def fold(
    position: Position,
    event: StockEvent,
    *,
    lateness_ms: int,
    watermark: int,
    transfer_timeout_ms: int = DEFAULT_TRANSFER_TIMEOUT_MS,
) -> tuple[Position, Outcome]:
    """One event into a closed position (convenience for tests; batches use OpenPosition)."""
    open_position = OpenPosition(position, transfer_timeout_ms=transfer_timeout_ms)
    outcome = open_position.fold(event, lateness_ms=lateness_ms, watermark=watermark)
    return open_position.close(lateness_ms=lateness_ms), outcome


# --- persistence: a compact, JSON-friendly form (the table's value) -----------------------

# 2: + sales history (units_sold, first/last sale); 3: + reserved; 4: + netting;
# 5: + in transit (Ledger.in_transit, transfers; StockEvent.transfer_id, counterpart)
_FORMAT = 5
_READS = frozenset({1, 2, 3, 4, _FORMAT})  # older ledgers lack the newer fields: defaults apply
_LEDGER_FIELDS = len(Ledger._fields)
_EVENT_CORE = 8  # StockEvent fields up to ref; the transfer fields only when set


_KINDS = {kind.value: kind for kind in Kind}


def to_primitive(position: Position) -> list[Any]:
    pending = position.pending
    settled: list[Any] = list(position.settled)
    settled[-1] = [list(t) for t in position.settled.transfers]
    return [
        _FORMAT,
        settled,
        position.horizon,
        position.stream_time,
        # kind is a str enum: serialised as its value; the transfer fields only when set
        [e[:_EVENT_CORE] if not (e.transfer_id or e.counterpart) else tuple(e) for e in pending],
        [list(i) for i in position.settled_ids],
        None if position.netting is None else [position.netting.start, position.netting.reasons],
    ]


def from_primitive(data: list[Any]) -> Position:
    fmt, s, horizon, stream_time, pending, ids, *rest = data
    netting = rest[0] if rest else None
    if fmt not in _READS:
        raise ValueError(f"unknown position format {fmt}")
    kinds = _KINDS
    if len(s) == _LEDGER_FIELDS:
        s = [*s[:-1], tuple(Transfer(*t) for t in s[-1])]
    events = []
    for e in pending:
        if len(e) == _EVENT_CORE:  # the common case, unpacked (the fastest way here)
            src, eid, sku, loc, kind, at, qty, ref = e
            events.append(StockEvent(src, eid, sku, loc, kinds[kind], at, qty, ref))
        else:
            events.append(StockEvent(e[0], e[1], e[2], e[3], kinds[e[4]], *e[5:]))
    return Position(
        settled=Ledger(*s),
        horizon=horizon,
        stream_time=stream_time,
        pending=tuple(events),
        settled_ids=tuple((src, eid, at) for src, eid, at in ids),
        netting=None
        if netting is None
        else OpenWindow(netting[0], tuple((reason, units) for reason, units in netting[1])),
    )
