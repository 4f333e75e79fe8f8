from __future__ import annotations

from state.position import NEVER
from streams.watermarks import PartitionClock

HOUR = 3_600_000


def clock(highwaters: dict[str, int | None], skew: int = HOUR) -> PartitionClock:
    return PartitionClock(["sales", "counts"], lambda t, p: highwaters[t], max_skew_ms=skew)


def test_a_topic_with_records_waiting_holds_the_watermark_back():
    c = clock({"sales": 100, "counts": 50})
    c.observe("sales", 0, 99, 10 * HOUR)  # sales fully folded
    c.observe("counts", 0, 9, 2 * HOUR)  # counts: 40 records still waiting
    assert c.watermark(0) == 2 * HOUR


def test_an_unfetched_topic_holds_it_back_completely():
    c = clock({"sales": 100, "counts": None})
    c.observe("sales", 0, 99, 10 * HOUR)
    assert c.watermark(0) == NEVER


def test_a_quiet_topic_holds_it_back_by_at_most_the_skew():
    c = clock({"sales": 100, "counts": 10})
    c.observe("sales", 0, 99, 10 * HOUR)
    c.observe("counts", 0, 9, 2 * HOUR)  # caught up, quiet since 2h
    assert c.watermark(0) == 9 * HOUR


def test_rejected_records_count_as_folded_but_carry_no_time():
    c = clock({"sales": 2, "counts": 0})
    c.observe("sales", 0, 0, HOUR)
    c.observe("sales", 0, 1, None)  # a dead letter
    assert c.watermark(0) == 0  # counts empty and quiet: bounded by sales - skew
