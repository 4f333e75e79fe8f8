"""Applied offsets are exact: a record delivered after later ones of its key is still applied,
a real redelivery is not, also across a generation (streams/applied_offsets.py)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from streams.applied_offsets import AppliedOffsets

T = "pos.sales"


class Store:
    def __init__(self) -> None:
        self.mark: bytes | None = None
        self.frontier: int | None = None

    def offsets(self) -> AppliedOffsets:
        return AppliedOffsets(lambda _p: self.mark, lambda _t, _p: self.frontier)


def test_a_record_skipped_by_the_fetcher_is_applied_when_it_comes_back() -> None:
    store = Store()
    applied = store.offsets()
    applied.for_generation(1)
    for offset in (24, 25, 26):  # 23 never delivered
        assert not applied.applied(T, 0, offset, key_offset=offset - 1)
        applied.folded(T, 0, offset)
    assert not applied.applied(T, 0, 23, key_offset=26)  # the refetch: apply it
    assert applied.applied(T, 0, 25, key_offset=26)  # a redelivery: skip it


def test_the_mark_carries_holes_to_the_next_generation_and_worker() -> None:
    store = Store()
    applied = store.offsets()
    applied.for_generation(1)
    store.frontier = 20
    for offset in (20, 21, 22, 24, 25):
        applied.folded(T, 0, offset)
    store.mark = applied.mark_value(0)  # written with the positions
    other = store.offsets()  # another worker restores the partition
    other.for_generation(2)
    assert [other.applied(T, 0, o, key_offset=25) for o in (19, 22, 23, 24, 26)] == [
        True, True, False, True, False,
    ]  # fmt: skip


@given(
    st.sets(st.integers(0, 200), max_size=80),
    st.integers(0, 200),
    st.integers(-1, 220),
)
def test_applied_is_exactly_what_was_folded_or_below_the_frontier(folded, frontier, probe) -> None:
    store = Store()
    store.frontier = frontier
    applied = store.offsets()
    applied.for_generation(1)
    for offset in folded:
        applied.folded(T, 0, offset)
    store.mark = applied.mark_value(0)
    reread = store.offsets()
    reread.for_generation(2)
    expected = probe < frontier or probe in folded
    assert reread.applied(T, 0, probe, key_offset=10**6) == expected
