"""The accuracy of each location type, learned in the stream from count discrepancies.

Issue 4: "loss rate and variance terms learned per location class from count discrepancies,
starting from priors". Learning is sequential Bayesian (:meth:`state.confidence.ClassAccuracy.learn`
takes a state and returns the next), so each location type is learned in **one** place:

1. **Evidence, re-keyed.** When a count settles the fold (``streams/fold_batch.py``) produces its
   ``count_discrepancy`` record twice on the same delivery ticket: to
   ``invsync.count-discrepancies`` keyed by location, and to ``invsync.accuracy-evidence`` keyed
   by location type. So every count of a type lands on one partition of the evidence topic, and
   it is durable before the fold's input offsets commit (no second consumer of the discrepancy
   topic sharing its commit).
2. **The learner** (agent ``learn-accuracy``, :class:`AccuracyLearner`) consumes the evidence
   topic in the fold's batch discipline (``streams.app._batched``) and folds each record into the
   ``accuracy-learner`` table (key: location type, orjson bytes, changelog-backed), starting from
   :data:`state.confidence.PRIORS`, with :func:`state.confidence.learn_from_count` (a position's
   first count is not learned from, as in ``invsync quality``). Each state that learned is
   published to the compacted ``invsync.accuracy`` (``schemas/avro/learned_accuracy.avsc``),
   keyed by location type. The table write, its changelog record and the published record go on
   one delivery ticket; the batch's events are reported folded (and may be committed) only once
   the broker acknowledged all of them.
3. **Every worker reads it** (:class:`LearnedAccuracy`): a confluent-kafka consumer thread,
   ``assign()``-ed every partition of ``invsync.accuracy`` from the beginning (no group, no
   commits), keeps the latest valid state per location type; the fold asks
   :meth:`LearnedAccuracy.get` for a type's accuracy when it projects availability (the prior
   until a state was read). A state that fails validation (:class:`ClassAccuracy`'s checks) or
   decoding is logged, counted (``invsync_accuracy_invalid_total``) and ignored: the worker keeps
   what it had. Not a Faust ``GlobalTable``: its own docstring warns of endless recovery with
   more than one worker, and the reader needs no table semantics (two keys, latest wins).

Guarantees:

- **Each count learned once per type.** Redelivered evidence is recognised exactly by input
  offset: the stored state holds ``done_below`` (every offset below it is in the state: the
  partition's commit frontier when it was written) and the offsets applied at or past it, written
  in the same table value as the accuracy they produced. A redelivery re-writes and re-publishes
  the state (a crash may have hit between the local write and the broker's acknowledgement). A
  count that reaches the topic twice (same ``count_id``, sku and location at another offset) is
  recognised among the :data:`RECENT_COUNTS` latest counts of its type and not learned again.
- **Replayable, per type.** The learned state is a function of the evidence topic's order; the
  same records give the same state. Availability records, however, now depend on when a worker
  read the learned state (not only on the event times of the inputs): a replay of the inputs
  gives the same confidence only with the same learned states.
- **Off switch**: ``INVSYNC_LEARN_ACCURACY=false`` registers neither the learner nor the reader;
  every worker uses the priors (the fold still produces the evidence, so learning switched on
  later learns from what the topic retains).

Limits: learning never forgets (see :mod:`state.confidence`); rebuilding positions from the
inputs re-emits every settled count, which a learner that kept its state would not recognise
beyond :data:`RECENT_COUNTS` per type: reset the learner with the positions (delete the
``accuracy-learner`` changelog and the compacted ``invsync.accuracy`` records). A worker that
starts reading when the app is created; its first projection waits until the topic was read
to its end, at most :data:`CATCH_UP_S` (then it projects with what it has, priors for the rest,
and says so in the log).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, cast

import faust
import orjson
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition
from faust.types import TP, EventT, TableT

from invsync.settings import Settings
from state.confidence import (
    PRIORS,
    ClassAccuracy,
    accuracy_fields,
    accuracy_from_fields,
    from_primitive,
    learn_from_count,
    to_primitive,
)
from streams import health, metrics, topics
from streams.codec import Codec, DecodeError
from streams.dead_letters import DeadLetter, dead_letter, send_dead_letters
from streams.delivery import Outputs, Ticket
from streams.fold_batch import owned
from streams.partition_store import PartitionStore

log = logging.getLogger(__name__)

LEARNER_TABLE = "accuracy-learner"
RECENT_COUNTS = 1_000  # counts remembered per location type (a count reaching the topic twice)
CATCH_UP_S = 10.0  # how long the first projection waits for the learned states at start-up

# outcomes of one evidence record (invsync_accuracy_evidence_total{outcome})
LEARNED = "learned"
FIRST_COUNT = "first_count"
DUPLICATE = "duplicate"
REDELIVERED = "redelivered"


class Evidence(NamedTuple):
    """One settled count, as ``schemas/avro/count_discrepancy.avsc`` carries it."""

    count_id: str
    sku: str
    location: str
    location_type: str
    counted_at: int
    counted: int
    discrepancy: int
    units_moved: int
    previous_count_at: int | None
    last_sighting_at: int | None = None  # absent from records written before it existed

    @property
    def ident(self) -> str:
        """The count's identity: its id at its position."""
        return f"{self.count_id}|{self.sku}|{self.location}"

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> Evidence:
        """Raises ``KeyError``/``TypeError``/``ValueError`` on a record of another shape."""
        previous = record["previous_count_at"]
        sighted = record.get("last_sighting_at")
        return cls(
            str(record["count_id"]),
            str(record["sku"]),
            str(record["location"]),
            str(record["location_type"]),
            _millis(record["counted_at"]),
            int(record["counted"]),
            int(record["discrepancy"]),
            int(record["units_moved"]),
            None if previous is None else _millis(previous),
            None if sighted is None else _millis(sighted),
        )


def _millis(value: Any) -> int:
    if isinstance(value, int):
        return value
    return int(value.timestamp() * 1000)  # a datetime (a codec without millis timestamps)


@dataclass
class LearnerState:
    """What the learner keeps per location type: the accuracy learned so far and what it was
    learned from. Pure (no I/O); :meth:`fold` one record at a time, in offset order."""

    accuracy: ClassAccuracy
    done_below: int = 0  # every input offset below this is in the state
    applied: set[int] = field(default_factory=set)  # offsets at or past done_below in it
    recent: dict[str, None] = field(default_factory=dict)  # latest count idents, oldest first
    last_counted_at: int | None = None  # counted_at of the newest count learned from

    @classmethod
    def prior(cls, location_type: str) -> LearnerState:
        return cls(PRIORS[location_type])

    def contains(self, offset: int) -> bool:
        """Whether the input record at ``offset`` is already in this state."""
        return offset < self.done_below or offset in self.applied

    def fold(self, evidence: Evidence, offset: int) -> str:
        """Apply the evidence at input ``offset``; returns the outcome (:data:`LEARNED`,
        :data:`FIRST_COUNT`, :data:`DUPLICATE` or :data:`REDELIVERED`)."""
        if self.contains(offset):
            return REDELIVERED
        self.applied.add(offset)
        ident = evidence.ident
        if ident in self.recent:
            return DUPLICATE
        self.recent[ident] = None
        while len(self.recent) > RECENT_COUNTS:
            del self.recent[next(iter(self.recent))]
        learned = learn_from_count(
            self.accuracy,
            discrepancy=evidence.discrepancy,
            units_moved=evidence.units_moved,
            counted=evidence.counted,
            counted_at=evidence.counted_at,
            previous_count_at=evidence.previous_count_at,
            last_sighting_at=evidence.last_sighting_at,
        )
        if learned is None:
            return FIRST_COUNT
        self.accuracy = learned
        self.last_counted_at = max(self.last_counted_at or evidence.counted_at, evidence.counted_at)
        return LEARNED

    def settle(self, frontier: int | None) -> None:
        """Every offset below ``frontier`` (the partition's commit frontier: all folded and
        durable) is in the state: forget the single offsets below it."""
        if frontier is not None and frontier > self.done_below:
            self.done_below = frontier
            self.applied = {offset for offset in self.applied if offset >= frontier}

    def to_bytes(self) -> bytes:
        return orjson.dumps(
            {
                "a": to_primitive(self.accuracy),
                "b": self.done_below,
                "o": sorted(self.applied),
                "r": list(self.recent),
                "t": self.last_counted_at,
            }
        )

    @classmethod
    def from_bytes(cls, value: bytes) -> LearnerState:
        """Raises ``ValueError`` (incl. orjson's decode error), ``KeyError`` or ``TypeError`` on
        a corrupt value."""
        data = orjson.loads(value)
        last = data["t"]
        return cls(
            from_primitive(data["a"]),
            int(data["b"]),
            {int(offset) for offset in data["o"]},
            dict.fromkeys(str(ident) for ident in data["r"]),
            None if last is None else int(last),
        )

    def record(self, location_type: str) -> dict[str, Any]:
        """The value published to ``invsync.accuracy`` (``learned_accuracy.avsc``)."""
        accuracy = self.accuracy
        return {
            "location_type": location_type,
            **accuracy_fields(accuracy),
            "loss_rate": accuracy.loss_rate,
            "phantom_rate": accuracy.phantom_rate,
            "last_counted_at": self.last_counted_at,
        }


# --- the learner (agent learn-accuracy) --------------------------------------------------------


@dataclass
class _Entry:
    partition: int
    state: LearnerState
    dirty: bool = False  # write it (and its changelog record)
    learned: bool = False  # publish it
    republish: bool = False  # a redelivery: write and publish even if nothing changed


class AccuracyLearner:
    """Evidence in; the ``accuracy-learner`` table and ``invsync.accuracy`` out."""

    def __init__(
        self, settings: Settings, codec: Codec, table: TableT, outputs: Outputs, dead_letters: str
    ) -> None:
        self.codec = codec
        self.table = table
        self.store = PartitionStore(table)
        self.outputs = outputs
        self.dead_letters = dead_letters
        self.topic = topics.ACCURACY_EVIDENCE.full_name(settings)
        self.accuracy_topic = topics.ACCURACY.full_name(settings)

    def process(self, events: Sequence[EventT], ticket: Ticket) -> list[EventT]:
        """Fold ``events`` (in order) into the table; queue the changelog records, the learned
        states and the dead letters on ``ticket``. Returns the events that may be acked once it
        completes."""
        current = owned(self.table.app, events)
        letters: list[DeadLetter] = []
        valid = [(event, evidence) for event in current
                 if (evidence := self._decode(event, letters)) is not None]  # fmt: skip
        loaded = self._load(valid)
        for event, evidence in valid:
            entry = loaded[evidence.location_type.encode()]
            outcome = entry.state.fold(evidence, event.message.offset)
            if outcome == REDELIVERED:
                entry.republish = True
            else:
                entry.dirty = True
                entry.learned = entry.learned or outcome == LEARNED
            metrics.ACCURACY_EVIDENCE.labels(evidence.location_type, outcome).inc()
        changelog = self.store.changelog
        for key, entry in loaded.items():
            if not (entry.dirty or entry.republish):
                continue
            entry.state.settle(self._frontier(entry.partition))
            value = entry.state.to_bytes()
            self.store.put_many(entry.partition, [(key, value)])  # local store first
            self.outputs.produce(ticket, changelog, key, value, entry.partition)
            if entry.learned or entry.republish:
                record = self.codec.encode(topics.ACCURACY, entry.state.record(key.decode()))
                self.outputs.produce(ticket, self.accuracy_topic, key, record)
        send_dead_letters(letters, self.codec, self.outputs, ticket, self.dead_letters)
        return current

    def _frontier(self, partition: int) -> int | None:
        guard = getattr(self.table.app.consumer, "offset_guard", None)
        return None if guard is None else guard.frontier(TP(self.topic, partition))

    def _decode(self, event: EventT, letters: list[DeadLetter]) -> Evidence | None:
        message = event.message
        reason = detail = ""
        evidence = None
        try:
            evidence = Evidence.from_record(self.codec.decode(message.topic, message.value))
        except DecodeError as exc:
            reason, detail = exc.reason, exc.detail
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            reason, detail = "invalid_record", f"{type(exc).__name__}: {exc}"
        if evidence is not None:
            if message.key != evidence.location_type.encode():
                reason = "key_mismatch"
                detail = f"key {message.key!r} is not {evidence.location_type!r}"
            elif evidence.location_type not in PRIORS:
                reason = "unknown_location_type"
                detail = f"no prior for location type {evidence.location_type!r}"
            else:
                return evidence
        letters.append(
            dead_letter(
                reason,
                detail,
                message.topic,
                message.partition,
                message.offset,
                message.key if isinstance(message.key, bytes) else None,
                message.value if isinstance(message.value, bytes) else None,
            )
        )
        return None

    def _load(self, valid: list[tuple[EventT, Evidence]]) -> dict[bytes, _Entry]:
        by_partition: dict[int, set[bytes]] = {}
        for event, evidence in valid:
            by_partition.setdefault(event.message.partition, set()).add(
                evidence.location_type.encode()
            )
        loaded: dict[bytes, _Entry] = {}
        for partition, key_set in by_partition.items():
            keys = sorted(key_set)
            for key, value in zip(keys, self.store.get_many(partition, keys), strict=True):
                loaded[key] = _Entry(partition, self._stored_state(key.decode(), value))
        return loaded

    def _stored_state(self, location_type: str, value: bytes | None) -> LearnerState:
        if value is None:
            return LearnerState.prior(location_type)
        try:
            return LearnerState.from_bytes(value)
        except (KeyError, TypeError, ValueError) as exc:
            # never crash the worker over it: the type starts again from its prior, loudly
            log.error(
                "the learned accuracy of %r in the %s table is corrupt (%s); learning it again "
                "from its prior",
                location_type, LEARNER_TABLE, exc,
            )  # fmt: skip
            metrics.ACCURACY_INVALID.labels("table").inc()
            return LearnerState.prior(location_type)


# --- every worker's view (a reader thread) -----------------------------------------------------


class LearnedAccuracy:
    """The latest learned accuracy per location type, read from ``invsync.accuracy`` (every
    partition, from the beginning) by a background thread; :meth:`get` falls back to the prior.
    Disabled (``enabled=False``): :meth:`get` is always the prior and nothing is read."""

    def __init__(self, settings: Settings, *, enabled: bool = True) -> None:
        self.settings = settings
        self.enabled = enabled
        self.topic = topics.ACCURACY.full_name(settings)
        self._states: dict[str, ClassAccuracy] = {}
        self._caught_up = threading.Event()  # every partition read to its end once
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._wait_until: float | None = None  # the first get() waits for the catch-up till then
        for kind, prior in PRIORS.items():
            _show(kind, prior)

    def get(self, location_type: str) -> ClassAccuracy:
        """The accuracy to use for ``location_type`` now (the first call after :meth:`start`
        waits until the topic was read to its end, at most :data:`CATCH_UP_S` from start)."""
        if self._wait_until is not None:
            self._wait_first()
        state = self._states.get(location_type)
        return PRIORS[location_type] if state is None else state

    def offer(self, location_type: str | None, record: Mapping[str, Any] | None) -> bool:
        """Take one record of the topic (``None``: a tombstone, back to the prior); False (and
        logged, counted) if it is not a valid learned state of a known location type."""
        try:
            if location_type is None or location_type not in PRIORS:
                raise ValueError(f"no prior for location type {location_type!r}")
            if record is None:
                self._states.pop(location_type, None)
                _show(location_type, PRIORS[location_type])
                return True
            if record.get("location_type") != location_type:
                raise ValueError(f"a state of {record.get('location_type')!r} under this key")
            accuracy = accuracy_from_fields(record)
        except ValueError as exc:
            log.error("ignoring an invalid learned accuracy (key %r): %s", location_type, exc)
            metrics.ACCURACY_INVALID.labels("topic").inc()
            return False
        self._states[location_type] = accuracy
        _show(location_type, accuracy)
        return True

    def start(self) -> None:
        """Start reading (idempotent; nothing when disabled)."""
        if not self.enabled or self._thread is not None:
            return
        self._wait_until = time.monotonic() + CATCH_UP_S
        self._thread = threading.Thread(
            target=self._run, name="invsync-learned-accuracy", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def wait_caught_up(self, timeout_s: float) -> bool:
        return self._caught_up.wait(timeout_s)

    def _wait_first(self) -> None:
        deadline, self._wait_until = self._wait_until, None
        assert deadline is not None
        if not self._caught_up.wait(max(0.0, deadline - time.monotonic())):
            log.warning(
                "%s was not read to its end within %.0fs of start-up: projecting with what was "
                "read so far (the priors for the rest)",
                self.topic, CATCH_UP_S,
            )  # fmt: skip

    def _run(self) -> None:
        backoff = 0.5
        while not self._stopping.is_set():
            try:
                self._consume()
            except Exception:  # never the worker's end: log, wait, read again from the start
                log.exception("reading %s failed; again in %.1fs", self.topic, backoff)
                self._stopping.wait(backoff)
                backoff = min(30.0, backoff * 2)

    def _consume(self) -> None:
        codec = Codec(self.settings, millis_timestamps=True)
        consumer = Consumer(
            {
                "bootstrap.servers": self.settings.kafka_bootstrap,
                "group.id": f"{self.settings.app_id}-learned-accuracy",  # never joined: assign()
                "enable.auto.commit": False,
                "enable.partition.eof": True,
                "auto.offset.reset": "earliest",
            }
        )
        try:
            metadata = consumer.list_topics(self.topic, timeout=10).topics.get(self.topic)
            if metadata is None or metadata.error is not None or not metadata.partitions:
                error = None if metadata is None else metadata.error
                raise RuntimeError(f"no partitions of {self.topic} ({error})")
            partitions = sorted(metadata.partitions)
            consumer.assign([TopicPartition(self.topic, p, OFFSET_BEGINNING) for p in partitions])
            unread = set(partitions)  # not read to its end yet
            while not self._stopping.is_set():
                message = consumer.poll(0.5)
                if message is None:
                    continue
                error = message.error()
                if error is not None:
                    if error.code() == KafkaError._PARTITION_EOF:
                        unread.discard(message.partition() or 0)
                        if not unread:
                            self._caught_up.set()
                    else:
                        log.warning("reading %s: %s", self.topic, error)
                    continue
                raw_key, value = message.key(), message.value()
                key = raw_key.decode(errors="replace") if raw_key is not None else None
                record = None
                if value is not None:
                    try:
                        record = codec.decode(self.topic, value)
                    except DecodeError as exc:
                        log.error("ignoring an undecodable learned accuracy (key %r): %s", key, exc)
                        metrics.ACCURACY_INVALID.labels("topic").inc()
                        continue
                self.offer(key, record)
        finally:
            consumer.close()


def _show(location_type: str, accuracy: ClassAccuracy) -> None:
    metrics.ACCURACY_OBSERVATIONS.labels(location_type).set(accuracy.observations)
    metrics.ACCURACY_LOSS_RATE.labels(location_type).set(accuracy.loss_rate)
    metrics.ACCURACY_PHANTOM_RATE.labels(location_type).set(accuracy.phantom_rate)


# --- wiring ------------------------------------------------------------------------------------


def register_learning(
    app: faust.App,
    settings: Settings,
    codec: Codec,
    outputs: Outputs,
    progress: health.Progress,
) -> LearnedAccuracy:
    """Declare the learner's table, register its agent and start every worker's reader with
    the app; returns the view the fold projects with. With ``INVSYNC_LEARN_ACCURACY=false``
    nothing is registered and the view is the priors."""
    learned = LearnedAccuracy(settings, enabled=settings.learn_accuracy)
    if not settings.learn_accuracy:
        log.info("accuracy learning is off (INVSYNC_LEARN_ACCURACY=false): priors only")
        return learned
    from streams.app import _batched  # app.py imports this module: resolved at call time

    table = app.Table(
        LEARNER_TABLE, partitions=settings.partitions, key_type=bytes, value_type=bytes
    )
    # the table's changelog offsets are then recorded per ticket (restart replays only past them)
    outputs.changelogs = outputs.changelogs | {table.changelog_topic.get_topic_name()}
    learner = AccuracyLearner(
        settings, codec, table, outputs, topics.DEAD_LETTERS.full_name(settings)
    )
    codec.register_all([topics.ACCURACY_EVIDENCE, topics.ACCURACY])
    progress.input_topics.add(learner.topic)  # lag gauges
    evidence = app.topic(
        learner.topic, key_type=bytes, value_type=bytes, key_serializer="raw",
        value_serializer="raw",
    )  # fmt: skip
    app.agent(evidence, name="learn-accuracy")(
        _batched(app, settings, outputs, (learner.store,), progress, learner.process)
    )

    # reading starts now, while Faust starts up (joins the group, recovers tables), so the fold's
    # first projection rarely waits for it
    learned.start()

    async def stop_reading(*args: Any, **kwargs: Any) -> None:
        await asyncio.get_running_loop().run_in_executor(None, learned.stop)

    cast(Any, app.on_before_shutdown).connect(stop_reading)
    return learned
