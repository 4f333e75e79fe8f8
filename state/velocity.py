"""Demand velocity of a sku-location from hourly event-time windows of its net ERP deltas.

The worker folds every ``erp.stock-deltas`` record (one per sku-location per netting window,
``reasons`` = net units per reason code, :mod:`state.netting`) into hourly tumbling windows
(:mod:`streams.velocity`); this module is the arithmetic, with no Kafka or Faust:

* **Demand** of a delta is the units that left to customers: minus the net of the ``sale`` and
  ``return`` reasons (POS sales net of returns) and of ``pick`` and ``ship`` (WMS movements the
  ledger counts as demand, :data:`state.position.DEMAND_MOVEMENTS`). Receipts, transfers,
  damage, adjustments and count adjustments are not demand.
* **Velocity** as of an event time ``as_of``: the demand of the 24 (168) hourly windows ending
  with the hour that holds ``as_of``, per day: units / 1 (units / 7). Windows after that hour
  are left out, so the answer is a function of ``as_of`` and the windows, not of the wall clock.

Limits: hourly resolution (the current hour counts whole, the oldest one too); a delta is
emitted only once its netting window settled (lateness bound past its end), so the last
minutes before the horizon are not in yet; a key that sold nothing reads 0 (not the Gamma
prior of :func:`state.availability.velocity`, which serves the confidence model).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

from state.position import DEMAND_MOVEMENTS

HOUR_MS = 3_600_000
DAY_MS = 86_400_000
SHORT_HOURS = 24
LONG_HOURS = 7 * 24
# POS sales net of returns and the WMS demand movements, as state.netting.reason_of names them
DEMAND_REASONS = frozenset({"sale", "return", *(m.lower() for m in DEMAND_MOVEMENTS)})


def demand_units(reasons: Mapping[str, int]) -> int:
    """Units demanded in one delta (negative: more returned than sold)."""
    return -sum(units for reason, units in reasons.items() if reason in DEMAND_REASONS)


def hour_start(at_ms: int) -> int:
    """The start (epoch millis) of the hourly window holding ``at_ms``."""
    return at_ms - at_ms % HOUR_MS


def window_starts(as_of_ms: int, hours: int) -> list[int]:
    """The starts of the ``hours`` hourly windows ending with the one holding ``as_of_ms``,
    oldest first."""
    last = hour_start(as_of_ms)
    return [last - i * HOUR_MS for i in range(hours - 1, -1, -1)]


class DemandRate(NamedTuple):
    """Demand over the last day and week as of an event time (see the module docstring)."""

    as_of: int  # epoch millis, event time
    units_24h: int
    units_7d: int
    per_day_24h: float
    per_day_7d: float

    def to_record(self) -> dict[str, Any]:
        return self._asdict()


def demand_rate(hourly: Mapping[int, int], as_of_ms: int) -> DemandRate:
    """Velocity as of ``as_of_ms`` from ``hourly`` (window start -> units demanded in it; any
    start not on an hour is counted in the hour that holds it)."""
    last = hour_start(as_of_ms)
    short_from = last - (SHORT_HOURS - 1) * HOUR_MS
    long_from = last - (LONG_HOURS - 1) * HOUR_MS
    short = long = 0
    for start, units in hourly.items():
        hour = hour_start(start)
        if long_from <= hour <= last:
            long += units
            if hour >= short_from:
                short += units
    return DemandRate(
        as_of_ms,
        short,
        long,
        short * DAY_MS / (SHORT_HOURS * HOUR_MS),
        long * DAY_MS / (LONG_HOURS * HOUR_MS),
    )
