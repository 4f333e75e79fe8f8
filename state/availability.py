"""What a channel is offered of one position, with the confidence that explains it.

A channel's policy (:mod:`state.channel_policy`, from ``INVSYNC_CHANNEL_POLICY``) decides what
it is offered: eligibility, ATP terms, the largest quantity whose confidence meets the channel's
minimum for the location type, buffers, cap, in/low/out thresholds. Without a policy file every
channel uses the default: ATP = on hand - reserved, minimum confidence 0 (offer all of ATP and
report how sure we are), ``low`` at or below 2. The confidence comes
from :mod:`state.confidence` with the location type's prior accuracy (learning it from count
discrepancies per location is the next step). Time is the position's stream time, never the
wall clock, so a replay publishes the same values.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from state.channel_policy import Channel, default_channel, offer
from state.confidence import DAY_MS, PRIORS, assess
from state.position import Ledger

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

    def to_record(self) -> dict[str, Any]:
        return self._asdict()


def location_type(location: str) -> str:
    """``dc`` for distribution centres (ids starting with "DC"), else ``store``."""
    return "dc" if location[:2].upper() == "DC" else "store"


def velocity_per_day(ledger: Ledger) -> float:
    """Net units sold per day over the selling period seen (at least one day): the item's
    normal demand, not the demand during a silence (which is zero by construction)."""
    if ledger.first_sale_at is None or ledger.last_sale_at is None or ledger.units_sold <= 0:
        return 0.0
    days = max(1.0, (ledger.last_sale_at - ledger.first_sale_at) / DAY_MS)
    return ledger.units_sold / days


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
) -> Availability:
    """What ``channel`` is offered of one position: its ``policy`` (eligibility, ATP terms,
    minimum confidence, buffers, cap, thresholds), or the default policy built from
    ``min_confidence`` and ``low_threshold``."""
    now = max(stream_time, ledger.as_of)
    reserved = ledger.reserved
    kind = location_type(location)
    count_age = None if ledger.last_count_at is None else max(0, now - ledger.last_count_at)
    sightings = [t for t in (ledger.last_sale_at, ledger.last_count_at) if t is not None]
    silence = max(0, now - max(sightings)) if sightings else None
    velocity = velocity_per_day(ledger)
    assessment = assess(
        ledger.on_hand,
        reserved,
        units_moved_since_count=ledger.moved_since_count,
        last_count_age_ms=count_age,
        since_last_sale_ms=silence,
        velocity_per_day=velocity,
        accuracy=PRIORS[kind],
    )
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
        last_count_age_ms=count_age,
        since_last_sale_ms=silence,
        velocity_per_day=velocity,
        loss_rate=explanation.loss_rate,
        expected_on_hand=explanation.mean,
        variance=explanation.variance,
        phantom_probability=explanation.phantom_probability,
        frozen=explanation.frozen,
    )
