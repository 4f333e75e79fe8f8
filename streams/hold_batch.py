"""Fold reservation events into the reservations table and emit reserved deltas by sku|location.

Reservation events are keyed by ``reservation_id``; the table (one value per reservation) lives
on those partitions. Every change of reserved units becomes a :class:`ReservedDelta` on
``invsync.reserved-deltas``, keyed by sku|location, which the position fold applies (its
``delta_id`` is the idempotency key there). The pure rules are :mod:`state.reservations`.

Stream time and expiry: each partition's stream time is the newest ``occurred_at`` seen on it;
after every batch, holds whose ``expires_at`` it passed are expired (an index by expiry, rebuilt
from the table when a partition is first seen in a consumer generation). A partition without
events for ``INVSYNC_RESERVATION_IDLE_S`` has its stream time advanced by the wall clock since
its last event (:meth:`HoldFolder.advance_idle`, run by a timer), so an idle client never leaks
a hold. Replays of the same input reach the same table; wall-clock advancement only moves expiry
earlier than a replay would, never changes which deltas exist.

Commit order is the fold's (:mod:`streams.fold_batch`): store writes, then changelog records,
deltas and dead letters on the batch's ticket; events are acked when the ticket completes.
A redelivered event (offset at or below the one stored with its reservation) re-emits the
reservation's deltas, in case the crash came before they were delivered.

Retention: an ended reservation stays in the table until the partition's stream time is
``INVSYNC_RESERVATION_RETAIN_MS`` past its end and its expiry (:func:`state.reservations.forget`);
then it is deleted, with a tombstone on the changelog, so the table holds the open holds and a
week (by default) of ended ones. A duplicate or late end after that is an unknown reservation.

Limits: a partition's stream time after a restart is the newest start or end stored in it.
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import orjson
from faust.types import EventT, TableT

from invsync.settings import Settings
from state.events import InvalidEvent
from state.position import NEVER
from state.reservations import (
    ExpiryIndex,
    Outcome,
    Reservation,
    ReservationEvent,
    ReservedDelta,
    apply_reservation,
    deltas_of,
    expire_due,
    forget,
    from_primitive,
    rebuild_index,
    reservation_from_record,
    to_primitive,
)
from streams import metrics, topics
from streams.codec import Codec, DecodeError
from streams.dead_letters import DeadLetter, dead_letter, send_dead_letters
from streams.delivery import Outputs, Ticket
from streams.fold_batch import owned
from streams.partition_store import PartitionStore


@dataclass
class _Stored:
    reservation: Reservation
    offset: int  # input offset of the last event applied to it (-1: changed by expiry only)
    dirty: bool = False


@dataclass
class _PartitionClock:
    index: ExpiryIndex
    stream_time: int
    last_event_wall: float = field(default_factory=time.monotonic)
    ended: list[tuple[int, str]] = field(default_factory=list)  # heap: (forget at, id)

    def ended_one(self, reservation: Reservation, retain_ms: int) -> None:
        """Remember when ``reservation`` (ended) may be forgotten."""
        if reservation.ended_at is not None:
            at = max(reservation.ended_at, reservation.expires_at) + retain_ms
            heapq.heappush(self.ended, (at, reservation.reservation_id))

    def pop_forgettable(self) -> list[str]:
        """Ids whose retention stream time has passed (candidates: the table decides)."""
        due = []
        while self.ended and self.ended[0][0] <= self.stream_time:
            due.append(heapq.heappop(self.ended)[1])
        return due


class HoldFolder:
    """Reservation events in, reservations table and reserved deltas out; one per worker."""

    def __init__(
        self,
        settings: Settings,
        codec: Codec,
        table: TableT,
        outputs: Outputs,
        dead_letters: str,
    ) -> None:
        self.settings = settings
        self.codec = codec
        self.table = table
        self.store = PartitionStore(table)
        self.outputs = outputs
        self.dead_letters = dead_letters
        self.topic = topics.RESERVATIONS.full_name(settings)
        self.deltas_topic = topics.RESERVED_DELTAS.full_name(settings)
        self.partitions: dict[int, _PartitionClock] = {}
        self.generation: int | None = None

    def _generation(self) -> int:
        return int(self.table.app.consumer_generation_id)

    def _clock(self, partition: int) -> _PartitionClock:
        clock = self.partitions.get(partition)
        if clock is None:
            stored = [_decode_value(v).reservation for _, v in self.store.items(partition)]
            newest = max((r.ended_at or r.created_at for r in stored), default=NEVER)
            clock = self.partitions[partition] = _PartitionClock(rebuild_index(stored), newest)
            for reservation in stored:
                clock.ended_one(reservation, self.settings.reservation_retain_ms)
        return clock

    def process(self, events: Sequence[EventT], ticket: Ticket) -> list[EventT]:
        """Apply ``events``; queue every record they cause on ``ticket``. Returns the events
        that may be acked once the ticket completes."""
        generation = self._generation()
        if generation != self.generation:
            self.partitions.clear()  # a rebalance: rebuild indexes from the (restored) table
            self.generation = generation
        current = owned(self.table.app, events)
        letters: list[DeadLetter] = []
        decoded = [(event, self._decode(event, letters)) for event in current]
        loaded = self._load([(e, r) for e, r in decoded if r is not None])
        outcomes: dict[str, int] = {}
        for event, parsed in decoded:
            if parsed is None:
                outcomes["dead_lettered"] = outcomes.get("dead_lettered", 0) + 1
                continue
            outcome = self._apply(event, parsed, loaded, letters, ticket)
            outcomes[outcome] = outcomes.get(outcome, 0) + 1
        for partition in {e.message.partition for e, _ in decoded}:
            self._expire(partition, loaded, ticket)
        self._write(loaded, ticket)
        send_dead_letters(letters, self.codec, self.outputs, ticket, self.dead_letters)
        for outcome, n in outcomes.items():
            metrics.EVENTS.labels(self.topic, outcome).inc(n)
        if current:
            metrics.SOURCE_LAST_EVENT.labels(self.topic).set(time.time())
        return current

    def advance_idle(self, assigned: set[int], ticket: Ticket) -> None:
        """Advance the stream time of assigned partitions quiet for longer than the idle
        setting by the wall-clock time since their last event, and expire what that passes."""
        if self._generation() != self.generation:
            return  # wait for a batch of the new generation to rebuild the clocks
        idle_s = self.settings.reservation_idle_s
        now = time.monotonic()
        loaded: dict[bytes, tuple[int, _Stored]] = {}
        for partition in assigned:
            clock = self.partitions.get(partition)
            if clock is None or not len(clock.index):
                continue
            quiet = now - clock.last_event_wall
            if quiet >= idle_s and clock.stream_time > NEVER:
                clock.stream_time += int(quiet * 1000)
                clock.last_event_wall = now
                self._expire(partition, loaded, ticket)
        self._write(loaded, ticket)

    def _apply(
        self,
        event: EventT,
        parsed: ReservationEvent,
        loaded: dict[bytes, tuple[int, _Stored]],
        letters: list[DeadLetter],
        ticket: Ticket,
    ) -> str:
        message = event.message
        partition, key = message.partition, parsed.reservation_id.encode()
        clock = self._clock(partition)
        clock.stream_time = max(clock.stream_time, parsed.occurred_at)
        clock.last_event_wall = time.monotonic()
        entry = loaded.get(key)
        stored = entry[1] if entry else None
        if stored is not None and message.offset <= stored.offset:
            for delta in deltas_of(stored.reservation):
                self._emit(delta, ticket)
            return "redelivered"
        step = apply_reservation(stored.reservation if stored else None, parsed)
        if step.outcome is Outcome.REJECTED:
            letters.append(
                dead_letter(
                    step.reason,
                    f"{parsed.action} {parsed.reservation_id}",
                    message.topic,
                    partition,
                    message.offset,
                    message.key,
                    message.value,
                )
            )
            return "dead_lettered"
        if step.state is not None:
            loaded[key] = (partition, _Stored(step.state, message.offset, dirty=True))
            clock.index.track(step.state)
            clock.ended_one(step.state, self.settings.reservation_retain_ms)
        if step.delta is not None:
            self._emit(step.delta, ticket)
            if step.state is not None and step.state.ended_at is not None:
                _observe_age(step.state)
        if step.outcome in (Outcome.DUPLICATE, Outcome.ALREADY_EXPIRED):
            return "duplicate"
        return "applied"

    def _expire(
        self, partition: int, loaded: dict[bytes, tuple[int, _Stored]], ticket: Ticket
    ) -> None:
        clock = self._clock(partition)
        due = [rid.encode() for rid in clock.index.pop_due(clock.stream_time)]
        missing = [key for key in due if key not in loaded]
        for key, value in zip(missing, self.store.get_many(partition, missing), strict=True):
            if value is not None:
                loaded[key] = (partition, _decode_value(value))
        holds = [loaded[key][1].reservation for key in due if key in loaded]
        for step in expire_due(holds, clock.stream_time):
            assert step.state is not None and step.delta is not None
            key = step.state.reservation_id.encode()
            loaded[key] = (partition, _Stored(step.state, loaded[key][1].offset, dirty=True))
            clock.ended_one(step.state, self.settings.reservation_retain_ms)
            self._emit(step.delta, ticket)
            _observe_age(step.state)
        self._forget(partition, loaded, ticket)

    def _forget(
        self, partition: int, loaded: dict[bytes, tuple[int, _Stored]], ticket: Ticket
    ) -> None:
        """Delete the ended reservations of ``partition`` whose retention has passed."""
        clock = self._clock(partition)
        due = [rid.encode() for rid in clock.pop_forgettable()]
        missing = [key for key in due if key not in loaded]
        for key, value in zip(missing, self.store.get_many(partition, missing), strict=True):
            if value is not None:
                loaded[key] = (partition, _decode_value(value))
        retain_ms = self.settings.reservation_retain_ms
        gone = [
            key
            for key in due
            if key in loaded and forget(loaded[key][1].reservation, clock.stream_time, retain_ms)
        ]
        if gone:
            for key in gone:
                del loaded[key]  # not written back by _write
            self.store.delete_many(partition, gone)
            for key in gone:  # tombstones: a restore from the changelog forgets them too
                self.outputs.produce(ticket, self.store.changelog, key, None, partition)

    def _emit(self, delta: ReservedDelta, ticket: Ticket) -> None:
        record = {
            "delta_id": delta.delta_id,
            "reservation_id": delta.delta_id.rpartition(":")[0],
            "sku": delta.sku,
            "location": delta.location,
            "at": delta.at,
            "quantity": delta.quantity,
        }
        value = self.codec.encode(topics.RESERVED_DELTAS, record)
        self.outputs.produce(ticket, self.deltas_topic, delta.key.encode(), value)

    def _load(
        self, valid: list[tuple[EventT, ReservationEvent]]
    ) -> dict[bytes, tuple[int, _Stored]]:
        by_partition: dict[int, set[bytes]] = {}
        for event, parsed in valid:
            by_partition.setdefault(event.message.partition, set()).add(
                parsed.reservation_id.encode()
            )
        loaded: dict[bytes, tuple[int, _Stored]] = {}
        for partition, key_set in by_partition.items():
            keys = sorted(key_set)
            for key, value in zip(keys, self.store.get_many(partition, keys), strict=True):
                if value is not None:
                    loaded[key] = (partition, _decode_value(value))
        return loaded

    def _write(self, loaded: dict[bytes, tuple[int, _Stored]], ticket: Ticket) -> None:
        writes: dict[int, list[tuple[bytes, bytes]]] = {}
        for key, (partition, stored) in loaded.items():
            if stored.dirty:
                value = orjson.dumps({"r": to_primitive(stored.reservation), "o": stored.offset})
                writes.setdefault(partition, []).append((key, value))
        changelog = self.store.changelog
        for partition, items in writes.items():
            self.store.put_many(partition, items)
            for key, value in items:
                self.outputs.produce(ticket, changelog, key, value, partition)

    def _decode(self, event: EventT, letters: list[DeadLetter]) -> ReservationEvent | None:
        message = event.message
        raw_key = message.key if isinstance(message.key, bytes) else None
        raw_value = message.value if isinstance(message.value, bytes) else None
        try:
            parsed = reservation_from_record(self.codec.decode(message.topic, raw_value))
        except (DecodeError, InvalidEvent) as exc:
            reason, detail = exc.reason, exc.detail
        else:
            if raw_key == parsed.reservation_id.encode():
                return parsed
            reason, detail = "key_mismatch", f"key {raw_key!r} is not {parsed.reservation_id!r}"
        letters.append(
            dead_letter(
                reason, detail, message.topic, message.partition, message.offset, raw_key, raw_value
            )
        )
        return None


def _observe_age(ended: Reservation) -> None:
    age_ms = (ended.ended_at if ended.ended_at is not None else ended.expires_at) - ended.created_at
    metrics.RESERVATION_AGE.observe(max(0.0, age_ms / 1000))


def _decode_value(value: bytes) -> _Stored:
    data = orjson.loads(value)
    return _Stored(from_primitive(data["r"]), data["o"])
