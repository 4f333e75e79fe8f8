"""Network aggregates end to end: sales and counts -> availability.web -> contributions ->
the group-aggregates table -> availability.web.groups (and the Redis read model).

The oracle is the worker's own per-location output: the latest group record of each sku must
carry the sum of the latest ``offered`` of the group's locations as read from
``availability.web`` once those carry every produced event, with the status of that sum and the
smallest confidence of the locations offering, before and after the worker is killed and
restarted. Every assertion polls with a deadline.
"""

from __future__ import annotations

import random
import signal
from pathlib import Path
from typing import Any

import redis

from sinks.read_model import (
    RedisReadModel,
    decode_record,
    encode_record,
    key_prefix,
    redis_client,
)
from sinks.redis_sink import rebuild_read_model
from streams import topics
from tests.integration.conftest import Deployment
from tests.integration.kafka_io import latest_by_key, poll_until, produce, read_all
from tests.integration.test_worker_e2e import MINUTE, T0, Item, Mismatch, as_events, count, sale
from tests.reference import reference_positions

POLICY = """
[groups.ship]
location_types = ["dc"]
locations = ["S1", "S2"]

[channels.web]
location_types = ["dc", "store"]
aggregates = ["ship"]
min_confidence = 0.0
thresholds = { out = 0, low = 5 }
"""
GROUP = "ship"
IN_GROUP = ("S1", "S2", "DC1")
LOCATIONS = (*IN_GROUP, "S3")  # S3 sells for web too, but is not in the group
SKUS = ("SKU1", "SKU2")


def stock_events(seed: int, start: int, n_sales: int) -> list[Item]:
    """A count per sku-location, then sales (some returns) spread over them, in time order."""
    rnd = random.Random(seed)
    items: list[Item] = [
        count(seed * 1000 + i, sku, loc, start, rnd.randint(30, 90))
        for i, (sku, loc) in enumerate((s, loc) for s in SKUS for loc in LOCATIONS)
    ]
    for i in range(n_sales):
        sku, loc = rnd.choice(SKUS), rnd.choice(LOCATIONS)
        at = start + (i + 1) * MINUTE // 10
        items.append(sale(seed * 1000 + 100 + i, sku, loc, at, rnd.choice([1, 1, 2, 3, -1])))
    return items


def expected_offered(items: list[Item]) -> dict[str, int]:
    """key -> what web offers there in the end: all of on hand (minimum confidence 0, no
    reservations, no buffers), floored at 0 (the reference fold of tests/reference.py)."""
    return {k: max(0, on_hand) for k, (on_hand, _) in reference_positions(as_events(items)).items()}


def aggregates_match(dep: Deployment, items: list[Item]) -> dict[str, Any] | Mismatch:
    """The latest group record of every sku == the sums over the group's latest per-location
    records, once those offer what the reference says (not by version: a channel publisher may
    leave out versions that change nothing for the channel); the group records by key if so."""
    settings = dep.settings
    per_location = latest_by_key(read_all(settings, topics.availability("web").full_name(settings)))
    offered = {k: r["offered"] for k, r in per_location.items()}
    if offered != expected_offered(items):
        return Mismatch(waiting_for="availability.web", offered=offered)
    groups = latest_by_key(read_all(settings, topics.group_availability("web").full_name(settings)))
    wrong = {}
    for sku in SKUS:
        members = [per_location[topics.make_key(sku, loc)] for loc in IN_GROUP]
        offering = [r["confidence"] for r in members if r["offered"] > 0]
        total = sum(r["offered"] for r in members)
        want = {
            "offered": total,
            "status": "out" if total <= 0 else "low" if total <= 5 else "in",
            "confidence": min(offering, default=1.0),
        }
        record = groups.get(f"{GROUP}|{sku}")
        got = None if record is None else {name: record[name] for name in want}
        if got != want:
            wrong[sku] = {"want": want, "got": got}
        elif record is not None:  # published on a change of the above only: may lag behind
            assert record["version"] <= sum(r["version"] for r in members)
            assert record["offering"] <= record["locations"] <= len(IN_GROUP)
    if wrong:
        return Mismatch(wrong)
    return groups


def assert_aggregates_reach_the_sums(dep: Deployment, items: list[Item]) -> dict[str, Any]:
    try:
        found: dict[str, Any] = poll_until(
            lambda: aggregates_match(dep, items), 180, "group records = sums of the locations"
        )
        return found
    except AssertionError:
        print(dep.logs())
        raise


def test_group_records_sum_the_latest_offer_of_the_group_locations_across_a_restart(
    deployment: Deployment, tmp_path: Path
) -> None:
    policy = tmp_path / "channels.toml"
    policy.write_text(POLICY)
    deployment.env["INVSYNC_CHANNEL_POLICY"] = str(policy)
    settings = deployment.settings

    first = stock_events(seed=1, start=T0, n_sales=300)
    produce(settings, first)
    worker = deployment.start_worker("w1")
    groups = assert_aggregates_reach_the_sums(deployment, first)
    for sku in SKUS:
        record = groups[f"{GROUP}|{sku}"]
        assert (record["channel"], record["group"], record["sku"]) == ("web", GROUP, sku)
        assert record["offered"] > 0, "a sum worth checking"

    # more events, the worker killed while it folds them, restarted: nothing lost or doubled
    second = stock_events(seed=2, start=T0 + 60 * MINUTE, n_sales=600)
    produce(settings, second[:300])
    deployment.stop_worker(worker, signal.SIGKILL)
    deployment.start_worker("w1")
    produce(settings, second[300:])
    groups = assert_aggregates_reach_the_sums(deployment, first + second)
    assert read_all(settings, topics.DEAD_LETTERS.full_name(settings)) == []

    # the Redis read model keeps each group record under its own key
    client = redis_client(settings.redis_url)
    model = RedisReadModel(client, key_prefix(settings))
    try:
        rebuild_read_model(settings, read_model=model)
        for sku in SKUS:
            key = f"{settings.topic_prefix}invsync:avail:web:group:{GROUP}|{sku}"
            stored = client.hget(key, "r")
            assert isinstance(stored, bytes), f"{key} not in Redis"
            published = {k: v for k, v in groups[f"{GROUP}|{sku}"].items() if k[0] != "_"}
            want = decode_record(encode_record(published))  # timestamps as millis
            assert decode_record(stored) == want == model.get_group("web", GROUP, sku)
            assert int(client.hget(key, "version") or 0) == want["version"]
    finally:
        _delete_keys(client, f"{key_prefix(settings)}:*")
        model.close()


def _delete_keys(client: redis.Redis, pattern: str) -> None:
    keys = list(client.scan_iter(match=pattern, count=1000))
    if keys:
        client.delete(*keys)
