"""Demand velocity from hourly windows (state/velocity.py) and the read of the windowed table
(streams/velocity.py) against the window keys Faust writes."""

from __future__ import annotations

from datetime import timedelta
from types import SimpleNamespace
from typing import Any

import pytest
from faust.windows import TumblingWindow

from state.events import Kind, StockEvent
from state.netting import reason_of
from state.velocity import (
    DAY_MS,
    HOUR_MS,
    DemandRate,
    demand_rate,
    demand_units,
    hour_start,
    window_starts,
)
from streams.velocity import RETAIN, VELOCITY_TABLE, WINDOW, demand_velocity

T0 = 1_767_225_600_000  # 2026-01-01T00:00Z, on the hour


def _reason(kind: Kind, ref: str, change: int) -> str:
    event = StockEvent("src", "e1", "SKU1", "S1", kind, T0, abs(change), ref)
    return reason_of(event, change)


def test_demand_is_sales_net_of_returns_picks_and_ships_by_the_netting_reason_codes() -> None:
    reasons = {
        _reason(Kind.SALE, "", -5): -5,  # sale
        _reason(Kind.SALE, "", 2): 2,  # return
        _reason(Kind.MOVEMENT, "PICK", -3): -3,
        _reason(Kind.MOVEMENT, "SHIP", -4): -4,
        _reason(Kind.MOVEMENT, "RECEIPT", 12): 12,
        _reason(Kind.MOVEMENT, "TRANSFER_OUT", -6): -6,
        _reason(Kind.MOVEMENT, "DAMAGE", -1): -1,
        _reason(Kind.COUNT, "c1", -2): -2,
    }
    assert set(reasons) == {"sale", "return", "pick", "ship", "receipt", "transfer_out",
                            "damage", "count_adjustment"}  # fmt: skip
    assert demand_units(reasons) == 5 - 2 + 3 + 4
    assert demand_units({"receipt": 10}) == 0
    assert demand_units({"return": 3}) == -3


def test_the_windows_of_a_span_end_with_the_hour_that_holds_as_of() -> None:
    as_of = T0 + 5 * HOUR_MS + 17 * 60_000
    assert hour_start(as_of) == T0 + 5 * HOUR_MS
    starts = window_starts(as_of, 3)
    assert starts == [T0 + 3 * HOUR_MS, T0 + 4 * HOUR_MS, T0 + 5 * HOUR_MS]


def test_velocity_over_a_day_and_a_week() -> None:
    as_of = T0 + 10 * DAY_MS + 30 * 60_000  # half past midnight, day 10
    hourly = {
        T0 + 10 * DAY_MS: 4,  # the hour of as_of: counts
        T0 + 9 * DAY_MS + HOUR_MS: 6,  # 23 hours before: in the day
        T0 + 9 * DAY_MS: 5,  # 24 hours before: the week only
        T0 + 3 * DAY_MS + HOUR_MS: 7,  # the oldest hour of the week
        T0 + 3 * DAY_MS: 100,  # 168 hours before: out
        T0 + 10 * DAY_MS + HOUR_MS: 50,  # after as_of's hour: out
    }
    rate = demand_rate(hourly, as_of)
    assert rate == DemandRate(as_of, 10, 22, 10.0, 22 / 7)
    assert demand_rate({}, as_of) == DemandRate(as_of, 0, 0, 0.0, 0.0)
    assert demand_rate({T0 + 10 * DAY_MS + 60_000: 3}, as_of).units_24h == 3  # not on the hour


class FakeTable(dict[Any, Any]):
    """A windowed table's underlying mapping, keyed as Faust keys it: (key, window range)."""

    def __init__(self) -> None:
        super().__init__()
        self.window = TumblingWindow(WINDOW.total_seconds(), expires=RETAIN.total_seconds())

    def write(self, key: str, at_ms: int, value: dict[str, int]) -> None:
        # what WindowWrapper.__setitem__ does: Collection._set_windowed over window.ranges()
        for window_range in self.window.ranges(at_ms / 1000):
            self[(key, window_range)] = value


def test_the_table_read_finds_the_windows_faust_writes() -> None:
    table = FakeTable()
    app = SimpleNamespace(tables={VELOCITY_TABLE: table})
    delta_starts = [T0 + DAY_MS + m * 300_000 for m in range(0, 36)]  # 3 hours of 5-min deltas
    for start in delta_starts:
        window = dict(table.get(("SKU1|S1", table.window.current(start / 1000)), {}))
        window[f"d{start}"] = 2
        table.write("SKU1|S1", start, window)
    table.write("SKU2|S1", T0 + DAY_MS, {"x": 9})  # another key
    as_of = T0 + DAY_MS + 5 * HOUR_MS
    got = demand_velocity(app, "SKU1", "S1", as_of)  # type: ignore[arg-type]
    assert got == DemandRate(as_of, 72, 72, 72.0, 72 / 7).to_record()
    early = demand_velocity(app, "SKU1", "S1", T0 + DAY_MS + 30 * 60_000)  # type: ignore[arg-type]
    assert early is not None and early["units_24h"] == 2 * 12  # only the first hour so far
    assert demand_velocity(app, "SKU3", "S1", as_of)["units_7d"] == 0  # type: ignore[arg-type,index]
    assert demand_velocity(app, "SKU1", "S1", None) is None  # type: ignore[arg-type]
    assert demand_velocity(SimpleNamespace(tables={}), "SKU1", "S1", as_of) is None  # type: ignore[arg-type]


@pytest.mark.parametrize("offset_ms", [0, 1, 299_999, 3_599_999, 1_234_567])
def test_window_keys_match_for_any_time_in_the_hour(offset_ms: int) -> None:
    window = TumblingWindow(timedelta(hours=1).total_seconds())
    at = T0 + 7 * HOUR_MS + offset_ms
    (written,) = window.ranges(at / 1000)
    assert written == window.current(hour_start(at) / 1000)
