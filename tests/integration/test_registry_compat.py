"""confluent-kafka's Avro serde against the local stack's Apicurio Registry (ccompat v7 API).

What the app relies on: round trip, global BACKWARD compatibility, schema evolution in both
directions, rejection of an incompatible change; subjects are ``<topic>-value``. The serdes use
``SERDE_CONF`` (topic name strategy, auto-registration), the configuration recommended in
``invsync.stack``; the round trip is also checked with the client's defaults, whose ASSOCIATED
strategy first probes ``/associations`` (a route Apicurio does not have) and falls back to the
topic name. Each test uses its own topic name, hence its own subject.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.schema_registry.error import SchemaRegistryError
from confluent_kafka.serialization import MessageField, SerializationContext

from invsync.settings import load_settings

pytestmark = pytest.mark.integration

V1: dict[str, Any] = {
    "type": "record",
    "name": "StockProbe",
    "namespace": "invsync.test",
    "fields": [{"name": "sku", "type": "string"}, {"name": "qty", "type": "int"}],
}
# BACKWARD-compatible: the added field has a default, so a V2 reader can read V1 data.
V2 = V1 | {"fields": [*V1["fields"], {"name": "location", "type": "string", "default": "none"}]}
# Not BACKWARD-compatible: a V3 reader has no value for `channel` in V1 data.
V3_NO_DEFAULT = V1 | {"fields": [*V1["fields"], {"name": "channel", "type": "string"}]}

# no /associations probe before the topic name strategy (see invsync.stack)
SERDE_CONF = {"subject.name.strategy.type": "TOPIC"}

OLD = {"sku": "A-1", "qty": 3}
NEW = {"sku": "B-2", "qty": 5, "location": "store-7"}


def _client() -> SchemaRegistryClient:
    """A new client, so nothing is answered from another client's cache."""
    # the client waits forever by default; a registry that does not answer must fail the test
    return SchemaRegistryClient({"url": load_settings().schema_registry_url, "timeout": 10})


@pytest.fixture
def registry(local_stack: None) -> SchemaRegistryClient:
    return _client()


@pytest.fixture
def topic(registry: SchemaRegistryClient) -> Iterator[str]:
    name = f"compat-{uuid.uuid4().hex[:12]}"
    yield name
    # keeps the registry's in-memory store small on a long-running stack
    if f"{name}-value" in registry.get_subjects():
        registry.delete_subject(f"{name}-value", permanent=False)


def _value(topic: str) -> SerializationContext:
    return SerializationContext(topic, MessageField.VALUE)


def _schema_id(data: bytes) -> int:
    assert data[0] == 0, "Confluent wire format starts with magic byte 0"
    return int.from_bytes(data[1:5], "big")


def test_global_compatibility_is_backward(registry: SchemaRegistryClient) -> None:
    assert registry.get_compatibility() == "BACKWARD"


def test_association_probe_answers_404(registry: SchemaRegistryClient, topic: str) -> None:
    """The serializer first asks for an association of the topic; only a 404 lets it go on."""
    url = (
        f"{load_settings().schema_registry_url}/associations/resources/-/{topic}"
        "?resourceType=topic&associationType=value"
    )
    with pytest.raises(urllib.error.HTTPError) as answer:
        urllib.request.urlopen(url, timeout=10)
    assert answer.value.code == 404


@pytest.mark.parametrize("conf", [SERDE_CONF, None], ids=["topic-strategy", "client-defaults"])
def test_avro_round_trip(
    registry: SchemaRegistryClient, topic: str, conf: dict[str, str] | None
) -> None:
    data = AvroSerializer(registry, json.dumps(V1), conf=conf)(OLD, _value(topic))
    assert data is not None

    latest = registry.get_latest_version(f"{topic}-value")  # TopicNameStrategy subject
    assert latest.version == 1
    assert latest.schema_id == _schema_id(data)
    assert json.loads(latest.schema.schema_str)["name"] == "StockProbe"
    # a fresh client must fetch the writer schema by id (GET /schemas/ids/{id})
    assert AvroDeserializer(_client(), conf=conf)(data, _value(topic)) == OLD


def test_same_schema_formatted_differently_gets_the_same_id(
    registry: SchemaRegistryClient, topic: str
) -> None:
    """Producers whose schema text differs only in formatting share one id and version."""
    subject = f"{topic}-value"
    compact = registry.register_schema(subject, Schema(json.dumps(V1), "AVRO"))
    pretty = registry.register_schema(subject, Schema(json.dumps(V1, indent=2), "AVRO"))
    assert pretty == compact
    assert registry.get_versions(subject) == [1]


def test_evolved_schema_is_accepted_and_readable_both_ways(
    registry: SchemaRegistryClient, topic: str
) -> None:
    old_data = AvroSerializer(registry, json.dumps(V1), conf=SERDE_CONF)(OLD, _value(topic))
    new_data = AvroSerializer(registry, json.dumps(V2), conf=SERDE_CONF)(NEW, _value(topic))
    assert old_data is not None and new_data is not None

    assert registry.get_versions(f"{topic}-value") == [1, 2]
    assert _schema_id(new_data) != _schema_id(old_data)

    reader = _client()
    old_reader = AvroDeserializer(reader, json.dumps(V1), conf=SERDE_CONF)  # reader schema V1
    new_reader = AvroDeserializer(reader, json.dumps(V2), conf=SERDE_CONF)  # reader schema V2
    assert old_reader(new_data, _value(topic)) == {"sku": "B-2", "qty": 5}  # field dropped
    assert new_reader(old_data, _value(topic)) == OLD | {"location": "none"}  # default filled
    assert new_reader(new_data, _value(topic)) == NEW


def test_incompatible_change_is_rejected(registry: SchemaRegistryClient, topic: str) -> None:
    subject = f"{topic}-value"
    AvroSerializer(registry, json.dumps(V1), conf=SERDE_CONF)(OLD, _value(topic))

    assert registry.test_compatibility(subject, Schema(json.dumps(V3_NO_DEFAULT), "AVRO")) is False
    new_serializer = AvroSerializer(registry, json.dumps(V3_NO_DEFAULT), conf=SERDE_CONF)
    with pytest.raises(SchemaRegistryError) as rejected:
        new_serializer(OLD | {"channel": "web"}, _value(topic))
    assert rejected.value.http_status_code == 409
    assert registry.get_versions(subject) == [1]
