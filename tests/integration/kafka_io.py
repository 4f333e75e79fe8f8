"""Produce and read topics of a test deployment, through the real broker and registry."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition

from invsync.settings import Settings
from streams.codec import Codec
from streams.topics import TopicSpec


def producer(settings: Settings) -> Producer:
    return Producer(
        {
            "bootstrap.servers": settings.kafka_bootstrap,
            "partitioner": "murmur2_random",  # same key -> partition as the Java client/aiokafka
            "acks": "all",
            "linger.ms": 5,
        }
    )


def produce(
    settings: Settings, items: Iterable[tuple[TopicSpec, str, dict[str, Any] | bytes]]
) -> int:
    """Produce (spec, key, value-dict-or-raw-bytes) in order; wait for every delivery."""
    codec = Codec(settings)
    out = producer(settings)
    errors: list[Any] = []
    n = 0
    for spec, key, value in items:
        data = value if isinstance(value, bytes) else codec.encode(spec, value)
        out.produce(
            spec.full_name(settings),
            key=key.encode(),
            value=data,
            on_delivery=lambda err, _msg: errors.append(err) if err else None,
        )
        out.poll(0)
        n += 1
    remaining = out.flush(30)
    assert remaining == 0 and not errors, f"delivery failed: {errors[:3]} ({remaining} left)"
    return n


def read_all(settings: Settings, topic: str, timeout_s: float = 20) -> list[dict[str, Any]]:
    """Every record of ``topic`` up to its current end, decoded, in partition/offset order."""
    codec = Codec(settings)
    return read_all_with(settings, topic, lambda data: codec.decode(topic, data), timeout_s)


def read_all_with(
    settings: Settings, topic: str, decode: Callable[[bytes], Any], timeout_s: float = 20
) -> list[dict[str, Any]]:
    """Every record of ``topic`` up to its current end, decoded by ``decode``."""
    consumer = Consumer(
        {
            "bootstrap.servers": settings.kafka_bootstrap,
            "group.id": f"reader-{time.monotonic_ns()}",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
        }
    )
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        ends = {p: _end_offset(consumer, TopicPartition(topic, p)) for p in partitions}
        todo = {p for p, high in ends.items() if high > 0}
        consumer.assign([TopicPartition(topic, p, 0) for p in todo])
        records: list[dict[str, Any]] = []
        deadline = time.monotonic() + timeout_s
        while todo and time.monotonic() < deadline:
            for msg in consumer.consume(500, timeout=0.5):
                if msg.error():
                    continue
                p = msg.partition()
                if msg.offset() >= ends[p]:
                    todo.discard(p)
                    continue
                value = decode(msg.value())
                value["_key"] = msg.key().decode() if msg.key() else None
                value["_partition"], value["_offset"] = p, msg.offset()
                value["_timestamp"] = msg.timestamp()[1]  # broker/producer time, millis
                records.append(value)
                if msg.offset() + 1 >= ends[p]:
                    todo.discard(p)
        assert not todo, f"could not read {topic} to its end within {timeout_s}s"
        return records
    finally:
        consumer.close()


_TRANSIENT = frozenset(
    {
        KafkaError.NOT_LEADER_FOR_PARTITION,
        KafkaError.LEADER_NOT_AVAILABLE,
        KafkaError.UNKNOWN_TOPIC_OR_PART,
        KafkaError._TIMED_OUT,
        KafkaError._TRANSPORT,
    }
)


def _end_offset(consumer: Consumer, tp: TopicPartition, timeout_s: float = 30) -> int:
    """The partition's end offset; retried while the broker answers with a retriable error (a
    leader being elected for a topic just created, or moving while the broker is busy)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return int(consumer.get_watermark_offsets(tp, timeout=10)[1])
        except KafkaException as exc:
            error = exc.args[0]
            transient = error.retriable() or error.code() in _TRANSIENT
            if not transient or time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def latest_by_key(records: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    latest: dict[str, dict[str, Any]] = {}
    for record in records:  # partition/offset order: later wins (a compacted topic's view)
        latest[record["_key"]] = record
    return latest


def poll_until(
    check: Callable[[], Any], timeout_s: float, what: str, interval_s: float = 0.5
) -> Any:
    """Call ``check`` until it returns a truthy value or the deadline passes (then fail)."""
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}; last: {last!r}")
