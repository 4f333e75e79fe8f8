"""Fold one batch of input events into the positions table and emit what changed.

The commit order, for every batch (the agent acks the events in ``BatchResult.ackable`` only
after :meth:`BatchFolder.process` returns, and Faust commits acked offsets only after flushing
the producer):

1. decode each event; what cannot be decoded or validated becomes a dead letter;
2. fold the valid events, in arrival order, into their position (read once per key);
3. write each touched position to the table once (changelog record + local store);
4. produce one availability record per channel for each position whose version moved,
   and the dead letters — every record handed straight to the Kafka client, so the producer
   flush before the commit covers them all.

A batch fetched before a rebalance writes nothing for the keys whose events came from an older
consumer generation: the partition's new owner processes them again from the committed offset.

Redeliveries after a crash are recognised by offset: each stored position remembers the last
offset of every input topic applied to it, so a replayed event is skipped exactly (and its
position re-published, in case the crash hit between changelog and output).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
from faust.types import TP, EventT, TableT

from invsync.settings import Settings
from state.availability import project
from state.events import InvalidEvent, StockEvent, count_from_record, sale_from_record
from state.position import OpenPosition, Position, from_primitive, to_primitive
from streams import metrics, topics
from streams.codec import Codec, DecodeError
from streams.dead_letters import DeadLetter, dead_letter
from streams.table_writes import write_through
from streams.watermarks import PartitionClock

log = logging.getLogger(__name__)

Parser = Callable[[dict[str, Any]], StockEvent]


@dataclass
class _Touched:
    """A position being folded in this batch, with the last event that touched it."""

    position: OpenPosition
    offsets: dict[str, int]
    event: EventT
    version_before: int
    redelivered: bool = False


@dataclass
class BatchResult:
    outcomes: dict[tuple[str, str], int] = field(default_factory=dict)  # (topic, outcome)
    ackable: list[EventT] = field(default_factory=list)  # events whose effects are produced


class BatchFolder:
    """Decode, fold, write and emit; one instance per worker (holds per-partition stream time)."""

    def __init__(
        self,
        settings: Settings,
        codec: Codec,
        table: TableT,
        availability: dict[str, str],
        dead_letters: str,
    ) -> None:
        self.settings = settings
        self.codec = codec
        self.table = table
        self.availability = availability
        self.dead_letters = dead_letters
        self.parsers: dict[str, Parser] = {
            topics.POS_SALES.full_name(settings): sale_from_record,
            topics.CYCLE_COUNTS.full_name(settings): count_from_record,
        }
        self.clock = PartitionClock(self.parsers, self._highwater, settings.input_skew_ms)

    def _highwater(self, topic: str, partition: int) -> int | None:
        try:
            return self.table.app.consumer.highwater(TP(topic, partition))
        except Exception:  # not assigned (any more), or not fetched yet
            return None

    async def process(self, events: Sequence[EventT]) -> BatchResult:
        result = BatchResult()
        letters: list[DeadLetter] = []
        touched: dict[bytes, _Touched] = {}
        for event in events:  # one at a time: each is folded at the watermark of its arrival
            stock_event = self._decode(event, letters)
            if stock_event is None:
                outcome = "dead_lettered"
            else:
                outcome = self._fold_one(event, stock_event, touched)
            counted = (event.message.topic, outcome)
            result.outcomes[counted] = result.outcomes.get(counted, 0) + 1
        for key, entry in touched.items():
            if self._revoked(entry.event):
                continue  # a rebalance happened: the partition's (new) owner redoes these events
            position = entry.position.close(lateness_ms=self.settings.lateness_ms)
            value = orjson.dumps({"p": to_primitive(position), "o": entry.offsets})
            await write_through(self.table, key, value, entry.event)
            if position.version != entry.version_before or entry.redelivered:
                await self._publish(key, position)
        for letter in letters:
            metrics.DEAD_LETTERS.labels(letter.reason).inc()
            value = self.codec.encode(topics.DEAD_LETTERS, letter.to_record())
            await self._send(self.dead_letters, letter.source_topic.encode(), value)
        result.ackable = [event for event in events if not self._revoked(event)]
        for (topic, outcome), n in result.outcomes.items():
            metrics.EVENTS.labels(topic, outcome).inc(n)
        return result

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

    def _fold_one(
        self, event: EventT, stock_event: StockEvent, touched: dict[bytes, _Touched]
    ) -> str:
        message = event.message
        key = stock_event.key.encode()
        entry = touched.get(key)
        if entry is None:
            entry = self._load(key, event)
            touched[key] = entry
        entry.event = event
        if message.offset <= entry.offsets.get(message.topic, -1):
            entry.redelivered = True
            return "redelivered"
        entry.offsets[message.topic] = message.offset
        outcome = entry.position.fold(
            stock_event,
            lateness_ms=self.settings.lateness_ms,
            watermark=self.clock.watermark(message.partition),
        )
        return outcome.value

    def _revoked(self, event: EventT) -> bool:
        """True when a rebalance happened since ``event`` was fetched: writing its position now
        could overwrite what the partition's new owner already wrote (a zombie write)."""
        return bool(event.message.generation_id != self.table.app.consumer_generation_id)

    def _load(self, key: bytes, event: EventT) -> _Touched:
        stored = self.table.get(key)
        if stored is None:
            position, offsets = Position(), {}
        else:
            data = orjson.loads(stored)
            position, offsets = from_primitive(data["p"]), data["o"]
        return _Touched(OpenPosition(position), offsets, event, position.version)

    async def _publish(self, key: bytes, position: Position) -> None:
        sku, location = topics.split_key(key.decode())
        ledger = position.view()
        for channel, topic in self.availability.items():
            record = project(channel, sku, location, ledger).to_record()
            value = self.codec.encode(topics.availability(channel), record)
            await self._send(topic, key, value)

    async def _send(self, topic: str, key: bytes, value: bytes) -> None:
        """Hand a record to the Kafka producer (partitioned by key, murmur2); it is flushed
        before the offsets of this batch are committed."""
        await self.table.app.producer.send(topic, key, value, None, None, None)
