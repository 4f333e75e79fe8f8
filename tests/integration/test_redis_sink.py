"""The Redis read model and its sink against the real broker, registry and Redis.

- the Lua version check never moves a key backwards (shared Redis, a private key prefix);
- the sink writes every channel's availability topic into Redis, the latest version per key;
- Redis down: the sink retries, never commits past what Redis holds, and catches up after;
- a flushed read model is rebuilt from the compacted topics.

Tests that stop Redis run their own ``redis-server`` on a free port; the shared one is never
stopped or flushed, and only keys under a test's own prefix are deleted.
"""

from __future__ import annotations

import random
import subprocess
import threading
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import redis
from confluent_kafka import OFFSET_INVALID, Consumer, TopicPartition
from prometheus_client import REGISTRY

from invsync.settings import Settings, load_settings
from sinks.read_model import RedisReadModel, key_prefix, redis_client
from sinks.redis_sink import availability_topics, rebuild_read_model, run_redis_sink
from streams import topics
from streams.admin import create_topics
from tests.integration.conftest import Deployment, free_port
from tests.integration.kafka_io import poll_until, produce
from tests.integration.test_worker_e2e import Mismatch

T0 = 1_795_435_200_000  # 2026-11-23T12:00:00Z, epoch millis
Pair = tuple[str, str]
Item = tuple[topics.TopicSpec, str, dict[str, Any] | bytes]


def avail(channel: str, sku: str, location: str, version: int, **extra: Any) -> dict[str, Any]:
    """An availability record whose quantities follow its version (so a stale one shows)."""
    return {
        "channel": channel, "sku": sku, "location": location, "on_hand": version,
        "reserved": 0, "atp": version, "offered": version, "status": "in",
        "confidence": 0.9, "version": version, "as_of": T0 + version,
    } | extra  # fmt: skip


def items(channel: str, pairs: list[Pair], versions: range, seed: int) -> list[Item]:
    """Every version of every pair, in a shuffled order (newer before older, too)."""
    spec = topics.availability(channel)
    out: list[Item] = [
        (spec, f"{sku}|{loc}", avail(channel, sku, loc, v)) for sku, loc in pairs for v in versions
    ]
    random.Random(seed).shuffle(out)
    return out


def reference(produced: list[Item]) -> dict[tuple[str, str, str], dict[str, Any]]:
    """The highest version produced per (channel, sku, location)."""
    best: dict[tuple[str, str, str], dict[str, Any]] = {}
    for _spec, _key, value in produced:
        if isinstance(value, bytes):
            continue
        ident = (value["channel"], value["sku"], value["location"])
        if ident not in best or value["version"] > best[ident]["version"]:
            best[ident] = value
    return best


def mismatches(
    model: RedisReadModel, want: dict[tuple[str, str, str], dict[str, Any]]
) -> bool | Mismatch:
    """True if Redis holds exactly the reference record (its produced fields) for every key."""
    wrong: dict[str, Any] = {}
    for channel in sorted({c for c, _s, _l in want}):
        idents = [ident for ident in want if ident[0] == channel]
        got = model.get_many(channel, [(s, loc) for _c, s, loc in idents])
        for ident, stored in zip(idents, got, strict=True):
            expected = want[ident]
            if stored is None or any(stored.get(k) != v for k, v in expected.items()):
                wrong["|".join(ident)] = None if stored is None else stored["version"]
    if wrong:
        return Mismatch(wrong=dict(list(wrong.items())[:5]), count=len(wrong))
    return True


def end_offsets(settings: Settings) -> dict[tuple[str, int], int]:
    consumer = Consumer({"bootstrap.servers": settings.kafka_bootstrap, "group.id": "ends"})
    try:
        return {
            (topic, p): consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
            for topic in availability_topics(settings)
            for p in range(settings.partitions)
        }
    finally:
        consumer.close()


def committed(settings: Settings) -> dict[tuple[str, int], int]:
    """The sink group's committed offsets (0 where it has committed none)."""
    consumer = Consumer(
        {
            "bootstrap.servers": settings.kafka_bootstrap,
            "group.id": f"{settings.app_id}-redis",  # asks; never joins or commits
            "enable.auto.commit": False,
        }
    )
    try:
        parts = [
            TopicPartition(t, p) for t in availability_topics(settings)
            for p in range(settings.partitions)
        ]  # fmt: skip
        return {
            (tp.topic, tp.partition): 0 if tp.offset == OFFSET_INVALID else tp.offset
            for tp in consumer.committed(parts, timeout=10)
        }
    finally:
        consumer.close()


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def http_get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as reply:
            return reply.status, reply.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


@contextmanager
def running_sink(settings: Settings, **kwargs: Any) -> Iterator[None]:
    """The sink in a thread of this process (so its metrics are readable here)."""
    stop = threading.Event()
    errors: list[BaseException] = []

    def target() -> None:
        try:
            run_redis_sink(settings, stop, **kwargs)
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=target, name="redis-sink", daemon=True)
    thread.start()
    try:
        yield
        assert not errors, errors
    finally:
        stop.set()
        thread.join(timeout=30)
        assert not thread.is_alive(), "the sink did not stop within 30s"
    assert not errors, errors


class PrivateRedis:
    """A redis-server of this test's own, without persistence, that it may stop and restart."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        log = (self.tmp / f"redis-{self.port}.log").open("ab")
        self.proc = subprocess.Popen(
            ["/usr/bin/redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
             "--save", "", "--appendonly", "no", "--dir", str(self.tmp)],
            stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        client = redis.Redis(port=self.port, socket_connect_timeout=1)

        def answers() -> bool:
            try:
                return bool(client.ping())
            except redis.ConnectionError:
                return False

        poll_until(answers, 20, f"redis-server on port {self.port}", interval_s=0.1)
        client.close()

    def stop(self) -> None:
        """``redis-cli shutdown nosave``: Redis goes away and comes back empty."""
        if self.proc is None or self.proc.poll() is not None:
            return
        subprocess.run(
            ["redis-cli", "-p", str(self.port), "shutdown", "nosave"], timeout=10, check=False
        )
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)


@pytest.fixture
def private_redis(local_stack: None, tmp_path: Path) -> Iterator[PrivateRedis]:
    server = PrivateRedis(tmp_path)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def shared_model(local_stack: None) -> Iterator[RedisReadModel]:
    """The read model on the stack's Redis, under a key prefix of this test's own."""
    model = RedisReadModel(
        redis_client(load_settings().redis_url), prefix=f"test-{uuid.uuid4().hex[:8]}:avail"
    )
    yield model
    delete_keys(model)
    model.close()


def delete_keys(model: RedisReadModel) -> None:
    keys = list(model.client.scan_iter(match=f"{model.prefix}:*", count=1000))
    if keys:
        model.client.delete(*keys)


def sink_settings(dep: Deployment, **update: Any) -> Settings:
    return dep.settings.model_copy(update={"redis_sink_port": free_port(), **update})


# --- (a) the version check -------------------------------------------------------------------


def test_a_key_never_moves_backwards_and_equal_versions_change_nothing(
    shared_model: RedisReadModel,
) -> None:
    model = shared_model
    assert model.write([avail("web", "S1", "L1", 5)]).applied == 1
    older = model.write([avail("web", "S1", "L1", 3)])
    assert (older.applied, older.stale) == (0, 1)
    assert model.get("web", "S1", ["L1"])["L1"] == avail("web", "S1", "L1", 5)

    same_version = avail("web", "S1", "L1", 5, offered=0, status="out")
    assert model.write([same_version]).stale == 1  # equal version: a no-op (idempotent)
    assert model.get("web", "S1", ["L1"])["L1"] == avail("web", "S1", "L1", 5)

    # out of order within one batch, and beside other keys and another channel
    batch = [
        avail("web", "S1", "L1", 7),
        avail("web", "S1", "L1", 6),
        avail("web", "S1", "L2", 1),
        avail("bopis", "S1", "L1", 2),
        avail("web", "S1", "L1", 4),
    ]
    result = model.write(batch)
    assert (result.applied, result.stale) == (3, 2)
    assert model.get("web", "S1", ["L1", "L2", "L9"]) == {
        "L1": avail("web", "S1", "L1", 7),
        "L2": avail("web", "S1", "L2", 1),
        "L9": None,
    }
    assert model.get("bopis", "S1", ["L1"])["L1"] == avail("bopis", "S1", "L1", 2)
    assert model.write(batch).applied == 0  # the same batch again: nothing moves

    # a query for 1,000 pairs, one round trip, in order, None where nothing is stored
    pairs = [("S1", "L1"), *((f"X{i}", "L1") for i in range(998)), ("S1", "L2")]
    found = model.get_many("web", pairs)
    assert len(found) == 1000 and found[1:999] == [None] * 998
    assert (found[0]["version"], found[-1]["version"]) == (7, 1)  # type: ignore[index]


def test_a_write_to_an_unreachable_redis_raises_after_the_client_retries(
    local_stack: None,
) -> None:
    model = RedisReadModel(redis_client(f"redis://127.0.0.1:{free_port()}/0"))
    with pytest.raises(redis.ConnectionError):
        model.write([avail("web", "S1", "L1", 1)])
    with pytest.raises(redis.ConnectionError):
        model.get_many("web", [("S1", "L1")])
    model.close()


# --- (b) end to end ------------------------------------------------------------------------


def test_the_sink_writes_the_latest_version_of_every_channel_and_key(
    deployment: Deployment,
) -> None:
    settings = sink_settings(deployment, channels=("web", "bopis"))
    create_topics(settings)  # the bopis availability topic
    model = RedisReadModel.from_settings(settings)  # the shared Redis, the deployment's prefix
    assert model.prefix == key_prefix(settings) == f"{settings.topic_prefix}invsync:avail"
    pairs = [(f"SKU{i}", f"S{i % 7}") for i in range(40)] + [("A:B", "C"), ("A", "B:C")]
    produced = items("web", pairs, range(1, 6), seed=1) + items("bopis", pairs[:10], range(1, 4), 2)
    garbage: Item = (topics.availability("web"), "SKU0|S0", b"not avro")
    undecodable = metric("invsync_sink_records_total", sink="redis", outcome="undecodable")
    produce(settings, [*produced[:50], garbage, *produced[50:]])
    want = reference(produced)
    try:
        with running_sink(settings):
            poll_until(lambda: mismatches(model, want), 60, "Redis = max version per key")
            poll_until(lambda: committed(settings) == end_offsets(settings), 30, "all committed")
            status, body = http_get(settings.redis_sink_port, "/livez")
            assert status == 200, body
            status, body = http_get(settings.redis_sink_port, "/metrics")
            assert status == 200 and 'invsync_sink_records_total{outcome="applied"' in body
        assert (
            metric("invsync_sink_records_total", sink="redis", outcome="undecodable")
            == undecodable + 1
        )

        # Everything again from the beginning (a redelivery): every record is stale.
        applied = metric("invsync_sink_records_total", sink="redis", outcome="applied")
        stale = metric("invsync_sink_records_total", sink="redis", outcome="stale")
        with running_sink(settings, from_beginning=True):
            poll_until(
                lambda: metric("invsync_sink_records_total", sink="redis", outcome="stale")
                >= stale + len(produced),
                60, "the sink to re-read both topics",
            )  # fmt: skip
        assert metric("invsync_sink_records_total", sink="redis", outcome="applied") == applied
        assert mismatches(model, want) is True
        assert committed(settings) == end_offsets(settings)
    finally:
        delete_keys(model)
        model.close()


# --- (c) Redis down --------------------------------------------------------------------------


def test_while_redis_is_down_nothing_unwritten_is_committed_and_the_sink_catches_up(
    deployment: Deployment, private_redis: PrivateRedis
) -> None:
    settings = sink_settings(deployment, redis_url=private_redis.url, redis_batch=50)
    model = RedisReadModel.from_settings(settings)
    pairs = [(f"SKU{i}", f"S{i % 5}") for i in range(30)]
    before = items("web", pairs, range(1, 4), seed=3)
    produce(settings, before)
    with running_sink(settings):
        poll_until(lambda: mismatches(model, reference(before)), 60, "phase 1 in Redis")
        written = end_offsets(settings)
        poll_until(lambda: committed(settings) == written, 30, "phase 1 committed")

        failures = metric("invsync_sink_failures_total", sink="redis")
        private_redis.stop()
        new_pairs = [(f"NEW{i}", "S1") for i in range(5)]
        during = items("web", pairs[:15], range(4, 7), 4) + items("web", new_pairs, range(1, 3), 5)
        produce(settings, during)
        target = end_offsets(settings)
        assert target != written

        poll_until(
            lambda: metric("invsync_sink_failures_total", sink="redis") >= failures + 3,
            60, "the sink to fail writing the new records (Redis is down)",
        )  # fmt: skip
        assert committed(settings) == written, "committed past records Redis does not hold"
        assert http_get(settings.redis_sink_port, "/livez")[0] == 200  # down Redis: no restart
        topic = availability_topics(settings)[0]
        poll_until(
            lambda: sum(
                metric("invsync_sink_lag_messages", sink="redis", topic=topic, partition=str(p))
                for p in range(settings.partitions)
            ) == sum(target.values()) - sum(written.values()),
            30, "the sink's lag to show the unwritten records",
        )  # fmt: skip
        assert committed(settings) == written
        retries = metric("invsync_sink_retries_total", sink="redis")

        private_redis.start()  # the same port, empty
        poll_until(lambda: committed(settings) == target, 60, "the sink to catch up")
        # Offsets are committed only after the write: everything they cover is in Redis now.
        assert mismatches(model, reference(during)) is True
        assert metric("invsync_sink_retries_total", sink="redis") >= retries
    # Redis came back empty: what was written before the outage and not since is gone.
    untouched = [("web", s, loc) for s, loc in pairs[15:]]
    assert model.get_many("web", [(s, loc) for _c, s, loc in untouched]) == [None] * 15
    model.close()


# --- (d) rebuild -----------------------------------------------------------------------------


def test_a_rebuild_after_flushall_restores_every_key_at_its_latest_version(
    deployment: Deployment, private_redis: PrivateRedis
) -> None:
    settings = sink_settings(deployment, redis_url=private_redis.url)
    model = RedisReadModel.from_settings(settings)
    pairs = [(f"SKU{i}", f"S{i % 9}") for i in range(60)]
    produced = items("web", pairs, range(1, 5), seed=6)
    produce(settings, produced)
    want = reference(produced)
    with running_sink(settings):
        poll_until(lambda: mismatches(model, want), 60, "the sink to write every key")

    model.client.flushall()
    assert model.get_many("web", pairs) == [None] * len(pairs)
    assert rebuild_read_model(settings) == len(produced)  # the whole topic, stale ones too
    assert mismatches(model, want) is True
    assert model.client.dbsize() == len(pairs)

    assert rebuild_read_model(settings) == len(produced)  # again: nothing moves
    assert mismatches(model, want) is True
    model.close()
