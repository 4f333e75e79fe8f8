"""Dead letters: inputs that cannot be applied, kept with why and where they came from.

This is the worker's error stream (input = applied + duplicate + dead-lettered). A dead letter is
produced before the offset of its input is committed, so none is lost; after a crash it may be
produced twice (at-least-once), with the same source topic/partition/offset to dedupe on.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any


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
