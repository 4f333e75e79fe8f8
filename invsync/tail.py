"""``invsync tail TOPIC``: print a topic's records, decoded from Avro, as JSON lines.

Each line is ``{"topic", "partition", "offset", "timestamp", "key", "value"}``: ``key`` is the
UTF-8 key (or null), ``timestamp`` the Kafka record timestamp as ISO-8601 UTC, ``value`` the record
decoded through the schema registry (:class:`streams.codec.Codec`) with Avro timestamps
(``timestamp-millis``) as **ISO-8601 UTC strings** (``2024-05-01T12:00:00.123Z``) and bytes fields
as **base64** strings; a tombstone has ``"value": null``. A record that cannot be decoded prints
``{"undecodable": <reason>, "detail", "topic", "partition", "offset", "key"}`` instead, and tailing
goes on.

:func:`read_records` reads a whole topic (up to its current end) for tests and scripts; it keeps
timestamps as int millis and bytes as bytes, so values compare equal to what was produced.
"""

from __future__ import annotations

import base64
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from invsync.settings import Settings

POLL_S = 0.5
BATCH = 500
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def full_topic(settings: Settings, topic: str) -> str:
    """``topic`` with the settings' prefix, unless it already carries it."""
    prefix = settings.topic_prefix
    return topic if topic.startswith(prefix) else prefix + topic


def consumer_config(settings: Settings, *, from_beginning: bool) -> dict[str, Any]:
    """A throwaway group that never commits: tailing leaves no trace on the cluster."""
    return {
        "bootstrap.servers": settings.kafka_bootstrap,
        "group.id": f"invsync-tail-{uuid.uuid4().hex[:12]}",
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": "earliest" if from_beginning else "latest",
        "enable.partition.eof": True,
    }


# --- converting decoded values ------------------------------------------------------------------


def _millis(value: datetime) -> int:
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return (value - EPOCH) // timedelta(milliseconds=1)


def _iso(value: datetime) -> str:
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def to_plain(value: Any, *, for_json: bool) -> Any:
    """Datetimes -> ISO strings (``for_json``) or int millis; bytes -> base64 (``for_json``)."""
    if isinstance(value, dict):
        return {k: to_plain(v, for_json=for_json) for k, v in value.items()}
    if isinstance(value, list):
        return [to_plain(v, for_json=for_json) for v in value]
    if isinstance(value, datetime):
        return _iso(value) if for_json else _millis(value)
    if isinstance(value, bytes) and for_json:
        return base64.b64encode(value).decode("ascii")
    return value


def _key(raw: bytes | None) -> str | None:
    return None if raw is None else raw.decode("utf-8", errors="replace")


def decode_message(codec: Any, msg: Any, *, for_json: bool) -> dict[str, Any]:
    """One consumed message as a dict (see the module doc); never raises on a bad value."""
    from confluent_kafka.schema_registry import SchemaRegistryError

    from streams.codec import DecodeError

    where = {"topic": msg.topic(), "partition": msg.partition(), "offset": msg.offset()}
    key = _key(msg.key())
    data = msg.value()
    if data is None:
        value = None
    else:
        try:
            value = to_plain(codec.decode(msg.topic(), data), for_json=for_json)
        except DecodeError as exc:
            return {"undecodable": exc.reason, "detail": exc.detail, **where, "key": key}
        except SchemaRegistryError as exc:
            return {"undecodable": "registry_error", "detail": str(exc), **where, "key": key}
    _, ts = msg.timestamp()
    timestamp: Any = ts
    if for_json and ts is not None and ts >= 0:
        timestamp = _iso(EPOCH + timedelta(milliseconds=ts))
    return {**where, "timestamp": timestamp, "key": key, "value": value}


# --- partitions ---------------------------------------------------------------------------------


class TopicUnavailable(LookupError):
    """The topic does not exist, or Kafka did not answer."""


def _partitions(consumer: Any, topic: str, timeout_s: float) -> list[int]:
    from confluent_kafka import KafkaException

    try:
        metadata = consumer.list_topics(topic, timeout=timeout_s).topics.get(topic)
    except KafkaException as exc:
        raise TopicUnavailable(
            f"Kafka did not answer (INVSYNC_KAFKA_BOOTSTRAP): {exc.args[0]}; "
            "is it running? Locally: `invsync stack up`"
        ) from None
    if metadata is None or metadata.error is not None or not metadata.partitions:
        reason = metadata.error if metadata is not None else "unknown"
        raise TopicUnavailable(
            f"topic {topic!r} not found ({reason}); is INVSYNC_TOPIC_PREFIX right?"
        )
    return sorted(metadata.partitions)


# --- tail ---------------------------------------------------------------------------------------


def run(settings: Settings, topic: str, *, from_beginning: bool, limit: int) -> None:
    """Print ``topic``'s records as JSON lines until ``limit`` records (0 = never) or Ctrl-C."""
    from confluent_kafka import OFFSET_BEGINNING, OFFSET_END, Consumer, TopicPartition

    from streams.codec import Codec

    name = full_topic(settings, topic)
    consumer = Consumer(consumer_config(settings, from_beginning=from_beginning))
    codec = Codec(settings)
    printed = 0
    try:
        start = OFFSET_BEGINNING if from_beginning else OFFSET_END
        partitions = _partitions(consumer, name, 10.0)
        consumer.assign([TopicPartition(name, p, start) for p in partitions])
        while not limit or printed < limit:
            msg = consumer.poll(POLL_S)
            if msg is None or _skip(msg):
                continue
            line = orjson.dumps(decode_message(codec, msg, for_json=True))
            sys.stdout.buffer.write(line + b"\n")
            sys.stdout.buffer.flush()
            printed += 1
    except TopicUnavailable as exc:
        print(exc, file=sys.stderr)
        raise SystemExit(1) from None
    except KeyboardInterrupt:
        pass
    except BrokenPipeError:  # e.g. piped into `head`
        sys.stderr.close()
    finally:
        consumer.close()


def _is_eof(msg: Any) -> bool:
    from confluent_kafka import KafkaError

    err = msg.error()
    return err is not None and err.code() == KafkaError._PARTITION_EOF


def _skip(msg: Any) -> bool:
    """True for consumer events that are not records: partition EOF (silently) and non-fatal
    errors (reported on stderr; the client retries). A fatal error is raised."""
    from confluent_kafka import KafkaException

    err = msg.error()
    if err is None:
        return False
    if _is_eof(msg):
        return True
    if err.fatal():
        raise KafkaException(err)
    print(f"consumer: {err}", file=sys.stderr)
    return True


# --- read a whole topic -------------------------------------------------------------------------


def read_records(
    settings: Settings, topic: str, *, timeout_s: float = 30.0
) -> list[dict[str, Any]]:
    """Every record of ``topic`` from the beginning up to its end offsets at the time of the call.

    Returns dicts as :func:`decode_message` with ``for_json=False`` (timestamps int millis, bytes
    as bytes), in partition then offset order; undecodable records are included with their
    ``undecodable`` reason. Raises :class:`TimeoutError` if the end is not reached in ``timeout_s``.
    """
    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

    from streams.codec import Codec

    name = full_topic(settings, topic)
    deadline = time.monotonic() + timeout_s
    consumer = Consumer(consumer_config(settings, from_beginning=True))
    codec = Codec(settings)
    records: list[dict[str, Any]] = []
    try:
        ends = _end_offsets(consumer, name, timeout_s)
        pending = {p for p, (low, high) in ends.items() if high > low}
        if not pending:
            return []
        consumer.assign([TopicPartition(name, p, OFFSET_BEGINNING) for p in sorted(pending)])
        while pending:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(
                    f"{name}: end not reached within {timeout_s}s; "
                    f"partitions still behind: {sorted(pending)}"
                )
            for msg in consumer.consume(BATCH, min(POLL_S, remaining)):
                _take(msg, codec, ends, pending, records)
    finally:
        consumer.close()
    records.sort(key=lambda r: (r["partition"], r["offset"]))
    return records


def _take(
    msg: Any,
    codec: Any,
    ends: dict[int, tuple[int, int]],
    pending: set[int],
    records: list[dict[str, Any]],
) -> None:
    """Keep one consumed message if it is below its partition's end; note reaching the end."""
    is_record = not _skip(msg)
    if not is_record and not _is_eof(msg):
        return  # a non-fatal error, reported by _skip
    partition, offset = msg.partition(), msg.offset()
    if partition not in pending or offset is None:
        return  # a partition already read to its end
    end = ends[partition][1]
    if is_record and offset < end:
        records.append(decode_message(codec, msg, for_json=False))
    if offset >= end - 1:  # the last record, or EOF at/after the end
        pending.discard(partition)


def _end_offsets(consumer: Any, topic: str, timeout_s: float) -> dict[int, tuple[int, int]]:
    from confluent_kafka import TopicPartition

    ends = {}
    for p in _partitions(consumer, topic, timeout_s):
        offsets = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout_s)
        if offsets is None:
            raise TimeoutError(f"{topic}[{p}]: no watermark offsets within {timeout_s}s")
        ends[p] = (int(offsets[0]), int(offsets[1]))
    return ends
