"""The commit frontier never passes an offset that was not folded (streams/offset_guard.py)."""

from __future__ import annotations

from faust.types import TP
from hypothesis import given
from hypothesis import strategies as st

from streams.offset_guard import OffsetGuard

TP0 = TP("pos.sales", 0)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@given(
    start=st.integers(0, 20),
    folded=st.lists(st.integers(0, 60), max_size=60),
    early=st.integers(0, 60),
)
def test_frontier_is_the_first_offset_not_folded(start: int, folded: list[int], early: int) -> None:
    guard = OffsetGuard()
    before, after = folded[:early], folded[early:]
    for offset in before:  # folded before the consumer seeked (Faust fetches before seeking)
        guard.on_folded(TP0, offset)
    assert guard.frontier(TP0) is None
    guard.start(TP0, start)
    for offset in after:
        guard.on_folded(TP0, offset)
    expected = start
    while expected in set(folded):
        expected += 1
    assert guard.frontier(TP0) == expected


def test_a_hole_right_after_the_committed_offset_holds_the_commit() -> None:
    guard = OffsetGuard()
    guard.start(TP0, 121)
    for offset in range(122, 130):
        guard.on_folded(TP0, offset)
    assert guard.frontier(TP0) == 121
    guard.on_folded(TP0, 121)
    assert guard.frontier(TP0) == 130


def test_a_new_assignment_forgets_the_old_frontier() -> None:
    guard = OffsetGuard()
    guard.start(TP0, 10)
    guard.on_folded(TP0, 10)
    guard.forget(guard.partitions())
    assert guard.frontier(TP0) is None
    assert guard.partitions() == []


def test_stuck_partitions_are_those_behind_existing_records_for_long() -> None:
    clock = Clock()
    guard = OffsetGuard(clock)
    guard.start(TP0, 5)
    guard.on_folded(TP0, 7)  # 5 and 6 missing
    other = TP("pos.sales", 1)
    guard.start(other, 3)  # caught up: the log ends at 3
    ends = {TP0: 8, other: 3}
    assert guard.stuck(ends.get, after_s=15, idle_after_s=90) == []
    clock.now = 20
    assert guard.stuck(ends.get, after_s=15, idle_after_s=90) == [TP0]
    guard.waited(TP0)
    assert guard.stuck(ends.get, after_s=15, idle_after_s=90) == []


def test_skipping_non_records_moves_over_folded_offsets_beyond_them() -> None:
    guard = OffsetGuard()
    guard.start(TP0, 5)
    guard.on_folded(TP0, 7)
    guard.on_folded(TP0, 8)
    guard.skip_to(TP0, 7)  # the broker: no records at 5 and 6 (transaction markers)
    assert guard.frontier(TP0) == 9
    guard.skip_to(TP0, 3)  # never backwards
    assert guard.frontier(TP0) == 9


def test_records_waiting_behind_a_backlog_are_not_refetched_early() -> None:
    clock = Clock()
    guard = OffsetGuard(clock)
    guard.start(TP0, 5)  # records 5..7 exist; none has reached the agents yet
    ends = {TP0: 8}
    clock.now = 20
    assert guard.stuck(ends.get, after_s=15, idle_after_s=90) == []
    guard.passed(TP0, 6)  # Faust acked 6 without delivering it (or it was folded): 5 is lost
    assert guard.stuck(ends.get, after_s=15, idle_after_s=90) == [TP0]
    guard.waited(TP0)
    guard.start(TP("pos.sales", 1), 0)
    clock.now = 200  # handed to the streams, nothing went through for long: a loss, no trace
    handed = {TP0: 5, TP("pos.sales", 1): 0}
    assert guard.stuck(
        {**ends, TP("pos.sales", 1): 4}.get, after_s=15, idle_after_s=90, read=handed.get
    ) == [TP0, TP("pos.sales", 1)]


def test_a_frontier_record_not_yet_handed_to_the_streams_waits_much_longer() -> None:
    """A backlog: the fetcher has not handed the frontier's record over yet. Refetching would
    fetch the same records again (and fold twice what is already buffered), so the partition
    is named only after ``unread_after_s``; once the record was handed over and not folded,
    after ``idle_after_s``."""
    clock = Clock()
    guard = OffsetGuard(clock)
    guard.start(TP0, 5)
    ends = {TP0: 100}
    read: dict[TP, int] = {TP0: 4}  # Faust handed over up to offset 4 (before the frontier)

    def stuck() -> list[TP]:
        return guard.stuck(ends.get, 15, 90, read=read.get, unread_after_s=900)

    clock.now = 200
    assert stuck() == []
    clock.now = 901
    assert stuck() == [TP0]  # a fetch that never comes: refetch
    guard.waited(TP0)
    read[TP0] = 5  # handed over, yet not folded
    clock.now = 901 + 89
    assert stuck() == []
    clock.now = 901 + 91
    assert stuck() == [TP0]
    guard.waited(TP0)
    guard.on_folded(TP0, 5)  # the frontier moves to 6
    clock.now += 100
    read[TP0] = 60  # 6.. handed over 100 s ago, not folded
    assert stuck() == [TP0]
    del read[TP0]  # none handed over (after a seek to 0, Faust's read offset is None)
    assert stuck() == []
