"""What a channel is offered of one position, with the confidence that explains it.

A channel's policy (:mod:`state.channel_policy`, from ``INVSYNC_CHANNEL_POLICY``) decides what
it is offered: eligibility, ATP terms, the largest quantity whose confidence meets the channel's
minimum for the location type, buffers, cap, in/low/out thresholds. Without a policy file every
channel uses the default: ATP = on hand - reserved, minimum confidence 0 (offer all of ATP and
report how sure we are), ``low`` at or below 2. The confidence comes
from :mod:`state.confidence` with the location type's prior accuracy (learning it from count
discrepancies per location is the next step). Time is the position's stream time, never the
wall clock, so a replay publishes the same values.

Units in transit (``in_transit``: inbound to the location, shipped by a TRANSFER_OUT elsewhere
and not received yet, see :mod:`state.position`) are on every record; a channel counts them
only if its ATP terms list ``in_transit`` (the default terms do not, so without a policy file
nothing changes). The confidence model stays about on hand: it is the belief over the shelf,
and in-transit units are not on the shelf. A channel that counts them takes them **at face
value** (as the other non-shelf terms, :func:`state.channel_policy.offer`): a transfer is a
scanned shipment between two controlled sites, what it loses is measured when it is received
(transit loss, ``invsync_transit_loss_units_total``) and a transfer never received stops
counting at its timeout. So the record's ``confidence`` is P(true on hand - reserved >= offered
- in_transit) for such a channel: how sure we are of the shelf part of the offer, the inbound
part assumed to arrive. Discounting in-transit units by a learned transit-loss rate would be
the next step.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from state.channel_policy import Channel, default_channel, offer
from state.confidence import DAY_MS, PRIORS, Assessment, ClassAccuracy, assess
from state.position import Ledger
from state.trading_hours import ALWAYS_OPEN, TradingHours

DEFAULT_MIN_CONFIDENCE = 0.0


class Availability(NamedTuple):
    """One availability record: the value published to ``availability.<channel>`` (immutable)."""

    channel: str
    sku: str
    location: str
    on_hand: int
    reserved: int
    atp: int
    offered: int
    status: str
    confidence: float
    version: int
    as_of: int
    last_count_at: int | None
    units_moved_since_count: int
    late_events: int
    location_type: str
    last_count_age_ms: int | None
    since_last_sale_ms: int | None
    velocity_per_day: float
    loss_rate: float
    expected_on_hand: float
    variance: float
    phantom_probability: float
    frozen: bool
    bound_by: str = ""  # what limited the offer (state.channel_policy.Offer)
    reason: str = ""
    min_confidence: float = 0.0
    held_back: int = 0
    in_transit: int = 0  # units inbound (shipped to here, not received yet)

    def to_record(self) -> dict[str, Any]:
        return self._asdict()


def location_type(location: str) -> str:
    """``dc`` for distribution centres (ids starting with "DC"), else ``store``."""
    return "dc" if location[:2].upper() == "DC" else "store"


# Gamma prior of an item's demand velocity: one unit in a week, so an item seen selling for a
# few days is not assumed to sell like its busiest afternoon, and silence after a handful of
# sales weighs little (see state.confidence.phantom_probability).
VELOCITY_PRIOR_UNITS = 0.5
VELOCITY_PRIOR_DAYS = 1.0


class Velocity(NamedTuple):
    """Posterior demand velocity of a position: Gamma(shape = ``evidence``, rate = evidence /
    per_day), from the units demanded between the first event seen and the last sighting."""

    per_day: float
    evidence: float  # units of demand behind the estimate (prior included)


def velocity(ledger: Ledger) -> Velocity:
    """The item's normal demand at this location: units demanded (POS sales net of returns,
    WMS picks) per day of *selling time* (``Ledger.selling_ms``: the gaps between sightings
    that ended in a sale or in a count that found stock), with the Gamma prior
    (:data:`VELOCITY_PRIOR_UNITS` over :data:`VELOCITY_PRIOR_DAYS`).

    Left out on purpose: the silence since the last sighting (the evidence the freezing test
    weighs; a phantom record would otherwise talk its own velocity down) and quiet spells that
    a count ended by finding the shelf empty (the item could not sell).
    """
    units = VELOCITY_PRIOR_UNITS + max(0, ledger.units_sold)
    return Velocity(units / (VELOCITY_PRIOR_DAYS + ledger.selling_ms / DAY_MS), units)


def velocity_per_day(ledger: Ledger) -> float:
    """:func:`velocity`'s point estimate, units per day."""
    return velocity(ledger).per_day


def assess_ledger(
    ledger: Ledger,
    *,
    stream_time: int,
    accuracy: ClassAccuracy,
    trading_hours: TradingHours = ALWAYS_OPEN,
) -> Assessment:
    """The confidence of one position at ``stream_time`` (event time, never the wall clock):
    count age, units moved, the silence since the last sale or count in ``trading_hours``, and
    the position's :func:`velocity`, weighed with ``accuracy`` (its location class's)."""
    now = max(stream_time, ledger.as_of)
    count_age = None if ledger.last_count_at is None else max(0, now - ledger.last_count_at)
    sighted = ledger.last_sighting
    silence = None if sighted is None else trading_hours.elapsed_ms(sighted, now)
    demand = velocity(ledger)
    return assess(
        ledger.on_hand,
        ledger.reserved,
        units_moved_since_count=ledger.moved_since_count,
        last_count_age_ms=count_age,
        since_last_sale_ms=silence,
        velocity_per_day=demand.per_day,
        velocity_evidence=demand.evidence,
        accuracy=accuracy,
    )


def project(
    channel: str,
    sku: str,
    location: str,
    ledger: Ledger,
    *,
    stream_time: int,
    min_confidence: float = DEFAULT_MIN_CONFIDENCE,
    low_threshold: int = 2,
    policy: Channel | None = None,
    accuracy: ClassAccuracy | None = None,
    trading_hours: TradingHours = ALWAYS_OPEN,
    assessment: Assessment | None = None,
) -> Availability:
    """What ``channel`` is offered of one position: its ``policy`` (eligibility, ATP terms,
    minimum confidence, buffers, cap, thresholds), or the default policy built from
    ``min_confidence`` and ``low_threshold``. ``assessment``: the position's
    :func:`assess_ledger` at ``stream_time`` when already made (it does not depend on the
    channel: a position published to several channels is assessed once)."""
    reserved = ledger.reserved
    kind = location_type(location)
    if assessment is None:
        assessment = assess_ledger(ledger, stream_time=stream_time,
                                   accuracy=accuracy or PRIORS[kind],
                                   trading_hours=trading_hours)  # fmt: skip
    rules = policy or default_channel(
        channel, min_confidence=min_confidence, low_threshold=low_threshold
    )
    result = offer(
        rules,
        location=location,
        location_type=kind,
        on_hand=ledger.on_hand,
        reserved=reserved,
        assessment=assessment,
        in_transit=ledger.in_transit,
    )
    atp, offered, status = result.atp, result.offered, result.status
    explanation = assessment.explanation
    return Availability(
        channel=channel,
        sku=sku,
        location=location,
        on_hand=ledger.on_hand,
        reserved=reserved,
        atp=atp,
        offered=offered,
        status=status,
        confidence=result.confidence,
        version=ledger.applied,
        as_of=max(ledger.as_of, 0),  # 0 for a position that has seen no event
        last_count_at=ledger.last_count_at,
        units_moved_since_count=ledger.moved_since_count,
        late_events=ledger.late,
        location_type=kind,
        last_count_age_ms=explanation.last_count_age_ms,
        since_last_sale_ms=explanation.since_last_sale_ms,
        velocity_per_day=explanation.velocity,
        loss_rate=explanation.loss_rate,
        expected_on_hand=explanation.mean,
        variance=explanation.variance,
        phantom_probability=explanation.phantom_probability,
        frozen=explanation.frozen,
        bound_by=result.bound_by,
        reason=result.reason,
        min_confidence=result.min_confidence,
        held_back=result.held_back,
        in_transit=ledger.in_transit,
    )
