"""The pure parts of ``bench/sinks.py`` (``make bench-sinks``): its options, the topics it waits
on, lag arithmetic and the ERP check that decides PASS or FAIL. No services."""

from __future__ import annotations

import time
from typing import Any

import pytest

from bench.sinks import PHASES, behind, erp_verdict, parse_args, worker_topics, workload
from invsync.settings import load_settings
from state.channel_policy import load_policy
from streams import topics

ROOT_POLICY = "ops/channels.example.toml"


def test_defaults_are_the_issues_full_size_measurement() -> None:
    args = parse_args([])
    assert (args.events, args.erp_outage_s, args.queries) == (1_000_000, 600.0, 200)
    assert args.phases == set(PHASES)
    assert args.erp_catchup_timeout_s == 1800.0  # 3 x the outage
    assert args.policy.name == "channels.example.toml" and args.policy.is_absolute()


def test_phases_pull_in_what_they_need() -> None:
    assert parse_args(["--phases", "query"]).phases == {"coalescing", "redis", "query"}
    assert parse_args(["--phases", "redis"]).phases == {"coalescing", "redis"}
    assert parse_args(["--phases", "erp"]).phases == {"erp"}
    with pytest.raises(SystemExit):
        parse_args(["--phases", "coalescing,nope"])
    with pytest.raises(SystemExit):
        parse_args(["--erp-rate", "0"])


def test_the_worker_topics_are_everything_its_group_consumes() -> None:
    policy = load_policy(ROOT_POLICY)
    settings = load_settings(topic_prefix="b.", channels=",".join(policy.channels))
    names = set(worker_topics(settings, policy))
    for spec in topics.all_topics(settings):
        if spec.role in ("input", "internal"):
            assert spec.full_name(settings) in names, spec.name
    assert "b.invsync.count-discrepancies" in names
    # the aggregating channels' availability topics feed the contributions; bopis aggregates none
    assert {"b.availability.web", "b.availability.marketplace"} <= names
    assert "b.availability.bopis" not in names
    assert not any(name.endswith(".groups") for name in names)


def test_records_behind_count_partitions_never_committed_from_zero() -> None:
    ends = {("t", 0): 10, ("t", 1): 5, ("u", 0): 0}
    assert behind(ends, {("t", 0): 10, ("t", 1): 5}) == 0
    assert behind(ends, {("t", 0): 7}) == 8
    assert behind(ends, {("t", 0): 12, ("t", 1): 5}) == 0  # committed past a read end


def test_the_workload_is_the_simulators_and_ends_before_now() -> None:
    args = parse_args(["--stores", "5", "--dcs", "1", "--seed", "3"])
    config = workload(args, 1000, 0.0, 20, span=1000)
    assert (config.events, config.skus, config.stores, config.dcs, config.seed) == (
        1000, 20, 5, 1, 3,
    )  # fmt: skip
    assert config.start_ms is not None
    assert config.start_ms + 1000 * 1000 < time.time() * 1000


def delta(delta_id: str, key: str, qty: int) -> dict[str, Any]:
    sku, location = topics.split_key(key)
    return {"delta_id": delta_id, "sku": sku, "location": location, "net_quantity": qty}


RECORDS = [delta("d1", "A|S1", -2), delta("d2", "A|S1", 5), delta("d3", "B|S1", -1)]
STATE = {"accepted": {"d1": 1, "d2": 1, "d3": 1}, "net": {"A|S1": 3, "B|S1": -1}}


def test_the_erp_passes_with_every_delta_once_and_the_same_net() -> None:
    replayed = [*RECORDS, RECORDS[0]]  # a delta produced twice (same id, same body) counts once
    verdict = erp_verdict(replayed, STATE)
    assert verdict["verdict"] == "PASS" and "sample" not in verdict
    assert (verdict["deltas_total"], verdict["accepted"], verdict["keys"]) == (3, 3, 2)


@pytest.mark.parametrize(
    ("records", "state", "field"),
    [
        (RECORDS, STATE | {"accepted": {"d1": 2, "d2": 1, "d3": 1}}, "applied_more_than_once"),
        (RECORDS, {"accepted": {"d1": 1, "d2": 1}, "net": {"A|S1": 3}}, "missing"),
        (RECORDS, STATE | {"accepted": STATE["accepted"] | {"x": 1}}, "unknown_to_topic"),
        (RECORDS, STATE | {"net": {"A|S1": 3, "B|S1": 0}}, "net_mismatches"),
        (RECORDS, STATE | {"net": {"A|S1": 3, "B|S1": -1, "C|S1": 2}}, "net_mismatches"),
        ([*RECORDS, delta("d3", "B|S1", -4)], STATE, "conflicting_ids"),
    ],
)
def test_the_erp_fails_on_anything_lost_doubled_or_different(
    records: list[dict[str, Any]], state: dict[str, Any], field: str
) -> None:
    verdict = erp_verdict(records, state)
    assert verdict["verdict"] == "FAIL" and verdict[field] == 1, verdict
    assert "sample" in verdict
