"""``make bench-sinks``: what publishing, the sinks and the query API do with a realistic stream
(issue 5's closing measurements). Four phases, each on real processes and the local stack:

1. **Coalescing per channel.** ``invsync simulate``'s stream (:mod:`invsync.simulate`: POS
   sales and returns, cycle counts with an opening count of every key, WMS movements,
   reservations, ERP snapshots, ~1% duplicates, ~0.1% poison; ``--skus`` scales with
   ``--events`` unless given) is produced to fresh topics, then one ``invsync worker`` with the
   channel policy file (``INVSYNC_CHANNEL_POLICY``, default ``ops/channels.example.toml``: web,
   bopis and marketplace, rate limits 2000/1000/200 records/s, web and marketplace aggregating
   groups) folds it. Done when the worker's group has committed every record of every topic it
   consumes (the catalogue's inputs and internal topics: reserved deltas, each channel's
   ``invsync.changes.<ch>``, group contributions...; count discrepancies; the aggregated
   ``availability.<ch>``) and no end offset moved while that was read (polled every 0.5 s, a
   deadline of ``--timeout-s``). Per channel: input events, fold change records (end offsets of
   ``invsync.changes.<ch>``), records published to ``availability.<ch>`` and
   ``availability.<ch>.groups``, published per input event.
2. **Redis writes/s.** ``invsync sink redis`` (its own consumer group, keys under this run's
   topic prefix, so they start empty) writes every record of phase 1's availability topics.
   Records/s from the first write to the last, observed on its ``/metrics``
   (``invsync_sink_records_total``, polled every 0.1 s), and per second of batch time
   (``invsync_sink_batch_seconds_sum``: consume-write-commit, no waiting for records); their
   ratio is the share of the time the sink spends writing. A sink not done ``--redis-budget-s``
   after its first write is stopped there (its rate is what it wrote) and ``rebuild_read_model``
   fills the rest of the read model for phase 3. Then ``rebuild_read_model`` is timed in this
   process, writing the same topics under a second, empty key prefix.
3. **Query API latency.** ``--queries`` sequential ``POST /v1/availability/<ch>/query`` of
   1,000 (sku, location) pairs drawn (seeded, with replacement) from the keys the read model
   holds, over one keep-alive connection to the worker of phase 1; then the same number split
   over ``--query-clients`` concurrent connections. Milliseconds from sending the request to
   the last byte of the answer; every answer is checked (200, 1,000 items, none ``unknown``).
4. **ERP catch-up after an outage.** A second deployment (own topics and groups): a worker
   (same policy), the ERP simulator (``invsync/erp_simulator.py``) and the ERP dispatcher
   (``python -m sinks.erp``, default retry settings unless ``--erp-backoff-max-s``). The
   simulator's stream is produced at a steady ``--erp-rate`` events/s for the whole phase. Once
   deltas reach the ERP and the dispatcher has kept up for 10 s, ``--erp-warmup-s`` of normal
   delivery; then the ERP answers 503 to every delta (``--erp-outage-mode 5xx``, its fault plan)
   or is stopped (``down``) for ``--erp-outage-s``; then it is restored. Reported: deltas
   produced during the outage, the largest lag seen (end offsets of ``erp.stock-deltas`` minus
   the dispatcher's committed offsets, polled every 0.5 s), catch-up seconds (restored ->
   committed offsets reach the end offsets the topic had at the restore; it includes the
   dispatcher's backoff, capped at ``INVSYNC_ERP_BACKOFF_MAX_S``) and the delivery rate
   meanwhile. Then the input stops, everything drains and the ERP is checked against the topic:
   every distinct ``delta_id`` accepted exactly once, none unknown, and per sku|location the
   ERP's net equals the net of the topic's distinct deltas: PASS or FAIL (exit status 1).

Writes ``bench/results/sinks.json`` and prints a table; logs of the processes go to
``bench/results/sinks-*.log``. Topics and Redis keys of the run are deleted at the end
(``--keep`` keeps them). ``--phases`` runs a subset (query needs redis needs coalescing).

Limits: the worker folds a backlog in phase 1 (``--input-rate 0``, the default), so its batches
are large and the rate limits bind: coalescing is the highest it gets; ``--input-rate`` produces
while the worker runs (live flow, less coalescing). The simulator's event time runs as fast as
the records are produced (about 1 event per simulated second at the defaults), so in phase 4 an
ERP netting window (5 event-time minutes) closes every few wall seconds and most records end
up in a delta of their own: ``--erp-rate`` sets the delta load (0.7-0.9 deltas per event
measured).
Workers run with ``INVSYNC_RESERVATION_IDLE_S=3600``: the wall-clock advance of idle
reservation partitions would otherwise expire the last hour's holds in a burst after the input
ends, in the middle of a later phase. The ERP simulator (sqlite, ``synchronous=FULL``, one
writer) bounds the catch-up rate: it is a test peer, not a model of a real ERP. Every process
shares this machine's cores: numbers from a busy machine are not comparable. Not a test: only
phase 4's correctness check can fail the run.
"""

from __future__ import annotations

import argparse
import http.client
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from confluent_kafka import OFFSET_BEGINNING, Consumer, ConsumerGroupTopicPartitions, TopicPartition
from confluent_kafka.admin import AdminClient
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console

from bench.run import (
    _ADMIN,
    RESULTS,
    ROOT,
    _delete_topics,
    _end_offsets,
    _free_port,
    _pct,
    _producer,
    start_worker,
    wait_for,
)
from invsync import simulate
from invsync.settings import Settings, load_settings
from sinks.read_model import RedisReadModel, key_prefix, redis_client
from sinks.redis_sink import availability_topics, rebuild_read_model
from state.channel_policy import ChannelPolicy, load_policy
from streams import topics
from streams.admin import create_topics
from streams.aggregates import aggregating_channels
from streams.codec import Codec

DAY_MS = 86_400_000
PAIRS = 1_000  # per query request (the API's maximum)
POLL_S = 0.5
KEEPING_UP = 1_000  # deltas waiting: the dispatcher keeps up before the outage starts ...
SETTLED_S = 10.0  # ... for this long (past the burst of deltas of the opening counts)
PHASES = ("coalescing", "redis", "query", "erp")


# --- processes -----------------------------------------------------------------------------------


def start_process(argv: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """``argv`` from the repository root with ``os.environ | env``, output to ``log``
    (:func:`bench.run.start_worker` for any command)."""
    with log.open("wb") as out:
        return subprocess.Popen(
            argv, cwd=ROOT, env=os.environ | env, stdout=out, stderr=subprocess.STDOUT
        )


@dataclass
class Processes:
    """Every process this run started, stopped (SIGTERM, then SIGKILL) in :meth:`stop_all`."""

    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def add(self, name: str, proc: subprocess.Popen[bytes]) -> subprocess.Popen[bytes]:
        self.procs[name] = proc
        return proc

    def check(self) -> None:
        """Raise if a process exited (they all should run until stopped)."""
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                log = RESULTS / f"sinks-{name}.log"
                raise RuntimeError(f"{name} exited ({proc.returncode}); see {log}")

    def stop(self, name: str) -> None:
        proc = self.procs.pop(name, None)
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)

    def stop_all(self) -> None:
        for name in list(self.procs):
            self.stop(name)


def until(check: Callable[[], Any], timeout_s: float, what: str, procs: Processes) -> None:
    """:func:`bench.run.wait_for`, failing as soon as any of ``procs`` exits."""

    def checked() -> Any:
        procs.check()
        return check()

    anchor = next(iter(procs.procs.values()))
    wait_for(checked, timeout_s, what, anchor)


def metric(port: int, name: str, **labels: str) -> float:
    """The sum of the samples ``name`` with these labels on a process's ``/metrics`` (0 if it does
    not answer yet)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
            text = reply.read().decode()
    except (OSError, http.client.HTTPException):
        return 0.0
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items())
    )


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as reply:
            return bool(reply.status == 200)
    except (OSError, http.client.HTTPException):
        return False


def http_json(url: str, body: Any = None) -> Any:
    data = None if body is None else orjson.dumps(body)
    request = urllib.request.Request(
        url,
        data=data,
        method="GET" if data is None else "POST",
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=60) as reply:
        return orjson.loads(reply.read())


# --- offsets -------------------------------------------------------------------------------------

Offsets = dict[tuple[str, int], int]


def end_offsets(settings: Settings, names: Iterable[str]) -> Offsets:
    return {(name, p): end for name in names for p, end in _end_offsets(settings, name).items()}


def committed_offsets(settings: Settings, group: str, parts: Iterable[tuple[str, int]]) -> Offsets:
    """The group's committed offset of each (topic, partition); 0 where it committed none."""
    admin = _ADMIN.get(settings.kafka_bootstrap)
    if admin is None:
        admin = _ADMIN[settings.kafka_bootstrap] = AdminClient(
            {"bootstrap.servers": settings.kafka_bootstrap}
        )
    wanted = [TopicPartition(topic, p) for topic, p in parts]
    request = [ConsumerGroupTopicPartitions(group, wanted)]
    result = admin.list_consumer_group_offsets(request)[group].result(timeout=10)
    return {(tp.topic, tp.partition): max(tp.offset, 0) for tp in result.topic_partitions}


def behind(ends: Offsets, committed: Offsets) -> int:
    """Records between the committed offsets and ``ends``."""
    return sum(max(0, end - committed.get(part, 0)) for part, end in ends.items())


def caught_up(settings: Settings, group: str, names: list[str]) -> bool:
    """The group committed every record of ``names`` and no end offset moved meanwhile
    (generalises :func:`bench.run._caught_up` to any group and topics)."""
    ends = end_offsets(settings, names)
    if behind(ends, committed_offsets(settings, group, ends)):
        return False
    return end_offsets(settings, names) == ends


def worker_topics(settings: Settings, policy: ChannelPolicy) -> list[str]:
    """Every topic the worker's group consumes with this policy: the catalogue's inputs and
    internal topics (one it does not consume, such as the changes topic of a channel without a
    publisher, stays empty), count discrepancies and the aggregated channels' availability."""
    specs = [spec for spec in topics.all_topics(settings) if spec.role in ("input", "internal")]
    specs += [topics.COUNT_DISCREPANCIES]
    specs += [topics.availability(name) for name in aggregating_channels(settings, policy)]
    return [spec.full_name(settings) for spec in specs]


def records_in(settings: Settings, spec: topics.TopicSpec) -> int:
    return sum(_end_offsets(settings, spec.full_name(settings)).values())


def read_topic(settings: Settings, topic: str) -> list[dict[str, Any]]:
    """Every record of ``topic`` up to its current end, decoded (timestamps as millis)
    (:func:`bench.run._output_records` for any topic)."""
    codec = Codec(settings, millis_timestamps=True)
    ends = _end_offsets(settings, topic)
    consumer = Consumer(
        {
            "bootstrap.servers": settings.kafka_bootstrap,
            "group.id": f"bench-read-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
        }
    )
    out: list[dict[str, Any]] = []
    try:
        todo = {p for p, end in ends.items() if end > 0}
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in todo])
        deadline = time.monotonic() + 300
        while todo and time.monotonic() < deadline:
            for msg in consumer.consume(1000, timeout=1.0):
                if msg.error():
                    continue
                partition, offset = msg.partition() or 0, msg.offset() or 0
                if offset < ends[partition]:
                    out.append(codec.decode(topic, msg.value() or b""))
                if offset + 1 >= ends[partition]:
                    todo.discard(partition)
        if todo:
            raise RuntimeError(f"could not read {topic} to its end (partitions {sorted(todo)})")
    finally:
        consumer.close()
    return out


# --- deployments and the workload ----------------------------------------------------------------


@dataclass
class Deployment:
    """One isolated deployment on the shared broker: its settings and worker environment."""

    settings: Settings
    env: dict[str, str]
    policy: ChannelPolicy
    tmp: Path

    def worker_env(self, name: str, port: int) -> dict[str, str]:
        return self.env | {
            "INVSYNC_STATE_DIR": str(self.tmp / f"state-{name}"),
            "INVSYNC_WEB_PORT": str(port),
        }


def deployment(run: str, policy_file: Path, tmp: Path) -> Deployment:
    policy = load_policy(policy_file)
    env = {
        "INVSYNC_TOPIC_PREFIX": f"bsinks{run}.",
        "INVSYNC_APP_ID": f"invsync-bsinks-{run}",
        "INVSYNC_CHANNELS": ",".join(policy.channels),
        "INVSYNC_CHANNEL_POLICY": str(policy_file),
        "INVSYNC_LOG_LEVEL": "warn",
        "INVSYNC_RESERVATION_IDLE_S": "3600",
    }
    settings = load_settings(
        **{name[len("INVSYNC_") :].lower(): value for name, value in env.items()}
    )
    create_topics(settings)
    return Deployment(settings, env, policy, tmp)


def workload(
    args: argparse.Namespace, events: int, rate: float, skus: int, span: int
) -> simulate.SimulationConfig:
    """The simulator's stream (its default mix) of ``events`` (0: endless), starting far enough
    back that ``span`` events, at about one per simulated second, end before now."""
    start_ms = int(time.time() * 1000) - span * 1000 - DAY_MS
    return simulate.SimulationConfig(
        events=events,
        rate=rate,
        skus=skus,
        stores=args.stores,
        dcs=args.dcs,
        seed=args.seed,
        start_ms=start_ms,
    )


def produce_until(
    settings: Settings, config: simulate.SimulationConfig, stop: threading.Event
) -> Counter[str]:
    """:func:`invsync.simulate.generate`'s stream at ``config.rate`` events/s until ``stop`` is
    set; records produced per kind. (``simulate.run`` with a stop event would replace this.)"""
    codec = Codec(settings)
    codec.register_all(config.topics())
    names = {spec.name: spec.full_name(settings) for spec in config.topics()}
    out = _producer(settings)
    errors: list[Any] = []
    counts: Counter[str] = Counter()
    started = time.monotonic()
    for i, record in enumerate(simulate.generate(config)):
        due = started + i / config.rate
        while (now := time.monotonic()) < due and not stop.is_set():
            out.poll(min(0.05, due - now))
        if stop.is_set():
            break
        value = (
            record.raw if record.raw is not None else codec.encode(record.spec, record.value or {})
        )
        out.produce(
            names[record.spec.name],
            key=record.key.encode(),
            value=value,
            on_delivery=lambda err, _msg: errors.append(err) if err else None,
        )
        counts[record.kind] += 1
    left = out.flush(60)
    if left or errors:
        raise RuntimeError(f"{left} records not delivered, {len(errors)} failed: {errors[:3]}")
    return counts


# --- phase 1: coalescing per channel --------------------------------------------------------------


def coalescing(
    dep: Deployment, args: argparse.Namespace, procs: Processes, web_port: int
) -> dict[str, Any]:
    settings = dep.settings
    skus = args.skus or max(50, min(2000, args.events // 500))
    config = workload(args, args.events, args.input_rate, skus, args.events)
    live = args.input_rate > 0
    started = time.monotonic()
    if live:
        procs.add(
            "worker",
            start_worker(settings, dep.worker_env("w1", web_port), RESULTS / "sinks-worker.log"),
        )
    how = f"at {args.input_rate:,.0f}/s" if live else "(then fold the backlog)"
    print(
        f"producing {args.events:,} simulated events, {skus} skus x {args.stores} stores "
        f"+ {args.dcs} DCs, {how} ..."
    )
    summary = simulate.run(settings, config, Console(quiet=True))
    produce_s = time.monotonic() - started
    print(
        f"  {summary.total:,} records in {produce_s:.1f}s: "
        + ", ".join(f"{k} {v:,}" for k, v in summary.counts.items() if v)
    )
    if not live:
        started = time.monotonic()
        procs.add(
            "worker",
            start_worker(settings, dep.worker_env("w1", web_port), RESULTS / "sinks-worker.log"),
        )
    consumed = worker_topics(settings, dep.policy)
    print(f"worker: {', '.join(settings.channels)} per {dep.env['INVSYNC_CHANNEL_POLICY']} ...")
    until(
        lambda: caught_up(settings, settings.app_id, consumed),
        args.timeout_s,
        "the worker to commit every record of every topic it consumes",
        procs,
    )
    pipeline_s = time.monotonic() - started
    print(f"  every stage committed {pipeline_s:.1f}s after the worker started")
    channels: dict[str, Any] = {}
    for name in settings.channels:
        changes = records_in(settings, topics.channel_changes(name))
        published = records_in(settings, topics.availability(name))
        groups = records_in(settings, topics.group_availability(name))
        channels[name] = {
            "input_events": summary.total,
            "fold_changes": changes,
            "published": published,
            "groups_published": groups,
            "published_per_input": round(published / summary.total, 4),
            "published_per_change": round(published / changes, 4) if changes else None,
            "published_metric": metric(
                web_port, "invsync_channel_records_total", channel=name, outcome="published"
            ),
            "coalesced_metric": metric(
                web_port, "invsync_channel_records_total", channel=name, outcome="coalesced"
            ),
            "rate_limit": dep.policy.channel(name).rate_limit,
        }
    return {
        "events": summary.total,
        "by_kind": {k: v for k, v in summary.counts.items() if v},
        "skus": skus,
        "stores": args.stores,
        "dcs": args.dcs,
        "input_rate": args.input_rate or None,
        "produce_s": round(produce_s, 1),
        "pipeline_s": round(pipeline_s, 1),
        "channels": channels,
    }


# --- phase 2: the Redis sink ----------------------------------------------------------------------


def redis_writes(dep: Deployment, procs: Processes, budget_s: float) -> dict[str, Any]:
    """Phase 2 (see the module docstring). A sink not done ``budget_s`` after its first write is
    stopped (its rate is what it wrote meanwhile) and ``rebuild_read_model`` fills the rest of
    the read model for phase 3."""
    settings = dep.settings
    names = availability_topics(settings)
    total = sum(sum(_end_offsets(settings, name).values()) for name in names)
    port = _free_port()
    print(f"redis sink: {total:,} availability and group records into empty keys ...")
    invsync = str(Path(sys.executable).parent / "invsync")
    env = dep.env | {"INVSYNC_REDIS_SINK_PORT": str(port)}
    log = RESULTS / "sinks-redis-sink.log"
    procs.add("redis-sink", start_process([invsync, "sink", "redis"], env, log))

    def handled() -> float:
        return metric(port, "invsync_sink_records_total", sink="redis")

    started = time.monotonic()
    first = 0.0  # the first poll that saw records written, and how many
    first_done = 0.0
    while (done := handled()) < total:
        procs.check()
        now = time.monotonic()
        if done and not first:
            first, first_done = now, done
        if now > (first or started) + budget_s:
            break
        time.sleep(0.1)
    last = time.monotonic()
    first = first or last
    applied = metric(port, "invsync_sink_records_total", sink="redis", outcome="applied")
    batch_s = metric(port, "invsync_sink_batch_seconds_sum", sink="redis")
    batches = metric(port, "invsync_sink_batch_seconds_count", sink="redis")
    finished = done >= total
    if finished:
        group = f"{settings.app_id}-redis"
        until(lambda: caught_up(settings, group, names), 60, "the Redis sink's commits", procs)
    procs.stop("redis-sink")
    timed = last - first >= 0.5 and done > first_done  # else too fast for 0.1 s polls
    rate = (done - first_done) / (last - first) if timed else None
    batch_rate = done / batch_s if batch_s else None
    print(
        f"  {done:,.0f} of {total:,} records ({applied:,.0f} applied) in {last - first:.1f}s from "
        f"the first write seen: {rate or 0:,.0f} records/s; {batch_rate or 0:,.0f} per second of "
        f"batch time (busy {batch_s / max(last - first, 1e-9):.1%} of the time)"
    )
    if not finished:
        print(f"  the sink was not done within {budget_s:.0f}s: stopped; the read model is filled")
        rebuild_read_model(settings)

    model = RedisReadModel(redis_client(settings.redis_url), f"{key_prefix(settings)}-rebuild")
    try:
        started = time.monotonic()
        rebuilt = rebuild_read_model(settings, read_model=model)
        rebuild_s = time.monotonic() - started
    finally:
        delete_keys(model)
        model.close()
    print(
        f"  rebuild_read_model: {rebuilt:,} records in {rebuild_s:.1f}s = "
        f"{rebuilt / rebuild_s:,.0f} records/s"
    )
    return {
        "records": total,
        "written": int(done),
        "finished": finished,
        "applied": int(applied),
        "first_to_last_write_s": round(last - first, 2),
        "records_per_s": None if rate is None else round(rate),
        "batches": int(batches),
        "batch_seconds": round(batch_s, 3),
        "records_per_batch_second": None if batch_rate is None else round(batch_rate),
        "busy_share": round(batch_s / (last - first), 3) if timed else None,
        "redis_batch": settings.redis_batch,
        "rebuild_records": rebuilt,
        "rebuild_s": round(rebuild_s, 2),
        "rebuild_records_per_s": round(rebuilt / rebuild_s),
    }


def delete_keys(model: RedisReadModel) -> int:
    keys = list(model.client.scan_iter(match=f"{model.prefix}:*", count=1000))
    for i in range(0, len(keys), 10_000):
        model.client.delete(*keys[i : i + 10_000])
    return len(keys)


# --- phase 3: the query API -----------------------------------------------------------------------


def stored_pairs(settings: Settings, channel: str, limit: int = 200_000) -> list[tuple[str, str]]:
    """(sku, location) of the channel's records in the read model (group records left out)."""
    model = RedisReadModel.from_settings(settings)
    head = f"{model.prefix}:{channel}:"
    pairs = []
    try:
        for raw in model.client.scan_iter(match=f"{head}*", count=1000):
            key = raw.decode()[len(head) :]
            if not key.startswith("group:"):
                sku, _, location = key.partition("|")
                pairs.append((sku, location))
                if len(pairs) >= limit:
                    break
    finally:
        model.close()
    return sorted(pairs)


def _post_all(port: int, path: str, bodies: list[bytes], out: list[float]) -> None:
    """POST each body over one keep-alive connection; milliseconds per request into ``out``."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    headers = {"Content-Type": "application/json"}
    try:
        for body in bodies:
            started = time.perf_counter()
            conn.request("POST", path, body=body, headers=headers)
            reply = conn.getresponse()
            data = reply.read()
            out.append((time.perf_counter() - started) * 1000)
            if reply.status != 200:
                raise RuntimeError(f"POST {path}: HTTP {reply.status}: {data[:300]!r}")
            items = orjson.loads(data)["items"]
            unknown = sum(item["status"] == "unknown" for item in items)
            if len(items) != PAIRS or unknown:
                raise RuntimeError(f"POST {path}: {len(items)} items, {unknown} unknown")
    finally:
        conn.close()


def _latency(times: list[float], elapsed: float) -> dict[str, Any]:
    return {
        "requests": len(times),
        "p50_ms": round(_pct(times, 50), 1),
        "p99_ms": round(_pct(times, 99), 1),
        "max_ms": round(max(times), 1),
        "pairs_per_s": round(len(times) * PAIRS / elapsed),
    }


def query_latency(
    dep: Deployment, port: int, channel: str, requests: int, clients: int, seed: int
) -> dict[str, Any]:
    pool = stored_pairs(dep.settings, channel)
    if not pool:
        raise RuntimeError(f"no {channel} record in the read model")
    rnd = random.Random(seed)
    bodies = [
        orjson.dumps(
            {"items": [{"sku": s, "location": loc} for s, loc in rnd.choices(pool, k=PAIRS)]}
        )
        for _ in range(requests)
    ]
    path = f"/v1/availability/{channel}/query"
    print(f"query API: {requests} x POST {path} of {PAIRS:,} pairs (of {len(pool):,} keys) ...")
    _post_all(port, path, bodies[:5], [])  # warm up: connections, the read model's client
    sequential: list[float] = []
    started = time.perf_counter()
    _post_all(port, path, bodies, sequential)
    result: dict[str, Any] = {
        "channel": channel,
        "pairs_per_request": PAIRS,
        "keys": len(pool),
        "sequential": _latency(sequential, time.perf_counter() - started),
    }
    if clients > 1:
        concurrent: list[float] = []
        threads = [
            threading.Thread(target=_post_all, args=(port, path, bodies[i::clients], concurrent))
            for i in range(clients)
        ]
        started = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if len(concurrent) != len(bodies):
            raise RuntimeError("a concurrent client failed (see above)")
        result["concurrent"] = _latency(concurrent, time.perf_counter() - started) | {
            "clients": clients
        }
    for mode in ("sequential", "concurrent"):
        if mode in result:
            r = result[mode]
            print(
                f"  {mode:>10}: p50 {r['p50_ms']} ms, p99 {r['p99_ms']} ms, max {r['max_ms']} "
                f"ms, {r['pairs_per_s']:,} pairs/s"
            )
    return result


# --- phase 4: ERP catch-up after an outage ---------------------------------------------------


@dataclass
class Erp:
    """The ERP simulator process (restartable on the same port and sqlite file)."""

    port: int
    db: Path
    procs: Processes

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        argv = [
            sys.executable,
            "-m",
            "invsync.erp_simulator",
            "--port",
            str(self.port),
            "--db",
            str(self.db),
        ]
        log = RESULTS / "sinks-erp-simulator.log"
        with log.open("ab") as out:  # appended across restarts
            proc = subprocess.Popen(argv, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
        self.procs.add("erp-simulator", proc)
        until(lambda: http_ok(f"{self.base}/livez"), 30, "the ERP simulator", self.procs)

    def faults(self, step: dict[str, Any]) -> None:
        http_json(f"{self.base}/v1/faults", step)


class ErpPhase:
    """Phase 4's processes, input and observations (see the module docstring)."""

    def __init__(self, dep: Deployment, args: argparse.Namespace, procs: Processes) -> None:
        self.dep, self.args, self.procs = dep, args, procs
        self.settings = dep.settings
        self.topic = topics.ERP_STOCK_DELTAS.full_name(self.settings)
        self.group = f"{self.settings.app_id}-erp"  # the dispatcher's
        self.erp = Erp(_free_port(), dep.tmp / "erp.sqlite", procs)
        self.sink_port = _free_port()
        self.stop = threading.Event()
        self.produced: list[Counter[str] | BaseException] = []
        self.input = threading.Thread(target=self._produce, name="erp-input", daemon=True)
        self.samples: list[tuple[float, int]] = []  # (monotonic time, deltas waiting)

    def start(self) -> None:
        args = self.args
        self.erp.start()
        env = self.dep.env | {
            "INVSYNC_ERP_URL": f"{self.erp.base}/v1/stock-deltas",
            "INVSYNC_ERP_SINK_PORT": str(self.sink_port),
            "INVSYNC_LOG_LEVEL": "info",
        }
        if args.erp_backoff_max_s:
            env["INVSYNC_ERP_BACKOFF_MAX_S"] = str(args.erp_backoff_max_s)
        dispatcher = [sys.executable, "-m", "sinks.erp"]
        log = RESULTS / "sinks-erp-dispatcher.log"
        self.procs.add("erp-dispatcher", start_process(dispatcher, env, log))
        env = self.dep.worker_env("erp", _free_port())
        log = RESULTS / "sinks-erp-worker.log"
        self.procs.add("erp-worker", start_worker(self.settings, env, log))
        print(
            f"ERP: input at {args.erp_rate:,.0f} events/s ({args.erp_skus} skus x {args.stores} "
            f"stores + {args.dcs} DCs); waiting for deltas to reach the ERP ..."
        )
        self.input.start()

    def _produce(self) -> None:
        args = self.args
        planned_s = 300 + args.erp_warmup_s + args.erp_outage_s + args.erp_catchup_timeout_s
        config = workload(args, 0, args.erp_rate, args.erp_skus, int(args.erp_rate * planned_s))
        try:
            self.produced.append(produce_until(self.settings, config, self.stop))
        except BaseException as exc:
            self.produced.append(exc)

    def observe(self) -> tuple[Offsets, int]:
        """The topic's end offsets and how many deltas wait (recorded); raises if a process or
        the input stopped."""
        self.procs.check()
        if not self.input.is_alive() and not self.stop.is_set():
            raise RuntimeError(f"the input stopped: {self.produced}")
        ends = end_offsets(self.settings, [self.topic])
        waiting = behind(ends, committed_offsets(self.settings, self.group, ends))
        self.samples.append((time.monotonic(), waiting))
        return ends, waiting

    def accepted(self) -> float:
        return metric(self.sink_port, "invsync_erp_deltas_accepted_total")

    def observe_for(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self.observe()
            time.sleep(POLL_S)

    def outage(self) -> None:
        if self.args.erp_outage_mode == "5xx":
            self.erp.faults({"mode": "error5xx", "count": 10**9})
        else:
            self.procs.stop("erp-simulator")

    def restore(self) -> None:
        if self.args.erp_outage_mode == "5xx":
            self.erp.faults({"mode": "ok", "count": 0})
        else:
            self.erp.start()

    def run(self) -> dict[str, Any]:
        args = self.args
        self.start()
        try:
            since: list[float] = []

            def keeping_up() -> bool:  # deltas reach the ERP and few have waited for a while
                if self.accepted() == 0 or self.observe()[1] >= KEEPING_UP:
                    since.clear()
                    return False
                since[:] = since or [time.monotonic()]
                return time.monotonic() - since[0] >= SETTLED_S

            until(keeping_up, 300, "deltas to reach the ERP, the dispatcher keeping up", self.procs)
            warm_ends, _ = self.observe()
            warm_at = time.monotonic()
            self.observe_for(args.erp_warmup_s)
            ends_before, waiting_before = self.observe()
            steady = (sum(ends_before.values()) - sum(warm_ends.values())) / (
                time.monotonic() - warm_at
            )
            print(f"  before: {steady:,.1f} deltas/s, {waiting_before} waiting")
            mode = "answers 503" if args.erp_outage_mode == "5xx" else "down"
            print(f"  ERP {mode} for {args.erp_outage_s:.0f}s ...")
            self.outage()
            outage_at = time.monotonic()
            accepted_before = self.accepted()
            self.observe_for(args.erp_outage_s)
            self.restore()
            restored_at = time.monotonic()
            accepted_during = self.accepted() - accepted_before
            ends_restore, backlog = self.observe()
            during = sum(ends_restore.values()) - sum(ends_before.values())
            print(f"  restored: {during:,} deltas produced meanwhile, {backlog:,} waiting ...")
            catch_up_s, first_s, delivered = self.catch_up(ends_restore, restored_at)
            print(
                f"  caught up in {catch_up_s:.1f}s: {delivered / catch_up_s:,.1f} deltas/s "
                f"delivered (first {first_s:.1f}s after the restore); "
                f"{self.samples[-1][1]} waiting now"
            )
        finally:
            self.stop.set()
            self.input.join(120)
        if not self.produced or isinstance(self.produced[0], BaseException):
            raise RuntimeError(f"the input failed: {self.produced}")
        counts = self.produced[0]
        print("  input stopped; draining, then checking the ERP against the topic ...")
        consumed = worker_topics(self.settings, self.dep.policy)
        until(
            lambda: caught_up(self.settings, self.settings.app_id, consumed),
            args.timeout_s, "the ERP phase's worker to commit its input", self.procs,
        )  # fmt: skip
        until(
            lambda: caught_up(self.settings, self.group, [self.topic]),
            args.erp_catchup_timeout_s, "the dispatcher to commit every delta", self.procs,
        )  # fmt: skip
        check = check_erp(self.settings, self.erp)
        step = max(1, len(self.samples) // 200)
        return {
            "input_rate": args.erp_rate,
            "input_events": sum(counts.values()),
            "skus": args.erp_skus,
            "outage_mode": args.erp_outage_mode,
            "outage_s": args.erp_outage_s,
            "backoff_max_s": args.erp_backoff_max_s or self.settings.erp_backoff_max_s,
            "deltas_per_s_before_outage": round(steady, 1),
            "deltas_per_s_during_outage": round(during / args.erp_outage_s, 1),
            "deltas_during_outage": during,
            "accepted_during_outage": int(accepted_during),
            "lag_at_restore": backlog,
            "max_lag": max(waiting for t, waiting in self.samples if t >= outage_at),
            "catch_up_s": round(catch_up_s, 1),
            "catch_up_deltas_per_s": round(backlog / catch_up_s, 1),
            "delivered_per_s_during_catch_up": round(delivered / catch_up_s, 1),
            "first_delivery_after_restore_s": round(first_s, 1),
            "erp_requests": int(metric(self.sink_port, "invsync_erp_requests_total")),
            "lag_series": [[round(t - outage_at, 1), n] for t, n in self.samples[::step]],
        } | check

    def catch_up(self, ends: Offsets, restored_at: float) -> tuple[float, float, int]:
        """Seconds from ``restored_at`` until the dispatcher committed ``ends`` and until the ERP
        accepted the first delta after it; deltas committed meanwhile."""
        first_s: float | None = None
        accepted = self.accepted()
        committed_at_restore = sum(committed_offsets(self.settings, self.group, ends).values())
        deadline = restored_at + self.args.erp_catchup_timeout_s
        while True:
            self.observe()
            committed = committed_offsets(self.settings, self.group, ends)
            now = time.monotonic()
            if first_s is None and self.accepted() > accepted:
                first_s = now - restored_at
            if not behind(ends, committed):
                first_s = now - restored_at if first_s is None else first_s
                delivered = sum(committed.values()) - committed_at_restore
                return now - restored_at, first_s, delivered
            if now > deadline:
                raise RuntimeError(
                    f"no catch-up within {self.args.erp_catchup_timeout_s:.0f}s: "
                    f"{behind(ends, committed):,} deltas of the backlog still waiting"
                )
            time.sleep(POLL_S)


def check_erp(settings: Settings, erp: Erp) -> dict[str, Any]:
    """:func:`erp_verdict` of the deltas topic and the ERP's state, with the dispatcher's dead
    letters counted."""
    source = topics.ERP_STOCK_DELTAS.full_name(settings)
    letters = read_topic(settings, topics.DEAD_LETTERS.full_name(settings))
    return erp_verdict(read_topic(settings, source), http_json(f"{erp.base}/v1/state")) | {
        "dead_letters": sum(letter.get("source_topic") == source for letter in letters)
    }


def erp_verdict(records: Iterable[dict[str, Any]], state: dict[str, Any]) -> dict[str, Any]:
    """The ERP simulator's ``/v1/state`` against the stock-delta records produced: PASS if every
    distinct delta id was applied exactly once, no other id was, no id came with two different
    quantities, and per sku|location the ERP's net equals the sum of the distinct deltas."""
    deltas: dict[str, dict[str, Any]] = {}
    conflicting = 0
    for record in records:
        kept = deltas.setdefault(record["delta_id"], record)
        conflicting += kept["net_quantity"] != record["net_quantity"]
    want: Counter[str] = Counter()
    for record in deltas.values():
        want[topics.make_key(record["sku"], record["location"])] += record["net_quantity"]
    accepted: dict[str, int] = state["accepted"]
    net: dict[str, int] = state["net"]
    twice = sorted(i for i, n in accepted.items() if n != 1)
    missing = sorted(set(deltas) - set(accepted))
    unknown = sorted(set(accepted) - set(deltas))
    wrong = sorted(k for k in set(want) | set(net) if want.get(k, 0) != net.get(k, 0))
    ok = not (twice or missing or unknown or wrong or conflicting)
    sample = {"twice": twice[:5], "missing": missing[:5], "unknown": unknown[:5], "net": wrong[:5]}
    return {
        "deltas_total": len(deltas),
        "accepted": len(accepted),
        "applied_more_than_once": len(twice),
        "missing": len(missing),
        "unknown_to_topic": len(unknown),
        "net_mismatches": len(wrong),
        "conflicting_ids": conflicting,
        "keys": len(want),
        "verdict": "PASS" if ok else "FAIL",
    } | ({} if ok else {"sample": sample})


# --- main ----------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    doc = __doc__ or ""
    parser = argparse.ArgumentParser(
        prog="python -m bench.sinks", description=doc.splitlines()[0] if doc else None
    )
    add = parser.add_argument
    add("--events", type=int, default=1_000_000, help="phase 1 input events")
    add(
        "--input-rate",
        type=float,
        default=0.0,
        help="phase 1: produce at this rate while the worker runs; 0 = produce, then fold",
    )
    add("--skus", type=int, default=0, help="phase 1 skus; 0 = events/500 in [50, 2000]")
    add("--stores", type=int, default=40)
    add("--dcs", type=int, default=2)
    add("--seed", type=int, default=7)
    add(
        "--policy",
        type=Path,
        default=ROOT / "ops" / "channels.example.toml",
        help="channel policy file; every channel in it is configured",
    )
    add(
        "--redis-budget-s",
        type=float,
        default=900.0,
        help="stop the Redis sink this long after its first write if it is not done",
    )
    add("--queries", type=int, default=200, help="query requests of 1,000 pairs")
    add("--query-clients", type=int, default=4, help="concurrent clients (1 = sequential only)")
    add("--query-channel", default=None, help="default: the policy's first channel")
    add("--erp-outage-s", type=float, default=600.0)
    add(
        "--erp-outage-mode",
        choices=("5xx", "down"),
        default="5xx",
        help="the ERP answers 503 to every delta, or its process is stopped",
    )
    add("--erp-rate", type=float, default=100.0, help="phase 4 input events/s")
    add("--erp-skus", type=int, default=100)
    add("--erp-warmup-s", type=float, default=20.0, help="normal delivery before the outage")
    add(
        "--erp-backoff-max-s",
        type=float,
        default=None,
        help="the dispatcher's INVSYNC_ERP_BACKOFF_MAX_S (default: its default)",
    )
    add(
        "--erp-catchup-timeout-s",
        type=float,
        default=None,
        help="give up catching up after this long (default: max(600, 3 x outage))",
    )
    add("--timeout-s", type=float, default=7200.0, help="deadline of each wait for a worker")
    add(
        "--phases",
        default=",".join(PHASES),
        help=f"comma separated subset of {','.join(PHASES)} (query needs redis needs coalescing)",
    )
    add("--keep", action="store_true", help="keep the run's topics and Redis keys")
    args = parser.parse_args(argv)
    phases = {p.strip() for p in args.phases.split(",") if p.strip()}
    if phases - set(PHASES):
        parser.error(f"unknown phases: {', '.join(sorted(phases - set(PHASES)))}")
    if "query" in phases:
        phases.add("redis")
    if "redis" in phases:
        phases.add("coalescing")
    args.phases = phases
    if args.erp_rate <= 0 or args.events <= 0 or args.queries <= 0:
        parser.error("--events, --queries and --erp-rate must be > 0")
    if args.erp_catchup_timeout_s is None:
        args.erp_catchup_timeout_s = max(600.0, 3 * args.erp_outage_s)
    args.policy = args.policy.resolve()
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    RESULTS.mkdir(parents=True, exist_ok=True)
    run = uuid.uuid4().hex[:6]
    result: dict[str, Any] = {}
    procs = Processes()
    deployments: list[Deployment] = []
    with tempfile.TemporaryDirectory() as tmp:
        try:
            if "coalescing" in args.phases:
                dep = deployment(run, args.policy, Path(tmp))
                deployments.append(dep)
                web_port = _free_port()
                result["coalescing"] = coalescing(dep, args, procs, web_port)
                if "redis" in args.phases:
                    result["redis"] = redis_writes(dep, procs, args.redis_budget_s)
                if "query" in args.phases:
                    channel = args.query_channel or dep.settings.default_channel
                    result["query"] = query_latency(
                        dep, web_port, channel, args.queries, args.query_clients, args.seed
                    )
                procs.stop_all()
            if "erp" in args.phases:
                dep = deployment(f"{run}e", args.policy, Path(tmp))
                deployments.append(dep)
                result["erp"] = ErpPhase(dep, args, procs).run()
        finally:
            procs.stop_all()
            if not args.keep:
                for dep in deployments:
                    _delete_topics(dep.settings)
                    model = RedisReadModel.from_settings(dep.settings)
                    delete_keys(model)
                    model.close()
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT
    ).stdout.strip()
    result |= {
        "partitions": deployments[0].settings.partitions if deployments else None,
        "policy": str(
            args.policy.relative_to(ROOT) if args.policy.is_relative_to(ROOT) else args.policy
        ),
        "commit": commit,
        "cpus": os.cpu_count(),
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    (RESULTS / "sinks.json").write_text(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode())
    print()
    print_table(result)
    return 0 if result.get("erp", {}).get("verdict", "PASS") == "PASS" else 1


def print_table(result: dict[str, Any]) -> None:
    if "coalescing" in result:
        print(
            f"{'channel':<12} {'input':>10} {'changes':>10} {'published':>10} {'groups':>8} "
            f"{'pub/input':>9} {'rate limit':>10}"
        )
        for name, c in result["coalescing"]["channels"].items():
            print(
                f"{name:<12} {c['input_events']:>10,} {c['fold_changes']:>10,} "
                f"{c['published']:>10,} {c['groups_published']:>8,} "
                f"{c['published_per_input']:>9.3f} {c['rate_limit'] or '-':>10}"
            )
    if "redis" in result:
        r = result["redis"]
        print(
            f"redis sink: {r['written']:,}/{r['records']:,} records in "
            f"{r['first_to_last_write_s']}s = {r['records_per_s'] or 0:,} records/s "
            f"({r['records_per_batch_second'] or 0:,} per batch second); rebuild "
            f"{r['rebuild_records_per_s']:,} records/s"
        )
    if "query" in result:
        q = result["query"]
        for mode in ("sequential", "concurrent"):
            if mode in q:
                m = q[mode]
                who = f"{m['clients']} clients" if mode == "concurrent" else "1 client"
                print(
                    f"query {q['channel']} x{q['pairs_per_request']:,} pairs, {who}: p50 "
                    f"{m['p50_ms']} ms, p99 {m['p99_ms']} ms, max {m['max_ms']} ms, "
                    f"{m['pairs_per_s']:,} pairs/s"
                )
    if "erp" in result:
        e = result["erp"]
        print(
            f"ERP {e['outage_mode']} outage {e['outage_s']:.0f}s: {e['deltas_during_outage']:,} "
            f"deltas meanwhile ({e['deltas_per_s_during_outage']}/s), max lag "
            f"{e['max_lag']:,}, caught up in {e['catch_up_s']}s "
            f"({e['delivered_per_s_during_catch_up']} delivered/s); {e['deltas_total']:,} deltas, "
            f"{e['net_mismatches']} net mismatches, {e['applied_more_than_once']} applied "
            f"twice, {e['missing']} missing: {e['verdict']}"
        )


if __name__ == "__main__":
    sys.exit(main())
