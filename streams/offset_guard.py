"""Which input offsets may be committed: only those below every record the agents folded.

Guarantee: the offset committed for a partition is never past a record that was not folded with
its outputs acknowledged by the broker, or verified by the broker not to exist (a transaction
marker, a compacted or deleted record). Nothing is committed over, whatever Faust's fetcher did.

Why it exists: Faust derives commit offsets from its own ack bookkeeping, which has holes that
lose records (measured here, about one run in three of the restart tests):

- its commit accepts one missing offset right after the committed one (``Consumer._new_offset``);
- it resumes fetching a partition *before* seeking it to the committed offset after a rebalance
  (``Recovery._resume_streams``), so the first records arrive twice or out of its read-offset
  bookkeeping; the refetched copies can be dropped as "already read", and a jump in the fetched
  offsets is recorded as a gap that the commit then skips over;
- a stream acks (never delivering it to the agent) any event it sees while flow control is
  suspended or whose generation is stale.

So the agents report each folded offset here, and the consumer commits the **frontier**: the
lowest offset of the partition not yet folded. It starts at the committed offset the consumer
seeked to, and moves only over folded offsets and over offsets the broker says hold no record
(a transaction marker, a compacted record, the log before its start after retention).

A frontier that stops moving while records past it went through the pipeline (folded, or acked
by Faust without reaching an agent) means a record was lost in Faust's pipeline (or is not a
record at all). :meth:`OffsetGuard.stuck` names such partitions; after a longer wait, any
partition whose frontier record the fetcher handed to the streams, and they took it, without it
being folded (a loss that left no later trace); and only after a much longer one a partition
whose frontier record was not handed over yet, or may still wait in Faust's stream queues. A
partition whose records merely wait their turn behind a backlog (in the broker, the fetcher or
Faust's queues) is not named early: refetching would only fetch the same records again, and
records already queued would be folded twice (measured on a 1M-event backlog before this rule:
921 refetches in 40 minutes, some offsets 15 times).
For a named partition the consumer asks the broker for the first record at or after the
frontier and either skips the non-records or seeks the partition back to refetch (see
:mod:`streams.consumer`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from faust.types import TP


@dataclass
class _Partition:
    frontier: int | None = None  # None until the consumer seeked the partition
    folded: set[int] = field(default_factory=set)  # folded offsets at or past the frontier
    moved_at: float = 0.0  # when the frontier last moved (monotonic clock)
    passed: int = -1  # the highest offset folded, or acked without being folded (dropped)


class OffsetGuard:
    """Folded offsets and the commit frontier of each partition (not thread-safe: event loop)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._partitions: dict[TP, _Partition] = {}

    def on_folded(self, tp: TP, offset: int) -> None:
        """``offset`` of ``tp`` was folded and its outputs acknowledged."""
        part = self._partitions.setdefault(tp, _Partition(moved_at=self._clock()))
        if offset > part.passed:
            part.passed = offset
        if part.frontier is None or offset >= part.frontier:
            part.folded.add(offset)
            self._advance(part)

    def passed(self, tp: TP, offset: int) -> None:
        """``offset`` of ``tp`` went through Faust's pipeline (the consumer acked it: folded, or
        dropped by Faust on the way to the agent)."""
        part = self._partitions.get(tp)
        if part is not None and offset > part.passed:
            part.passed = offset

    def start(self, tp: TP, offset: int) -> None:
        """The consumer (re)started ``tp`` at ``offset`` (its committed offset):
        folded offsets below it are forgotten, those at or past it are kept."""
        part = self._partitions.setdefault(tp, _Partition())
        part.frontier = offset
        part.folded = {o for o in part.folded if o >= offset}
        part.moved_at = self._clock()
        self._advance(part)

    def skip_to(self, tp: TP, offset: int) -> None:
        """The broker has no records of ``tp`` below ``offset`` past the frontier."""
        part = self._partitions.get(tp)
        if part is not None and part.frontier is not None and offset > part.frontier:
            part.frontier = offset
            part.folded = {o for o in part.folded if o >= offset}
            part.moved_at = self._clock()
            self._advance(part)

    def forget(self, tps: Iterable[TP]) -> None:
        """A new assignment: ``tps`` (all partitions of the old one) start afresh."""
        for tp in tps:
            self._partitions.pop(tp, None)

    def frontier(self, tp: TP) -> int | None:
        """The offset to commit for ``tp``: every record below it is folded (None: unknown)."""
        part = self._partitions.get(tp)
        return None if part is None else part.frontier

    def partitions(self) -> list[TP]:
        return [tp for tp, part in self._partitions.items() if part.frontier is not None]

    def stuck(
        self,
        highwater: Callable[[TP], int | None],
        after_s: float,
        idle_after_s: float,
        read: Callable[[TP], int | None] = lambda tp: None,
        unread_after_s: float = float("inf"),
    ) -> list[TP]:
        """Partitions whose frontier has not moved although the log has records at or past it
        (``highwater``: the partition's end offset, None if unknown): for ``after_s`` while a
        record at or past the frontier went through the pipeline; for ``idle_after_s`` once
        the fetcher handed the frontier's record (or a later one) to the streams and they took
        it (``read``: the last offset handed over, None if none, or if it may still wait in the
        streams' queues); else (the record waits in a queue, the fetcher or the broker, behind a
        backlog) for ``unread_after_s``."""
        now = self._clock()
        found = []
        for tp, part in self._partitions.items():
            if part.frontier is None:
                continue
            waited = now - part.moved_at
            if part.passed >= part.frontier:
                limit = after_s
            elif (handed := read(tp)) is not None and handed >= part.frontier:
                limit = idle_after_s
            else:
                limit = unread_after_s
            if waited < limit:
                continue
            end = highwater(tp)
            if end is not None and end > part.frontier:
                found.append(tp)
        return found

    def waited(self, tp: TP) -> None:
        """Restart the stuck timer of ``tp`` (after a refetch was requested)."""
        part = self._partitions.get(tp)
        if part is not None:
            part.moved_at = self._clock()

    def _advance(self, part: _Partition) -> None:
        if part.frontier is None:
            return
        start = part.frontier
        while part.frontier in part.folded:
            part.folded.discard(part.frontier)
            part.frontier += 1
        if part.frontier != start:
            part.moved_at = self._clock()
