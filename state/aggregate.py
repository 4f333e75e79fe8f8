"""Network aggregates: what one channel offers of one sku over a location group, summed.

A channel's policy names the location groups it publishes sums for (``aggregates``). The
aggregate of one (channel, group, sku) is folded from **contributions**: one per availability
record of a location in the group, carrying that record's ``offered``, ``confidence``,
``version`` and ``as_of``. Pure: no Kafka, Faust or Redis.

Guarantees (property-tested in ``tests/unit/test_aggregate.py``):

- **Latest per location, never backwards.** The aggregate holds one contribution per location
  and replaces it only with a contribution of a strictly greater ``version`` (the availability
  record's version, monotone per position). A redelivered or reordered contribution, older or
  equal, changes nothing, so the aggregate of a set of contributions is the same for every order
  and any duplication of them — provided a version identifies its content, which holds for the
  fold's records (the same version is only ever re-published with the same values, except after
  a channel-policy change: then the new values count from the position's next version on).
- ``offered`` is the sum of the held contributions' ``offered``: exactly the sum over the
  group's locations of the latest offered each one published.
- ``status`` is the channel's in/low/out class of that sum (:class:`state.channel_policy.
  Thresholds`, the same rule a single position gets). The sum is not zeroed at or below ``out``:
  each location already applied the thresholds to its own offer, and the total stays the exact
  sum of what the channel may sell.
- ``confidence`` is **conservative**: the smallest confidence among the locations offering
  more than 0 units (1.0 when none does, as for a position offering nothing). The chance that
  the whole network quantity is really there is lower than that, the chance that the least
  certain location's offer is met is exactly that; a channel wanting a joint probability must
  not read this as one.
- ``version`` is the sum of the held contributions' versions: monotone, because a location's
  held version only grows and a location, once held, stays. It orders the group records like
  a position's version orders its records (the read model keeps the highest).
- ``as_of`` is the newest ``as_of`` among the held contributions.

Limits: a location that leaves the group (a changed policy) keeps its last contribution until
the aggregate is rebuilt; contributions are never removed.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from state.channel_policy import Thresholds


class InvalidContribution(ValueError):
    """A contribution that cannot be folded (negative units or version, confidence out of
    [0, 1]); the streams layer dead-letters it with :attr:`reason`."""

    reason = "invalid_contribution"


class Contribution(NamedTuple):
    """One location's latest availability for one channel and sku: what it adds to a group."""

    location: str
    offered: int
    confidence: float
    version: int
    as_of: int = 0  # event time (UTC millis) of the newest event behind the record

    def validate(self) -> Contribution:
        """``self`` if foldable, else :class:`InvalidContribution` saying why."""
        if not self.location:
            raise InvalidContribution("empty location")
        if self.offered < 0:
            raise InvalidContribution(f"offered {self.offered} < 0 at {self.location}")
        if self.version < 0:
            raise InvalidContribution(f"version {self.version} < 0 at {self.location}")
        if not 0.0 <= self.confidence <= 1.0:  # also rejects NaN
            raise InvalidContribution(f"confidence {self.confidence} not in [0, 1]")
        return self


class GroupSummary(NamedTuple):
    """What a group record publishes (see the module docstring for each field)."""

    offered: int
    status: str  # in / low / out
    confidence: float
    version: int
    locations: int  # locations with a contribution
    offering: int  # of those, locations offering more than 0 units
    as_of: int

    def differs_for_channel(self, other: GroupSummary | None) -> bool:
        """True if a channel would see a change from ``other``: total, status or confidence
        (``None``, nothing published yet, always differs)."""
        return other is None or (self.offered, self.status, self.confidence) != (
            other.offered,
            other.status,
            other.confidence,
        )


@dataclass(slots=True)
class GroupAggregate:
    """The latest contribution of each location of one (channel, group, sku).

    Mutable, owned by one fold at a time; :meth:`apply` is the only way in. Two aggregates
    holding the same contributions compare equal.
    """

    latest: dict[str, Contribution] = field(default_factory=dict)

    def apply(self, contribution: Contribution) -> bool:
        """Hold ``contribution`` if its version is newer than its location's; True if it was.
        Never moves a location back to an older or equal version."""
        held = self.latest.get(contribution.location)
        if held is not None and contribution.version <= held.version:
            return False
        self.latest[contribution.location] = contribution
        return True

    def apply_all(self, contributions: Iterable[Contribution]) -> int:
        """Apply each in order; the number applied."""
        return sum(self.apply(c) for c in contributions)

    @property
    def offered(self) -> int:
        return sum(c.offered for c in self.latest.values())

    @property
    def version(self) -> int:
        return sum(c.version for c in self.latest.values())

    @property
    def confidence(self) -> float:
        """Conservative: the least confident location offering > 0 (1.0 when none offers)."""
        return min((c.confidence for c in self.latest.values() if c.offered > 0), default=1.0)

    def summary(self, thresholds: Thresholds) -> GroupSummary:
        """The group record's values under a channel's thresholds (one pass over locations)."""
        offered = version = offering = as_of = 0
        confidence = 1.0
        for c in self.latest.values():
            offered += c.offered
            version += c.version
            as_of = max(as_of, c.as_of)
            if c.offered > 0:
                offering += 1
                confidence = min(confidence, c.confidence)
        return GroupSummary(
            offered=offered,
            status=thresholds.status(offered),
            confidence=confidence,
            version=version,
            locations=len(self.latest),
            offering=offering,
            as_of=as_of,
        )


def to_primitive(aggregate: GroupAggregate) -> dict[str, Any]:
    """A compact JSON-able form for the table: ``{location: [offered, confidence, version,
    as_of]}``, locations sorted (the same aggregate always gives the same bytes)."""
    return {
        location: [c.offered, c.confidence, c.version, c.as_of]
        for location, c in sorted(aggregate.latest.items())
    }


def from_primitive(data: dict[str, Any]) -> GroupAggregate:
    """The inverse of :func:`to_primitive`."""
    return GroupAggregate(
        {
            location: Contribution(location, int(o), float(conf), int(v), int(at))
            for location, (o, conf, v, at) in data.items()
        }
    )
