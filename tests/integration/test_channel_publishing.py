"""A policy channel gets changes that matter, coalesced, within its rate limit (issue 5).

Through the real broker and registry: a burst of sales over many keys, far above the channel's
rate limit. The channel's topic must end with the reference value of every key (nothing lost),
carry fewer records than there were changes (coalesced, latest wins), and never exceed the rate
limit (plus its one-second burst) in any second.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from streams import topics
from tests.integration.conftest import Deployment
from tests.integration.kafka_io import latest_by_key, poll_until, produce, read_all
from tests.integration.test_worker_e2e import T0, Item, Mismatch, as_events, count, sale
from tests.reference import reference_positions

RATE = 20  # records/s
POLICY = f"""
[channels.web]
location_types = ["store"]
min_confidence = 0.0
rate_limit = {RATE}
thresholds = {{ out = 0, low = 2 }}
"""
KEYS = [(f"SKU{k}", f"S{k % 5}") for k in range(60)]


def workload() -> list[Item]:
    items = [count(i, sku, loc, T0, 30) for i, (sku, loc) in enumerate(KEYS)]
    for i in range(1500):  # 25 sales per key: every one changes what the channel is offered
        sku, loc = KEYS[i % len(KEYS)]
        items.append(sale(1000 + i, sku, loc, T0 + 60_000 + i * 1000, 1))
    return items


def expected(items: list[Item]) -> dict[str, tuple[int, int, str]]:
    out = {}
    for key, (on_hand, _version) in reference_positions(as_events(items)).items():
        offered = max(0, on_hand)
        status = "out" if offered <= 0 else "low" if offered <= 2 else "in"
        out[key] = (on_hand, offered, status)
    return out


def test_a_rate_limited_channel_ends_with_the_latest_value_of_every_key(
    deployment: Deployment, tmp_path: Any
) -> None:
    policy = tmp_path / "channels.toml"
    policy.write_text(POLICY)
    deployment.env["INVSYNC_CHANNEL_POLICY"] = str(policy)
    items = workload()
    produce(deployment.settings, items)
    deployment.start_worker()
    topic = topics.availability("web").full_name(deployment.settings)
    want = expected(items)

    def converged() -> Any:
        records = read_all(deployment.settings, topic)
        got = {
            k: (r["on_hand"], r["offered"], r["status"]) for k, r in latest_by_key(records).items()
        }
        if got == want:
            return records
        wrong = {k: (v, got.get(k)) for k, v in want.items() if got.get(k) != v}
        return Mismatch(keys_wrong=len(wrong), sample=dict(list(wrong.items())[:3]))

    try:
        records = poll_until(converged, 240, "the channel to reach the reference")
    except AssertionError:
        print(deployment.logs())
        raise
    changes = read_all(
        deployment.settings, topics.channel_changes("web").full_name(deployment.settings)
    )
    # the fold writes one record per key per batch; the publisher coalesces those again
    assert len(records) < len(changes), (len(records), len(changes))
    print(f"{len(items)} events -> {len(changes)} changes -> {len(records)} records published")
    per_second = Counter(r["_timestamp"] // 1000 for r in records)
    assert max(per_second.values()) <= 2 * RATE + 1, per_second.most_common(3)
    versions: dict[str, int] = {}
    for r in records:  # partition order: versions only grow per key
        assert r["version"] > versions.get(r["_key"], -1), r["_key"]
        versions[r["_key"]] = r["version"]
