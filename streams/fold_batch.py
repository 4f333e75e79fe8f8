"""Fold one batch of input events into the positions table and emit what changed.

The commit order, for every batch:

1. decode each event; what cannot be decoded or validated becomes a dead letter;
2. read the positions the batch touches (one multi-get per partition) and fold the valid events,
   in arrival order, each at the watermark of its arrival;
3. write each touched position to the local store once (one write batch per partition), and
   queue its changelog record;
4. queue one availability record per channel for each position whose version moved, the
   shipment notice of every TRANSFER_OUT applied (or redelivered) to ``invsync.transfers``, and
   the dead letters;
5. the agent acks the batch's events only when the broker has acknowledged every record queued
   in 3-4 (:mod:`streams.delivery`); Faust commits acked offsets only.

Transfers: a TRANSFER_OUT's notice (:func:`state.events.transit_notice`) goes to
``invsync.transfers`` keyed by ``sku|destination``, which this fold also consumes, so the units
are in transit at the destination's position wherever it lives. The notice is durable before
the TRANSFER_OUT's offset is committed (same ticket); a TRANSFER_OUT redelivered by offset
re-emits the same notice (its positions' records are re-published for the same reason), which
the destination recognises as a duplicate; a source duplicate (same identity, recognised by the
fold) emits nothing: its original's notice is in an earlier or the same ticket. Transfers whose
deadline a partition's horizon passes expire at quiet keys too (the due-key sweep below).
The sweep is bounded per batch (``settings.sweep_keys``): a jump in stream time (a partition back
after hours, the end of a replay) makes every open position due at once, and settling a
million of them (~250 µs each) in one synchronous batch would stall the event loop for minutes,
past the consumer's poll interval; bounded, fresh events keep flowing between the sweep's
batches. A timer in ``streams/app.py`` finishes the sweep when input stops.

Events of partitions this worker no longer owns (taken away by a rebalance after they were
fetched) are left out of the batch and not acked: their new owner folds them again from the
committed offset, and writing them here could overwrite what it already wrote (a zombie write).
Events of partitions still assigned are always folded, even if fetched before a rebalance: an
event left unacked there would be committed over (Faust's commit accepts one missing offset
right after the committed one), i.e. lost. A batch is synchronous, so the assignment cannot
change while it folds.

Redeliveries are recognised by offset, exactly (:mod:`streams.applied_offsets`): each stored
position remembers the last offset of every input topic applied to it, and each partition store
which offsets were applied, so a replayed event is skipped (and its position re-written and
re-published, in case the crash hit before the outputs were delivered) while a record Faust
delivers late, after later ones of the same key, is still applied.
"""

from __future__ import annotations

import heapq
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
from faust.types import TP, EventT, TableT

from invsync.settings import Settings
from state.availability import Availability, assess_ledger, location_type, project
from state.channel_policy import ChannelPolicy
from state.confidence import PRIORS, ClassAccuracy
from state.events import (
    InvalidEvent,
    StockEvent,
    count_from_record,
    is_transfer_out,
    movement_from_record,
    reserved_delta_from_record,
    sale_from_record,
    snapshot_from_record,
    transit_from_record,
)
from state.netting import OpenWindow
from state.position import (
    NEVER,
    Drift,
    EndedTransfer,
    OpenPosition,
    Outcome,
    Position,
    SettledCount,
    from_primitive,
    to_primitive,
    transfer_deadline,
)
from streams import metrics, records, topics
from streams.applied_offsets import MARK_KEY, AppliedOffsets
from streams.codec import Codec, DecodeError
from streams.dead_letters import DeadLetter, dead_letter, send_dead_letters
from streams.delivery import Outputs, Ticket
from streams.partition_store import PartitionStore, PositionCache
from streams.watermarks import PartitionClock

log = logging.getLogger(__name__)

Parser = Callable[[dict[str, Any]], StockEvent]

CACHED_POSITIONS = 100_000  # open positions kept in memory between batches (LRU)
MAX_TIME = 2**62  # later than any event time (millis)


@dataclass
class _Touched:
    """A position being folded in this batch, with the last event that touched it."""

    position: OpenPosition
    offsets: dict[str, int]
    partition: int
    version_before: int
    event: EventT | None = None  # None: touched only to close its ERP window
    redelivered: bool = False


@dataclass
class BatchResult:
    outcomes: dict[tuple[str, str], int] = field(default_factory=dict)  # (topic, outcome)
    ackable: list[EventT] = field(default_factory=list)  # events whose effects are queued


class BatchFolder:
    """Decode, fold, write and emit; one instance per worker (holds per-partition stream time)."""

    def __init__(
        self,
        settings: Settings,
        codec: Codec,
        table: TableT,
        outputs: Outputs,
        availability: dict[str, str],
        dead_letters: str,
        policy: ChannelPolicy,
    ) -> None:
        self.settings = settings
        self.policy = policy
        self.codec = codec
        self.table = table
        self.store = PartitionStore(table)
        self.cache = PositionCache(CACHED_POSITIONS)
        # keys whose last published record was frozen, per location type (this worker's keys)
        self.phantom_suspects: dict[str, set[bytes]] = {}
        self.outputs = outputs
        self.availability = availability
        self.dead_letters = dead_letters
        self.discrepancies = topics.COUNT_DISCREPANCIES.full_name(settings)
        self.erp_deltas = topics.ERP_STOCK_DELTAS.full_name(settings)
        self.erp_drift = topics.ERP_DRIFT.full_name(settings)
        self.accuracy_evidence = topics.ACCURACY_EVIDENCE.full_name(settings)
        # the accuracy of a location type: the priors, or the learned states
        # (streams.learning.LearnedAccuracy.get, set by streams/app.py)
        self.accuracy: Callable[[str], ClassAccuracy] = PRIORS.__getitem__
        self.transfers = topics.TRANSFERS.full_name(settings)
        # per partition: key -> end of its open ERP netting window (this generation's partitions)
        # per partition: key -> the horizon at which it needs advancing (_due_at)
        self.open_windows: dict[int, dict[bytes, int]] = {}
        self.next_due: dict[int, int] = {}  # per partition: no key is due before this
        self.last_batch_at = 0.0  # time.monotonic() of the last batch (the sweep timer waits)
        self.windows_generation: int | None = None
        self.parsers: dict[str, Parser] = {
            topics.POS_SALES.full_name(settings): sale_from_record,
            topics.WMS_MOVEMENTS.full_name(settings): movement_from_record,
            topics.CYCLE_COUNTS.full_name(settings): count_from_record,
            topics.RESERVED_DELTAS.full_name(settings): reserved_delta_from_record,
            topics.ERP_SNAPSHOTS.full_name(settings): snapshot_from_record,
            topics.TRANSFERS.full_name(settings): transit_from_record,
        }
        self._highwaters: dict[tuple[str, int], int | None] = {}  # this batch's (_highwater)
        self.clock = PartitionClock(self.parsers, self._highwater, settings.input_skew_ms)
        self.applied = AppliedOffsets(
            lambda partition: self.store.get_many(partition, [MARK_KEY])[0], self._frontier
        )

    def _frontier(self, topic: str, partition: int) -> int | None:
        guard = getattr(self.table.app.consumer, "offset_guard", None)
        return None if guard is None else guard.frontier(TP(topic, partition))

    def _highwater(self, topic: str, partition: int) -> int | None:
        """The consumer's high watermark, read once per batch (the clock asks for it at every
        event; the skew bound covers records produced since)."""
        tp = (topic, partition)
        if tp in self._highwaters:
            return self._highwaters[tp]
        try:
            high = self.table.app.consumer.highwater(TP(topic, partition))
        except Exception:  # not assigned (any more), or not fetched yet
            high = None
        self._highwaters[tp] = high
        return high

    def process(self, events: Sequence[EventT], ticket: Ticket) -> BatchResult:
        """Fold ``events`` and queue every record they cause on ``ticket`` (sealed by the
        caller). Synchronous: nothing else runs on the event loop while a batch folds."""
        result = BatchResult()
        self.last_batch_at = time.monotonic()
        self._highwaters.clear()
        outcomes = result.outcomes
        letters: list[DeadLetter] = []
        valid: list[tuple[EventT, StockEvent, int]] = []  # with the watermark at its arrival
        events = owned(self.table.app, events)
        self.applied.for_generation(self.table.app.consumer_generation_id)
        for event in events:
            stock_event = self._decode(event, letters)
            if stock_event is None:
                counted = (event.message.topic, "dead_lettered")
                outcomes[counted] = outcomes.get(counted, 0) + 1
            else:
                watermark = self.clock.watermark(event.message.partition)
                valid.append((event, stock_event, watermark))
        touched = self._load(valid)
        lateness_ms = self.settings.lateness_ms
        shipped: list[StockEvent] = []  # TRANSFER_OUTs whose notices this batch emits
        for event, stock_event, watermark in valid:
            message = event.message
            entry = touched[stock_event.key.encode()]
            entry.event = event
            key_offset = entry.offsets.get(message.topic, -1)
            if self.applied.applied(message.topic, message.partition, message.offset, key_offset):
                entry.redelivered = True
                outcome = "redelivered"
                if is_transfer_out(stock_event):  # its notice may not have been delivered
                    shipped.append(stock_event)
            else:
                entry.offsets[message.topic] = max(key_offset, message.offset)
                folded = entry.position.fold(
                    stock_event, lateness_ms=lateness_ms, watermark=watermark
                )
                outcome = folded.value
                if folded is not Outcome.DUPLICATE and is_transfer_out(stock_event):
                    shipped.append(stock_event)
            counted = (message.topic, outcome)
            outcomes[counted] = outcomes.get(counted, 0) + 1
        for event in events:  # applied, recognised as applied, or dead-lettered
            message = event.message
            self.applied.folded(message.topic, message.partition, message.offset)
        self._close_due_windows({event.message.partition for event in events}, touched)
        self._write_and_publish(touched, ticket)
        for out in shipped:
            self._route(out, ticket)
        send_dead_letters(letters, self.codec, self.outputs, ticket, self.dead_letters)
        result.ackable = list(events)
        now = time.time()
        for (topic, outcome), n in outcomes.items():
            metrics.EVENTS.labels(topic, outcome).inc(n)
            metrics.SOURCE_LAST_EVENT.labels(topic).set(now)
        return result

    def _write_and_publish(self, touched: dict[bytes, _Touched], ticket: Ticket) -> None:
        changelog = self.store.changelog
        writes: dict[int, list[tuple[bytes, bytes]]] = {}
        changed: list[tuple[bytes, _Touched]] = []
        for key, entry in touched.items():
            position = entry.position.close(lateness_ms=self.settings.lateness_ms)
            value = orjson.dumps({"p": to_primitive(position), "o": entry.offsets})
            partition = entry.partition
            writes.setdefault(partition, []).append((key, value))
            self.cache.put(key, entry.position, entry.offsets)
            self._index_window(partition, key, entry.position)
            if position.version != entry.version_before or entry.redelivered:
                changed.append((key, entry))
        for partition, items in writes.items():
            items.append((MARK_KEY, self.applied.mark_value(partition)))  # same batch, same log
            self.store.put_many(partition, items)  # local store first: see mark_changelog_applied
            for key, value in items:
                self.outputs.produce(ticket, changelog, key, value, partition)
        for key, entry in changed:
            self._publish(key, entry.position, ticket)
            if entry.event is not None:
                ticket.published_at.append(entry.event.message.timestamp)
        for key, entry in touched.items():
            for settled in entry.position.settled_counts:
                self._report_count(settled, ticket)
            entry.position.settled_counts.clear()
            for drift in entry.position.drifts:
                self._report_drift(drift, ticket)
            entry.position.drifts.clear()
            for delta in entry.position.netting.deltas:
                value = self.codec.encode(topics.ERP_STOCK_DELTAS, delta.to_record())
                delta_key = topics.make_key(delta.sku, delta.location).encode()
                self.outputs.produce(ticket, self.erp_deltas, delta_key, value)
            entry.position.netting.deltas.clear()
            if entry.position.ended_transfers:
                _count_ended(key, entry.position.ended_transfers)
                entry.position.ended_transfers.clear()

    def _route(self, out: StockEvent, ticket: Ticket) -> None:
        """Queue the shipment notice of a TRANSFER_OUT, keyed by the destination."""
        value = self.codec.encode(topics.TRANSFERS, records.transfer_notice(out))
        key = topics.make_key(out.sku, out.counterpart).encode()
        self.outputs.produce(ticket, self.transfers, key, value)

    def _close_due_windows(self, partitions: set[int], touched: dict[bytes, _Touched]) -> None:
        """Advance the positions of ``partitions`` that the partition's horizon (watermark -
        lateness) has passed something of: the end of its open ERP netting window, or its
        earliest pending event. So a key that went quiet, or whose last events were fetched
        before the others of its partition, still settles its events and counts, gets its
        windows delivered and its snapshots reconciled; :meth:`_write_and_publish` queues the
        records. At most ``settings.sweep_keys`` in all (shared evenly by the partitions, the
        longest due first); the rest are left to the next batch or the sweep timer
        (:meth:`sweep`). A key touched by an event
        meanwhile is advanced by its fold anyway, at the later watermark: the same result as
        being swept first, but for an event that arrives already behind the partition's
        horizon, which then settles in event-time order instead of as ``late``."""
        lateness_ms = self.settings.lateness_ms
        candidates: dict[int, tuple[int, list[tuple[int, bytes]]]] = {}
        for partition in sorted(partitions):
            watermark = self.clock.watermark(partition)
            horizon = watermark - lateness_ms
            index = self._windows_of(partition)
            if horizon < self.next_due.get(partition, NEVER):
                continue  # no key can be due: skip the scan (the common case)
            due_ends = [(end, key) for key, end in index.items() if end <= horizon]
            # swept keys that are due again later lower this in _index_window
            self.next_due[partition] = min(
                (end for end in index.values() if end > horizon), default=MAX_TIME
            )
            if due_ends:
                candidates[partition] = (watermark, due_ends)
        budget = self.settings.sweep_keys  # shared by the partitions with due keys
        for n, (partition, (watermark, due_ends)) in enumerate(candidates.items()):
            limit = -(-budget // (len(candidates) - n))  # an even share of what is left
            if len(due_ends) > limit:  # the longest due first; the rest wait their turn
                due_ends = heapq.nsmallest(limit + 1, due_ends)
                self.next_due[partition] = due_ends.pop()[0]
            budget -= len(due_ends)
            due = [key for _, key in due_ends]
            missing = [key for key in due if key not in touched]
            for key, entry in self._open_positions(partition, missing).items():
                touched[key] = entry
            for key in due:
                position = touched[key].position
                position.netting.key = topics.split_key(key.decode())
                position.advance(watermark, lateness_ms=lateness_ms)

    def sweep_backlog(self) -> set[int]:
        """Assigned partitions with due keys left by a bounded sweep (``settings.sweep_keys``)."""
        if self.windows_generation != self.table.app.consumer_generation_id:
            return set()  # the next batch rebuilds the due index first
        assigned = {tp.partition for tp in self.table.app.consumer.assignment()
                    if tp.topic in self.parsers}  # fmt: skip
        lateness_ms = self.settings.lateness_ms
        return {
            p for p in assigned
            if p in self.next_due
            and self.next_due[p] <= self.clock.watermark(p) - lateness_ms
        }  # fmt: skip

    def sweep(self, partitions: set[int], ticket: Ticket) -> int:
        """Advance up to ``settings.sweep_keys`` more due keys of ``partitions`` (from
        :meth:`sweep_backlog`) and queue their records on ``ticket``: the timer that finishes a
        sweep when no more input arrives. Returns the number of keys advanced."""
        self.applied.for_generation(self.table.app.consumer_generation_id)
        self._highwaters.clear()
        touched: dict[bytes, _Touched] = {}
        self._close_due_windows(partitions, touched)
        self._write_and_publish(touched, ticket)
        return len(touched)

    def _windows_of(self, partition: int) -> dict[bytes, int]:
        """The due index of ``partition`` (key -> horizon at which it needs advancing), rebuilt
        from its store once per consumer generation."""
        generation = self.table.app.consumer_generation_id
        if generation != self.windows_generation:
            self.open_windows, self.windows_generation = {}, generation
            self.next_due = {}
        index = self.open_windows.get(partition)
        if index is None:
            index = self.open_windows[partition] = {}
            window_ms = self.settings.erp_window_ms
            timeout_ms = self.settings.transfer_timeout_ms
            for key, value in self.store.items(partition):
                if key == MARK_KEY:
                    continue
                position = from_primitive(orjson.loads(value)["p"])
                first = position.pending[0].effective_at if position.pending else None
                expiry = transfer_deadline(position.settled, timeout_ms)
                due = _due_at(position.netting, first, window_ms, expiry)
                if due is not None:
                    index[key] = due
        return index

    def _index_window(self, partition: int, key: bytes, position: OpenPosition) -> None:
        index = self._windows_of(partition)
        first = position.pending[0].effective_at if position.pending else None
        expiry = transfer_deadline(position.settled, self.settings.transfer_timeout_ms)
        due = _due_at(position.netting.open, first, self.settings.erp_window_ms, expiry)
        if due is None:
            index.pop(key, None)
        else:
            index[key] = due
            if due < self.next_due.get(partition, NEVER):
                self.next_due[partition] = due

    def _decode(self, event: EventT, letters: list[DeadLetter]) -> StockEvent | None:
        """The event as the domain sees it, or None after adding its dead letter."""
        message = event.message
        topic, partition, offset = message.topic, message.partition, message.offset
        raw_key = message.key if isinstance(message.key, bytes) else None
        raw_value = message.value if isinstance(message.value, bytes) else None
        reason = detail = ""
        stock_event = None
        parser = self.parsers.get(topic)
        if parser is None:
            reason, detail = "unknown_topic", f"no parser for topic {topic}"
        else:
            try:
                stock_event = parser(self.codec.decode(topic, raw_value))
            except (DecodeError, InvalidEvent) as exc:
                reason, detail = exc.reason, exc.detail
        if stock_event is not None and raw_key != stock_event.key.encode():
            reason, detail = "key_mismatch", f"key {raw_key!r} is not {stock_event.key!r}"
            stock_event = None
        event_time = stock_event.effective_at if stock_event is not None else None
        self.clock.observe(topic, partition, offset, event_time)
        if stock_event is None:
            letters.append(
                dead_letter(reason, detail, topic, partition, offset, raw_key, raw_value)
            )
        return stock_event

    def _load(self, valid: list[tuple[EventT, StockEvent, int]]) -> dict[bytes, _Touched]:
        """The open positions of every key in the batch."""
        first: dict[bytes, EventT] = {}
        for event, stock_event, _ in valid:
            first.setdefault(stock_event.key.encode(), event)
        by_partition: dict[int, list[bytes]] = {}
        for key, event in first.items():
            by_partition.setdefault(event.message.partition, []).append(key)
        touched: dict[bytes, _Touched] = {}
        for partition, keys in by_partition.items():
            for key, entry in self._open_positions(partition, keys).items():
                entry.event = first[key]
                touched[key] = entry
        return touched

    def _open_positions(self, partition: int, keys: list[bytes]) -> dict[bytes, _Touched]:
        """Open positions of ``keys`` (all of ``partition``): from the cache, else from the
        store (one multi-get)."""
        self.cache.for_generation(self.table.app.consumer_generation_id)
        opened: dict[bytes, _Touched] = {}
        missing: list[bytes] = []
        for key in keys:
            cached = self.cache.take(key)
            if cached is None:
                missing.append(key)
            else:
                open_position, offsets = cached
                opened[key] = _Touched(open_position, offsets, partition, open_position.version)
        stored = self.store.get_many(partition, missing) if missing else []
        for key, value in zip(missing, stored, strict=True):
            if value is None:
                position, offsets = Position(), {}
            else:
                data = orjson.loads(value)
                position, offsets = from_primitive(data["p"]), data["o"]
            opened[key] = _Touched(
                OpenPosition(
                    position, self.settings.erp_window_ms, self.settings.transfer_timeout_ms
                ),
                offsets,
                partition,
                position.version,
            )
        return opened

    def _publish(self, key: bytes, position: OpenPosition, ticket: Ticket) -> None:
        sku, location = topics.split_key(key.decode())
        ledger = position.view()
        kind = location_type(location)
        assessment = assess_ledger(ledger, stream_time=position.stream_time,
                                   accuracy=self.accuracy(kind),
                                   trading_hours=self.settings.hours_of(kind))  # fmt: skip
        first = True
        for channel, topic in self.availability.items():
            availability = project(
                channel, sku, location, ledger, stream_time=position.stream_time,
                policy=self.policy.channel(channel), assessment=assessment,
            )  # fmt: skip
            if first:  # model health: the same for every channel, observed once
                self._observe_model(key, availability)
                first = False
            value = self.codec.encode(topics.availability(channel), availability.to_record())
            self.outputs.produce(ticket, topic, key, value)

    def _report_drift(self, drift: Drift, ticket: Ticket) -> None:
        snapshot = drift.event
        kind = location_type(snapshot.location)
        record = {
            "snapshot_id": snapshot.event_id, "source": snapshot.source, "sku": snapshot.sku,
            "location": snapshot.location, "location_type": kind, "as_of": snapshot.effective_at,
            "erp_on_hand": snapshot.quantity, "recorded_on_hand": drift.recorded,
            "drift": drift.drift, "exact": drift.exact,
        }  # fmt: skip
        value = self.codec.encode(topics.ERP_DRIFT, record)
        self.outputs.produce(ticket, self.erp_drift, snapshot.key.encode(), value)
        metrics.ERP_SNAPSHOTS.labels(kind, "in_agreement" if drift.drift == 0 else "drift").inc()
        metrics.ERP_DRIFT_UNITS.labels(kind).observe(abs(drift.drift))

    def _report_count(self, settled: SettledCount, ticket: Ticket) -> None:
        count = settled.event
        record = {
            "count_id": count.ref, "sku": count.sku, "location": count.location,
            "location_type": location_type(count.location), "counted_at": count.effective_at,
            "counted": count.quantity, "recorded": settled.recorded,
            "discrepancy": settled.discrepancy, "units_moved": settled.units_moved,
            "previous_count_at": settled.previous_count_at,
            "last_sighting_at": settled.last_sighting_at,
        }  # fmt: skip
        value = self.codec.encode(topics.COUNT_DISCREPANCIES, record)
        self.outputs.produce(ticket, self.discrepancies, count.location.encode(), value)
        # the same record keyed by location type: the accuracy learner's input (one learner per
        # type, streams/learning.py), durable before this batch's input offsets commit
        evidence = self.codec.encode(topics.ACCURACY_EVIDENCE, record)
        kind = str(record["location_type"]).encode()
        self.outputs.produce(ticket, self.accuracy_evidence, kind, evidence)

    def _observe_model(self, key: bytes, availability: Availability) -> None:
        kind = availability.location_type
        metrics.POSITION_CONFIDENCE.labels(kind).observe(availability.confidence)
        suspects = self.phantom_suspects.setdefault(kind, set())
        if availability.frozen:
            suspects.add(key)
        else:
            suspects.discard(key)
        metrics.PHANTOM_SUSPECTS.labels(kind).set(len(suspects))


def _due_at(
    window: OpenWindow | None,
    first_pending: int | None,
    window_ms: int,
    expires_at: int | None = None,
) -> int | None:
    """The horizon at which a position needs advancing (None: never): when it reaches its open
    netting window's end (the window closes), or passes its earliest pending event (it settles)
    or the earliest deadline of its open transfers (it expires)."""
    due = []
    if window is not None:
        due.append(window.start + window_ms)
    if first_pending is not None:
        due.append(first_pending + 1)
    if expires_at is not None:
        due.append(expires_at + 1)
    return min(due, default=None)


def _count_ended(key: bytes, ended: list[EndedTransfer]) -> None:
    """Transfers into the position ``key`` that ended: counted by outcome, and the units lost."""
    kind = location_type(topics.split_key(key.decode())[1])
    for transfer in ended:
        metrics.TRANSFERS_ENDED.labels(kind, transfer.outcome).inc()
        if transfer.lost > 0:
            metrics.TRANSIT_LOSS_UNITS.labels(kind).inc(transfer.lost)


def owned(app: Any, events: Sequence[EventT]) -> list[EventT]:
    """``events`` of partitions assigned to this worker now (see the module docstring)."""
    assigned = app.consumer.assignment()
    kept = [event for event in events if event.message.tp in assigned]
    if len(kept) != len(events):
        log.info("left out %d events of partitions no longer assigned", len(events) - len(kept))
    return kept
