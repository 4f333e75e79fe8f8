"""``make bench``: invsync's fold throughput and latency beside a raw-consumer floor, same run.

1. Produce N events (POS sales with skewed SKU popularity, ~5% cycle counts) to fresh,
   multi-partition input topics.
2. **Baseline**: a plain confluent-kafka consumer (``consume(500)``) reads them, decodes each
   value with fastavro exactly as the worker does (``Codec.decode``: writer schema from the
   registry, parsed once) and folds on-hand into a dict. Events/s from the first record
   consumed to the last.
3. **Faust floor** (:mod:`bench.faust_floor`): a bare Faust agent with the worker's Faust
   settings, consumer and batching that only acks, reading the same events in its own group.
   Any fold written as a Faust agent is bounded by it; ``floor_ratio`` = invsync / floor.
4. **invsync**: a real worker process (RocksDB store, changelog, availability output) folds the
   same events. Events/s from the first availability record produced to the last (broker
   timestamps), once the group's committed offsets reach the end of the inputs.
5. **Latency**: sales produced at half of the measured invsync rate, stamped with the wall clock;
   event-to-publish latency = availability record timestamp - the sale's ``occurred_at``. The
   first ``--jump-seconds`` (15) move stream time from the workload's event times (2026-01-01)
   to the wall clock, so every open position settles at once (its ERP window closes, its counts
   report): ``jump_p99_ms`` and ``jump_recovered_after_s`` say what that costs. ``p50_ms`` and
   ``p99_ms`` are of the following ``--latency-seconds`` (20), the steady state.

With ``--compare-metrics`` (``make bench BENCH_METRICS=compare``), between 3. and 4.: **invsync
without metrics**: the same number of workers with ``INVSYNC_METRICS_ENABLED=false`` (their own
consumer group, changelog and state) fold the same N events, measured as in 4., and stop before
4. starts; 4. then counts only availability records from its own start. ``metrics_overhead`` =
1 - invsync eps / invsync eps without metrics: the share of fold throughput the worker's
Prometheus instrumentation costs. Both fold exactly the workload: the latency phase's sales
(stamped with the wall clock, months after the workload's event times, so they settle every
open position at once) come after both throughput measurements.

Writes ``bench/results/latest.json`` and prints a table. Not a test: nothing here asserts speed.
"""

from __future__ import annotations

import argparse
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import orjson
from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from invsync.settings import Settings, load_settings
from streams import records, topics
from streams.admin import create_topics
from streams.codec import Codec

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
T0 = 1_767_225_600_000
PACE_S = 0.002  # the latency phase's producer wakes this often


def _producer(settings: Settings) -> Producer:
    return Producer(
        {
            "bootstrap.servers": settings.kafka_bootstrap,
            "partitioner": "murmur2_random",
            "linger.ms": 50,
            "batch.size": 1_000_000,
            "queue.buffering.max.messages": 2_000_000,
            "acks": "all",
        }
    )


def _zipf_keys(rnd: random.Random, n_skus: int, n_stores: int, n: int) -> list[tuple[str, str]]:
    weights = [1 / (rank + 1) for rank in range(n_skus)]
    skus = rnd.choices(range(n_skus), weights=weights, k=n)
    return [(f"SKU{s:05d}", f"S{rnd.randrange(n_stores):03d}") for s in skus]


def produce_workload(settings: Settings, n: int, seed: int = 11) -> float:
    """Produce n events (pre-encoded); returns seconds spent producing."""
    rnd = random.Random(seed)
    codec = Codec(settings)
    sales, counts = topics.POS_SALES, topics.CYCLE_COUNTS
    out = _producer(settings)
    started = time.monotonic()
    for i, (sku, loc) in enumerate(_zipf_keys(rnd, 2000, 40, n)):
        at = T0 + i * 100
        if i % 20 == 19:
            spec = counts
            value = records.cycle_count(
                f"c{i}", "counter", sku, loc, counted_at=at - 1000, reported_at=at,
                counted=rnd.randint(0, 50), count_id=f"cnt{i}",
            )  # fmt: skip
        else:
            spec = sales
            value = records.pos_sale(
                f"s{i}", f"pos-{loc}", sku, loc, at, rnd.choice((1, 1, 1, 2, 3, -1))
            )
        data = codec.encode(spec, value)
        while True:
            try:
                out.produce(spec.full_name(settings), key=f"{sku}|{loc}".encode(), value=data)
                break
            except BufferError:
                out.poll(0.05)
        if i % 1000 == 0:
            out.poll(0)
        if i % 100_000 == 0:
            print(f"  produced {i:,}/{n:,}", flush=True)
    out.flush(120)
    return time.monotonic() - started


def baseline(settings: Settings, n: int) -> float:
    """A raw consume-decode-fold loop; returns events/s."""
    codec = Codec(settings, millis_timestamps=True)  # the worker's decode, same cost
    consumer = Consumer(
        {
            "bootstrap.servers": settings.kafka_bootstrap,
            "group.id": f"bench-baseline-{uuid.uuid4().hex[:6]}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "fetch.max.bytes": 52_428_800,
        }
    )
    consumer.subscribe(
        [topics.POS_SALES.full_name(settings), topics.CYCLE_COUNTS.full_name(settings)]
    )
    on_hand: dict[bytes, int] = {}
    seen = 0
    first = last = 0.0
    deadline = time.monotonic() + 600
    while seen < n and time.monotonic() < deadline:
        for msg in consumer.consume(500, timeout=1.0):
            if msg.error():
                continue
            if not first:
                first = time.monotonic()
            record = codec.decode(msg.topic(), msg.value())
            key = msg.key()
            if "counted_quantity" in record:
                on_hand[key] = record["counted_quantity"]
            else:
                on_hand[key] = on_hand.get(key, 0) - record["quantity"]
            seen += 1
        last = time.monotonic()
    consumer.close()
    if seen < n:
        raise RuntimeError(f"baseline read {seen} of {n} events")
    return n / (last - first)


def faust_floor(settings: Settings, env: dict[str, str], n: int, tmp: str) -> float:
    """Events/s of :mod:`bench.faust_floor` (a bare acking Faust agent) reading the n events in
    its own consumer group."""
    app_id = f"{settings.app_id}-floor"
    done = subprocess.run(
        [sys.executable, "-m", "bench.faust_floor", "--events", str(n)],
        cwd=ROOT,
        env=os.environ | env | {"INVSYNC_APP_ID": app_id, "INVSYNC_STATE_DIR": f"{tmp}/floor"},
        capture_output=True,
        text=True,
        timeout=1800,
        check=False,
    )
    # Faust's worker logs what its app prints: the JSON line comes with a log prefix
    lines = (done.stdout + done.stderr).splitlines()
    found = [line[line.index('{"events"') :] for line in lines if '{"events"' in line]
    if done.returncode != 0 or not found:
        raise RuntimeError(f"the Faust floor failed ({done.returncode}): {done.stderr[-2000:]}")
    return float(orjson.loads(found[-1])["eps"])


def _end_offsets(settings: Settings, topic: str) -> dict[int, int]:
    consumer = Consumer({"bootstrap.servers": settings.kafka_bootstrap, "group.id": "bench-meta"})
    try:
        parts = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        return {
            p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
            for p in parts
        }
    finally:
        consumer.close()


_ADMIN: dict[str, AdminClient] = {}


def _caught_up(settings: Settings) -> bool:
    admin = _ADMIN.get(settings.kafka_bootstrap)
    if admin is None:
        admin = _ADMIN[settings.kafka_bootstrap] = AdminClient(
            {"bootstrap.servers": settings.kafka_bootstrap}
        )
    wanted = []
    ends = {}
    for spec in (topics.POS_SALES, topics.CYCLE_COUNTS):
        name = spec.full_name(settings)
        for p, end in _end_offsets(settings, name).items():
            wanted.append(TopicPartition(name, p))
            ends[(name, p)] = end
    from confluent_kafka import ConsumerGroupTopicPartitions

    request = [ConsumerGroupTopicPartitions(settings.app_id, wanted)]
    result = admin.list_consumer_group_offsets(request)[settings.app_id].result(timeout=10)
    return all(tp.offset >= ends[(tp.topic, tp.partition)] for tp in result.topic_partitions)


def _output_records(settings: Settings, since_ms: int = 0) -> list[tuple[int, dict[str, Any]]]:
    """(broker timestamp, decoded value) of every availability record with timestamp >= since."""
    topic = topics.availability(settings.default_channel).full_name(settings)
    codec = Codec(settings)
    ends = _end_offsets(settings, topic)
    consumer = Consumer(
        {
            "bootstrap.servers": settings.kafka_bootstrap,
            "group.id": "bench-out",
            "enable.auto.commit": False,
        }
    )
    out: list[tuple[int, dict[str, Any]]] = []
    try:
        if since_ms:
            query = [TopicPartition(topic, p, since_ms) for p in ends]
            starts = {tp.partition: tp.offset for tp in consumer.offsets_for_times(query, 10)}
        else:
            starts = dict.fromkeys(ends, 0)
        todo = {p for p in ends if 0 <= starts[p] < ends[p]}
        consumer.assign([TopicPartition(topic, p, starts[p]) for p in todo])
        deadline = time.monotonic() + 300
        while todo and time.monotonic() < deadline:
            for msg in consumer.consume(1000, timeout=1.0):
                if msg.error():
                    continue
                out.append((msg.timestamp()[1], codec.decode(topic, msg.value())))
                if msg.offset() + 1 >= ends[msg.partition()]:
                    todo.discard(msg.partition())
    finally:
        consumer.close()
    return out


def start_worker(settings: Settings, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    invsync = Path(sys.executable).parent / "invsync"
    return subprocess.Popen(
        [str(invsync), "worker"],
        cwd=ROOT,
        env=os.environ | env,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )


def wait_for(check: Any, timeout_s: float, what: str, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"worker exited ({proc.returncode}) while waiting for {what}")
        if check():
            return
        time.sleep(0.5)
    raise RuntimeError(f"timed out waiting for {what}")


def invsync_throughput(
    settings: Settings, n: int, proc: subprocess.Popen[bytes], since_ms: int = 0
) -> float:
    """Events/s from the first availability record to the last (broker timestamps >= since)."""
    wait_for(lambda: _caught_up(settings), 1800, "the worker to consume every event", proc)
    stamps = [ts for ts, _ in _output_records(settings, since_ms)]
    return n / ((max(stamps) - min(stamps)) / 1000)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _input_records(settings: Settings) -> int:
    return sum(
        sum(_end_offsets(settings, spec.full_name(settings)).values())
        for spec in (topics.POS_SALES, topics.CYCLE_COUNTS)
    )


def _exports_worker_metrics(port: int) -> bool:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        return b"invsync_input_events_total" in response.read()


def invsync_throughput_without_metrics(
    settings: Settings, env: dict[str, str], workers: int, tmp: str
) -> float:
    """Events/s of workers with INVSYNC_METRICS_ENABLED=false (their own group, changelog and
    state) folding every input record; they are stopped on return."""
    app_id = f"{settings.app_id}-nometrics"
    quiet = settings.model_copy(update={"app_id": app_id})
    n = _input_records(settings)
    ports = [_free_port() for _ in range(workers)]
    since_ms = int(time.time() * 1000)
    procs = [
        start_worker(
            quiet,
            env
            | {
                "INVSYNC_APP_ID": app_id,
                "INVSYNC_METRICS_ENABLED": "false",
                "INVSYNC_STATE_DIR": f"{tmp}/nometrics{i}",
                "INVSYNC_WEB_PORT": str(port),
            },
            RESULTS / f"worker{i}-nometrics.log",
        )
        for i, port in enumerate(ports)
    ]
    try:
        eps = invsync_throughput(quiet, n, procs[0], since_ms)
        if _exports_worker_metrics(ports[0]):
            raise RuntimeError("INVSYNC_METRICS_ENABLED=false, yet the worker exports its metrics")
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(60)
    return eps


def latency(
    settings: Settings, rate: float, seconds: float, proc: subprocess.Popen[bytes]
) -> list[tuple[int, int]]:
    """Produce sales stamped with the wall clock at ``rate``/s for ``seconds``; per sale
    published, (ms since the phase started, event-to-publish latency in ms)."""
    out_fast = Producer(
        {
            "bootstrap.servers": settings.kafka_bootstrap,
            "partitioner": "murmur2_random",
            "linger.ms": 1,
            "acks": "all",
        }
    )
    codec = Codec(settings)
    rnd = random.Random(5)
    keys = _zipf_keys(rnd, 2000, 40, int(rate * seconds) + 1)
    started_ms = int(time.time() * 1000)
    started = time.monotonic()
    sent = 0
    while sent < len(keys):
        # every PACE_S, the sales due by now: sleeping, not spinning, so this process leaves the
        # worker its CPU (a sub-millisecond poll() timeout is 0 in librdkafka: a busy loop)
        due = min(len(keys), int((time.monotonic() - started) * rate) + 1)
        now_ms = int(time.time() * 1000)
        for i in range(sent, due):
            sku, loc = keys[i]
            value = records.pos_sale(f"lat{i}", f"pos-{loc}", sku, loc, now_ms, 1)
            out_fast.produce(
                topics.POS_SALES.full_name(settings),
                key=f"{sku}|{loc}".encode(),
                value=codec.encode(topics.POS_SALES, value),
            )
        sent = due
        out_fast.poll(0)
        time.sleep(PACE_S)
    out_fast.flush(60)
    wait_for(lambda: _caught_up(settings), 300, "the latency phase to be consumed", proc)
    stamped = [(ts, _millis(rec["as_of"])) for ts, rec in _output_records(settings, started_ms)]
    return sorted((as_of - started_ms, ts - as_of) for ts, as_of in stamped if as_of >= started_ms)


def latency_summary(samples: list[tuple[int, int]], jump_s: float) -> dict[str, Any]:
    """p50/p99 of the steady part (sales produced ``jump_s`` or more after the phase started),
    p99 of the jump part, when the jump's backlog was worked off (the first second from which
    every second's p99 stays under 1 s), and p50/p99 per second."""
    jump_ms = jump_s * 1000
    steady = [lat for at, lat in samples if at >= jump_ms]
    jump = [lat for at, lat in samples if at < jump_ms]
    by_second: dict[int, list[int]] = {}
    for at, lat in samples:
        by_second.setdefault(at // 1000, []).append(lat)
    profile = {s: (round(_pct(v, 50)), round(_pct(v, 99))) for s, v in sorted(by_second.items())}
    slow = [s for s, (_, p99) in profile.items() if p99 >= 1000]
    return {
        "p50_ms": round(_pct(steady, 50), 1),
        "p99_ms": round(_pct(steady, 99), 1),
        "latency_samples": len(steady),
        "jump_p99_ms": round(_pct(jump, 99), 1),
        "jump_recovered_after_s": (max(slow) + 1) if slow else 0,
        "latency_by_second": {str(s): list(v) for s, v in profile.items()},
    }


def _millis(value: Any) -> int:
    return int(value.timestamp() * 1000) if hasattr(value, "timestamp") else int(value)


def _pct(values: list[float], q: float) -> float:
    return (
        statistics.quantiles(values, n=100, method="inclusive")[q - 1]
        if len(values) > 1
        else (values[0] if values else float("nan"))
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--latency-seconds", type=float, default=20.0,
                        help="the steady part of the latency phase")  # fmt: skip
    parser.add_argument("--jump-seconds", type=float, default=15.0,
                        help="the first part of the latency phase: stream time jumps from the "
                        "workload's to the wall clock and every open position settles")  # fmt: skip
    parser.add_argument("--workers", type=int, default=1, help="worker processes (one group)")
    parser.add_argument(
        "--compare-metrics",
        action="store_true",
        help="fold everything again with INVSYNC_METRICS_ENABLED=false: metrics_overhead",
    )
    args = parser.parse_args()
    run = uuid.uuid4().hex[:6]
    env = {
        "INVSYNC_TOPIC_PREFIX": f"bench{run}.",
        "INVSYNC_APP_ID": f"invsync-bench-{run}",
        "INVSYNC_LOG_LEVEL": "warn",
    }
    settings = load_settings(topic_prefix=env["INVSYNC_TOPIC_PREFIX"], app_id=env["INVSYNC_APP_ID"])
    create_topics(settings)
    print(f"producing {args.events:,} events to {settings.partitions} partitions ...")
    produce_s = produce_workload(settings, args.events)
    print(f"  {args.events / produce_s:,.0f} events/s produced")
    print("baseline: raw confluent-kafka consume(500) + fastavro decode + dict fold ...")
    baseline_eps = baseline(settings, args.events)
    print(f"  {baseline_eps:,.0f} events/s")
    with tempfile.TemporaryDirectory() as tmp:
        print("Faust floor: a bare agent with the worker's consumer that only acks ...")
        floor_eps = faust_floor(settings, env, args.events, tmp)
        print(f"  {floor_eps:,.0f} events/s")
        RESULTS.mkdir(parents=True, exist_ok=True)
        since_ms = 0
        if args.compare_metrics:
            print(f"invsync without metrics: {args.workers} worker(s) folding the same events ...")
            quiet_eps = invsync_throughput_without_metrics(settings, env, args.workers, tmp)
            print(f"  {quiet_eps:,.0f} events/s")
            since_ms = int(time.time() * 1000)  # the availability records from here on
        procs = [
            start_worker(
                settings,
                env | {"INVSYNC_STATE_DIR": f"{tmp}/state{i}", "INVSYNC_WEB_PORT": str(port)},
                RESULTS / f"worker{i}.log",
            )
            for i, port in enumerate(_free_port() for _ in range(args.workers))
        ]
        proc = procs[0]
        try:
            print(f"invsync: {args.workers} worker(s) folding the same events ...")
            invsync_eps = invsync_throughput(settings, args.events, proc, since_ms)
            print(f"  {invsync_eps:,.0f} events/s")
            rate = invsync_eps / 2
            total_s = args.jump_seconds + args.latency_seconds
            print(f"latency at {rate:,.0f} events/s for {total_s:.0f}s ...")
            lat = latency_summary(latency(settings, rate, total_s, proc), args.jump_seconds)
        finally:
            for p in procs:
                p.terminate()
            for p in procs:
                p.wait(60)
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT
    ).stdout.strip()
    result = {
        "events": args.events,
        "partitions": settings.partitions,
        "workers": args.workers,
        "baseline_eps": round(baseline_eps),
        "invsync_eps": round(invsync_eps),
        "ratio": round(invsync_eps / baseline_eps, 3),
        "faust_floor_eps": round(floor_eps),
        "floor_ratio": round(invsync_eps / floor_eps, 3),
        "latency_load_eps": round(rate),
        **lat,
        **(
            {
                "invsync_eps_no_metrics": round(quiet_eps),
                "metrics_overhead": round(1 - invsync_eps / quiet_eps, 3),
            }
            if args.compare_metrics
            else {}
        ),
        "commit": commit,
        "cpus": os.cpu_count(),
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    (RESULTS / "latest.json").write_text(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode())
    print()
    header = (
        f"{'events':>10} {'baseline eps':>13} {'Faust floor eps':>16} {'invsync eps':>12} "
        f"{'ratio':>6} {'floor ratio':>12} {'p50 ms':>7} {'p99 ms':>7} {'jump p99 ms':>12} "
        f"{'jump recovered s':>17}"
    )
    row = (
        f"{result['events']:>10,} {result['baseline_eps']:>13,} {result['faust_floor_eps']:>16,} "
        f"{result['invsync_eps']:>12,} {result['ratio']:>6} {result['floor_ratio']:>12} "
        f"{result['p50_ms']:>7} {result['p99_ms']:>7} {result['jump_p99_ms']:>12} "
        f"{result['jump_recovered_after_s']:>17}"
    )
    if args.compare_metrics:
        header += f" {'eps no metrics':>15} {'metrics overhead':>17}"
        row += f" {result['invsync_eps_no_metrics']:>15,} {result['metrics_overhead']:>17.1%}"
    print(header)
    print(row)
    _delete_topics(settings)


def _delete_topics(settings: Settings) -> None:
    """The run's topics, table changelogs included (named after the app ids)."""
    admin = AdminClient({"bootstrap.servers": settings.kafka_bootstrap})
    ours = (settings.topic_prefix, f"{settings.app_id}-")
    names = [n for n in admin.list_topics(timeout=10).topics if n.startswith(ours)]
    for name, future in (admin.delete_topics(names) if names else {}).items():
        try:
            future.result()
        except KafkaException as error:
            print(f"could not delete {name}: {error}", file=sys.stderr)


if __name__ == "__main__":
    main()
