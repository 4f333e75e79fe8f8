"""Learning the accuracy per location type in the stream (streams/learning.py): the pure fold
(priors first, the first-count rule, exact redelivery and duplicate recognition), the learner's
batches against fake stores, and every worker's read-only view with its validation."""

from __future__ import annotations

import math
from dataclasses import replace
from types import SimpleNamespace
from typing import Any

import pytest
from faust.types import TP

from invsync.settings import Settings
from state.confidence import (
    DAY_MS,
    PRIORS,
    accuracy_fields,
    accuracy_from_fields,
    learn_from_count,
)
from streams import learning, topics
from streams.learning import (
    DUPLICATE,
    FIRST_COUNT,
    LEARNED,
    REDELIVERED,
    AccuracyLearner,
    Evidence,
    LearnedAccuracy,
    LearnerState,
)

T0 = 1_767_225_600_000
SETTINGS = Settings(topic_prefix="t.", schema_registry_url="mock://learning")  # type: ignore[call-arg]


def evidence(i: int, *, kind: str = "store", discrepancy: int = -3, moved: int = 40,
             counted: int = 10, first: bool = False, days: float = 7.0) -> Evidence:  # fmt: skip
    at = T0 + i * DAY_MS
    previous = None if first else at - int(days * DAY_MS)
    location = "DC1" if kind == "dc" else "S1"
    return Evidence(f"c{i}", f"SKU{i}", location, kind, at, counted, discrepancy, moved, previous)


# --- state/confidence.py helpers -------------------------------------------------------------


def test_a_first_count_teaches_nothing_and_a_later_one_learns_with_the_days_between() -> None:
    store = PRIORS["store"]
    terms = {"discrepancy": -4, "units_moved": 30, "counted": 6, "counted_at": 10 * DAY_MS}
    assert learn_from_count(store, previous_count_at=None, **terms) is None
    learned = learn_from_count(store, previous_count_at=3 * DAY_MS, **terms)
    assert learned == store.learn(-4, 30, 7.0, 6)
    assert learned is not None and learned.observations == 1 and learned.loss_mean > store.loss_mean
    empty = terms | {"discrepancy": -10, "counted": 0}
    sighted = learn_from_count(store, previous_count_at=3 * DAY_MS, last_sighting_at=5 * DAY_MS,
                               **empty)  # fmt: skip
    assert sighted == store.learn(-10, 30, 7.0, 0, 2.0)


def test_a_discrepancy_record_without_the_sighting_field_is_read_as_unknown() -> None:
    record = {"count_id": "c", "sku": "A", "location": "S1", "location_type": "store",
              "counted_at": T0, "counted": 0, "discrepancy": -4, "units_moved": 9,
              "previous_count_at": T0 - DAY_MS}  # fmt: skip
    assert Evidence.from_record(record).last_sighting_at is None
    seen = Evidence.from_record(record | {"last_sighting_at": T0 - 3_600_000})
    assert seen.last_sighting_at == T0 - 3_600_000


def test_accuracy_fields_round_trip_and_a_corrupt_state_is_refused() -> None:
    learned = PRIORS["dc"].learn(-1, 500, 30.0, 40)
    assert accuracy_from_fields(accuracy_fields(learned) | {"other": "ignored"}) == learned
    good = accuracy_fields(learned)
    corrupt = [
        good | {"loss_var": 0.0},  # out of range
        good | {"k_shape": math.nan},  # not finite
        good | {"phantom_days": math.inf},
        good | {"observations": 2.5},  # not whole
        good | {"loss_mean": "0.1"},  # wrong type
        good | {"count_error_var": True},
        {k: v for k, v in good.items() if k != "k_scale"},  # missing
    ]
    for record in corrupt:
        with pytest.raises(ValueError):
            accuracy_from_fields(record)


# --- the pure fold ------------------------------------------------------------------------------


def test_the_fold_starts_from_the_prior_and_learns_every_count_that_follows_a_count() -> None:
    state = LearnerState.prior("store")
    assert state.accuracy == PRIORS["store"]
    counts = [evidence(0, first=True), evidence(1, discrepancy=-5), evidence(2, counted=0),
              evidence(3, first=True), evidence(4, discrepancy=2, moved=0)]  # fmt: skip
    outcomes = [state.fold(e, offset) for offset, e in enumerate(counts)]
    assert outcomes == [FIRST_COUNT, LEARNED, LEARNED, FIRST_COUNT, LEARNED]
    expected = PRIORS["store"]
    for e in counts:
        if e.previous_count_at is not None:
            days = (e.counted_at - e.previous_count_at) / DAY_MS
            expected = expected.learn(e.discrepancy, e.units_moved, days, e.counted)
    assert state.accuracy == expected
    assert state.accuracy.observations == 3
    assert state.last_counted_at == counts[-1].counted_at


def test_a_redelivered_offset_or_a_count_seen_again_is_not_learned_twice() -> None:
    state = LearnerState.prior("store")
    assert state.fold(evidence(1), 10) == LEARNED
    once = state.accuracy
    assert state.fold(evidence(1), 10) == REDELIVERED  # the same input record again
    assert state.fold(evidence(1), 11) == DUPLICATE  # the same count at another offset
    assert state.accuracy == once
    # an offset below the commit frontier is in the state even after its record is forgotten
    state.settle(12)
    assert state.done_below == 12 and state.applied == set()
    assert state.fold(evidence(2), 11) == REDELIVERED
    # a record Faust delivers late (after later offsets) is still learned: exact, not a high mark
    assert state.fold(evidence(3), 14) == LEARNED
    assert state.fold(evidence(4), 13) == LEARNED
    assert state.accuracy.observations == 3


def test_the_count_memory_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(learning, "RECENT_COUNTS", 3)
    state = LearnerState.prior("store")
    for i in range(5):
        state.fold(evidence(i), i)
    assert list(state.recent) == [evidence(i).ident for i in (2, 3, 4)]
    assert state.fold(evidence(4), 100) == DUPLICATE
    assert state.fold(evidence(0), 101) == LEARNED  # forgotten: beyond the bound


def test_the_stored_state_round_trips_and_settle_only_moves_forward() -> None:
    state = LearnerState.prior("dc")
    for offset, i in enumerate((1, 2, 3)):
        state.fold(evidence(i, kind="dc"), offset + 5)
    state.settle(6)
    state.settle(2)  # an older frontier changes nothing
    assert state.done_below == 6 and state.applied == {6, 7}
    again = LearnerState.from_bytes(state.to_bytes())
    assert again == state
    record = again.record("dc")
    assert record["observations"] == 3 and record["loss_rate"] == again.accuracy.loss_mean
    assert accuracy_from_fields(record) == again.accuracy
    with pytest.raises(ValueError):
        LearnerState.from_bytes(b"not json")


# --- the learner's batches (fake store, codec and outputs) ------------------------------------


class FakeStore:
    changelog = "t.app-accuracy-learner-changelog"

    def __init__(self) -> None:
        self.data: dict[tuple[int, bytes], bytes] = {}

    def get_many(self, partition: int, keys: list[bytes]) -> list[bytes | None]:
        return [self.data.get((partition, key)) for key in keys]

    def put_many(self, partition: int, items: list[tuple[bytes, bytes]]) -> None:
        self.data.update(((partition, key), value) for key, value in items)


class FakeCodec:
    def decode(self, topic: str, data: Any) -> dict[str, Any]:
        if not isinstance(data, dict):
            from streams.codec import DecodeError

            raise DecodeError("undecodable", "not a record")
        return data

    def encode(self, spec: topics.TopicSpec, value: dict[str, Any]) -> dict[str, Any]:
        return {"topic": spec.name, **value}


class FakeOutputs:
    def __init__(self) -> None:
        self.records: list[tuple[str, bytes, Any, int]] = []

    def produce(self, ticket: Any, topic: str, key: bytes, value: Any, partition: int = -1) -> None:
        self.records.append((topic, key, value, partition))


def _learner(frontier: dict[TP, int]) -> tuple[AccuracyLearner, FakeStore, FakeOutputs]:
    evidence_topic = topics.ACCURACY_EVIDENCE.full_name(SETTINGS)
    consumer = SimpleNamespace(
        assignment=lambda: {TP(evidence_topic, p) for p in range(4)},
        offset_guard=SimpleNamespace(frontier=lambda tp: frontier.get(tp)),
    )
    table = SimpleNamespace(app=SimpleNamespace(consumer=consumer))
    outputs = FakeOutputs()
    learner = AccuracyLearner(SETTINGS, FakeCodec(), table, outputs, "t.dead")  # type: ignore[arg-type]
    store = FakeStore()
    learner.store = store  # type: ignore[assignment]
    return learner, store, outputs


def _event(offset: int, value: Any, key: bytes = b"store", partition: int = 1) -> Any:
    topic = topics.ACCURACY_EVIDENCE.full_name(SETTINGS)
    message = SimpleNamespace(topic=topic, partition=partition, offset=offset, key=key,
                              value=value, tp=TP(topic, partition))  # fmt: skip
    return SimpleNamespace(message=message, value=value)


def _record(e: Evidence) -> dict[str, Any]:
    return e._asdict()


def test_the_learner_writes_publishes_and_recognises_a_redelivered_batch() -> None:
    frontier: dict[TP, int] = {}
    learner, store, outputs = _learner(frontier)
    batch = [_event(0, _record(evidence(0, first=True))), _event(1, _record(evidence(1))),
             _event(2, _record(evidence(2)))]  # fmt: skip
    assert learner.process(batch, ticket=None) == batch  # type: ignore[arg-type]
    published = [r for r in outputs.records if r[0] == "t.invsync.accuracy"]
    assert len(published) == 1 and published[0][1] == b"store"
    assert published[0][2]["observations"] == 2
    changelog = [r for r in outputs.records if r[0] == FakeStore.changelog]
    assert [(r[1], r[3]) for r in changelog] == [(b"store", 1)]  # the evidence's partition
    stored = LearnerState.from_bytes(store.data[(1, b"store")])
    assert stored.accuracy.observations == 2 and stored.applied == {0, 1, 2}

    # a crash before the commit: the batch comes again; nothing is learned twice, the state is
    # written and published again (its records may not all have been delivered)
    outputs.records.clear()
    learner.process(batch, ticket=None)  # type: ignore[arg-type]
    assert LearnerState.from_bytes(store.data[(1, b"store")]).accuracy == stored.accuracy
    assert [r[2]["observations"] for r in outputs.records if r[0] == "t.invsync.accuracy"] == [2]

    # committed: the next batch folds on top and forgets the single offsets below the frontier
    frontier[TP(topics.ACCURACY_EVIDENCE.full_name(SETTINGS), 1)] = 3
    learner.process([_event(3, _record(evidence(3)))], ticket=None)  # type: ignore[arg-type]
    after = LearnerState.from_bytes(store.data[(1, b"store")])
    assert after.accuracy.observations == 3 and after.done_below == 3 and after.applied == {3}


def test_bad_evidence_is_dead_lettered_and_the_rest_learned() -> None:
    learner, _store, outputs = _learner({})
    batch = [
        _event(0, b"\x00garbage"),
        _event(1, _record(evidence(1)), key=b"dc"),  # key is not its location type
        _event(2, _record(evidence(2)) | {"location_type": "kiosk"}, key=b"kiosk"),
        _event(3, {"count_id": "x"}),  # another shape
        _event(4, _record(evidence(4))),
    ]
    assert learner.process(batch, ticket=None) == batch  # type: ignore[arg-type]
    letters = [r[2] for r in outputs.records if r[0] == "t.dead"]
    assert sorted(letter["reason"] for letter in letters) == sorted(
        ["undecodable", "key_mismatch", "unknown_location_type", "invalid_record"]
    )
    published = [r[2] for r in outputs.records if r[0] == "t.invsync.accuracy"]
    assert [p["observations"] for p in published] == [1]


def test_a_corrupt_stored_state_restarts_its_type_from_the_prior_without_crashing() -> None:
    learner, store, _outputs = _learner({})
    store.data[(1, b"store")] = b'{"a": [2, 1.0], "b": 0}'
    learner.process([_event(0, _record(evidence(0)))], ticket=None)  # type: ignore[arg-type]
    state = LearnerState.from_bytes(store.data[(1, b"store")])
    assert state.accuracy == PRIORS["store"].learn(-3, 40, 7.0, 10)


# --- every worker's view ----------------------------------------------------------------------


def test_the_view_uses_the_prior_until_a_valid_state_arrives_and_ignores_corrupt_ones() -> None:
    view = LearnedAccuracy(SETTINGS)  # not started: offer() is what its thread calls
    assert view.get("store") == PRIORS["store"] and view.get("dc") == PRIORS["dc"]
    learned = replace(PRIORS["store"].learn(-5, 60, 10.0, 12), observations=1)
    record = {"location_type": "store", **accuracy_fields(learned), "last_counted_at": None}
    assert view.offer("store", record)
    assert view.get("store") == learned and view.get("dc") == PRIORS["dc"]
    # corrupt, of another type, under the wrong key, of an unknown type: logged and ignored
    assert not view.offer("store", record | {"loss_var": -1.0})
    assert not view.offer("store", record | {"observations": math.nan})
    assert not view.offer("dc", record)
    assert not view.offer("kiosk", record | {"location_type": "kiosk"})
    assert not view.offer(None, record)
    assert view.get("store") == learned
    assert view.offer("store", None)  # a tombstone: back to the prior
    assert view.get("store") == PRIORS["store"]


def test_learning_switched_off_means_the_priors_and_no_reader() -> None:
    view = LearnedAccuracy(SETTINGS, enabled=False)
    view.start()
    assert view._thread is None
    assert view.get("store") is PRIORS["store"]
