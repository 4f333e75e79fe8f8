"""How sure we are that the units we are about to promise are on the shelf.

The model (after DeHoratius, Mersereau & Schrage 2008), closed-form and deterministic:

* **Belief over true on hand.** True on hand ~ Normal(mu, sigma^2) with ``U`` units moved and ``T``
  days since the last count::

      mu      = recorded - max(0, lam) * U
      sigma^2 = c + k * (a * U + b * T) + Var(lam) * U^2

  ``lam`` is the expected unrecorded loss per unit moved (theft, damage, mis-scans, as a fraction
  of throughput), ``a`` and ``b`` are the drift variance per unit moved and per day, ``k`` scales
  both, ``c`` is a count's own error variance. A count resets ``U = T = 0``, so sigma^2 = c. A
  position never counted is treated as counted :data:`NEVER_COUNTED_DAYS` ago by a count with
  extra error ``uncounted_var`` (a generous prior variance).
* **Learning from counts** (:meth:`ClassAccuracy.learn`). A count's discrepancy ``d`` (counted -
  recorded as of the count), after ``U`` units and ``T`` days since the previous count, is
  evidence ``-d = lam * U + noise``, noise variance ``k * (a U + b T) + 2c`` (both counts err).
  ``lam`` has a Normal prior, updated conjugately with ``k`` at its current mean; ``k`` has an
  inverse-gamma prior IG(alpha, beta), updated from the standardised squared residual, weighted by
  the share of the residual's variance that ``k`` scales. Residuals are clipped at
  :data:`CLIP_SD` predictive standard deviations, so one fat-fingered count cannot swamp a class.
* **Freezing (phantom stock).** A record can show stock that is not there; nobody can buy it, so
  it stops selling. The shelf empties unseen at a hazard ``rho`` per day (learned per class from
  counts that find it empty). After ``t`` days without a sale (trading time), with velocity
  ``v`` ~ Gamma(n, n / v) and ``S(s) = (1 + v s / n) ** -n`` the chance of no sale in ``s``:
  ``pi' = rho * int_0^t S(s) ds / (rho * int_0^t S(s) ds + S(t) exp(-rho t))`` - the stock
  vanished at some point of the silence with no sale before it, against still there and
  unsold. The position is ``frozen`` when ``pi' >=`` :data:`FROZEN_AT` and the record shows
  stock.
* **Confidence.** ``confidence(q) = (1 - pi') * P(Normal(mu - reserved, sigma^2) >= q - 0.5)`` for
  ``q >= 1`` (continuity correction), ``confidence(0) = 1``. A channel is offered the largest ``q``
  whose confidence meets its minimum, never more than ``recorded - reserved``.

Guarantees (each is a test in ``tests/unit/test_confidence.py``): confidence is in [0, 1] and
non-increasing in ``q``; the offer never exceeds ``max(0, recorded - reserved)``; for confidence
>= 1/2 (every sensible channel minimum), more units moved or an older count never raise
confidence nor the offer; equal inputs give equal outputs. "Time" is whatever the caller passes:
ages in event time (stream time - event), never the wall clock, so a replay gives the same values.

Limits: sigma^2 uses the mean of ``k`` (a Normal, not the Student-t of the full posterior); the
belief is not truncated at 0; a learned negative loss rate is learned but never used to raise mu.
``S`` assumes Poisson sales at a steady rate, so ``v * t`` must be the demand expected over the
silence (trading hours, :mod:`state.trading_hours`; the item's normal velocity, not one measured
over the silence itself, which is 0 by construction: :func:`state.availability.velocity`).
The hazard integral is first order in ``rho`` (rho * t << 1).
Learning never forgets: to follow a drifting class, refold a window of discrepancies from the
prior.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from types import MappingProxyType
from typing import Any

DAY_MS = 86_400_000
NEVER_COUNTED_DAYS = 365.0  # a position never counted is treated as counted this long ago
FROZEN_AT = 0.5  # posterior phantom probability from which a stocked record is "frozen"
CLIP_SD = 4.0  # a discrepancy's residual counts for at most this many predictive sd


@dataclass(frozen=True, slots=True)
class ClassAccuracy:
    """What the counts have taught about a location class (or one location, started from its
    class prior): the posterior of the loss rate and of the drift scale, and the fixed terms.

    Immutable; :meth:`learn` returns the next state. Every field is validated (finite, in range)
    on construction, so a corrupt stored value fails loudly in :func:`from_primitive`.
    """

    loss_mean: float  # posterior mean of lam, units lost unrecorded per unit moved
    loss_var: float  # posterior variance of lam
    k_shape: float  # alpha of IG(alpha, beta) on the drift scale k; > 1 so E[k] exists
    k_scale: float  # beta
    per_unit_var: float  # a: drift variance per unit moved (times k)
    per_day_var: float  # b: drift variance per day since the count (times k)
    count_error_var: float  # c: variance of one count's error
    phantom_events: float  # Gamma posterior of the phantom-stock onset rate rho: shape ...
    phantom_days: float  # ... and rate (position-days observed); rho = events / days
    uncounted_var: float  # extra error variance of a position never counted
    observations: int = 0  # discrepancies learned from

    def __post_init__(self) -> None:
        values = [getattr(self, f.name) for f in fields(self)]
        if not all(isinstance(v, int | float) and math.isfinite(v) for v in values):
            raise ValueError(f"non-finite accuracy term: {values}")
        if (
            self.loss_var <= 0
            or self.k_shape <= 1
            or self.k_scale <= 0
            or min(self.per_unit_var, self.per_day_var, self.uncounted_var) < 0
            or self.count_error_var <= 0
            or self.phantom_events <= 0
            or self.phantom_days <= 0
            or self.observations < 0
        ):
            raise ValueError(f"accuracy term out of range: {self}")

    @property
    def loss_rate(self) -> float:
        """Posterior mean of the unrecorded loss per unit moved (may be negative: net gains)."""
        return self.loss_mean

    @property
    def phantom_rate(self) -> float:
        """Posterior mean of the phantom-stock onsets per position per (trading) day."""
        return self.phantom_events / self.phantom_days

    @property
    def drift_scale(self) -> float:
        """Posterior mean of ``k``: beta / (alpha - 1)."""
        return self.k_scale / (self.k_shape - 1.0)

    def drift_var(self, units_moved: float, days: float) -> float:
        """E[k] * (a * U + b * T): the variance the record gathers between counts."""
        return self.drift_scale * (self.per_unit_var * units_moved + self.per_day_var * days)

    def gap_var(self, units_moved: float, days: float | None) -> float:
        """Variance of true - recorded, ``days`` after a count (``None``: never counted)."""
        base = self.count_error_var
        if days is None:
            base, days = base + self.uncounted_var, NEVER_COUNTED_DAYS
        return base + self.drift_var(units_moved, days) + self.loss_var * units_moved**2

    def learn(
        self,
        discrepancy: float,
        units_moved: float,
        days: float,
        counted: float | None = None,
        sighted_days: float | None = None,
    ) -> ClassAccuracy:
        """The state after one count: ``discrepancy`` = counted - recorded as of the count,
        ``units_moved`` and ``days`` since the previous count of the same position, ``counted``
        the units found (``None``: unknown, never taken for a phantom), ``sighted_days`` the
        days from the previous count to the last sighting before this count (the last sale, or
        the previous count itself; ``None``: unknown).

        **The shelf found empty**: a count that finds nothing (``counted == 0``) where the record
        expected stock is an onset of what the freezing test looks for (phantom stock, or the
        last units gone unrecorded), not drift: it adds one event to the onset rate's Gamma
        posterior and teaches the loss rate and drift nothing. Every count adds exposure to that
        posterior: ``days``, except after an onset, which can only start while the stock is
        there: then the time up to the onset, somewhere after the last sighting (taken as
        halfway between it and the count; the whole ``days`` when the sighting is unknown).
        Counting the empty time too understated the rate by ~15 % on a simulated network with
        monthly counts, and the freezing test with it.

        **Drift and loss**, otherwise: with ``k^ = E[k]``, drift ``D = k^ (a U + b T)``, noise
        ``N = D + 2c``, predictive variance ``V = N + Var(lam) U^2`` and residual
        ``r = -d - lam U`` (clipped to +-CLIP_SD sqrt(V)): ``lam`` takes the Normal-Normal update
        with observation ``lam U + r``, variance ``N``; ``alpha += w / 2`` and
        ``beta += w k^ r^2 / (2 V)`` with ``w = D / V``, so ``E[k]`` moves towards ``k^ r^2 / V``
        (1 when the residual is as large as predicted).

        Learn only from a count that follows a count: a first count's discrepancy measures the
        opening record, not loss. A recount with nothing moved (U = 0) leaves the loss rate as is;
        with T = 0 too it says nothing about drift either.
        """
        if not all(map(math.isfinite, (discrepancy, units_moved, days))):
            raise ValueError(f"non-finite evidence: {discrepancy}, {units_moved}, {days}")
        units, days = max(0.0, units_moved), max(0.0, days)
        k = self.drift_scale
        drift = self.drift_var(units, days)
        noise = drift + 2.0 * self.count_error_var
        predictive = noise + self.loss_var * units**2
        exposed = replace(
            self, phantom_days=self.phantom_days + days, observations=self.observations + 1
        )
        expected_gap = -discrepancy - self.loss_mean * units
        if counted == 0 and expected_gap > 0:
            stocked = days
            if sighted_days is not None and math.isfinite(sighted_days):
                sighted = min(days, max(0.0, sighted_days))
                stocked = sighted + (days - sighted) / 2.0
            return replace(
                exposed,
                phantom_days=self.phantom_days + stocked,
                phantom_events=self.phantom_events + 1.0,
            )
        bound = CLIP_SD * math.sqrt(predictive)
        residual = min(bound, max(-bound, expected_gap))
        precision = 1.0 / self.loss_var + units**2 / noise
        observed_loss = self.loss_mean * units + residual
        loss_mean = (self.loss_mean / self.loss_var + units * observed_loss / noise) / precision
        weight = drift / predictive  # share of the residual's variance that k scales
        return replace(
            exposed,
            loss_mean=loss_mean,
            loss_var=1.0 / precision,
            k_shape=self.k_shape + weight / 2.0,
            k_scale=self.k_scale + weight * k * residual**2 / predictive / 2.0,
        )


# Stores: ~1% of throughput lost unrecorded (retail shrink is 1-2% of sales), 5% of units moved
# carrying a +-1 error (scan and pick errors), slow decay of the shelf, a count off now and then.
# DCs: ten times less loss, two orders of magnitude less drift, near-exact counts (~99% accurate).
PRIORS: Mapping[str, ClassAccuracy] = MappingProxyType(
    {
        "store": ClassAccuracy(
            loss_mean=0.01, loss_var=0.01**2, k_shape=3.0, k_scale=2.0, per_unit_var=0.05,
            per_day_var=0.01, count_error_var=0.25, phantom_events=1.0, phantom_days=365.0,
            uncounted_var=4.0,
        ),
        "dc": ClassAccuracy(
            loss_mean=0.001, loss_var=0.001**2, k_shape=3.0, k_scale=2.0, per_unit_var=0.0002,
            per_day_var=0.0005, count_error_var=0.02, phantom_events=0.5, phantom_days=1825.0,
            uncounted_var=1.0,
        ),
    }
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class Belief:
    """Normal belief over the true on hand of one position (before reservations)."""

    mean: float
    variance: float


def on_hand_belief(
    recorded: int,
    units_moved_since_count: int,
    last_count_age_ms: int | None,
    accuracy: ClassAccuracy,
) -> Belief:
    """mu = recorded - max(0, lam) * U; sigma^2 = the class's gap variance (see the module)."""
    units = max(0, units_moved_since_count)
    days = None if last_count_age_ms is None else max(0, last_count_age_ms) / DAY_MS
    loss = max(0.0, accuracy.loss_mean) * units
    return Belief(recorded - loss, accuracy.gap_var(units, days))


def silence_probability(velocity_per_day: float, days: float, evidence_units: float) -> float:
    """P(no sale in ``days`` | the stock is there): ``(1 + v t / n) ** -n`` with the velocity
    Gamma(n, n / v) (``exp(-v t)`` for ``n = inf``)."""
    return math.exp(_log_silence(velocity_per_day, days, evidence_units))


def _log_silence(velocity_per_day: float, days: float, evidence_units: float) -> float:
    expected = max(0.0, velocity_per_day) * max(0.0, days)
    if math.isinf(evidence_units):
        return -expected
    n = max(evidence_units, 1e-9)
    return -n * math.log1p(expected / n)


def _open_time(velocity_per_day: float, days: float, evidence_units: float) -> float:
    """Integral over ``s`` in [0, days] of :func:`silence_probability`: the expected time the
    shelf spent without a sale *and* able to lose its stock unseen."""
    v, n, t = max(0.0, velocity_per_day), evidence_units, max(0.0, days)
    if v * t < 1e-9:
        return t
    if math.isinf(n):
        return -math.expm1(-v * t) / v
    n = max(n, 1e-9)
    if abs(n - 1.0) < 1e-9:
        return math.log1p(v * t) / v
    return n / (v * (n - 1.0)) * -math.expm1((1.0 - n) * math.log1p(v * t / n))


def phantom_probability(
    rate_per_day: float,
    velocity_per_day: float,
    since_last_sale_ms: int | None,
    evidence_units: float = math.inf,
) -> float:
    """Posterior probability that a stocked record is phantom after a silence.

    Phantom stock starts at a hazard ``rate_per_day`` (the facing vanishes: misplaced, stolen,
    damaged out of sight). The last sale (or count) showed the stock there; since then, for
    ``t = since_last_sale_ms`` (trading time when the caller knows the hours), either it
    vanished at some ``s < t`` with no sale before ``s`` (probability ~ ``rate * integral of
    S(s) ds``), or it is still there and nobody bought it (``S(t) exp(-rate t)``), where ``S``
    is :func:`silence_probability`. ``None`` (never sold nor counted) is no evidence: 0.

    For a fast seller the silence soon becomes damning; for a slow one, or one whose velocity
    rests on a handful of sales (``evidence_units``), it stays near ``rate * t``.
    """
    if rate_per_day <= 0.0 or since_last_sale_ms is None:
        return 0.0
    days = max(0, since_last_sale_ms) / DAY_MS
    open_time = _open_time(velocity_per_day, days, evidence_units)
    if open_time <= 0.0:
        return 0.0
    # in logs: both terms underflow for a fast seller after a long silence
    log_vanished = math.log(rate_per_day) + math.log(open_time)
    log_there = _log_silence(velocity_per_day, days, evidence_units) - rate_per_day * days
    return 1.0 / (1.0 + math.exp(min(700.0, log_there - log_vanished)))


@dataclass(frozen=True, slots=True)
class Explanation:
    """The inputs and terms behind one confidence value, carried by every availability record."""

    last_count_age_ms: int | None
    units_moved_since_count: int
    loss_rate: float  # the rate used for mu (the learned rate, floored at 0)
    variance: float  # sigma^2 of true on hand
    mean: float  # mu of true on hand
    velocity: float  # units/day
    since_last_sale_ms: int | None
    phantom_probability: float  # posterior pi'
    frozen: bool

    def to_record(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in _EXPLANATION_FIELDS}


_EXPLANATION_FIELDS = tuple(f.name for f in fields(Explanation))


@dataclass(frozen=True, slots=True)
class Assessment:
    """Confidence of one position: what may be promised at which certainty, and why."""

    recorded: int
    reserved: int
    explanation: Explanation

    @property
    def mean(self) -> float:
        return self.explanation.mean

    @property
    def variance(self) -> float:
        return self.explanation.variance

    @property
    def phantom_probability(self) -> float:
        return self.explanation.phantom_probability

    @property
    def frozen(self) -> bool:
        return self.explanation.frozen

    def confidence(self, q: int) -> float:
        """P(at least ``q`` units are there beyond the reservations); 1 for ``q <= 0``.

        Non-increasing in ``q``. For ``q`` above the expected free stock (confidence < 1/2) a wider
        belief raises it: that is the symmetric Normal, not a promise to rely on.
        """
        if q <= 0:
            return 1.0
        return (1.0 - self.explanation.phantom_probability) * self._at_least(q)

    def _at_least(self, q: int) -> float:
        e = self.explanation  # continuity correction: at least q means above q - 0.5
        return 0.5 * math.erfc((q - 0.5 - e.mean + self.reserved) / math.sqrt(2.0 * e.variance))

    def offerable(self, min_confidence: float) -> int:
        """The largest ``q`` in [0, max(0, recorded - reserved)] with confidence(q) >=
        ``min_confidence``, by binary search on the monotone confidence (O(log q) erfc calls)."""
        if not 0.0 <= min_confidence <= 1.0:
            raise ValueError(f"min_confidence must be in [0, 1]: {min_confidence}")
        present = 1.0 - self.explanation.phantom_probability
        lo, hi = 0, max(0, self.recorded - self.reserved)  # confidence(0) = 1 always meets it
        # the same expression as confidence(q), so the two agree to the last bit
        if hi == 0 or present * self._at_least(hi) >= min_confidence:
            return hi
        while hi - lo > 1:  # invariant: lo meets the minimum, hi does not
            mid = (lo + hi) // 2
            if present * self._at_least(mid) >= min_confidence:
                lo = mid
            else:
                hi = mid
        return lo


def assess(
    recorded: int,
    reserved: int,
    *,
    units_moved_since_count: int,
    last_count_age_ms: int | None,
    since_last_sale_ms: int | None,
    velocity_per_day: float,
    accuracy: ClassAccuracy,
    velocity_evidence: float = math.inf,
) -> Assessment:
    """The confidence of one position, from its ledger terms and event-time ages.

    ``last_count_age_ms`` and ``since_last_sale_ms`` are stream time minus the event's time
    (``None``: never); ``velocity_per_day`` is the item's normal demand at this location and
    ``velocity_evidence`` the units of demand it was estimated from (see
    :func:`phantom_probability`).
    """
    belief = on_hand_belief(recorded, units_moved_since_count, last_count_age_ms, accuracy)
    phantom = phantom_probability(
        accuracy.phantom_rate, velocity_per_day, since_last_sale_ms, velocity_evidence
    )
    explanation = Explanation(
        last_count_age_ms=last_count_age_ms,
        units_moved_since_count=units_moved_since_count,
        loss_rate=max(0.0, accuracy.loss_mean),
        variance=belief.variance,
        mean=belief.mean,
        velocity=velocity_per_day,
        since_last_sale_ms=since_last_sale_ms,
        phantom_probability=phantom,
        frozen=phantom >= FROZEN_AT and recorded > 0,
    )
    return Assessment(recorded, reserved, explanation)


# --- persistence: a compact, JSON-friendly form (a changelog table's value) -----------------

_FORMAT = 2  # 2: phantom_rate (a hazard per day) replaced phantom_prior


def to_primitive(accuracy: ClassAccuracy) -> list[Any]:
    return [_FORMAT, *(getattr(accuracy, f.name) for f in fields(ClassAccuracy))]


def from_primitive(data: list[Any]) -> ClassAccuracy:
    fmt, *values = data
    if fmt != _FORMAT:
        raise ValueError(f"unknown accuracy format {fmt}")
    return ClassAccuracy(*values)


# --- learning from settled counts (the stream's learner, streams/learning.py) -----------------


def learn_from_count(
    accuracy: ClassAccuracy,
    *,
    discrepancy: int,
    units_moved: int,
    counted: int | None,
    counted_at: int,
    previous_count_at: int | None,
    last_sighting_at: int | None = None,
) -> ClassAccuracy | None:
    """The state after one settled count (a ``count_discrepancy`` record's terms: event-time
    millis), or ``None`` when the count teaches nothing: a position's first count
    (``previous_count_at`` null) measures the opening record, not loss. The same rule and terms
    as ``invsync quality``: :meth:`ClassAccuracy.learn` with the days between the two counts and
    from the previous count to ``last_sighting_at`` (null: unknown, e.g. an older record)."""
    if previous_count_at is None:
        return None
    days = max(0, counted_at - previous_count_at) / DAY_MS
    sighted = None if last_sighting_at is None else (last_sighting_at - previous_count_at) / DAY_MS
    return accuracy.learn(discrepancy, units_moved, days, counted, sighted)


ACCURACY_FIELDS = tuple(f.name for f in fields(ClassAccuracy))


def accuracy_fields(accuracy: ClassAccuracy) -> dict[str, Any]:
    """Every term of ``accuracy`` by name (``schemas/avro/learned_accuracy.avsc``'s fields)."""
    return {name: getattr(accuracy, name) for name in ACCURACY_FIELDS}


def accuracy_from_fields(record: Mapping[str, Any]) -> ClassAccuracy:
    """The accuracy in ``record`` (other keys ignored), validated by :class:`ClassAccuracy`:
    raises ``ValueError`` (a term missing, of the wrong type, non-finite or out of range)."""
    try:
        values = {name: record[name] for name in ACCURACY_FIELDS}
    except KeyError as exc:
        raise ValueError(f"accuracy term missing: {exc}") from None
    if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in values.values()):
        raise ValueError(f"accuracy term of the wrong type: {values}")
    if not float(values["observations"]).is_integer():
        raise ValueError(f"observations must be whole: {values['observations']}")
    values["observations"] = int(values["observations"])
    return ClassAccuracy(**values)
