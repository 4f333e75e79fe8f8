"""What a channel gets published, and when: changes that matter, coalesced, rate-limited, with
transitions to out-of-stock first.

A channel's publisher receives every new availability record of its keys (each with a token the
caller uses to release its input offset) and decides:

* **Changes that matter.** A record is published when the channel has never been sent the key,
  or its ``offered`` or ``status`` differs from what was last sent, or its confidence moved by at
  least the channel's ``confidence_step``. Anything else is released at once, unpublished.
* **Coalesced, latest wins.** At most one record per key waits; a newer one replaces it and the
  older one's token is released: the newer record carries its effect, and its own token (a
  later offset of the same partition) is held until it is sent.
* **Within the rate limit, out-of-stock first.** :meth:`ChannelQueue.take` hands out waiting
  records, transitions to ``out`` ahead of everything else, then oldest first; a
  :class:`TokenBucket` says how many the channel's records/s allow.

Guarantee: every token offered is returned exactly once, by :meth:`ChannelQueue.offer` (not
published, or superseded) or :meth:`ChannelQueue.take` (to be published by the caller), unless
:meth:`ChannelQueue.drop` forgets it; the last record offered for a key is the one that waits or
was sent, so once the queue drains the channel has the latest value of every key that matters.
Pure and deterministic; the clock is passed in.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any, Generic, NamedTuple, TypeVar

Token = TypeVar("Token", bound=Hashable)


class Sent(NamedTuple):
    """What a channel was last sent for a key: the terms a change must move to matter."""

    offered: int
    status: str
    confidence: float


def matters(last: Sent | None, record: dict[str, Any], confidence_step: float) -> bool:
    """Whether ``record`` tells the channel something ``last`` did not."""
    if last is None or record["offered"] != last.offered or record["status"] != last.status:
        return True
    return abs(record["confidence"] - last.confidence) >= confidence_step


@dataclass
class _Waiting(Generic[Token]):
    record: dict[str, Any]
    value: bytes
    token: Token
    seq: int  # arrival order of the key's first waiting record (its place in the line)


@dataclass
class ChannelQueue(Generic[Token]):
    """The records waiting to be published to one channel, one per key (not thread-safe)."""

    confidence_step: float
    sent: dict[bytes, Sent] = field(default_factory=dict)
    waiting: dict[bytes, _Waiting[Token]] = field(default_factory=dict)
    _seq: int = 0

    def offer(self, key: bytes, record: dict[str, Any], value: bytes, token: Token) -> list[Token]:
        """A new record for ``key``; returns the tokens released without publishing: this
        one's if it does not matter, or the one it supersedes."""
        current = self.waiting.get(key)
        if current is not None and current.token == token:
            return []  # the waiting record again (fetched twice): it still waits
        if not matters(self.sent.get(key), record, self.confidence_step):
            if current is None:
                return [token]
            del self.waiting[key]  # back to what was sent: nothing left to publish
            return [current.token, token]
        if current is None:
            self._seq += 1
            self.waiting[key] = _Waiting(record, value, token, self._seq)
            return []
        released = current.token  # latest wins, in the superseded record's place in the line
        current.record, current.value, current.token = record, value, token
        return [released]

    def take(self, n: int) -> list[tuple[bytes, bytes, Token]]:
        """Up to ``n`` waiting records to publish now, as ``(key, value, token)``:
        transitions to ``out`` first, then in arrival order. They count as sent."""
        if n <= 0 or not self.waiting:
            return []
        order = sorted(self.waiting.items(), key=lambda kv: (not self._to_out(*kv), kv[1].seq))
        taken = []
        for key, entry in order[:n]:
            del self.waiting[key]
            record = entry.record
            self.sent[key] = Sent(record["offered"], record["status"], record["confidence"])
            taken.append((key, entry.value, entry.token))
        return taken

    def drop(self, keep: Callable[[Token], bool]) -> None:
        """Forget the waiting records whose token ``keep`` rejects (partitions given away):
        they are not published here; the new owner consumes them again (their tokens were never
        returned, so their offsets were not committed)."""
        for key in [k for k, entry in self.waiting.items() if not keep(entry.token)]:
            del self.waiting[key]

    def tokens(self) -> list[Token]:
        """The tokens of the waiting records."""
        return [entry.token for entry in self.waiting.values()]

    def __len__(self) -> int:
        return len(self.waiting)

    def _to_out(self, key: bytes, entry: _Waiting[Token]) -> bool:
        last = self.sent.get(key)
        return entry.record["status"] == "out" and (last is None or last.status != "out")


@dataclass
class TokenBucket:
    """``rate`` records per second, bursts up to ``burst`` (None rate: unlimited)."""

    rate: float | None
    burst: float
    tokens: float = 0.0
    stamp: float | None = None

    def available(self, now: float) -> int:
        """Whole records that may be sent at ``now`` (a very large number when unlimited)."""
        if self.rate is None:
            return 1 << 30
        if self.stamp is None:
            self.tokens, self.stamp = self.burst, now
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        return int(self.tokens)

    def spend(self, n: int) -> None:
        if self.rate is not None:
            self.tokens -= n
