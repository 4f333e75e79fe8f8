"""Dead letters: inputs that cannot be applied, kept with why and where they came from.

This is the worker's error stream (input = applied + duplicate + dead-lettered). A dead letter is
produced before the offset of its input is committed, so none is lost; after a crash it may be
produced twice (at-least-once), with the same source topic/partition/offset to dedupe on.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

from streams import metrics, topics
from streams.codec import Codec
from streams.delivery import Outputs, Ticket


@dataclass(frozen=True, slots=True)
class DeadLetter:
    reason: str
    detail: str
    source_topic: str
    source_partition: int
    source_offset: int
    raw_key: bytes | None
    raw_value: bytes | None
    failed_at: int

    def to_record(self) -> dict[str, Any]:
        return asdict(self)


def dead_letter(
    reason: str,
    detail: str,
    topic: str,
    partition: int,
    offset: int,
    key: bytes | None,
    value: bytes | None,
) -> DeadLetter:
    return DeadLetter(
        reason, detail[:2000], topic, partition, offset, key, value, int(time.time() * 1000)
    )


def send_dead_letters(
    letters: list[DeadLetter], codec: Codec, outputs: Outputs, ticket: Ticket, topic: str
) -> None:
    """Count ``letters`` by reason and queue them on ``ticket`` (keyed by source topic)."""
    for letter in letters:
        metrics.DEAD_LETTERS.labels(letter.reason).inc()
        value = codec.encode(topics.DEAD_LETTERS, letter.to_record())
        outputs.produce(ticket, topic, letter.source_topic.encode(), value)
