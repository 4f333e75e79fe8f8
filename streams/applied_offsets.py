"""Was this input offset applied already? Exact, even when Faust delivers a partition out of order.

A position stores the highest offset of each input topic applied to it. That alone would call
every offset at or below it a redelivery, which is wrong when an earlier record arrives *after* a
later one of the same key: Faust can skip a record and deliver it only when the partition is
fetched again (see :mod:`streams.offset_guard`), and skipping it then would lose it.

So each partition store also holds, under :data:`MARK_KEY`, per input topic: a **floor** (every
offset below it was applied) and the offsets at or above it that were applied. It is written in
the same write batch and changelog ticket as the positions, so it always describes exactly what
the stored positions contain, and it moves to whichever worker restores the partition. The floor
follows the commit frontier; the set above it holds only what is folded but not yet committable
(a few batches; more while a lost record waits for its refetch), stored as ranges.

Limit: a store written before this existed has no mark: its floor is 0, so a redelivery is
applied again unless the position's event-id dedupe recognises it.
"""

from __future__ import annotations

from collections.abc import Callable

import orjson

MARK_KEY = b"\x00invsync:applied-offsets"  # not a sku|location: no position has this key


class _Applied:
    __slots__ = ("floor", "offsets")

    def __init__(self, floor: int, offsets: set[int]) -> None:
        self.floor = floor
        self.offsets = offsets

    def compact(self, frontier: int | None) -> None:
        if frontier is not None and frontier > self.floor:
            self.floor = frontier
        offsets = self.offsets
        while self.floor in offsets:
            offsets.discard(self.floor)
            self.floor += 1
        if offsets and min(offsets) < self.floor:
            self.offsets = {o for o in offsets if o >= self.floor}


def _ranges(offsets: set[int]) -> list[list[int]]:
    ranges: list[list[int]] = []
    for offset in sorted(offsets):
        if ranges and offset == ranges[-1][1] + 1:
            ranges[-1][1] = offset
        else:
            ranges.append([offset, offset])
    return ranges


class AppliedOffsets:
    """The applied input offsets of this worker's partitions (see the module docstring)."""

    def __init__(
        self,
        read_mark: Callable[[int], bytes | None],
        frontier: Callable[[str, int], int | None],
    ) -> None:
        self._read_mark = read_mark  # partition -> stored MARK_KEY value
        self._frontier = frontier  # (topic, partition) -> commit frontier, None if unknown
        self.generation: int | None = None
        self._partitions: dict[int, dict[str, _Applied]] = {}

    def for_generation(self, generation: int) -> None:
        """After a rebalance the stores may have been restored: read the marks again."""
        if generation != self.generation:
            self.generation = generation
            self._partitions = {}

    def _topics(self, partition: int) -> dict[str, _Applied]:
        topics = self._partitions.get(partition)
        if topics is None:
            stored = self._read_mark(partition)
            data = orjson.loads(stored) if stored else {}
            topics = self._partitions[partition] = {
                topic: _Applied(floor, {o for a, b in ranges for o in range(a, b + 1)})
                for topic, (floor, ranges) in data.items()
            }
        return topics

    def _of(self, topic: str, partition: int) -> _Applied:
        topics = self._topics(partition)
        applied = topics.get(topic)
        if applied is None:
            applied = topics[topic] = _Applied(0, set())
        return applied

    def applied(self, topic: str, partition: int, offset: int, key_offset: int) -> bool:
        """True if ``offset`` was applied already (``key_offset``: the key's stored offset of
        ``topic``; an offset above it cannot have been applied to the key)."""
        if offset > key_offset:
            return False
        applied = self._of(topic, partition)
        if offset < applied.floor or offset in applied.offsets:
            return True
        frontier = self._frontier(topic, partition)  # everything below it was applied
        return frontier is not None and offset < frontier

    def folded(self, topic: str, partition: int, offset: int) -> None:
        """``offset`` is applied now (in the batch being written)."""
        self._of(topic, partition).offsets.add(offset)

    def mark_value(self, partition: int) -> bytes:
        """The value to store under :data:`MARK_KEY` with ``partition``'s positions."""
        data = {}
        for topic, applied in self._topics(partition).items():
            applied.compact(self._frontier(topic, partition))
            data[topic] = [applied.floor, _ranges(applied.offsets)]
        return orjson.dumps(data)
