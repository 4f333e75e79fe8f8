"""The lifecycle of one reservation (an order hold) and the reserved deltas it emits.

A hold is opened by ``created`` and ended exactly once: by ``released``, ``committed``, ``expired``
or by stream time reaching its ``expires_at`` (:func:`expire_due`). Opening emits ``+quantity``
for its (sku, location), ending emits ``-quantity``; the position fold adds them to *reserved*.
Nothing here knows about Kafka; the caller dead-letters what is rejected.

Guarantees (each is a property test in ``tests/unit/test_reservations.py``):

* **No leak.** Once stream time reaches ``expires_at`` of an open hold, :func:`expire_due` ends it.
* **Never negative.** Each hold emits ``+q`` once and ``-q`` at most once, after it, so per
  (sku, location) the deltas sum to the quantities of the open holds.
* **Idempotent.** An event whose ``(source, event_id)`` the reservation already accounted for is a
  ``duplicate``; a rejected event changes nothing.
* **Event time decides the end.** A release or commit dated at or after ``expires_at`` is too late
  even when stream time has not expired the hold yet; one dated before it takes the place of an
  expiry that stream time noticed first (no delta: the units were already released).

Use, per event: :func:`apply_reservation`, store the state, ``ExpiryIndex.track`` it, then advance
stream time and pass the holds ``ExpiryIndex.pop_due`` names to :func:`expire_due`. Expire
*after* applying, so a ``created`` that arrives already due is ended in the same batch.

Limits: two explicit ends that disagree (a commit, then a release) are decided by arrival; the
second is rejected. An end that arrives before its ``created`` is rejected and the hold runs to
expiry. The quantity of an end event is not used (no partial release). A reservation forgotten by
:func:`forget` is unknown again: a redelivered ``created`` reopens it, already due, so the next
:func:`expire_due` ends it (``+q`` then ``-q``).
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any

from state.events import KEY_SEPARATOR, InvalidEvent, millis_field, text_field

UNKNOWN_RESERVATION = "unknown_reservation"
RESERVATION_ENDED = "reservation_ended"
CONFLICTING_CREATE = "conflicting_create"
CONFLICTING_END = "conflicting_end"  # an end event naming another sku or location than the hold


class Action(StrEnum):
    CREATED = "created"
    RELEASED = "released"
    COMMITTED = "committed"
    EXPIRED = "expired"


_ACTIONS = frozenset(a.value for a in Action)


class Status(StrEnum):
    OPEN = "open"
    COMMITTED = "committed"
    RELEASED = "released"
    EXPIRED = "expired"


class Outcome(StrEnum):
    APPLIED = "applied"
    DUPLICATE = "duplicate"
    ALREADY_EXPIRED = (
        "already_expired"  # an explicit expiry of an expired hold: accounted, no delta
    )
    REJECTED = "rejected"  # dead-letter with Step.reason


@dataclass(frozen=True, slots=True)
class ReservationEvent:
    """One reservation event, normalised; times are event time, UTC millis."""

    source: str
    event_id: str
    reservation_id: str
    action: Action
    sku: str
    location: str
    occurred_at: int
    quantity: int = 0
    expires_at: int | None = None  # set (and > occurred_at) on created
    channel: str | None = None

    @property
    def identity(self) -> tuple[str, str]:
        return (self.source, self.event_id)


def reservation_from_record(record: dict[str, Any]) -> ReservationEvent:
    """A decoded ``reservation_event`` record, checked; raises :class:`InvalidEvent`."""
    ids = {
        f: text_field(record, f)
        for f in ("source", "event_id", "reservation_id", "sku", "location")
    }
    raw_action = record.get("action")
    if not isinstance(raw_action, str) or raw_action not in _ACTIONS:
        raise InvalidEvent("unknown_action", f"action {raw_action!r}")
    action = Action(raw_action)
    occurred_at = millis_field(record.get("occurred_at"), "occurred_at")
    quantity = record.get("quantity", 0)
    if not isinstance(quantity, int) or isinstance(quantity, bool) or quantity < 0:
        raise InvalidEvent("invalid_quantity", f"quantity must be an int >= 0: {quantity!r}")
    raw_expiry = record.get("expires_at")
    expires_at = None if raw_expiry is None else millis_field(raw_expiry, "expires_at")
    channel = record.get("channel")
    if channel is not None and not isinstance(channel, str):
        raise InvalidEvent("invalid_field", f"channel is not a string: {channel!r}")
    if action is Action.CREATED:
        if quantity == 0:
            raise InvalidEvent("invalid_quantity", "created with quantity 0")
        if expires_at is None:
            raise InvalidEvent("invalid_field", "created without expires_at")
        if expires_at <= occurred_at:
            raise InvalidEvent(
                "invalid_field", f"expires_at {expires_at} is not after occurred_at {occurred_at}"
            )
    return ReservationEvent(
        **ids,
        action=action,
        occurred_at=occurred_at,
        quantity=quantity,
        expires_at=expires_at,
        channel=channel,
    )


@dataclass(frozen=True, slots=True)
class Reservation:
    """One hold, the table's value per reservation_id. ``event_ids`` (sorted) are the events it
    accounted for; ``ended_at`` is the event time it ended (``expires_at`` for an expiry)."""

    reservation_id: str
    sku: str
    location: str
    quantity: int
    created_at: int
    expires_at: int
    status: Status = Status.OPEN
    ended_at: int | None = None
    channel: str | None = None
    event_ids: tuple[tuple[str, str], ...] = ()

    @property
    def is_open(self) -> bool:
        return self.status is Status.OPEN

    @property
    def expired_by_time(self) -> bool:
        """Ended because its expiry passed, not by an end dated before the expiry."""
        return self.status is Status.EXPIRED and self.ended_at == self.expires_at


@dataclass(frozen=True, slots=True)
class ReservedDelta:
    """A change of reserved units at (sku, location); ``delta_id`` is deterministic
    (``<reservation_id>:open`` / ``<reservation_id>:end``), ``at`` its event time."""

    delta_id: str
    sku: str
    location: str
    quantity: int
    at: int

    @property
    def key(self) -> str:
        return f"{self.sku}{KEY_SEPARATOR}{self.location}"


@dataclass(frozen=True, slots=True)
class Step:
    """The reservation after one event or expiry, its reserved delta if any, and the outcome.
    ``state`` is the value to store (``None``: nothing to store); ``reason`` is set if rejected."""

    state: Reservation | None
    outcome: Outcome
    delta: ReservedDelta | None = None
    reason: str = ""


def _accounted(current: Reservation, event: ReservationEvent) -> tuple[tuple[str, str], ...]:
    return tuple(sorted({*current.event_ids, event.identity}))


def _end(
    current: Reservation, status: Status, ended_at: int, event: ReservationEvent | None
) -> Step:
    ids = current.event_ids if event is None else _accounted(current, event)
    state = replace(current, status=status, ended_at=ended_at, event_ids=ids)
    delta = ReservedDelta(
        f"{current.reservation_id}:end", current.sku, current.location, -current.quantity, ended_at
    )
    return Step(state, Outcome.APPLIED, delta)


def _create(current: Reservation | None, event: ReservationEvent) -> Step:
    assert event.expires_at is not None, "reservation_from_record checks created events"
    if current is None:
        state = Reservation(
            event.reservation_id, event.sku, event.location, event.quantity, event.occurred_at,
            event.expires_at, channel=event.channel, event_ids=(event.identity,),
        )  # fmt: skip
        delta = ReservedDelta(
            f"{event.reservation_id}:open", event.sku, event.location, event.quantity,
            event.occurred_at,
        )  # fmt: skip
        return Step(state, Outcome.APPLIED, delta)
    same = (current.sku, current.location, current.quantity, current.expires_at) == (
        event.sku, event.location, event.quantity, event.expires_at
    )  # fmt: skip
    if same:  # the same hold created again under another event id
        return Step(current, Outcome.DUPLICATE)
    return Step(current, Outcome.REJECTED, reason=CONFLICTING_CREATE)


def apply_reservation(current: Reservation | None, event: ReservationEvent) -> Step:
    """The reservation after ``event``; ``current`` is the stored value for its reservation_id."""
    if current is not None and event.identity in current.event_ids:
        return Step(current, Outcome.DUPLICATE)
    if event.action is Action.CREATED:
        return _create(current, event)
    if current is None:
        return Step(None, Outcome.REJECTED, reason=UNKNOWN_RESERVATION)
    if (event.sku, event.location) != (current.sku, current.location):
        return Step(current, Outcome.REJECTED, reason=CONFLICTING_END)
    in_time = event.occurred_at < current.expires_at
    if current.is_open:
        if event.action is Action.EXPIRED:
            return _end(current, Status.EXPIRED, min(event.occurred_at, current.expires_at), event)
        if not in_time:  # the hold ended at expires_at; expire_due will say so
            return Step(current, Outcome.REJECTED, reason=RESERVATION_ENDED)
        return _end(current, Status(event.action.value), event.occurred_at, event)
    explicit_expiry = event.action is Action.EXPIRED
    if current.expired_by_time and in_time:  # ended before stream time noticed; units already out
        state = replace(current, status=Status(event.action.value), ended_at=event.occurred_at,
                        event_ids=_accounted(current, event))  # fmt: skip
        return Step(state, Outcome.ALREADY_EXPIRED if explicit_expiry else Outcome.APPLIED)
    if explicit_expiry and current.status is Status.EXPIRED:
        return Step(replace(current, event_ids=_accounted(current, event)), Outcome.ALREADY_EXPIRED)
    return Step(current, Outcome.REJECTED, reason=RESERVATION_ENDED)


def expire_due(holds: Iterable[Reservation], stream_time: int) -> list[Step]:
    """End every open hold with ``expires_at <= stream_time``, in expiry order."""
    due = {h.reservation_id: h for h in holds if h.is_open and h.expires_at <= stream_time}
    ordered = sorted(due.values(), key=lambda h: (h.expires_at, h.reservation_id))
    return [_end(h, Status.EXPIRED, h.expires_at, None) for h in ordered]


def forget(reservation: Reservation, stream_time: int, retain_ms: int) -> bool:
    """Whether an ended reservation may leave the table: its end and its expiry are both at least
    ``retain_ms`` behind stream time. Until then duplicates and late ends are recognised."""
    if reservation.ended_at is None:
        return False
    return stream_time - max(reservation.ended_at, reservation.expires_at) >= retain_ms


class ExpiryIndex:
    """Open holds by ``expires_at``, for one worker's partitions: a heap cleaned lazily.

    O(log n) per hold added or popped; ending a hold early only drops it from ``live`` and its heap
    entry is skipped when it surfaces. Not persisted: rebuild it from the table on start and after
    each rebalance (:func:`rebuild_index`). It only names candidates; :func:`expire_due` decides.
    """

    __slots__ = ("_heap", "_live")

    def __init__(self) -> None:
        self._heap: list[tuple[int, str]] = []
        self._live: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._live)

    def track(self, reservation: Reservation) -> None:
        """Index an open hold, drop an ended one."""
        if not reservation.is_open:
            self.discard(reservation.reservation_id)
        elif self._live.get(reservation.reservation_id) != reservation.expires_at:
            self._live[reservation.reservation_id] = reservation.expires_at
            heapq.heappush(self._heap, (reservation.expires_at, reservation.reservation_id))

    def discard(self, reservation_id: str) -> None:
        self._live.pop(reservation_id, None)
        if len(self._heap) > 2 * len(self._live) + 64:
            self._heap = [(at, rid) for rid, at in self._live.items()]
            heapq.heapify(self._heap)

    def next_due(self) -> int | None:
        """The earliest ``expires_at`` of an indexed hold, if any."""
        heap = self._heap
        while heap and self._live.get(heap[0][1]) != heap[0][0]:
            heapq.heappop(heap)
        return heap[0][0] if heap else None

    def pop_due(self, stream_time: int) -> list[str]:
        """Reservation ids with ``expires_at <= stream_time``, removed from the index."""
        due: list[str] = []
        heap = self._heap
        while heap and heap[0][0] <= stream_time:
            at, rid = heapq.heappop(heap)
            if self._live.get(rid) == at:
                del self._live[rid]
                due.append(rid)
        return due


def rebuild_index(reservations: Iterable[Reservation]) -> ExpiryIndex:
    """The index of the open holds among ``reservations`` (the table's values)."""
    index = ExpiryIndex()
    for reservation in reservations:
        if reservation.is_open:
            index.track(reservation)
    return index


# --- persistence: a compact, JSON-friendly form (the table's value) -----------------------

_FORMAT = 1


def to_primitive(reservation: Reservation) -> list[Any]:
    r = reservation
    return [_FORMAT, r.reservation_id, r.sku, r.location, r.quantity, r.created_at, r.expires_at,
            r.status.value, r.ended_at, r.channel, [list(i) for i in r.event_ids]]  # fmt: skip


def from_primitive(data: list[Any]) -> Reservation:
    fmt, rid, sku, location, quantity, created_at, expires_at, status, ended_at, channel, ids = data
    if fmt != _FORMAT:
        raise ValueError(f"unknown reservation format {fmt}")
    return Reservation(rid, sku, location, quantity, created_at, expires_at, Status(status),
                       ended_at, channel, tuple((src, eid) for src, eid in ids))  # fmt: skip


def deltas_of(reservation: Reservation) -> list[ReservedDelta]:
    """Every reserved delta ``reservation`` has caused so far (its open, and its end once
    ended). Re-emitting them is harmless downstream, where ``delta_id`` is the idempotency key:
    this is how a redelivered event whose effects may not have been delivered is made good."""
    rid, sku, location, quantity = (
        reservation.reservation_id, reservation.sku, reservation.location, reservation.quantity,
    )  # fmt: skip
    deltas = [ReservedDelta(f"{rid}:open", sku, location, quantity, reservation.created_at)]
    if not reservation.is_open:
        ended_at = (
            reservation.ended_at if reservation.ended_at is not None else reservation.expires_at
        )
        deltas.append(ReservedDelta(f"{rid}:end", sku, location, -quantity, ended_at))
    return deltas
