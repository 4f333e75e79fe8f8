"""The codec is byte-compatible with confluent-kafka's Avro serde (unit: mock:// registry)."""

from __future__ import annotations

import struct

import pytest
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext

from invsync.settings import load_settings
from streams import topics
from streams.codec import Codec, DecodeError

SALE = {"event_id": "e1", "source": "pos-1", "sku": "SKU1", "location": "S1",
        "occurred_at": 1_767_225_600_000, "quantity": 2, "transaction_id": None}  # fmt: skip


@pytest.fixture
def codec() -> Codec:
    settings = load_settings(schema_registry_url="mock://codec-test", topic_prefix="u.")
    return Codec(settings, SchemaRegistryClient.new_client({"url": "mock://codec-test"}))


def _ctx(codec: Codec) -> SerializationContext:
    return SerializationContext(topics.POS_SALES.full_name(codec.settings), MessageField.VALUE)


def test_confluent_serializer_output_decodes(codec):
    confluent = AvroSerializer(codec.registry, topics.schema_text("pos_sale"))
    data = confluent(SALE, _ctx(codec))
    decoded = codec.decode("u.pos.sales", data)
    assert decoded["quantity"] == 2 and decoded["sku"] == "SKU1"


def test_encoded_records_decode_with_confluent_deserializer(codec):
    data = codec.encode(topics.POS_SALES, SALE)
    assert data[0] == 0
    decoded = AvroDeserializer(codec.registry)(data, _ctx(codec))
    assert decoded["event_id"] == "e1"
    assert int(decoded["occurred_at"].timestamp() * 1000) == SALE["occurred_at"]


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "undecodable"),
        (b"\xde\xad\xbe\xef not avro", "undecodable"),
        (b"\x00" + struct.pack(">I", 0x7FFFFFF0) + b"\x02", "unknown_schema"),
    ],
)
def test_bad_bytes_raise_a_decode_error_with_a_reason(codec, data, reason):
    with pytest.raises(DecodeError) as caught:
        codec.decode("u.pos.sales", data)
    assert caught.value.reason == reason


def test_truncated_and_padded_records_are_undecodable(codec):
    data = codec.encode(topics.POS_SALES, SALE)
    for bad in (data[:-3], data + b"\x00\x01"):
        with pytest.raises(DecodeError) as caught:
            codec.decode("u.pos.sales", bad)
        assert caught.value.reason == "undecodable"
