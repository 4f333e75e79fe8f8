"""A channel's publisher queue: changes that matter, latest wins, out-of-stock first, every
token returned once."""

from __future__ import annotations

from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from state.publishing import ChannelQueue, Sent, TokenBucket, matters


def record(offered: int, status: str = "in", confidence: float = 0.9) -> dict:
    return {"offered": offered, "status": status, "confidence": confidence}


def test_what_matters() -> None:
    last = Sent(5, "in", 0.9)
    assert matters(None, record(5), 0.05)
    assert not matters(last, record(5, confidence=0.93), 0.05)
    assert matters(last, record(5, confidence=0.84), 0.05)
    assert matters(last, record(4), 0.05) and matters(last, record(5, "low"), 0.05)


def test_latest_wins_in_the_superseded_records_place() -> None:
    q: ChannelQueue[int] = ChannelQueue(0.05)
    assert q.offer(b"a", record(3), b"a3", 1) == []
    assert q.offer(b"b", record(7), b"b7", 2) == []
    assert q.offer(b"a", record(2), b"a2", 3) == [1]  # superseded: released
    assert q.take(10) == [(b"a", b"a2", 3), (b"b", b"b7", 2)]
    assert q.offer(b"a", record(2), b"a2'", 4) == [4]  # the same as sent: not published


def test_a_change_reverted_before_it_was_sent_is_not_published() -> None:
    q: ChannelQueue[int] = ChannelQueue(0.05)
    q.offer(b"a", record(3), b"", 1)
    q.take(1)
    assert q.offer(b"a", record(4), b"", 2) == []
    assert sorted(q.offer(b"a", record(3), b"", 3)) == [2, 3]
    assert len(q) == 0


def test_out_of_stock_transitions_go_first() -> None:
    q: ChannelQueue[int] = ChannelQueue(0.05)
    for i, key in enumerate((b"a", b"b", b"c")):
        q.offer(key, record(5), b"", i)
    q.take(3)
    q.offer(b"a", record(4), b"a4", 10)
    q.offer(b"b", record(3), b"b3", 11)
    q.offer(b"c", record(0, "out"), b"c0", 12)
    assert [key for key, _, _ in q.take(1)] == [b"c"]
    assert [key for key, _, _ in q.take(5)] == [b"a", b"b"]


def test_a_key_already_out_is_not_a_transition() -> None:
    q: ChannelQueue[int] = ChannelQueue(0.05)
    q.offer(b"a", record(0, "out"), b"", 1)
    q.offer(b"b", record(5), b"", 2)
    q.take(2)
    q.offer(b"b", record(4), b"", 3)
    q.offer(b"a", record(0, "out", 0.5), b"", 4)  # confidence moved, still out
    assert [key for key, _, _ in q.take(2)] == [b"b", b"a"]


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from([b"a", b"b", b"c", b"d"]), st.integers(0, 3), st.booleans()),
        max_size=60,
    ),
    st.integers(1, 4),
)
def test_every_token_returned_once_and_the_channel_ends_with_the_latest(ops, per_take) -> None:
    q: ChannelQueue[int] = ChannelQueue(0.05)
    returned: Counter[int] = Counter()
    channel: dict[bytes, bytes] = {}
    latest: dict[bytes, dict] = {}
    for token, (key, offered, drain) in enumerate(ops):
        rec = record(offered, "out" if offered == 0 else "in")
        latest[key] = rec
        returned.update(q.offer(key, rec, f"{key!r}{offered}".encode(), token))
        if drain:
            for k, value, t in q.take(per_take):
                channel[k] = value
                returned[t] += 1
    while len(q):
        for k, value, t in q.take(per_take):
            channel[k] = value
            returned[t] += 1
    assert returned == Counter(range(len(ops)))
    for key, rec in latest.items():
        assert channel[key] == f"{key!r}{rec['offered']}".encode()


def test_token_bucket() -> None:
    bucket = TokenBucket(rate=10.0, burst=5.0)
    assert bucket.available(100.0) == 5
    bucket.spend(5)
    assert bucket.available(100.25) == 2
    assert bucket.available(101.0) == 5  # capped at the burst
    assert TokenBucket(rate=None, burst=0).available(0.0) > 10**6
