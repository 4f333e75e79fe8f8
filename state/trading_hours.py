"""Trading hours: the clock in which a silence since the last sale is measured.

An item that sells 14 units a day in a store open 08:00-22:00 has not missed a sale between
closing and opening. The freezing evidence (``state.confidence.phantom_probability``) weighs
``velocity * silence``; measured in calendar time, every night would count as 10 hours of
missing sales. :meth:`TradingHours.elapsed_ms` counts only open hours, scaled so that one full
trading day is one day (velocities stay units per day).

Limits: one daily window per location type, the same every day of the week, in UTC (the
stream's event time); no holidays, no per-store time zones.
"""

from __future__ import annotations

from typing import NamedTuple

HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS


class TradingHours(NamedTuple):
    """Open from ``open_hour`` to ``close_hour`` (UTC, ``0 <= open < close <= 24``) every day."""

    open_hour: int = 0
    close_hour: int = 24

    def check(self) -> TradingHours:
        if not 0 <= self.open_hour < self.close_hour <= 24:
            raise ValueError(f"trading hours must satisfy 0 <= open < close <= 24: {self}")
        return self

    def _since_epoch(self, at: int) -> float:
        """Trading milliseconds from 0 to ``at``, scaled to calendar days."""
        length = (self.close_hour - self.open_hour) * HOUR_MS
        day, rest = divmod(at, DAY_MS)
        open_part = min(length, max(0, rest - self.open_hour * HOUR_MS))
        return (day * length + open_part) * DAY_MS / length

    def elapsed_ms(self, start: int, end: int) -> int:
        """Trading time between ``start`` and ``end`` (0 if ``end <= start``), in scaled ms."""
        if end <= start:
            return 0
        if self.open_hour == 0 and self.close_hour == 24:
            return end - start
        return round(self._since_epoch(end) - self._since_epoch(start))


ALWAYS_OPEN = TradingHours()
