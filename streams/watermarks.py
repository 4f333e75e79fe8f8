"""Per-partition event-time watermarks over several co-partitioned input topics.

The watermark of partition ``p`` is the event time up to which every input topic's partition
``p`` is believed folded: the minimum, over the input topics, of their stream times. A topic
with nothing waiting (the consumer's high watermark is at what was folded) holds time back by
at most ``max_skew_ms`` behind the newest topic, so a quiet topic does not stop time; a topic
with records waiting holds it back fully, so a topic fetched ahead of another (a replay, a
burst) cannot make the other's events late. The skew bound also covers a stale high watermark
(records produced since the last fetch). This is Kafka Streams' partition-group rule, with
"has data waiting" read from high watermarks and an event-time bound instead of a wall-clock
idle timeout, so a replay computes the same watermarks.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from state.position import NEVER

HighWater = Callable[[str, int], int | None]  # (topic, partition) -> next offset, None: unknown


class PartitionClock:
    def __init__(self, topics: Iterable[str], highwater: HighWater, max_skew_ms: int) -> None:
        self.topics = tuple(topics)
        self.max_skew_ms = max_skew_ms
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
        stream_time = self.stream_time
        times = [stream_time.get((t, partition), NEVER) for t in self.topics]
        quiet_bound = max(times) - self.max_skew_ms
        low = None
        for topic, at in zip(self.topics, times, strict=True):
            if at < quiet_bound and not self._waiting(topic, partition):
                at = quiet_bound  # quiet: held back by at most the skew bound
            if low is None or at < low:
                low = at
        assert low is not None, "a clock watches at least one topic"
        return low
