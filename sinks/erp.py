"""ERP delivery: stock deltas from Kafka to the ERP over HTTP, each accepted once, nothing lost.

:func:`run_erp_dispatcher` consumes the ERP stock-delta topic (``topics.ERP_STOCK_DELTAS``, Avro)
as consumer group ``<app_id>-erp`` and POSTs every record to ``INVSYNC_ERP_URL`` as JSON
(``{delta_id, sku, location, net_quantity, reasons, window_start, window_end}``, timestamps ISO
8601 UTC with milliseconds) with the header ``Idempotency-Key: <delta_id>``.

Guarantees
    - **At-least-once delivery, exactly-once effect.** A record's offset is committed only after
      the ERP answered 2xx for it, or after its dead letter was acknowledged by the broker
      (``acks=all``). A crash, kill or rebalance at any point re-sends at most the records after
      the last commit; the ERP sees the same ``Idempotency-Key`` and body again and must answer
      "already accepted" without applying it twice (``invsync/erp_simulator.py`` does). The effect
      is exactly-once only as far as the ERP honours the key.
    - **Order.** Records of one partition (= one sku|location's deltas) are delivered one at a
      time in offset order; a delta is sent only after every earlier one of its partition was
      accepted or dead-lettered. Partitions proceed independently (one thread each), so one
      stuck partition does not hold up the others.
    - **ERP unavailable: wait, never drop.** A timeout, a refused/reset connection, a connection
      closed without an answer (an *ambiguous* outcome: the ERP may have applied it), a 5xx,
      408, 425 or 429 is retried **without bound**: exponential backoff with full jitter
      (tenacity's ``wait_random_exponential``: attempt n waits uniformly between 0 and
      min(``erp_backoff_max_s``, 0.5 s * 2^(n-1)); a ``Retry-After`` in seconds is honoured up to
      the cap). Re-sending is safe because of the idempotency key. The partition's later records
      wait behind it and the consumer lag grows; when the ERP is back everything is delivered in
      order. Other non-2xx answers that are about
      the *caller*, not the delta (3xx, 401, 403, 404, 405, 407, 410, 411, 415, ...: a wrong URL,
      expired credentials) are treated the same way: dead-lettering the whole stream because a
      credential expired is what an ERP integrator would least want.
    - ``erp_max_attempts`` is therefore **not** a point where a delta is dropped or
      dead-lettered. Every ``erp_max_attempts`` consecutive failed attempts of one delta count
      one ``invsync_sink_failures_total{sink="erp"}`` (``InvsyncSinkFailing`` fires if that goes
      on for 5 minutes) and log an error; then retrying continues at the capped backoff.
    - **Dead letters only for what the ERP rejected or cannot be read.** ``400``, ``409`` (same
      ``delta_id``, different body), ``413`` and ``422`` are not retried: the record goes to the
      dead-letter topic with reason ``erp_rejected`` and a detail naming the status and the
      ERP's message. A record that cannot be decoded goes there with the codec's reason
      (``undecodable``, ``unknown_schema``), and a decoded record that is not a stock delta
      with ``invalid_delta``. The dispatcher never crashes on a record. A dead letter may be
      produced twice after a crash (at-least-once; dedupe on source partition/offset).
    - **Schema registry or dead-letter topic unavailable**: retried without bound like the ERP
      (the record is not at fault); counted in the same sink metrics.
    - A bug (an unexpected exception in a delivery thread) stops the dispatcher with exit 1
      rather than skipping a record; a restart resumes from the last commit.

Limits
    - Offsets are committed about every 0.2 s (synchronously, from the consumer loop), so a
      crash re-sends the deltas accepted since the last commit plus those in flight.
    - One request in flight per partition: throughput is bounded by partitions / ERP latency
      (deltas are windowed aggregates, so their volume is low).
    - Per partition at most ``QUEUE_HIGH`` records are buffered; the partition is then paused
      (the consumer keeps polling, so the group membership survives a long ERP outage).
    - On a rebalance, a partition's delivery thread is stopped (an HTTP request in flight is
      allowed to finish, within the request timeout) and what it completed is committed before
      the partition is given up. A killed dispatcher's partitions move after the consumer's
      session timeout (10 s).

Observability: ``/metrics`` (Prometheus) and ``/livez`` on ``erp_sink_port``;
``sinks/erp_metrics.py`` lists the metrics. ``/livez`` fails only if the consumer loop stops
turning; an unavailable ERP is not a liveness failure (a restart would not help).
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType
from typing import Any, Literal, TypeVar

import httpx
import orjson
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from tenacity import RetryCallState, Retrying, retry_if_exception, wait_random_exponential

from invsync.settings import Settings, SettingsError, load_settings
from sinks import erp_metrics
from streams import metrics, topics
from streams.admin import ClusterUnavailable, TopicsMissing, check_topics, wait_for_cluster
from streams.codec import Codec, DecodeError
from streams.dead_letters import dead_letter

SINK = "erp"  # the label of this sink in invsync_sink_* metrics
REJECTS_DELTA = frozenset({400, 409, 413, 422})  # the ERP refuses this delta: dead-letter it
RETRY_STATUSES = frozenset({408, 425, 429})  # "try again later", like 5xx
BACKOFF_INITIAL_S = 0.5
QUEUE_HIGH = 1000  # records buffered per partition before it is paused
QUEUE_LOW = 200  # ... and resumed
LAG_EVERY_S = 5.0

log = logging.getLogger("sinks.erp")  # also when run as __main__
T = TypeVar("T")


class Rejected(Exception):
    """The ERP refused the delta itself (not retried; dead-lettered)."""

    def __init__(self, status: int, text: str) -> None:
        super().__init__(f"HTTP {status}: {text}")
        self.status = status
        self.text = text


class Unavailable(Exception):
    """No verdict on the delta (timeout, connection, 5xx, ...): retried."""

    def __init__(self, outcome: str, detail: str, retry_after: float | None = None) -> None:
        super().__init__(f"{outcome}: {detail}")
        self.retry_after = retry_after


class DeadLetterFailed(Exception):
    """The broker did not acknowledge a dead letter (retried)."""


class Cancelled(Exception):
    """The partition was revoked or the dispatcher is stopping: abandon the record uncommitted."""


# --- pure parts ---------------------------------------------------------------------------------


def classify(status: int) -> Literal["accepted", "rejected", "retry"]:
    """What an ERP answer means for the delta: accepted (2xx), rejected (dead-letter), retry."""
    if 200 <= status < 300:
        return "accepted"
    if status in REJECTS_DELTA:
        return "rejected"
    return "retry"


def iso_millis(ms: int) -> str:
    """Epoch milliseconds as ISO 8601 UTC with milliseconds, e.g. ``2026-11-23T10:00:00.000Z``."""
    moment = datetime.fromtimestamp(ms // 1000, UTC) + timedelta(milliseconds=ms % 1000)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def delta_body(record: dict[str, Any]) -> dict[str, Any]:
    """The ERP request body of a decoded ``ErpStockDelta`` (timestamps as millis).

    Deterministic: the same record always gives the same body (the ERP compares bodies of
    repeated idempotency keys). Raises ``KeyError``/``TypeError``/``ValueError`` if ``record``
    is not a stock delta.
    """
    reasons = record["reasons"]
    if not isinstance(reasons, dict):
        raise TypeError("reasons is not a map")
    return {
        "delta_id": str(record["delta_id"]),
        "sku": str(record["sku"]),
        "location": str(record["location"]),
        "net_quantity": int(record["net_quantity"]),
        "reasons": {str(k): int(v) for k, v in sorted(reasons.items())},
        "window_start": iso_millis(int(record["window_start"])),
        "window_end": iso_millis(int(record["window_end"])),
    }


def retry_after_s(header: str | None) -> float | None:
    """``Retry-After`` in seconds (the HTTP-date form is ignored)."""
    if header and header.strip().isdigit():
        return float(header.strip())
    return None


def check_erp_url(settings: Settings) -> None:
    """Exit 2 (``SettingsError``) unless ``INVSYNC_ERP_URL`` is an absolute http(s) URL."""
    try:
        url = httpx.URL(settings.erp_url)
    except (httpx.InvalidURL, TypeError) as exc:
        raise SettingsError(f"invalid INVSYNC_ERP_URL={settings.erp_url!r}: {exc}") from None
    if url.scheme not in ("http", "https") or not url.host:
        raise SettingsError(
            f"invalid INVSYNC_ERP_URL={settings.erp_url!r}: must be an http:// or https:// URL"
        )


# --- the ERP client -----------------------------------------------------------------------------


class ErpClient:
    """One HTTP connection pool to the ERP; :meth:`post` answers, raises or says retry."""

    def __init__(self, url: str, timeout_s: float) -> None:
        self.url = url
        self.timeout_s = timeout_s
        self._http = httpx.Client(
            timeout=httpx.Timeout(timeout_s),
            follow_redirects=False,
            headers={"User-Agent": "invsync-erp-dispatcher"},
        )

    def close(self) -> None:
        self._http.close()

    def post(self, body: dict[str, Any]) -> int:
        """POST one delta; the 2xx status, or :class:`Rejected` / :class:`Unavailable`."""
        start = time.monotonic()
        try:
            response = self._http.post(
                self.url,
                content=orjson.dumps(body),
                headers={"Idempotency-Key": body["delta_id"], "Content-Type": "application/json"},
            )
        except httpx.TimeoutException as exc:
            erp_metrics.REQUESTS.labels("timeout").inc()
            raise Unavailable("timeout", f"no answer within {self.timeout_s}s ({exc!r})") from None
        except httpx.HTTPError as exc:  # refused, reset, closed without an answer, protocol
            erp_metrics.REQUESTS.labels("connection_error").inc()
            raise Unavailable("connection_error", f"{type(exc).__name__}: {exc}") from None
        finally:
            erp_metrics.REQUEST_SECONDS.observe(time.monotonic() - start)
        status = response.status_code
        verdict = classify(status)
        if verdict == "accepted":
            erp_metrics.REQUESTS.labels("created" if status == 201 else "already_accepted").inc()
            return status
        text = response.text[:1000]
        if verdict == "rejected":
            erp_metrics.REQUESTS.labels("rejected").inc()
            raise Rejected(status, text)
        outcome = "server_error" if status >= 500 or status in RETRY_STATUSES else "refused"
        erp_metrics.REQUESTS.labels(outcome).inc()
        raise Unavailable(
            outcome,
            f"HTTP {status}: {text[:300]}",
            retry_after_s(response.headers.get("Retry-After")),
        )


# --- one partition ------------------------------------------------------------------------------


def _not_cancelled(exc: BaseException) -> bool:
    return not isinstance(exc, Cancelled)


def _transient_erp(exc: BaseException) -> bool:
    return isinstance(exc, Unavailable)


def _transient_decode(exc: BaseException) -> bool:  # the registry, not the record
    return isinstance(exc, Exception) and not isinstance(exc, DecodeError | Cancelled)


class _Lane:
    """One partition's records, delivered one at a time in offset order by one thread."""

    def __init__(self, owner: ErpDispatcher, partition: int) -> None:
        self.owner = owner
        self.settings = owner.settings
        self.partition = partition
        self.cancel = threading.Event()
        self._cond = threading.Condition()
        self._queue: deque[Message] = deque()  # head = the record being delivered
        self._abandoned = False
        self.done_next: int | None = None  # offset to commit: last finished + 1
        self.thread = threading.Thread(target=self._run, name=f"erp-p{partition}", daemon=True)
        self._backoff = wait_random_exponential(
            multiplier=BACKOFF_INITIAL_S, max=self.settings.erp_backoff_max_s
        )
        self._current = ""  # what is being delivered, for log lines

    # main thread
    def put(self, msg: Message) -> None:
        """Queue a record. Never drops one: should the client ever hand out an offset again,
        it is delivered again (the ERP answers "already accepted") rather than skipped."""
        with self._cond:
            self._queue.append(msg)
            self._cond.notify()

    def pending(self) -> int:
        with self._cond:
            return len(self._queue)

    def next_needed(self) -> int | None:
        """The next offset not yet delivered, if this lane has seen any record."""
        with self._cond:
            return self._queue[0].offset() if self._queue else self.done_next

    def head_timestamp_ms(self) -> int | None:
        with self._cond:
            if not self._queue:
                return None
            kind, ts = self._queue[0].timestamp()
            return ts if kind else None

    def abandon(self) -> int:
        """Stop: drop what is queued (uncommitted, so redelivered); return how many records."""
        self.cancel.set()
        with self._cond:
            self._abandoned = True
            dropped = len(self._queue)
            self._queue.clear()
            self._cond.notify_all()
        return dropped

    # lane thread
    def _run(self) -> None:
        codec = Codec(self.settings, millis_timestamps=True)
        client = ErpClient(self.settings.erp_url, self.settings.erp_timeout_s)
        try:
            while True:
                with self._cond:
                    while not self._queue and not self._abandoned:
                        self._cond.wait(1.0)
                    if self._abandoned:
                        return
                    msg = self._queue[0]
                try:
                    self._deliver(msg, codec, client)
                except Cancelled:
                    return
                with self._cond:
                    if self._abandoned:
                        return
                    self._queue.popleft()
                    self.done_next = (msg.offset() or 0) + 1
                metrics.SINK_IN_FLIGHT.labels(SINK).dec()
        except BaseException as exc:
            log.exception("ERP delivery thread for partition %d failed", self.partition)
            self.owner.fatal = exc
        finally:
            client.close()

    def _deliver(self, msg: Message, codec: Codec, client: ErpClient) -> None:
        topic, offset = msg.topic() or "", msg.offset() or 0
        self._current = f"partition {self.partition} offset {offset}"
        try:
            record = self._retry(lambda: codec.decode(topic, msg.value()), _transient_decode,
                                 "schema registry")  # fmt: skip
        except DecodeError as exc:
            self._dead_letter(codec, msg, exc.reason, exc.detail)
            return
        try:
            body = delta_body(record)
        except (KeyError, TypeError, ValueError) as exc:
            self._dead_letter(codec, msg, "invalid_delta", f"not a stock delta: {exc!r}")
            return
        self._current += f" (delta_id {body['delta_id']})"
        try:
            self._retry(lambda: client.post(body), _transient_erp, "ERP")
        except Rejected as exc:
            detail = f"ERP answered HTTP {exc.status} for delta_id {body['delta_id']}: {exc.text}"
            self._dead_letter(codec, msg, "erp_rejected", detail)
            return
        erp_metrics.DELTAS_ACCEPTED.inc()
        erp_metrics.LAST_ACCEPTED.set(time.time())

    def _dead_letter(self, codec: Codec, msg: Message, reason: str, detail: str) -> None:
        letter = dead_letter(
            reason, detail, msg.topic() or "", msg.partition() or 0, msg.offset() or 0,
            msg.key(), msg.value(),
        )  # fmt: skip

        def send() -> None:
            value = codec.encode(topics.DEAD_LETTERS, letter.to_record())
            self.owner.produce_dead_letter(letter.source_topic.encode(), value, self.cancel)

        self._retry(send, _not_cancelled, "dead-letter topic")
        metrics.DEAD_LETTERS.labels(reason).inc()
        log.warning("dead-lettered %s: %s: %s", self._current, reason, letter.detail[:300])

    def _retry(
        self, fn: Callable[[], T], transient: Callable[[BaseException], bool], what: str
    ) -> T:
        """``fn()`` until it succeeds or fails for good; retries ``transient`` errors without
        bound (capped backoff) until the lane is cancelled (then :class:`Cancelled`)."""

        def attempt() -> T:
            if self.cancel.is_set():
                raise Cancelled
            return fn()

        retrying = Retrying(
            retry=retry_if_exception(transient),
            stop=lambda _state: self.cancel.is_set(),
            wait=self._wait,
            sleep=self._sleep,
            before_sleep=lambda state: self._before_sleep(state, what),
            reraise=True,
        )
        try:
            return retrying(attempt)
        except Exception as exc:
            if self.cancel.is_set() and transient(exc):
                raise Cancelled from exc
            raise

    def _wait(self, state: RetryCallState) -> float:
        backoff = self._backoff(state)
        exc = state.outcome.exception() if state.outcome is not None else None
        hint = getattr(exc, "retry_after", None) or 0.0
        return min(self.settings.erp_backoff_max_s, max(backoff, hint))

    def _sleep(self, seconds: float) -> None:
        if self.cancel.wait(seconds):
            raise Cancelled

    def _before_sleep(self, state: RetryCallState, what: str) -> None:
        metrics.SINK_RETRIES.labels(SINK).inc()
        exc = state.outcome.exception() if state.outcome is not None else None
        n, cap = state.attempt_number, self.settings.erp_max_attempts
        if n % cap == 0:
            metrics.SINK_FAILURES.labels(SINK).inc()
            log.error(
                "%s: %d attempts failed for %s, last: %s; still retrying every <= %.1fs "
                "(unavailability is never dead-lettered)",
                what, n, self._current, exc, self.settings.erp_backoff_max_s,
            )  # fmt: skip
        elif n == 1:
            log.warning("%s: %s failed (%s); retrying", what, self._current, exc)


# --- the dispatcher -----------------------------------------------------------------------------


class ErpDispatcher:
    """The consumer loop: hands records to per-partition lanes, commits what they finished."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.topic = topics.ERP_STOCK_DELTAS.full_name(settings)
        self.dead_letter_topic = topics.DEAD_LETTERS.full_name(settings)
        self.consumer = Consumer(
            {
                "bootstrap.servers": settings.kafka_bootstrap,
                "group.id": f"{settings.app_id}-erp",
                "enable.auto.commit": False,
                "enable.auto.offset.store": False,
                "auto.offset.reset": "earliest",
                "client.id": f"{settings.app_id}-erp-dispatcher",
                # heartbeats come from librdkafka's thread, so a long ERP call cannot miss one;
                # a killed dispatcher's partitions move to another after 10 s, not 45 s
                "session.timeout.ms": 10_000,
                "heartbeat.interval.ms": 2_000,
            }
        )
        self.producer = Producer(
            {
                "bootstrap.servers": settings.kafka_bootstrap,
                "acks": "all",
                "enable.idempotence": True,
                "partitioner": "murmur2_random",
                "linger.ms": 5,
            }
        )
        self.lanes: dict[int, _Lane] = {}
        self.committed: dict[int, int] = {}
        self.paused: set[int] = set()
        self.fatal: BaseException | None = None
        self.heartbeat = time.monotonic()
        # a lane may be inside one HTTP request (connect + write + read) or a registry call
        self.join_timeout_s = 3 * settings.erp_timeout_s + 15

    def alive(self) -> bool:
        stale_after = max(60.0, 2 * self.join_timeout_s)
        return self.fatal is None and time.monotonic() - self.heartbeat < stale_after

    # lane threads
    def produce_dead_letter(self, key: bytes, value: bytes, cancel: threading.Event) -> None:
        """Produce one dead letter and wait for the broker's acknowledgement."""
        done = threading.Event()
        errors: list[KafkaError] = []

        def on_delivery(err: KafkaError | None, _msg: Message) -> None:
            if err is not None:
                errors.append(err)
            done.set()

        self.producer.produce(self.dead_letter_topic, key=key, value=value, on_delivery=on_delivery)
        while not done.is_set():
            if cancel.is_set():
                raise Cancelled
            self.producer.poll(0.1)
        if errors:
            raise DeadLetterFailed(str(errors[0]))

    # main thread
    def run(self, stop: threading.Event) -> None:
        self.consumer.subscribe(
            [self.topic],
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
            on_lost=self._on_lost,
        )
        log.info("ERP dispatcher: %s -> %s (group %s-erp)", self.topic, self.settings.erp_url,
                 self.settings.app_id)  # fmt: skip
        lag_stop = threading.Event()
        lag_thread = threading.Thread(
            target=self._observe_lag_until, args=(lag_stop,), name="erp-lag", daemon=True
        )
        lag_thread.start()
        try:
            while not stop.is_set():
                self.heartbeat = time.monotonic()
                if self.fatal is not None:
                    raise RuntimeError("an ERP delivery thread failed") from self.fatal
                for msg in self.consumer.consume(500, timeout=0.2):
                    err = msg.error()
                    if err is not None:
                        if err.fatal():
                            raise KafkaException(err)
                        log.warning("consumer: %s", err)
                        continue
                    lane = self.lanes.get(msg.partition() or 0)
                    if lane is not None:  # None: its partition was just revoked
                        lane.put(msg)
                        metrics.SINK_IN_FLIGHT.labels(SINK).inc()
                self._flow_control()
                self._commit(self.lanes.values())
        finally:
            lag_stop.set()
            self._stop_lanes(list(self.lanes), commit=True)  # finished records only
            self.consumer.close()
            self.producer.flush(10)
            lag_thread.join(5)

    def _on_assign(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        for tp in partitions:
            if tp.partition in self.lanes:
                continue
            lane = self.lanes[tp.partition] = _Lane(self, tp.partition)
            self.committed.pop(tp.partition, None)
            lane.thread.start()
        erp_metrics.ASSIGNED_PARTITIONS.set(len(self.lanes))
        log.info("assigned partitions %s", sorted(tp.partition for tp in partitions))

    def _on_revoke(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._stop_lanes([tp.partition for tp in partitions], commit=True)

    def _on_lost(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._stop_lanes([tp.partition for tp in partitions], commit=False)

    def _stop_lanes(self, partitions: list[int], commit: bool) -> None:
        """Stop these partitions' lanes, commit what they finished (unless lost), forget them."""
        lanes = [self.lanes.pop(p) for p in partitions if p in self.lanes]
        dropped = sum(lane.abandon() for lane in lanes)
        metrics.SINK_IN_FLIGHT.labels(SINK).dec(dropped)
        deadline = time.monotonic() + self.join_timeout_s
        for lane in lanes:
            lane.thread.join(max(0.0, deadline - time.monotonic()))
            if lane.thread.is_alive():
                log.warning("partition %d: delivery still busy after %.0fs; given up uncommitted",
                            lane.partition, self.join_timeout_s)  # fmt: skip
        if commit:
            self._commit(lanes)
        for lane in lanes:
            self.committed.pop(lane.partition, None)
            self.paused.discard(lane.partition)
        erp_metrics.ASSIGNED_PARTITIONS.set(len(self.lanes))
        if lanes:
            log.info("stopped partitions %s", sorted(lane.partition for lane in lanes))

    def _commit(self, lanes: Iterable[_Lane]) -> None:
        """Commit, synchronously, the offsets the lanes finished since the last commit."""
        offsets = []
        for lane in lanes:
            done = lane.done_next
            if done is not None and done != self.committed.get(lane.partition):
                offsets.append(TopicPartition(self.topic, lane.partition, done))
        if not offsets:
            return
        try:
            result = self.consumer.commit(offsets=offsets, asynchronous=False) or []
        except KafkaException as exc:
            log.warning("offset commit failed (retried with the next commit): %s", exc)
            return
        log.debug("committed %s", {tp.partition: tp.offset for tp in result})
        for tp in result:
            if tp.error is None:
                self.committed[tp.partition] = tp.offset
            else:
                log.warning("offset commit for partition %d failed: %s", tp.partition, tp.error)

    def _flow_control(self) -> None:
        for partition, lane in self.lanes.items():
            pending = lane.pending()
            tp = TopicPartition(self.topic, partition)
            if pending >= QUEUE_HIGH and partition not in self.paused:
                self.consumer.pause([tp])
                self.paused.add(partition)
            elif pending <= QUEUE_LOW and partition in self.paused:
                self.consumer.resume([tp])
                self.paused.discard(partition)

    # lag thread: its own consumer (never joins the group), so broker round trips for end
    # offsets never hold up the consumer loop
    def _observe_lag_until(self, stop: threading.Event) -> None:
        consumer = Consumer(
            {
                "bootstrap.servers": self.settings.kafka_bootstrap,
                "group.id": f"{self.settings.app_id}-erp",  # only to read its committed offsets
                "enable.auto.commit": False,
            }
        )
        labels: set[str] = set()
        try:
            while True:
                try:
                    labels = self._observe_lag(consumer, labels)
                except Exception:
                    log.debug("lag not observed", exc_info=True)
                if stop.wait(LAG_EVERY_S):
                    return
        finally:
            consumer.close()

    def _observe_lag(self, consumer: Consumer, labels: set[str]) -> set[str]:
        """Set the lag gauges of the assigned partitions, drop those of the others."""
        now_ms = time.time() * 1000
        oldest: float | None = None
        seen: set[str] = set()
        for partition, lane in list(self.lanes.items()):
            head = lane.head_timestamp_ms()
            if head is not None:
                oldest = head if oldest is None else min(oldest, head)
            tp = TopicPartition(self.topic, partition)
            low, high = consumer.get_watermark_offsets(tp, timeout=2, cached=False)
            position = lane.next_needed()
            if position is None:  # nothing taken yet: from the group's commit, else the start
                committed = consumer.committed([tp], timeout=2)[0].offset
                position = committed if committed >= 0 else low
            erp_metrics.LAG_MESSAGES.labels(str(partition)).set(max(0, high - position))
            seen.add(str(partition))
        for label in labels - seen:
            erp_metrics.LAG_MESSAGES.remove(label)
        erp_metrics.OLDEST_PENDING_SECONDS.set(
            0 if oldest is None else max(0, now_ms - oldest) / 1000
        )
        return seen


# --- HTTP: /metrics and /livez ------------------------------------------------------------------


class _HealthServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, port: int, alive: Callable[[], bool]) -> None:
        super().__init__(("", port), _HealthHandler)
        self.alive = alive


class _HealthHandler(BaseHTTPRequestHandler):
    server: _HealthServer

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            status, ctype, data = 200, CONTENT_TYPE_LATEST, generate_latest()
        elif path == "/livez":
            ok = self.server.alive()
            status, ctype = (200 if ok else 503), "text/plain; charset=utf-8"
            data = b"ok\n" if ok else b"consumer loop stalled or a delivery thread failed\n"
        else:
            status, ctype, data = 404, "text/plain; charset=utf-8", b"not found\n"
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


# --- entry points -------------------------------------------------------------------------------


def preflight(settings: Settings) -> None:
    """Fail fast: a bad ERP URL (exit 2), Kafka unreachable or topics missing (raise)."""
    check_erp_url(settings)
    check_topics(settings, wait_for_cluster(settings))
    Codec(settings).register_all([topics.DEAD_LETTERS])


def run_erp_dispatcher(settings: Settings, stop: threading.Event | None = None) -> None:
    """Deliver stock deltas to the ERP until ``stop`` is set (see the module docstring).

    Raises :class:`~invsync.settings.SettingsError` for a bad ``INVSYNC_ERP_URL``,
    :class:`~streams.admin.ClusterUnavailable` / :class:`~streams.admin.TopicsMissing` at
    start-up, ``RuntimeError`` if a delivery thread failed (nothing is committed past it).
    """
    stop = stop or threading.Event()
    preflight(settings)
    dispatcher = ErpDispatcher(settings)
    server = _HealthServer(settings.erp_sink_port, dispatcher.alive)
    threading.Thread(target=server.serve_forever, name="erp-http", daemon=True).start()
    try:
        dispatcher.run(stop)
    finally:
        server.shutdown()
        server.server_close()


def main() -> None:
    """``python -m sinks.erp``: run the dispatcher until SIGTERM/SIGINT; exit 2 on bad settings,
    1 if Kafka is unreachable, topics are missing or a delivery thread failed."""
    try:
        settings = load_settings()
    except SettingsError as exc:
        print(exc.message, file=sys.stderr)
        raise SystemExit(2) from None
    settings.configure_logging()
    for noisy in ("httpx", "httpx2", "httpcore", "httpcore2"):  # a line per request
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.root.level))
    stop = threading.Event()

    def _stop(signum: int, _frame: FrameType | None) -> None:
        log.info("signal %d: stopping", signum)
        stop.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    try:
        run_erp_dispatcher(settings, stop)
    except SettingsError as exc:
        print(exc.message, file=sys.stderr)
        raise SystemExit(2) from None
    except (ClusterUnavailable, TopicsMissing) as exc:
        print(exc, file=sys.stderr)
        raise SystemExit(1) from None
    except RuntimeError:
        log.exception("ERP dispatcher stopped")
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
