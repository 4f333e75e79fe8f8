"""The oracle: a reference fold written without the production code's structure.

It sees the whole input at once, so it needs no lateness window: the latest count (by counted_at,
ties by the same order as the fold) fixes on hand, movements at or after it apply on top.
Valid when no event is late.

Transfers, from the definition rather than the fold's bookkeeping: every distinct TRANSFER_OUT
ships its units to ``sku|counterpart`` (a shipment notice there, which counts as one event of
that key); a transfer is the notices and the TRANSFER_INs of one ``transfer_id`` at one key. Its
deadline is its earliest notice's time + the timeout. With ``horizon`` (the destination's
watermark - lateness when the fold stopped) it has **expired** if the deadline is before the
horizon and no receipt came before the deadline (an expiry counts as one event of the key). It
is **in transit** if it has a notice, no receipt at all, and has not expired. Valid when no
event is late and no transfer was forgotten and seen again (more than two lateness windows
between its events).
"""

from __future__ import annotations

from collections.abc import Iterable

from state.events import Kind, StockEvent

TIMEOUT_MS = 14 * 86_400_000  # the default INVSYNC_TRANSFER_TIMEOUT_MS


def distinct(events: Iterable[StockEvent]) -> list[StockEvent]:
    seen: dict[tuple[str, str], StockEvent] = {}
    for event in events:
        seen.setdefault(event.identity, event)
    return list(seen.values())


def reference_on_hand(events: Iterable[StockEvent]) -> int:
    # reservations change reserved; ERP snapshots are reconciled, never applied; shipment notices
    # only say what is on its way
    skip = (Kind.RESERVE, Kind.SNAPSHOT, Kind.TRANSIT)
    unique = [e for e in distinct(events) if e.kind not in skip]
    counts = [e for e in unique if e.kind is Kind.COUNT]
    if not counts:
        return sum(e.quantity for e in unique)
    last = max(counts, key=lambda e: (e.effective_at, e.source, e.event_id))
    after = [e for e in unique if e.kind is not Kind.COUNT and e.effective_at >= last.effective_at]
    return last.quantity + sum(e.quantity for e in after)


def reference_reserved(events: Iterable[StockEvent]) -> int:
    return sum(e.quantity for e in distinct(events) if e.kind is Kind.RESERVE)


class _Transfer:
    def __init__(self) -> None:
        self.notices: list[tuple[int, int]] = []  # (shipped at, units)
        self.routed = 0  # of which from a TRANSFER_OUT (an event of the destination's key)
        self.receipts: list[int] = []  # received at

    def deadline(self, timeout_ms: int) -> int:
        return min(at for at, _ in self.notices) + timeout_ms

    def expired(self, horizon: int | None, timeout_ms: int) -> bool:
        if not self.notices or horizon is None:
            return False
        deadline = self.deadline(timeout_ms)
        return deadline < horizon and not any(at < deadline for at in self.receipts)

    def in_transit(self, horizon: int | None, timeout_ms: int) -> int:
        if not self.notices or self.receipts or self.expired(horizon, timeout_ms):
            return 0
        return sum(units for _, units in self.notices)


def _transfers(events: Iterable[StockEvent]) -> dict[str, dict[str, _Transfer]]:
    """key -> transfer id -> what its notices and receipts say."""
    found: dict[str, dict[str, _Transfer]] = {}
    for e in distinct(events):
        if e.kind is Kind.MOVEMENT and e.ref == "TRANSFER_OUT":  # routed to its destination
            key = f"{e.sku}|{e.counterpart}"
            transfer = found.setdefault(key, {}).setdefault(e.transfer_id, _Transfer())
            transfer.notices.append((e.effective_at, -e.quantity))
            transfer.routed += 1
        elif e.kind is Kind.TRANSIT:  # a notice given directly (single-position tests)
            transfer = found.setdefault(e.key, {}).setdefault(e.transfer_id, _Transfer())
            transfer.notices.append((e.effective_at, e.quantity))
        elif e.kind is Kind.MOVEMENT and e.ref == "TRANSFER_IN":
            transfer = found.setdefault(e.key, {}).setdefault(e.transfer_id, _Transfer())
            transfer.receipts.append(e.effective_at)
    return found


def reference_in_transit(
    events: Iterable[StockEvent], *, horizon: int | None = None, timeout_ms: int = TIMEOUT_MS
) -> dict[str, int]:
    """key -> units in transit to it (keys with none left out). ``events``: the input events
    of every key (TRANSFER_OUTs are routed); ``horizon`` None: nothing has expired."""
    out: dict[str, int] = {}
    for key, transfers in _transfers(events).items():
        units = sum(t.in_transit(horizon, timeout_ms) for t in transfers.values())
        if units:
            out[key] = units
    return out


def reference_expired(
    events: Iterable[StockEvent], *, horizon: int | None = None, timeout_ms: int = TIMEOUT_MS
) -> dict[str, set[str]]:
    """key -> ids of the transfers to it that expired (keys with none left out)."""
    out: dict[str, set[str]] = {}
    for key, transfers in _transfers(events).items():
        ids = {tid for tid, t in transfers.items() if t.expired(horizon, timeout_ms)}
        if ids:
            out[key] = ids
    return out


def reference_positions(
    events: Iterable[StockEvent], *, horizon: int | None = None, timeout_ms: int = TIMEOUT_MS
) -> dict[str, tuple[int, int]]:
    """key -> (on_hand, version): the number of distinct events, plus the shipment notices
    routed to the key and its expired transfers (``horizon`` None: none expired)."""
    events = list(events)
    by_key: dict[str, list[StockEvent]] = {}
    for event in events:
        by_key.setdefault(event.key, []).append(event)
    derived: dict[str, int] = {}
    for key, transfers in _transfers(events).items():
        for transfer in transfers.values():
            expired = transfer.expired(horizon, timeout_ms)
            derived[key] = derived.get(key, 0) + transfer.routed + expired
    return {
        key: (reference_on_hand(by_key.get(key, [])), len(distinct(by_key.get(key, []))) + n)
        for key, n in {**dict.fromkeys(by_key, 0), **derived}.items()
    }
