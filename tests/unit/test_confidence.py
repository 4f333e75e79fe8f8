"""The confidence model: its guarantees as properties, its behaviour on known cases."""

from __future__ import annotations

import json
import math
import random
from dataclasses import replace
from itertools import pairwise
from typing import Any

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from state.confidence import (
    DAY_MS,
    FROZEN_AT,
    PRIORS,
    Assessment,
    ClassAccuracy,
    assess,
    from_primitive,
    on_hand_belief,
    phantom_probability,
    to_primitive,
)

HOUR = 3_600_000
STORE, DC = PRIORS["store"], PRIORS["dc"]


def inputs(
    recorded: int = 8,
    reserved: int = 0,
    *,
    units: int = 30,
    age_ms: int | None = 7 * DAY_MS,
    silence_ms: int | None = HOUR,
    velocity: float = 2.0,
    accuracy: ClassAccuracy = STORE,
) -> dict[str, Any]:
    return {
        "recorded": recorded,
        "reserved": reserved,
        "units_moved_since_count": units,
        "last_count_age_ms": age_ms,
        "since_last_sale_ms": silence_ms,
        "velocity_per_day": velocity,
        "accuracy": accuracy,
    }


def position(*args: Any, **kwargs: Any) -> Assessment:
    return assess(**inputs(*args, **kwargs))


def free(a: Assessment) -> int:
    return max(0, a.recorded - a.reserved)


def finite(lo: float, hi: float) -> st.SearchStrategy[float]:
    return st.floats(lo, hi, allow_nan=False, allow_infinity=False)


accuracies = st.builds(
    ClassAccuracy,
    loss_mean=finite(-0.05, 0.2),
    loss_var=finite(1e-9, 0.01),
    k_shape=finite(1.01, 1e4),
    k_scale=finite(1e-6, 1e4),
    per_unit_var=finite(0, 1),
    per_day_var=finite(0, 1),
    count_error_var=finite(1e-6, 10),
    phantom_events=finite(1e-3, 100),
    phantom_days=finite(1, 10_000),
    uncounted_var=finite(0, 100),
    observations=st.integers(0, 10**6),
)
ages = st.none() | st.integers(0, 400 * DAY_MS)
position_inputs = st.builds(
    inputs,
    recorded=st.integers(-5, 300),
    reserved=st.integers(0, 60),
    units=st.integers(0, 5_000),
    age_ms=ages,
    silence_ms=ages,
    velocity=finite(0, 50),
    accuracy=st.sampled_from(list(PRIORS.values())) | accuracies,
)


# --- confidence and the offer ------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(position_inputs)
def test_confidence_is_a_probability_non_increasing_in_q(kwargs: dict[str, Any]) -> None:
    a = assess(**kwargs)
    assert a.confidence(0) == a.confidence(-3) == 1.0
    values = [a.confidence(q) for q in range(min(free(a), 80) + 3)]
    assert all(0.0 <= v <= 1.0 for v in values)
    assert all(later <= earlier for earlier, later in pairwise(values))


@settings(max_examples=300, deadline=None)
@given(position_inputs, finite(0, 1))
def test_offerable_is_the_largest_q_meeting_the_minimum(
    kwargs: dict[str, Any], minimum: float
) -> None:
    a = assess(**kwargs)
    offered = a.offerable(minimum)
    assert offered == max(q for q in range(free(a) + 1) if a.confidence(q) >= minimum)
    assert 0 <= offered <= free(a)
    if a.recorded <= a.reserved:
        assert offered == 0


@settings(max_examples=200, deadline=None)
@given(position_inputs, st.integers(1, 300))
def test_offerable_meets_a_minimum_equal_to_a_confidence(kwargs: dict[str, Any], q: int) -> None:
    a = assess(**kwargs)
    assume(q <= free(a))
    assert a.offerable(a.confidence(q)) >= q


def test_offerable_never_exceeds_the_free_record() -> None:
    certain = position(10, 4, units=0, age_ms=0, accuracy=DC)
    assert certain.confidence(7) > 0.0 and certain.offerable(0.0) == 6
    assert certain.offerable(0.99) == 6
    assert position(3, 5).offerable(0.0) == 0
    assert position(-2, 0).offerable(0.5) == 0


def test_offerable_rejects_a_minimum_outside_the_unit_interval() -> None:
    for bad in (-0.1, 1.5, math.nan):
        with pytest.raises(ValueError):
            position().offerable(bad)


@settings(max_examples=300, deadline=None)
@given(position_inputs, st.integers(0, 2_000), st.integers(0, 200 * DAY_MS), finite(0.5, 1))
def test_more_units_moved_or_an_older_count_never_raise_confidence(
    kwargs: dict[str, Any], extra_units: int, extra_ms: int, minimum: float
) -> None:
    assume(kwargs["last_count_age_ms"] is not None)
    staler_kwargs = kwargs | {
        "units_moved_since_count": kwargs["units_moved_since_count"] + extra_units,
        "last_count_age_ms": kwargs["last_count_age_ms"] + extra_ms,
    }
    a, staler = assess(**kwargs), assess(**staler_kwargs)
    assert staler.mean <= a.mean and staler.variance >= a.variance
    for q in range(1, min(free(a), 80) + 1):
        if a.confidence(q) >= 0.5:  # the guarantee's range (see Assessment.confidence)
            assert staler.confidence(q) <= a.confidence(q) + 1e-12
    assert staler.offerable(minimum) <= a.offerable(minimum)


def test_staleness_lowers_the_offer_on_a_typical_store_position() -> None:
    fresh = position(12, units=0, age_ms=0)
    week = position(12, units=40, age_ms=7 * DAY_MS)
    quarter = position(12, units=400, age_ms=90 * DAY_MS)
    assert fresh.offerable(0.95) > week.offerable(0.95) > quarter.offerable(0.95)
    assert fresh.confidence(8) > week.confidence(8) > quarter.confidence(8)


def test_an_older_count_alone_widens_the_belief() -> None:
    recent, old = position(12, units=30, age_ms=DAY_MS), position(12, units=30, age_ms=180 * DAY_MS)
    assert old.mean == recent.mean and old.variance > recent.variance
    assert old.confidence(9) < recent.confidence(9)
    assert old.offerable(0.99) < recent.offerable(0.99)


def test_a_count_resets_the_variance_to_the_count_error() -> None:
    belief = on_hand_belief(10, 0, 0, STORE)
    assert belief.mean == 10 and belief.variance == STORE.count_error_var


def test_a_position_never_counted_gets_a_generous_variance() -> None:
    never = on_hand_belief(10, 30, None, STORE)
    for days in (0, 30, 180):
        assert never.variance > on_hand_belief(10, 30, days * DAY_MS, STORE).variance
    assert position(10, age_ms=None).offerable(0.95) < position(10, age_ms=DAY_MS).offerable(0.95)


def test_a_learned_negative_loss_rate_never_raises_the_mean() -> None:
    gaining = replace(STORE, loss_mean=-0.05)
    assert on_hand_belief(10, 100, DAY_MS, gaining).mean == 10
    assert assess(**inputs(10, units=100, accuracy=gaining)).explanation.loss_rate == 0.0


# --- freezing: phantom stock ---------------------------------------------------------------------


def test_a_fast_mover_that_stopped_selling_loses_its_confidence() -> None:
    recent = position(10, velocity=5.0, silence_ms=HOUR)
    silent = position(10, velocity=5.0, silence_ms=3 * DAY_MS)
    assert recent.confidence(1) > 0.95 and recent.offerable(0.95) >= 5
    assert silent.confidence(1) < 0.01 and silent.offerable(0.8) == 0
    assert silent.frozen and not recent.frozen
    assert silent.phantom_probability >= FROZEN_AT > recent.phantom_probability


def test_a_slow_mover_barely_notices_the_same_silence() -> None:
    recent = position(10, velocity=0.05, silence_ms=HOUR)
    silent = position(10, velocity=0.05, silence_ms=3 * DAY_MS)
    assert recent.confidence(1) - silent.confidence(1) < 0.01
    assert not silent.frozen and silent.offerable(0.95) == recent.offerable(0.95)


def test_an_empty_record_is_never_frozen() -> None:
    assert not position(0, velocity=5.0, silence_ms=30 * DAY_MS).frozen
    assert position(1, velocity=5.0, silence_ms=30 * DAY_MS).frozen


@settings(max_examples=200, deadline=None)
@given(
    finite(0, 0.05),
    finite(0, 50),
    st.integers(0, 60 * DAY_MS),
    st.integers(0, 60 * DAY_MS),
    st.none() | finite(0.5, 500),
)
def test_phantom_probability_grows_with_silence_and_velocity(
    rate: float, velocity: float, silence: int, more: int, evidence: float | None
) -> None:
    n = math.inf if evidence is None else evidence
    p = phantom_probability(rate, velocity, silence, n)
    assert 0.0 <= p <= 1.0
    assert phantom_probability(rate, velocity, silence + more, n) >= p - 1e-12
    assert phantom_probability(rate, velocity * 2, silence, n) >= p - 1e-12
    assert phantom_probability(rate * 2, velocity, silence, n) >= p - 1e-12


def test_a_velocity_resting_on_few_sales_weighs_a_silence_less() -> None:
    silence = 5 * DAY_MS
    assert (
        phantom_probability(1 / 365, 2.0, silence, 2.0)
        < phantom_probability(1 / 365, 2.0, silence, 200.0)
        < phantom_probability(1 / 365, 2.0, silence)
    )


def test_the_posterior_is_the_exact_one_for_a_known_velocity() -> None:
    """Onset hazard rho, sales at v: P(vanished, no sale since) = rho/(v+rho)(1-e^-(v+rho)t) to
    first order in rho, against P(there, no sale) = e^-(v+rho)t."""
    rho, v, t = 1 / 365, 0.8, 4.0
    vanished = rho / v * -math.expm1(-v * t)
    there = math.exp(-(v + rho) * t)
    assert phantom_probability(rho, v, int(t * DAY_MS)) == pytest.approx(
        vanished / (vanished + there), rel=1e-9
    )


def test_no_silence_evidence_no_phantom() -> None:
    assert phantom_probability(0.01, 5.0, None) == 0.0
    assert phantom_probability(0.0, 5.0, 30 * DAY_MS) == 0.0
    # an item that never sells: only the onset hazard over the silence
    assert phantom_probability(1 / 365, 0.0, 30 * DAY_MS) == pytest.approx(30 / 365, rel=0.1)


def test_a_count_that_finds_an_empty_shelf_teaches_the_phantom_rate_not_the_drift() -> None:
    found = STORE.learn(-12, 20, 30.0, counted=0)
    assert found.phantom_events == STORE.phantom_events + 1
    assert found.phantom_days == STORE.phantom_days + 30.0
    assert (found.loss_mean, found.k_scale) == (STORE.loss_mean, STORE.k_scale)
    drift = STORE.learn(-2, 20, 30.0, counted=3)  # a normal count: drift, and exposure
    assert drift.phantom_events == STORE.phantom_events
    assert drift.phantom_days == STORE.phantom_days + 30.0
    assert drift.loss_mean != STORE.loss_mean
    short = STORE.learn(-1, 20, 30.0, counted=1)  # one short, not empty: drift
    assert short.phantom_events == STORE.phantom_events
    assert STORE.learn(2, 20, 30.0, counted=0).phantom_events == STORE.phantom_events


def test_an_empty_shelf_was_exposed_to_an_onset_only_until_it_emptied() -> None:
    """The onset came after the last sighting (day 10 of 30): exposure 10 + half of the 20
    unseen days. An unknown sighting (or a normal count) exposes the whole interval."""
    found = STORE.learn(-12, 20, 30.0, counted=0, sighted_days=10.0)
    assert found.phantom_days == STORE.phantom_days + 20.0
    assert found.phantom_rate > STORE.learn(-12, 20, 30.0, counted=0).phantom_rate
    assert STORE.learn(-12, 20, 30.0, 0, 45.0).phantom_days == STORE.phantom_days + 30.0
    assert STORE.learn(-2, 20, 30.0, 3, 10.0).phantom_days == STORE.phantom_days + 30.0


# --- learning from count discrepancies -----------------------------------------------------------


def counts_from(loss_rate: float, *, extra_var_per_unit: float = 0.0, n: int = 300, seed: int = 7):
    """Seeded discrepancies of a world with a known loss rate: binomial losses, +-1 miscounts."""
    rng = random.Random(seed)

    def miscount() -> int:
        return rng.choice((-1, 1)) if rng.random() < 0.1 else 0

    for _ in range(n):
        units, days = rng.randint(10, 150), rng.uniform(3, 14)
        lost = sum(rng.random() < loss_rate for _ in range(units))
        noise = round(rng.gauss(0, math.sqrt(extra_var_per_unit * units)))
        yield -lost + miscount() - miscount() + noise, units, days


def learn_all(accuracy: ClassAccuracy, observations) -> ClassAccuracy:
    for discrepancy, units, days in observations:
        accuracy = accuracy.learn(discrepancy, units, days)
    return accuracy


@pytest.mark.parametrize("true_rate", [0.0, 0.03, 0.05])
def test_learning_moves_the_loss_rate_to_the_true_one(true_rate: float) -> None:
    learned = learn_all(STORE, counts_from(true_rate))
    assert abs(learned.loss_rate - true_rate) < 0.005
    assert abs(learned.loss_rate - true_rate) < abs(STORE.loss_rate - true_rate) / 2
    assert learned.loss_var < STORE.loss_var / 10
    assert learned.observations == 300


def test_learning_the_drift_scale_follows_the_noise() -> None:
    quiet = learn_all(STORE, counts_from(0.01))
    noisy = learn_all(STORE, counts_from(0.01, extra_var_per_unit=0.2))
    assert quiet.drift_scale < 0.5 * STORE.drift_scale
    assert noisy.drift_scale > 2.0 * STORE.drift_scale


def test_a_lossier_class_is_trusted_less() -> None:
    lossy = learn_all(STORE, counts_from(0.05))
    base, worse = position(12, units=80, accuracy=STORE), position(12, units=80, accuracy=lossy)
    assert worse.mean < base.mean and worse.offerable(0.95) < base.offerable(0.95)


def test_a_recount_with_nothing_moved_leaves_the_loss_rate() -> None:
    learned = STORE.learn(-3, 0, 0.5)
    assert learned.loss_rate == STORE.loss_rate and learned.loss_var == STORE.loss_var
    assert learned.observations == 1
    recount = STORE.learn(-3, 0, 0)  # only the counts' own errors: says nothing about drift
    assert recount.drift_scale == STORE.drift_scale


def test_one_absurd_count_cannot_swamp_the_class() -> None:
    learned = STORE.learn(-10_000, 50, 7)
    assert learned.loss_rate < 0.1
    assert learned.drift_scale < 5 * STORE.drift_scale


def test_learning_rejects_non_finite_evidence() -> None:
    with pytest.raises(ValueError):
        STORE.learn(math.nan, 10, 1)
    with pytest.raises(ValueError):
        STORE.learn(-1, math.inf, 1)


def test_a_dc_prior_is_more_accurate_than_a_store_prior() -> None:
    assert DC.loss_rate < STORE.loss_rate and DC.phantom_rate < STORE.phantom_rate
    for units, days in ((0, 0), (30, 7), (500, 90)):
        assert DC.gap_var(units, days) < STORE.gap_var(units, days) / 10
    assert DC.gap_var(30, None) < STORE.gap_var(30, None)
    store, dc = position(12, units=40, accuracy=STORE), position(12, units=40, accuracy=DC)
    assert dc.offerable(0.95) > store.offerable(0.95)
    assert all(dc.confidence(q) > store.confidence(q) for q in range(1, 12))


# --- determinism, explanation, persistence -------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(position_inputs, finite(0, 1))
def test_same_inputs_same_outputs(kwargs: dict[str, Any], minimum: float) -> None:
    a, b = assess(**kwargs), assess(**kwargs)
    assert a == b and a.offerable(minimum) == b.offerable(minimum)


def test_learning_is_deterministic() -> None:
    assert learn_all(STORE, counts_from(0.02)) == learn_all(STORE, counts_from(0.02))


def test_the_explanation_carries_the_terms() -> None:
    record = position(10, 2, units=30, age_ms=DAY_MS, silence_ms=HOUR, velocity=4.0).explanation
    assert record.to_record() == {
        "last_count_age_ms": DAY_MS,
        "units_moved_since_count": 30,
        "loss_rate": STORE.loss_rate,
        "variance": STORE.gap_var(30, 1.0),
        "mean": 10 - STORE.loss_rate * 30,
        "velocity": 4.0,
        "since_last_sale_ms": HOUR,
        "phantom_probability": phantom_probability(STORE.phantom_rate, 4.0, HOUR),
        "frozen": False,
    }
    json.dumps(record.to_record())


@settings(max_examples=300, deadline=None)
@given(accuracies | st.sampled_from(list(PRIORS.values())))
def test_primitive_round_trip(accuracy: ClassAccuracy) -> None:
    assert from_primitive(json.loads(json.dumps(to_primitive(accuracy)))) == accuracy


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.integers(-50, 50), st.integers(0, 500), finite(0, 60)), max_size=30))
def test_learned_state_round_trips(observations) -> None:
    learned = learn_all(STORE, observations)
    assert from_primitive(json.loads(json.dumps(to_primitive(learned)))) == learned


def test_from_primitive_rejects_unknown_formats_and_bad_values() -> None:
    data = to_primitive(STORE)
    with pytest.raises(ValueError):
        from_primitive([99, *data[1:]])
    for index, bad in ((3, 1.0), (1, math.nan), (7, 0.0), (8, 0.0), (9, -1.0)):
        broken = list(data)
        broken[index] = bad
        with pytest.raises(ValueError):
            from_primitive(broken)
