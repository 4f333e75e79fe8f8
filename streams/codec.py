"""Avro in the Confluent wire format, through the schema registry.

:class:`Codec` wraps confluent-kafka's ``AvroSerializer``/``AvroDeserializer`` (which cache schemas
by id and subject). Decoding never raises anything but :class:`DecodeError`, whose ``reason`` is the
dead-letter reason: ``undecodable`` (not the wire format, or bytes that do not match the writer
schema) or ``unknown_schema`` (a schema id the registry does not know).
"""

from __future__ import annotations

from typing import Any

from confluent_kafka.schema_registry import SchemaRegistryClient, SchemaRegistryError
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext

from invsync.settings import Settings
from streams.topics import TopicSpec, schema_text


class DecodeError(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def registry_client(settings: Settings) -> SchemaRegistryClient:
    return SchemaRegistryClient({"url": settings.schema_registry_url})


class Codec:
    """Encode and decode the values of the topics in :mod:`streams.topics`.

    Serialising registers the topic's schema under ``<topic>-value`` on first use (the registry
    enforces BACKWARD compatibility). Deserialising uses the writer's schema found by the
    record's schema id, so producers may evolve compatibly without redeploying the worker.
    """

    def __init__(self, settings: Settings, registry: SchemaRegistryClient | None = None) -> None:
        self.settings = settings
        self.registry = registry or registry_client(settings)
        self._serializers: dict[str, AvroSerializer] = {}
        self._deserializer = AvroDeserializer(self.registry)

    def _serializer(self, spec: TopicSpec) -> AvroSerializer:
        serializer = self._serializers.get(spec.schema)
        if serializer is None:
            serializer = AvroSerializer(self.registry, schema_text(spec.schema))
            self._serializers[spec.schema] = serializer
        return serializer

    def encode(self, spec: TopicSpec, value: dict[str, Any]) -> bytes:
        topic = spec.full_name(self.settings)
        data = self._serializer(spec)(value, SerializationContext(topic, MessageField.VALUE))
        assert data is not None
        return data

    def decode(self, topic: str, data: bytes | None) -> dict[str, Any]:
        if not data:
            raise DecodeError("undecodable", "empty value")
        try:
            record = self._deserializer(data, SerializationContext(topic, MessageField.VALUE))
        except SchemaRegistryError as exc:
            if exc.http_status_code == 404:
                raise DecodeError("unknown_schema", str(exc)) from None
            raise  # the registry is unreachable or failing: not the record's fault
        except Exception as exc:  # fastavro raises many types on malformed bytes
            raise DecodeError("undecodable", f"{type(exc).__name__}: {exc}") from None
        if not isinstance(record, dict):
            raise DecodeError("undecodable", f"not a record: {type(record).__name__}")
        return record

    def register_all(self, specs: list[TopicSpec]) -> dict[str, int]:
        """Register every topic's schema (idempotent); returns subject -> schema id."""
        from confluent_kafka.schema_registry import Schema

        ids = {}
        for spec in specs:
            subject = f"{spec.full_name(self.settings)}-value"
            ids[subject] = self.registry.register_schema(
                subject, Schema(schema_text(spec.schema), "AVRO")
            )
        return ids
