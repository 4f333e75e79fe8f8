"""What a channel is offered of one position.

For now every channel uses the default policy: ATP = on hand - reserved, floored at 0, offered in
full; ``status`` is ``out`` at 0, ``low`` at or below ``low_threshold``. Confidence is reported as
1.0 until the confidence model is in place (see the README's roadmap); the explanation terms
(last count, units moved since) are already real.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from state.position import Ledger


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

    def to_record(self) -> dict[str, Any]:
        return self._asdict()


def project(
    channel: str, sku: str, location: str, ledger: Ledger, *, low_threshold: int = 2
) -> Availability:
    reserved = 0
    atp = max(0, ledger.on_hand - reserved)
    status = "out" if atp == 0 else "low" if atp <= low_threshold else "in"
    return Availability(
        channel=channel,
        sku=sku,
        location=location,
        on_hand=ledger.on_hand,
        reserved=reserved,
        atp=atp,
        offered=atp,
        status=status,
        confidence=1.0,
        version=ledger.applied,
        as_of=max(ledger.as_of, 0),  # 0 for a position that has seen no event
        last_count_at=ledger.last_count_at,
        units_moved_since_count=ledger.moved_since_count,
        late_events=ledger.late,
    )
