"""The stock position of one sku at one location, and the fold that applies events to it.

Guarantees (each is a property test in ``tests/unit``):

* **Order independence within the lateness bound.** Events whose ``effective_at`` is not older
  than the key's horizon (watermark - lateness) wait in ``pending`` in event-time order, so the
  view does not depend on the order they arrived in. Older ones are applied at once on top of the
  settled ledger and counted as ``late``; they are never dropped.
* **As-of counts.** A count at ``t`` replaces recorded on hand as of ``t``; a movement before ``t``
  that arrives after the count is not applied again (it adjusts the count's discrepancy instead);
  movements at or after ``t`` apply on top.
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
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any

from state.events import Kind, StockEvent

NEVER = -(2**62)
MAX_PENDING = 5_000


class Outcome(StrEnum):
    APPLIED = "applied"
    DUPLICATE = "duplicate"
    LATE = "late"


@dataclass(frozen=True, slots=True)
class Ledger:
    """Recorded stock after a run of events, with what a count told us last."""

    on_hand: int = 0
    last_count_at: int | None = None
    last_count_id: str = ""
    last_discrepancy: int | None = None  # counted - recorded, as of last_count_at
    moved_since_count: int = 0  # units moved in either direction since the last count
    applied: int = 0  # distinct events accounted for; the position's version
    late: int = 0  # of which applied after the lateness bound
    as_of: int = NEVER  # newest effective_at accounted for


def apply(ledger: Ledger, event: StockEvent, *, late: bool = False) -> Ledger:
    """Ledger after one event, with the as-of semantics of counts."""
    applied, n_late = ledger.applied + 1, ledger.late + late
    as_of = max(ledger.as_of, event.effective_at)
    superseded = ledger.last_count_at is not None and event.effective_at < ledger.last_count_at
    if event.kind is Kind.COUNT:
        if superseded:  # an older count than the one held: history, not news
            return replace(ledger, applied=applied, late=n_late, as_of=as_of)
        return Ledger(
            on_hand=event.quantity,
            last_count_at=event.effective_at,
            last_count_id=event.ref,
            last_discrepancy=event.quantity - ledger.on_hand,
            moved_since_count=0,
            applied=applied,
            late=n_late,
            as_of=as_of,
        )
    if superseded:  # already inside the count; recorded-as-of-count would have included it
        discrepancy = (ledger.last_discrepancy or 0) - event.quantity
        return replace(
            ledger, last_discrepancy=discrepancy, applied=applied, late=n_late, as_of=as_of
        )
    return replace(
        ledger,
        on_hand=ledger.on_hand + event.quantity,
        moved_since_count=ledger.moved_since_count + abs(event.quantity),
        applied=applied,
        late=n_late,
        as_of=as_of,
    )


@dataclass(frozen=True, slots=True)
class Position:
    """Settled ledger + the events still inside the lateness window, in event-time order."""

    settled: Ledger = Ledger()
    horizon: int = NEVER  # events with effective_at < horizon are settled
    stream_time: int = NEVER  # the newest watermark this position was advanced to
    pending: tuple[StockEvent, ...] = ()
    settled_ids: tuple[tuple[str, str, int], ...] = ()  # (source, event_id, effective_at)

    def view(self) -> Ledger:
        """The current ledger: settled, with the pending events applied in order."""
        ledger = self.settled
        for event in self.pending:
            ledger = apply(ledger, event)
        return ledger

    @property
    def version(self) -> int:
        return self.settled.applied + len(self.pending)

    def seen(self, event: StockEvent) -> bool:
        ident = event.identity
        return any(e.identity == ident for e in self.pending) or any(
            (s, i) == ident for s, i, _ in self.settled_ids
        )


def fold(
    position: Position, event: StockEvent, *, lateness_ms: int, watermark: int
) -> tuple[Position, Outcome]:
    """Apply one event.

    ``watermark`` is the event time up to which the key's partition has seen *every* input
    (the minimum over its input streams that still have data waiting): the horizon follows it,
    never one stream alone, so a stream consumed ahead of another cannot make the other late.
    """
    if position.seen(event):
        return position, Outcome.DUPLICATE
    if event.effective_at < position.horizon:
        settled = apply(position.settled, event, late=True)
        ids = (*position.settled_ids, (event.source, event.event_id, event.effective_at))
        position = replace(position, settled=settled, settled_ids=ids)
        outcome = Outcome.LATE
    else:
        pending = list(position.pending)
        insort(pending, event, key=StockEvent.order_key)
        position = replace(position, pending=tuple(pending))
        outcome = Outcome.APPLIED
    return advance(position, watermark, lateness_ms=lateness_ms), outcome


def advance(position: Position, stream_time: int, *, lateness_ms: int) -> Position:
    """Move the horizon to ``stream_time - lateness`` and settle what fell behind it."""
    horizon = max(position.horizon, stream_time - lateness_ms)
    pending = position.pending
    if len(pending) > MAX_PENDING:
        horizon = max(horizon, pending[len(pending) - MAX_PENDING].effective_at)
    if horizon == position.horizon and stream_time <= position.stream_time:
        return position
    settled, ids = position.settled, list(position.settled_ids)
    cut = 0
    while cut < len(pending) and pending[cut].effective_at < horizon:
        settled = apply(settled, pending[cut])
        ids.append((pending[cut].source, pending[cut].event_id, pending[cut].effective_at))
        cut += 1
    forget_before = horizon - lateness_ms
    return Position(
        settled=settled,
        horizon=horizon,
        stream_time=max(position.stream_time, stream_time),
        pending=pending[cut:],
        settled_ids=tuple(i for i in ids if i[2] >= forget_before),
    )


# --- persistence: a compact, JSON-friendly form (the table's value) -----------------------

_FORMAT = 1


def to_primitive(position: Position) -> list[Any]:
    s = position.settled
    return [
        _FORMAT,
        [
            s.on_hand,
            s.last_count_at,
            s.last_count_id,
            s.last_discrepancy,
            s.moved_since_count,
            s.applied,
            s.late,
            s.as_of,
        ],
        position.horizon,
        position.stream_time,
        [
            [
                e.source,
                e.event_id,
                e.sku,
                e.location,
                e.kind.value,
                e.effective_at,
                e.quantity,
                e.ref,
            ]
            for e in position.pending
        ],
        [list(i) for i in position.settled_ids],
    ]


def from_primitive(data: list[Any]) -> Position:
    fmt, s, horizon, stream_time, pending, ids = data
    if fmt != _FORMAT:
        raise ValueError(f"unknown position format {fmt}")
    return Position(
        settled=Ledger(*s),
        horizon=horizon,
        stream_time=stream_time,
        pending=tuple(
            StockEvent(src, eid, sku, loc, Kind(kind), at, qty, ref)
            for src, eid, sku, loc, kind, at, qty, ref in pending
        ),
        settled_ids=tuple((src, eid, at) for src, eid, at in ids),
    )
