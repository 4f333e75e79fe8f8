"""The read model's pure helpers: key naming, record encoding, newest record per key.

The version check itself runs in Redis (a Lua script): tests/integration/test_redis_sink.py.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from invsync.settings import load_settings
from sinks.read_model import (
    KEY_PREFIX,
    WriteResult,
    decode_record,
    encode_record,
    key_prefix,
    newest_per_key,
    redis_key,
)


def record(sku: str = "S1", location: str = "L1", version: int = 1, **extra: Any) -> dict:
    return {"channel": "web", "sku": sku, "location": location, "version": version} | extra


def test_keys_are_per_channel_sku_and_location_under_the_deployment_prefix() -> None:
    assert redis_key(KEY_PREFIX, "web", "S1", "L1") == "invsync:avail:web:S1|L1"
    assert key_prefix(load_settings(topic_prefix="")) == "invsync:avail"
    assert key_prefix(load_settings(topic_prefix="t1.")) == "t1.invsync:avail"


def test_a_colon_in_a_sku_or_location_cannot_make_two_positions_share_a_key() -> None:
    assert redis_key(KEY_PREFIX, "web", "a:b", "c") != redis_key(KEY_PREFIX, "web", "a", "b:c")


def test_records_are_stored_as_json_with_timestamps_in_millis() -> None:
    as_of = datetime(2026, 11, 23, 12, 0, 0, 123000, tzinfo=UTC)
    stored = encode_record(record(as_of=as_of, last_count_at=None, confidence=0.5, frozen=True))
    back = decode_record(stored)
    assert back["as_of"] == int(as_of.timestamp() * 1000) == 1795435200123
    assert back["last_count_at"] is None
    assert back | {"as_of": as_of} == record(
        as_of=as_of, last_count_at=None, confidence=0.5, frozen=True
    )
    assert decode_record(encode_record(back)) == back  # millis stay millis


def test_a_naive_datetime_is_read_as_utc() -> None:
    naive = record(as_of=datetime(1970, 1, 1, 0, 0, 1))
    assert decode_record(encode_record(naive))["as_of"] == 1000


def test_the_newest_record_per_key_wins_and_the_first_of_equal_versions_is_kept() -> None:
    batch = [
        record("S1", version=3, tag="a"),
        record("S1", version=5, tag="b"),
        record("S1", version=4, tag="c"),
        record("S2", version=2, tag="d"),
        record("S2", version=2, tag="e"),
        record("S1", "L2", version=1, tag="f"),
    ]
    newest = newest_per_key(batch)
    assert {ident: r["tag"] for ident, r in newest.items()} == {
        ("web", "S1", "L1"): "b",
        ("web", "S2", "L1"): "d",
        ("web", "S1", "L2"): "f",
    }


def test_a_write_result_counts_every_record_once() -> None:
    assert WriteResult(applied=3, stale=2).total == 5
