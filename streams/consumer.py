"""Faust's Kafka consumer, with two changes: a short broker long-poll, and commit offsets that
never pass a record the agents did not fold.

Long-poll: Faust creates its aiokafka consumer with ``fetch_max_wait_ms=1500`` (hard-coded, not
a setting). aiokafka sends one fetch per broker at a time and leaves out partitions whose fetched
records are still being consumed; that fetch then names only quiet partitions (an idle input
topic, say) and the broker holds it for the full 1.5 s while records pile up on the busy ones.
Measured here: event-to-publish p50 of ~1.4 s at 1,300 events/s with an idle cycle-count topic,
~50 ms with this consumer. The cost is one empty fetch round trip per ``FETCH_MAX_WAIT_MS``.

Commits: the offset committed for a partition is the :class:`~streams.offset_guard.OffsetGuard`
frontier, which moves only over offsets the agents reported folded (with their outputs
acknowledged). Faust's own ack bookkeeping is bypassed (its holes are listed in
:mod:`streams.offset_guard`); an ack here only releases the event for Faust's rebalance wait. A
partition whose frontier is stuck behind records is repaired by asking the broker what is at the
frontier: no record (a transaction marker, a compacted offset) is skipped; a record Faust never
delivered is fetched again by seeking the partition back (redelivery is idempotent: the folds
recognise replayed offsets).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from typing import Any

import aiokafka
import confluent_kafka
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP
from faust.types.tuples import Message, ack_lock
from mode import Service
from mode.utils.futures import notify

from streams import metrics
from streams.offset_guard import OffsetGuard

log = logging.getLogger(__name__)

FETCH_MAX_WAIT_MS = 100
STUCK_AFTER_S = 15.0  # a frontier this long behind records that went through is repaired
IDLE_STUCK_AFTER_S = 90.0  # ... this long behind a record handed to idle streams, not folded
UNREAD_STUCK_AFTER_S = 900.0  # ... and this long behind one not handed over, or still queued
REPAIR_EVERY_S = 5.0


class _PromptConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    def _create_worker_consumer(self, transport: Any) -> aiokafka.AIOKafkaConsumer:
        consumer = super()._create_worker_consumer(transport)
        consumer._fetch_max_wait_ms = FETCH_MAX_WAIT_MS  # read by its fetcher at start
        return consumer


def _nothing_read(tp: TP) -> int | None:
    return None


class PromptConsumer(faust_aiokafka.Consumer):
    """The worker's consumer (see the module docstring)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.offset_guard = OffsetGuard()

    def _new_consumer_thread(self) -> faust_aiokafka.AIOKafkaConsumerThread:
        return _PromptConsumerThread(self, loop=self.loop, beacon=self.beacon)

    # --- acks release events; commits come from the guard -------------------------------------

    def ack(self, message: Message) -> bool:
        with ack_lock:
            if message.acked:
                return False
            message.acked = True
            self.offset_guard.passed(message.tp, message.offset)
            self._unacked_messages.discard(message)
            if self.app.topics.acks_enabled_for(message.topic):
                self._n_acked += 1
            notify(self._waiting_for_ack)
            return True

    def _filter_tps_with_pending_acks(self, topics: Any = None) -> Iterator[TP]:
        return (
            tp
            for tp in self.offset_guard.partitions()
            if topics is None or tp in topics or tp.topic in topics
        )

    def _new_offset(self, tp: TP) -> int | None:
        return self.offset_guard.frontier(tp)

    async def on_partitions_assigned(self, assigned: set[TP], generation_id: int = 0) -> None:
        self.offset_guard.forget(self.offset_guard.partitions())
        await super().on_partitions_assigned(assigned, generation_id)

    async def perform_seek(self) -> None:
        """Seek to the committed offsets (Faust), then start each input partition's frontier
        there (0 without a commit; a log start past it is found by the repair below).

        Not here: asking the broker for the log start; that call from this point stops the
        fetcher after a rebalance (measured), so the repair's probe finds it instead."""
        await super().perform_seek()
        for tp in self.assignment():
            if not self._is_changelog_tp(tp) and self.app.topics.acks_enabled_for(tp.topic):
                committed = self._committed_offset.get(tp)
                self.offset_guard.start(tp, committed if committed and committed > 0 else 0)

    # --- repair of stuck partitions -------------------------------------------------------------

    @Service.task
    async def _repair_stuck_partitions(self) -> None:
        async for _ in self.itertimer(REPAIR_EVERY_S, name="repair_stuck_partitions"):
            if self.app.rebalancing or not self.app.flow_control.is_active():
                continue
            # what the fetcher handed to the streams counts as "read" only once their queues are
            # empty: before that, a record handed over may still wait its turn in them
            idle = self._queued_in_streams() == 0
            for tp in self.offset_guard.stuck(
                self._known_highwater,
                STUCK_AFTER_S,
                IDLE_STUCK_AFTER_S,
                read=self._read_offset.get if idle else _nothing_read,
                unread_after_s=UNREAD_STUCK_AFTER_S,
            ):
                await self._repair(tp)

    def _queued_in_streams(self) -> int:
        """Records handed to the streams and not taken by an agent yet (Faust's channel queues:
        the conductor holds each stream's iterator channel)."""
        return sum(channel.queue.qsize() for channel in self.app.topics)

    def _known_highwater(self, tp: TP) -> int | None:
        try:
            return self.highwater(tp)
        except Exception:  # not assigned any more, or nothing fetched yet
            return None

    async def _repair(self, tp: TP) -> None:
        frontier = self.offset_guard.frontier(tp)
        if frontier is None or tp not in self.assignment():
            return
        loop = asyncio.get_running_loop()
        first = await loop.run_in_executor(None, self._first_offset_at, tp, frontier)
        if first is None:  # nothing there after all (a stale highwater)
            self.offset_guard.waited(tp)
        elif first > frontier:
            log.info("%s: offsets %d..%d hold no records; skipping them", tp, frontier, first - 1)
            self.offset_guard.skip_to(tp, first)
        else:
            log.warning(
                "%s: the record at offset %d was never delivered to the agent; fetching the "
                "partition again from there",
                tp,
                frontier,
            )
            metrics.REFETCHES.labels(tp.topic).inc()
            self.offset_guard.waited(tp)
            await self.seek(tp, frontier)

    def _first_offset_at(self, tp: TP, offset: int) -> int | None:
        """The offset of the first record of ``tp`` at or after ``offset`` (broker's answer)."""
        servers = ",".join(f"{url.host}:{url.port or 9092}" for url in self.app.conf.broker)
        probe = confluent_kafka.Consumer(
            {
                "bootstrap.servers": servers,
                "group.id": f"{self.app.conf.id}-probe",
                "enable.auto.commit": False,
                "isolation.level": "read_committed",
                "enable.partition.eof": True,
            }
        )
        try:
            probe.assign([confluent_kafka.TopicPartition(tp.topic, tp.partition, offset)])
            for _ in range(20):
                record = probe.poll(0.5)
                if record is None:
                    continue
                error = record.error()
                if error is not None:
                    if error.code() == confluent_kafka.KafkaError._PARTITION_EOF:
                        return None
                    continue
                found = record.offset()
                return None if found is None else int(found)
            return None
        finally:
            probe.close()
