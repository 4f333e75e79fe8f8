"""The oracle: a reference fold written without the production code's structure.

It sees the whole input at once, so it needs no lateness window: the latest count (by counted_at,
ties by the same order as the fold) fixes on hand, movements at or after it apply on top.
Valid when no event is late.
"""

from __future__ import annotations

from collections.abc import Iterable

from state.events import Kind, StockEvent


def distinct(events: Iterable[StockEvent]) -> list[StockEvent]:
    seen: dict[tuple[str, str], StockEvent] = {}
    for event in events:
        seen.setdefault(event.identity, event)
    return list(seen.values())


def reference_on_hand(events: Iterable[StockEvent]) -> int:
    # reservations change reserved; ERP snapshots are reconciled, never applied
    unique = [e for e in distinct(events) if e.kind not in (Kind.RESERVE, Kind.SNAPSHOT)]
    counts = [e for e in unique if e.kind is Kind.COUNT]
    if not counts:
        return sum(e.quantity for e in unique)
    last = max(counts, key=lambda e: (e.effective_at, e.source, e.event_id))
    after = [e for e in unique if e.kind is not Kind.COUNT and e.effective_at >= last.effective_at]
    return last.quantity + sum(e.quantity for e in after)


def reference_reserved(events: Iterable[StockEvent]) -> int:
    return sum(e.quantity for e in distinct(events) if e.kind is Kind.RESERVE)


def reference_positions(events: Iterable[StockEvent]) -> dict[str, tuple[int, int]]:
    """key -> (on_hand, number of distinct events)."""
    by_key: dict[str, list[StockEvent]] = {}
    for event in events:
        by_key.setdefault(event.key, []).append(event)
    return {key: (reference_on_hand(evs), len(distinct(evs))) for key, evs in by_key.items()}
