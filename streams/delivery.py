"""The fold's Kafka output: changelog, availability and dead-letter records, per batch.

Guarantee: a batch's :class:`Ticket` completes only after the broker acknowledged **every**
record of the batch (``acks=all``, idempotent producer, so librdkafka's own retries neither lose
nor duplicate within a session). The fold agent acks its input events only then, so Faust commits
an input offset only after the state change (changelog) and the outputs it caused are durable.
A record that cannot be delivered fails its ticket; the agent then crashes the worker without
acking, and the events are redelivered to whoever owns the partition next.

Why not Faust's producer: aiokafka builds record batches in Python and ``send`` costs one
future and several awaits per record. librdkafka (confluent-kafka) batches in C; here Python pays
one ``produce`` call per record, one delivery callback per record on a background thread, and one
hand-over to the event loop per batch. (confluent-kafka's experimental ``AIOProducer`` creates an
asyncio future per message, which is the cost this avoids.)

Back-pressure: the agent keeps at most ``max_in_flight`` batches unacknowledged, so librdkafka's
queue (sized far above that) cannot fill; if it does anyway, ``produce`` raises and the worker
stops without acking — nothing is lost.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any

import orjson
from confluent_kafka import KafkaError, KafkaException, Message, Producer

from invsync.settings import Settings
from streams import metrics

SINK = "kafka"  # the label of this sink in invsync_sink_* metrics

log = logging.getLogger(__name__)


class Ticket:
    """The records of one batch; ``done`` resolves when all are acknowledged (or one failed).

    ``changelog_offsets`` holds, per changelog topic and partition, the highest offset
    acknowledged: the table's local store can remember it, so a restart replays the changelog
    only past it.
    """

    __slots__ = ("_loop", "_sealed", "changelog", "changelog_offsets", "delivered", "done", "error",
                 "published_at", "sent")  # fmt: skip

    def __init__(self, loop: asyncio.AbstractEventLoop, changelogs: frozenset[str]) -> None:
        self._loop = loop
        self._sealed = False
        self.changelog = changelogs
        self.changelog_offsets: dict[str, dict[int, int]] = {}
        self.sent = 0  # written by the event loop thread only
        self.delivered = 0  # written by the delivery thread only
        self.error: KafkaError | None = None
        self.done: asyncio.Future[None] = loop.create_future()
        self.published_at: list[float] = []  # input timestamps (s) of the records published

    def on_delivery(self, err: KafkaError | None, msg: Message) -> None:
        """librdkafka's delivery report (delivery thread)."""
        if err is not None:
            self.error = self.error or err
            metrics.SINK_FAILURES.labels(SINK).inc()
        elif (topic := msg.topic() or "") in self.changelog:
            partition, offset = msg.partition() or 0, msg.offset() or 0
            offsets = self.changelog_offsets.setdefault(topic, {})
            if offset > offsets.get(partition, -1):
                offsets[partition] = offset
        self.delivered += 1
        if self._sealed and self.delivered == self.sent:
            self._loop.call_soon_threadsafe(self._resolve)

    def seal(self) -> None:
        """No more records for this batch (event loop thread)."""
        self._sealed = True
        if self.delivered == self.sent:
            self._resolve()

    def _resolve(self) -> None:
        if self.done.done():
            return
        if self.error is not None:
            self.done.set_exception(KafkaException(self.error))
        else:
            self.done.set_result(None)


class Outputs:
    """One librdkafka producer for everything the fold writes, with per-batch tickets."""

    def __init__(self, settings: Settings, changelogs: frozenset[str]) -> None:
        self.changelogs = changelogs
        self.producer = Producer(producer_config(settings) | {"stats_cb": self._on_stats})
        self._retries_seen = 0
        metrics.SINK_IN_FLIGHT.labels(SINK).set_function(lambda: len(self.producer))
        metrics.SINK_RETRIES.labels(SINK)
        metrics.SINK_FAILURES.labels(SINK)
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="invsync-delivery", daemon=True)
        self._thread.start()

    def ticket(self) -> Ticket:
        return Ticket(asyncio.get_running_loop(), self.changelogs)

    def produce(
        self, ticket: Ticket, topic: str, key: bytes, value: bytes | None, partition: int = -1
    ) -> None:
        """Queue one record of ``ticket``'s batch; ``partition=-1`` partitions by key (murmur2,
        as Kafka's Java clients and Faust do); ``value=None`` is a tombstone."""
        self.producer.produce(topic, value, key, partition, on_delivery=ticket.on_delivery)
        ticket.sent += 1

    def _on_stats(self, stats_json: str) -> None:
        """librdkafka's statistics (delivery thread): retries are counted there, not by us."""
        brokers = orjson.loads(stats_json).get("brokers", {}).values()
        retries = sum(int(broker.get("txretries", 0)) for broker in brokers)
        if retries > self._retries_seen:
            metrics.SINK_RETRIES.labels(SINK).inc(retries - self._retries_seen)
            self._retries_seen = retries

    def _serve(self) -> None:
        while not self._stopping.is_set():
            self.producer.poll(0.05)

    def close(self, timeout_s: float = 30.0) -> int:
        """Deliver what is queued (up to ``timeout_s``), then stop; returns records left over."""
        left = self.producer.flush(timeout_s)
        self._stopping.set()
        self._thread.join(timeout=5)
        if left:
            log.error(
                "%d output records not delivered at shutdown; their events stay unacked", left
            )
        return int(left)


def producer_config(settings: Settings) -> dict[str, Any]:
    return {
        "bootstrap.servers": settings.kafka_bootstrap,
        "client.id": f"{settings.app_id}-outputs",
        "acks": "all",
        "enable.idempotence": True,
        "partitioner": "murmur2_random",  # same partition for a key as Faust/Java clients
        "linger.ms": 5,
        "batch.size": 1_000_000,
        "compression.type": "none",  # Faust (aiokafka) restores the changelog: no codec deps
        "queue.buffering.max.messages": 1_000_000,
        "queue.buffering.max.kbytes": 1_048_576,
        "statistics.interval.ms": 15_000,
    }
