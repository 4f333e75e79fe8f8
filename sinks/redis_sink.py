"""The Redis sink: the compacted ``availability.<channel>`` topics into the Redis read model.

:func:`run_redis_sink` consumes every configured channel's availability topic (and its
``availability.<channel>.groups`` topic of network aggregates) in one consumer
group (``<INVSYNC_APP_ID>-redis``), decodes each batch, writes it to :class:`RedisReadModel`
and then commits the batch's offsets. :func:`rebuild_read_model` re-reads the topics from the
beginning into Redis and returns once it has reached the end offsets seen at its start.

Guarantees:

- **At-least-once, idempotent by version.** Offsets are committed (synchronously) only after
  Redis acknowledged the whole batch, so a committed offset never passes a record that is not in
  Redis. A crash, a failed commit or a rebalance can make the sink write records again; the
  version check makes that a no-op, and no key ever moves back to an older version.
- **Redis down:** the same batch is retried with exponential backoff (redis-py's ``Retry``,
  capped at :data:`RETRY_BACKOFF_CAP_S`) for as long as it takes; nothing is committed
  meanwhile, the process does not exit, ``/livez`` stays 200, lag grows and
  ``invsync_sink_failures_total{sink="redis"}`` / ``invsync_redis_write_errors_total`` count
  the failed attempts. When Redis is back the batch is written and the sink catches up. A Redis
  that comes back empty (no persistence) keeps only what is written after it returns:
  :func:`rebuild_read_model` restores the rest. An outage longer than the consumer's
  ``max.poll.interval.ms`` (5 min) makes this member leave the group; its partitions are then
  consumed again from the last commit (duplicates only).
- **A schema registry that cannot be reached** is treated like Redis down (retried, nothing
  skipped). **An undecodable record** (it is our own topic, so it is a bug upstream) is logged
  with its topic, partition and offset, counted in
  ``invsync_sink_records_total{sink="redis",outcome="undecodable"}``, and skipped.
- **Stopping** (``stop`` set, or SIGINT/SIGTERM when run without one in the main thread) takes
  effect between polls or retries, within about :data:`RETRY_BACKOFF_CAP_S` plus one Redis
  attempt; a batch not yet written is not committed.

Limits: keys are never deleted (a position that disappears from a topic stays in Redis). The
rebuild does not commit offsets and can run beside the sink.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

from confluent_kafka import (
    OFFSET_BEGINNING,
    OFFSET_INVALID,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    TopicPartition,
)
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import RedisError
from redis.retry import Retry

from invsync.settings import Settings
from sinks import metrics
from sinks.http import serve
from sinks.read_model import RedisReadModel, WriteResult
from streams import topics
from streams.admin import check_topics, wait_for_cluster
from streams.codec import Codec, DecodeError

log = logging.getLogger(__name__)

SINK = "redis"  # the sink label of the invsync_sink_* metrics
POLL_S = 0.5
RETRY_BACKOFF_BASE_S = 0.2
RETRY_BACKOFF_CAP_S = 5.0
LAG_REFRESH_S = 5.0
LIVE_AFTER_S = 120.0  # no loop tick for this long (a hung call): /livez says 503
REBUILD_STALL_S = 60.0  # rebuild: no record for this long while short of the end offsets

_Partition = tuple[str, int]


class RegistryUnavailable(Exception):
    """The schema registry could not give a record's schema; not the record's fault."""


class _Stopped(Exception):
    pass


def availability_topics(settings: Settings) -> list[str]:
    """The full names of every configured channel's availability topic, then of every
    channel's group (network aggregate) topic."""
    specs = [*map(topics.availability, settings.channels)]
    specs += map(topics.group_availability, settings.channels)
    return [spec.full_name(settings) for spec in specs]


def consumer_config(settings: Settings) -> dict[str, Any]:
    return {
        "bootstrap.servers": settings.kafka_bootstrap,
        "group.id": f"{settings.app_id}-redis",
        "client.id": f"{settings.app_id}-redis-sink",
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
    }


def decode_batch(
    codec: Codec, messages: list[Message]
) -> tuple[list[dict[str, Any]], list[Message]]:
    """The decodable records of ``messages`` and the messages that are not. Raises
    :class:`RegistryUnavailable` if a schema cannot be fetched (retry: nothing is skipped)."""
    records: list[dict[str, Any]] = []
    bad: list[Message] = []
    for msg in messages:
        try:
            records.append(codec.decode(msg.topic() or "", msg.value()))
        except DecodeError as exc:
            log.error(
                "undecodable availability record %s[%s]@%s (skipped): %s",
                msg.topic(), msg.partition(), msg.offset(), exc,
            )  # fmt: skip
            bad.append(msg)
        except Exception as exc:  # the registry client raises many types when unreachable
            raise RegistryUnavailable(f"{type(exc).__name__}: {exc}") from exc
    return records, bad


def _count(result: WriteResult, undecodable: int) -> None:
    metrics.SINK_RECORDS.labels(SINK, "applied").inc(result.applied)
    metrics.SINK_RECORDS.labels(SINK, "stale").inc(result.stale)
    if undecodable:
        metrics.SINK_RECORDS.labels(SINK, "undecodable").inc(undecodable)


@contextlib.contextmanager
def _stop_event(stop: threading.Event | None) -> Iterator[threading.Event]:
    """``stop``, or a new event set by SIGINT/SIGTERM (in the main thread; restored after)."""
    if stop is not None:
        yield stop
        return
    event = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield event
        return
    previous = {
        sig: signal.signal(sig, lambda _sig, _frame: event.set())
        for sig in (signal.SIGINT, signal.SIGTERM)
    }
    try:
        yield event
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


class _RedisSink:
    """One consumer, one batch at a time: consume, decode, write (retried), commit."""

    def __init__(
        self,
        settings: Settings,
        model: RedisReadModel,
        stop: threading.Event,
        *,
        from_beginning: bool,
    ) -> None:
        self.settings = settings
        self.model = model
        self.stop = stop
        self.from_beginning = from_beginning
        self.codec = Codec(settings, millis_timestamps=True)
        self.consumer = Consumer(consumer_config(settings))
        self.retry = Retry(
            ExponentialWithJitterBackoff(cap=RETRY_BACKOFF_CAP_S, base=RETRY_BACKOFF_BASE_S),
            -1,  # forever: the batch must be written before its offsets are committed
            supported_errors=(RedisError, RegistryUnavailable),
        )
        self.ticked = time.monotonic()
        self.next_to_write: dict[_Partition, int] = {}  # per assigned partition, after commit
        self._started: set[_Partition] = set()  # partitions already read from the beginning
        self._lag_at = 0.0
        self._lag_reported: set[_Partition] = set()
        self._failures = 0

    # --- health -----------------------------------------------------------------------------

    def tick(self) -> None:
        self.ticked = time.monotonic()

    def live(self) -> tuple[bool, str]:
        age = time.monotonic() - self.ticked
        if age > LIVE_AFTER_S:
            return False, f"the sink loop has not run for {age:.0f}s"
        if self._failures:
            return True, f"alive; retrying a batch ({self._failures} failed attempts)"
        return True, "alive"

    # --- the loop -----------------------------------------------------------------------------

    def run(self) -> None:
        self.consumer.subscribe(
            availability_topics(self.settings), on_assign=self._on_assign, on_revoke=self._on_revoke
        )
        try:
            while not self.stop.is_set():
                self.tick()
                messages = self.consumer.consume(self.settings.redis_batch, POLL_S)
                batch = [msg for msg in messages if self._usable(msg)]
                if batch and not self._handle(batch):
                    break
                self._refresh_lag()
        finally:
            self.consumer.close()  # leaves the group; commits nothing

    def _usable(self, msg: Message) -> bool:
        error = msg.error()
        if error is None:
            return True
        if error.fatal():
            raise KafkaException(error)
        log.warning("consumer: %s", error)
        return False

    def _handle(self, batch: list[Message]) -> bool:
        """Write ``batch`` (retrying until it is written) and commit it; False if stopped."""
        started = time.monotonic()
        metrics.SINK_IN_FLIGHT.labels(SINK).set(len(batch))
        decoded: tuple[list[dict[str, Any]], list[Message]] | None = None

        def attempt() -> WriteResult:
            nonlocal decoded
            if decoded is None:
                decoded = decode_batch(self.codec, batch)
            return self.model.write(decoded[0])

        try:
            result = self.retry.call_with_retry(attempt, self._failed, with_failure_count=True)
        except _Stopped:
            log.info("stopped with a batch of %d records not written (not committed)", len(batch))
            return False
        finally:
            metrics.SINK_IN_FLIGHT.labels(SINK).set(0)
        if self._failures:
            log.info("batch written after %d failed attempts; catching up", self._failures)
            self._failures = 0
        assert decoded is not None
        _count(result, len(decoded[1]))
        self._commit(batch)
        metrics.SINK_BATCH_SECONDS.labels(SINK).observe(time.monotonic() - started)
        return True

    def _failed(self, error: Exception, failures: int) -> None:
        self._failures = failures
        metrics.SINK_FAILURES.labels(SINK).inc()
        if isinstance(error, RedisError):
            metrics.REDIS_WRITE_ERRORS.inc()
        if failures <= 3 or failures % 20 == 0:
            log.warning(
                "writing a batch to Redis failed (attempt %d; retrying, offsets not "
                "committed): %s: %s", failures, type(error).__name__, error,
            )  # fmt: skip
        self.tick()
        self._refresh_lag()
        if self.stop.is_set():
            raise _Stopped from error
        metrics.SINK_RETRIES.labels(SINK).inc()

    def _commit(self, batch: list[Message]) -> None:
        """Commit the offset after each partition's last record in ``batch`` (all written)."""
        following: dict[_Partition, int] = {}
        for msg in batch:
            part = (msg.topic() or "", msg.partition() or 0)
            following[part] = max(following.get(part, 0), (msg.offset() or 0) + 1)
        # A partition revoked while the batch was consumed belongs to another member now.
        assigned = {(tp.topic, tp.partition) for tp in self.consumer.assignment()}
        offsets = [TopicPartition(t, p, o) for (t, p), o in following.items() if (t, p) in assigned]
        if not offsets:
            return
        try:
            result = self.consumer.commit(offsets=offsets, asynchronous=False) or []
        except KafkaException as exc:
            metrics.SINK_COMMIT_FAILURES.labels(SINK).inc()
            log.warning("commit failed after the write (records will be written again): %s", exc)
            return
        for tp in result:
            if tp.error is None:
                self.next_to_write[(tp.topic, tp.partition)] = tp.offset
            else:
                metrics.SINK_COMMIT_FAILURES.labels(SINK).inc()
                log.warning("commit of %s[%d] failed: %s", tp.topic, tp.partition, tp.error)

    # --- assignment and lag ---------------------------------------------------------------------

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        for tp in partitions:
            part = (tp.topic, tp.partition)
            self.next_to_write.pop(part, None)
            if self.from_beginning and part not in self._started:
                tp.offset = OFFSET_BEGINNING
            self._started.add(part)
        consumer.assign(partitions)
        log.info("assigned %s", ", ".join(f"{tp.topic}[{tp.partition}]" for tp in partitions))
        self._lag_at = 0.0

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        for tp in partitions:
            self.next_to_write.pop((tp.topic, tp.partition), None)
        log.info("revoked %s", ", ".join(f"{tp.topic}[{tp.partition}]" for tp in partitions))
        self._lag_at = 0.0

    def _refresh_lag(self) -> None:
        now = time.monotonic()
        if now - self._lag_at < LAG_REFRESH_S:
            return
        try:
            assigned = self.consumer.assignment()
            unknown = [tp for tp in assigned if (tp.topic, tp.partition) not in self.next_to_write]
            if unknown:
                for tp in self.consumer.committed(unknown, timeout=2.0):
                    if tp.offset != OFFSET_INVALID and tp.offset >= 0:
                        self.next_to_write[(tp.topic, tp.partition)] = tp.offset
            reported: set[_Partition] = set()
            for tp in assigned:
                part = (tp.topic, tp.partition)
                # the offsets of the last fetch response: asking the broker here would queue
                # behind this consumer's long-poll (~0.5 s a partition, measured)
                low, high = self.consumer.get_watermark_offsets(tp, cached=True)
                if high < 0:
                    continue  # not fetched yet
                waiting = max(0, high - max(low, self.next_to_write.get(part, low)))
                metrics.SINK_LAG_MESSAGES.labels(SINK, part[0], str(part[1])).set(waiting)
                reported.add(part)
        except KafkaException as exc:
            log.debug("lag not refreshed: %s", exc)
            return
        finally:
            self._lag_at = time.monotonic()  # the next refresh is LAG_REFRESH_S after this one
        for topic, partition in self._lag_reported - reported:
            with contextlib.suppress(KeyError):
                metrics.SINK_LAG_MESSAGES.remove(SINK, topic, str(partition))
        self._lag_reported = reported


def run_redis_sink(
    settings: Settings,
    stop: threading.Event | None = None,
    from_beginning: bool = False,
    *,
    read_model: RedisReadModel | None = None,
) -> None:
    """Keep the Redis read model up to date with the availability topics until ``stop`` is set
    (without ``stop``, in the main thread: until SIGINT/SIGTERM).

    ``from_beginning``: read each partition from its first record once, whatever the group has
    committed (then commit as usual). ``read_model``: write there instead of
    ``INVSYNC_REDIS_URL`` (tests). Serves ``/metrics`` and ``/livez`` on
    ``INVSYNC_REDIS_SINK_PORT``. Raises :class:`streams.admin.ClusterUnavailable` /
    :class:`streams.admin.TopicsMissing` at start if Kafka cannot be reached within
    ``INVSYNC_STARTUP_TIMEOUT_S`` or the topics are missing, ``OSError`` if the port is taken;
    afterwards only on a fatal Kafka error. Guarantees: see the module docstring.
    """
    with _stop_event(stop) as stopping:
        wait_for_cluster(settings)
        check_topics(settings)
        model = read_model or RedisReadModel.from_settings(settings)
        sink = _RedisSink(settings, model, stopping, from_beginning=from_beginning)
        try:
            server = serve(settings.redis_sink_port, sink.live)
        except OSError:
            sink.consumer.close()
            raise
        log.info(
            "Redis sink: %s -> %s (group %s)",
            ", ".join(availability_topics(settings)), settings.redis_url,
            consumer_config(settings)["group.id"],
        )  # fmt: skip
        try:
            sink.run()
        finally:
            server.shutdown()
            server.server_close()
            if read_model is None:
                model.close()


def rebuild_read_model(settings: Settings, *, read_model: RedisReadModel | None = None) -> int:
    """Write every record of the availability topics, from their beginning up to the end offsets
    they had when the rebuild started, into the read model; return how many records were
    written (applied or stale; undecodable ones are logged and skipped).

    Restores a flushed or lost read model; on a live one it changes only keys that are behind.
    It commits no offsets (a throwaway group id) and may run while the sink runs. Raises a
    :class:`redis.exceptions.RedisError` after the client's retries if Redis is down, and
    ``RuntimeError`` if no record arrives for :data:`REBUILD_STALL_S` short of the end: it is
    safe to run again.
    """
    wait_for_cluster(settings)
    check_topics(settings)
    model = read_model or RedisReadModel.from_settings(settings)
    codec = Codec(settings, millis_timestamps=True)
    consumer = Consumer(
        {
            "bootstrap.servers": settings.kafka_bootstrap,
            "group.id": f"{settings.app_id}-redis-rebuild-{uuid.uuid4().hex[:12]}",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
        }
    )
    written = applied = undecodable = 0
    try:
        ends: dict[_Partition, int] = {}
        for topic in availability_topics(settings):
            meta = consumer.list_topics(topic, timeout=10).topics[topic]
            for partition in meta.partitions:
                low, high = consumer.get_watermark_offsets(
                    TopicPartition(topic, partition), timeout=10
                )
                if high > low:
                    ends[(topic, partition)] = high
        consumer.assign([TopicPartition(t, p, OFFSET_BEGINNING) for t, p in ends])
        last_progress = time.monotonic()
        while ends:
            batch: list[Message] = []
            for msg in consumer.consume(settings.redis_batch, POLL_S):
                part = (msg.topic() or "", msg.partition() or 0)
                error = msg.error()
                if error is not None:
                    if error.code() == KafkaError._PARTITION_EOF:
                        ends.pop(part, None)
                    else:
                        log.warning("rebuild consumer: %s", error)
                    continue
                offset = msg.offset() or 0
                end = ends.get(part)
                if end is None or offset >= end:
                    continue
                batch.append(msg)
                if offset + 1 >= end:
                    del ends[part]
            if batch:
                records, bad = decode_batch(codec, batch)
                result = model.write(records)
                written += result.total
                applied += result.applied
                undecodable += len(bad)
                last_progress = time.monotonic()
            elif time.monotonic() - last_progress > REBUILD_STALL_S:
                raise RuntimeError(
                    f"rebuild stalled: no record for {REBUILD_STALL_S:.0f}s, still short of the "
                    f"end of {sorted(ends)}"
                )
    finally:
        consumer.close()
        if read_model is None:
            model.close()
    log.info(
        "rebuilt the Redis read model: %d records written (%d applied, %d already current), "
        "%d undecodable skipped", written, applied, written - applied, undecodable,
    )  # fmt: skip
    return written
