"""Per-partition event-time watermarks over several co-partitioned input topics.

The watermark of partition ``p`` is the event time up to which every input topic's partition
``p`` has been folded: the minimum of their stream times over the topics that still have
records waiting (high watermark beyond what was folded), or the maximum when none has. So a
topic fetched ahead of another (a replay, a burst) cannot make the other's events late, and an
idle topic does not hold time back. This is Kafka Streams' partition-group rule, with "has data
waiting" read from the consumer's high watermarks instead of a wall-clock idle timeout.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from state.position import NEVER

HighWater = Callable[[str, int], int | None]  # (topic, partition) -> next offset, None: unknown


class PartitionClock:
    def __init__(self, topics: Iterable[str], highwater: HighWater) -> None:
        self.topics = tuple(topics)
        self.highwater = highwater
        self.stream_time: dict[tuple[str, int], int] = {}
        self.folded_offset: dict[tuple[str, int], int] = {}

    def observe(self, topic: str, partition: int, offset: int, event_time: int | None) -> None:
        """Record that ``offset`` of (topic, partition) was folded (event_time None: rejected)."""
        tp = (topic, partition)
        self.folded_offset[tp] = max(self.folded_offset.get(tp, -1), offset)
        if event_time is not None:
            self.stream_time[tp] = max(self.stream_time.get(tp, NEVER), event_time)

    def _waiting(self, topic: str, partition: int) -> bool:
        high = self.highwater(topic, partition)
        if high is None:
            return True  # not fetched yet: assume it has data
        return high > self.folded_offset.get((topic, partition), -1) + 1

    def watermark(self, partition: int) -> int:
        times = {t: self.stream_time.get((t, partition), NEVER) for t in self.topics}
        waiting = [times[t] for t in self.topics if self._waiting(t, partition)]
        return min(waiting) if waiting else max(times.values())
