"""Avro in the Confluent wire format, through the schema registry.

Schemas are registered and looked up with confluent-kafka's ``SchemaRegistryClient``; the
per-record work is fastavro's ``schemaless_reader``/``schemaless_writer`` with schemas parsed
once per id (confluent's ``AvroSerializer``/``AvroDeserializer`` cost ~50 µs a record here, most
of the fold's decode time). ``tests/unit/test_codec.py`` proves both directions are
byte-compatible with confluent's serde.

With ``millis_timestamps=True`` (the worker's codec) ``timestamp-millis`` fields decode to
the int they are on the wire instead of a ``datetime`` (about half the decode time), and are
encoded from ints only (a fifth less encode time: no per-field logical-type conversion); the
domain works in millis anyway. Tools that print records keep datetimes.

Decoding never raises anything but :class:`DecodeError`, whose ``reason`` is the dead-letter
reason: ``undecodable`` (not the wire format, or bytes that do not match the writer schema) or
``unknown_schema`` (a schema id the registry does not know). A registry that cannot be reached is
not the record's fault: that raises (after the client's own retries) and stops the batch.
"""

from __future__ import annotations

import io
from typing import Any

import fastavro
import orjson
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient, SchemaRegistryError

from invsync.settings import Settings
from streams.topics import TopicSpec, schema_text

MAGIC = 0


class DecodeError(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def registry_client(settings: Settings) -> SchemaRegistryClient:
    """A client with the library's retries; ``mock://`` gives its in-memory mock (unit tests)."""
    return SchemaRegistryClient.new_client(
        {
            "url": settings.schema_registry_url,
            "timeout": 10,  # seconds; without one a lost request waits forever
            "max.retries": 5,
            "retries.wait.ms": 500,
            "retries.max.wait.ms": 5000,
        }
    )


class Codec:
    """Encode and decode the values of the topics in :mod:`streams.topics`.

    Encoding registers the topic's schema under ``<topic>-value`` on first use (the registry
    enforces BACKWARD compatibility). Decoding uses the writer's schema found by the record's
    schema id, so producers may evolve compatibly without redeploying the worker.
    """

    def __init__(
        self,
        settings: Settings,
        registry: SchemaRegistryClient | None = None,
        *,
        millis_timestamps: bool = False,
    ) -> None:
        self.settings = settings
        self.registry = registry or registry_client(settings)
        self.millis_timestamps = millis_timestamps
        self._writers: dict[str, tuple[bytes, Any]] = {}  # subject -> (header, parsed schema)
        self._readers: dict[int, Any] = {}  # schema id -> parsed writer schema

    def _writer(self, spec: TopicSpec) -> tuple[bytes, Any]:
        subject = f"{spec.full_name(self.settings)}-value"
        writer = self._writers.get(subject)
        if writer is None:
            text = schema_text(spec.schema)
            schema_id = self.registry.register_schema(subject, Schema(text, "AVRO"))
            header = bytes([MAGIC]) + schema_id.to_bytes(4, "big")
            parsed = orjson.loads(text)
            if self.millis_timestamps:  # same bytes for int millis, written without conversion
                parsed = _without_timestamp_types(parsed)
            writer = self._writers[subject] = (header, fastavro.parse_schema(parsed))
        return writer

    def encode(self, spec: TopicSpec, value: dict[str, Any]) -> bytes:
        header, schema = self._writer(spec)
        out = io.BytesIO()
        out.write(header)
        fastavro.schemaless_writer(out, schema, value)
        return out.getvalue()

    def _reader(self, schema_id: int) -> Any:
        schema = self._readers.get(schema_id)
        if schema is None:
            try:
                text = self.registry.get_schema(schema_id).schema_str
            except SchemaRegistryError as exc:
                if exc.http_status_code == 404:
                    raise DecodeError("unknown_schema", f"schema id {schema_id}: {exc}") from None
                raise
            parsed = orjson.loads(text or "")
            if self.millis_timestamps:
                parsed = _without_timestamp_types(parsed)
            schema = self._readers[schema_id] = fastavro.parse_schema(parsed)
        return schema

    def decode(self, topic: str, data: bytes | None) -> dict[str, Any]:
        """The record in ``data`` (``topic`` is for messages only)."""
        if not data or len(data) < 5 or data[0] != MAGIC:
            raise DecodeError("undecodable", f"not the Confluent wire format ({topic})")
        schema = self._reader(int.from_bytes(data[1:5], "big"))
        buffer = io.BytesIO(data)
        buffer.seek(5)
        try:
            record = fastavro.schemaless_reader(buffer, schema, None)
        except Exception as exc:  # fastavro raises many types on malformed bytes
            raise DecodeError("undecodable", f"{type(exc).__name__}: {exc}") from None
        if not isinstance(record, dict) or buffer.tell() != len(data):
            raise DecodeError("undecodable", "bytes do not match the writer schema")
        return record

    def register_all(self, specs: list[TopicSpec]) -> None:
        """Register every topic's schema now (idempotent), so start-up fails on a bad registry."""
        for spec in specs:
            self._writer(spec)


def _without_timestamp_types(schema: Any) -> Any:
    """``schema`` with its timestamp-millis longs read as plain longs."""
    if isinstance(schema, dict):
        if schema.get("logicalType") == "timestamp-millis":
            return {k: v for k, v in schema.items() if k != "logicalType"}
        return {k: _without_timestamp_types(v) for k, v in schema.items()}
    if isinstance(schema, list):
        return [_without_timestamp_types(item) for item in schema]
    return schema
