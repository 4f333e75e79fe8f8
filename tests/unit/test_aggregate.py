"""Network aggregates (state/aggregate.py): latest per location by version, sum, status,
conservative confidence, monotone version; order and duplication do not matter. Also the read
model's key for group records (sinks/read_model.py)."""

from __future__ import annotations

from typing import Any, cast

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sinks.read_model import (
    KEY_PREFIX,
    group_redis_key,
    ident_key,
    newest_per_key,
    record_ident,
    redis_key,
)
from state.aggregate import (
    Contribution,
    GroupAggregate,
    GroupSummary,
    InvalidContribution,
    from_primitive,
    to_primitive,
)
from state.channel_policy import Thresholds

LOW5 = Thresholds(out=0, low=5)


def c(location: str, offered: int, version: int, confidence: float = 0.9, as_of: int = 0):
    return Contribution(location, offered, confidence, version, as_of)


def test_a_contribution_applies_only_if_its_version_is_newer_for_its_location() -> None:
    agg = GroupAggregate()
    assert agg.apply(c("S1", 4, version=2))
    assert not agg.apply(c("S1", 9, version=2)), "equal version: a redelivery"
    assert not agg.apply(c("S1", 9, version=1)), "older: reordered"
    assert agg.offered == 4
    assert agg.apply(c("S1", 1, version=3))
    assert agg.apply(c("DC1", 10, version=1))
    assert (agg.offered, agg.version) == (11, 4)


def test_the_summary_sums_offered_and_classifies_the_sum_by_the_channel_thresholds() -> None:
    agg = GroupAggregate()
    assert agg.summary(LOW5) == GroupSummary(0, "out", 1.0, 0, 0, 0, 0)
    agg.apply_all([c("S1", 2, 1, as_of=100), c("S2", 0, 7, as_of=300), c("DC1", 3, 4, as_of=200)])
    assert agg.summary(LOW5) == GroupSummary(
        offered=5, status="low", confidence=0.9, version=12, locations=3, offering=2, as_of=300
    )
    agg.apply(c("S2", 1, 8))
    assert agg.summary(LOW5).status == "in"
    # the sum is not zeroed at or below `out`: every location applied its own thresholds
    assert agg.summary(Thresholds(out=6, low=8))[:2] == (6, "out")


def test_confidence_is_the_smallest_among_locations_offering_something() -> None:
    agg = GroupAggregate()
    agg.apply_all([c("S1", 3, 1, confidence=0.95), c("S2", 2, 1, confidence=0.81)])
    agg.apply(c("S3", 0, 1, confidence=0.1))  # offers nothing: does not lower it
    assert agg.confidence == agg.summary(LOW5).confidence == 0.81
    agg.apply(c("S2", 0, 2, confidence=0.2))
    assert agg.confidence == 0.95
    agg.apply(c("S1", 0, 2, confidence=0.3))
    assert agg.confidence == 1.0, "nothing offered: certain, as for a position"


def test_what_changes_for_a_channel_is_total_status_or_confidence_not_the_version() -> None:
    base = GroupSummary(5, "low", 0.9, 12, 3, 2, 300)
    assert base.differs_for_channel(None)
    assert not base.differs_for_channel(base._replace(version=13, locations=4, as_of=400))
    for changed in ({"offered": 6}, {"status": "in"}, {"confidence": 0.8}):
        assert base.differs_for_channel(base._replace(**changed))


@pytest.mark.parametrize(
    "bad",
    [c("S1", -1, 1), c("S1", 1, -1), c("S1", 1, 1, confidence=1.5),
     c("S1", 1, 1, confidence=float("nan")), c("", 1, 1)],
)  # fmt: skip
def test_impossible_contributions_are_rejected_for_the_dead_letter_topic(bad) -> None:
    with pytest.raises(InvalidContribution) as info:
        bad.validate()
    assert info.value.reason == "invalid_contribution"


def test_the_primitive_form_round_trips_and_is_canonical() -> None:
    one, two = GroupAggregate(), GroupAggregate()
    items = [c("S2", 3, 4, 0.5, 10), c("DC1", 7, 2, 0.99, 20)]
    one.apply_all(items)
    two.apply_all(reversed(items))
    assert to_primitive(one) == to_primitive(two)
    assert list(to_primitive(one)) == ["DC1", "S2"]
    assert from_primitive(to_primitive(one)) == one
    assert from_primitive({}) == GroupAggregate()


# --- properties -----------------------------------------------------------------------------

LOCATIONS = ["S1", "S2", "S3", "DC1", "DC2"]


@st.composite
def contributions(draw: st.DrawFn) -> list[Contribution]:
    """Contributions whose content is a function of (location, version), as the fold's
    availability records are (a version identifies its record)."""
    chosen = draw(st.lists(st.tuples(st.sampled_from(LOCATIONS), st.integers(0, 30)), max_size=40))
    return [
        Contribution(
            location,
            (version * 7 + len(location)) % 13,
            round(1.0 - ((version * 31 + ord(location[-1])) % 100) / 100, 2),
            version,
            version * 1000,
        )
        for location, version in dict.fromkeys(chosen)
    ]


@settings(max_examples=300, deadline=None)
@given(contributions(), st.randoms(use_true_random=False), st.data())
def test_any_order_and_duplication_gives_the_same_aggregate(items, rnd, data) -> None:
    once = GroupAggregate()
    once.apply_all(items)
    redelivered = data.draw(st.lists(st.sampled_from(items), max_size=20)) if items else []
    delivered = items + redelivered
    rnd.shuffle(delivered)
    again = GroupAggregate()
    again.apply_all(delivered)
    assert again == once
    assert again.summary(LOW5) == once.summary(LOW5)
    assert to_primitive(again) == to_primitive(once)

    # reference: the sum over the latest (highest version) contribution per location
    latest: dict[str, Contribution] = {}
    for item in items:
        if item.location not in latest or item.version > latest[item.location].version:
            latest[item.location] = item
    summary = again.summary(LOW5)
    assert summary.offered == sum(x.offered for x in latest.values())
    assert summary.version == sum(x.version for x in latest.values())
    assert summary.locations == len(latest)
    offering = [x.confidence for x in latest.values() if x.offered > 0]
    assert summary.confidence == min(offering, default=1.0)


@settings(max_examples=200, deadline=None)
@given(contributions(), st.randoms(use_true_random=False))
def test_the_aggregate_version_never_decreases_whatever_the_order(items, rnd) -> None:
    rnd.shuffle(items)
    agg, last = GroupAggregate(), 0
    for item in items:
        agg.apply(item)
        assert agg.version >= last
        last = agg.version


# --- the read model's key for group records -----------------------------------------------------


def test_group_records_have_their_own_key_and_identity_in_the_read_model() -> None:
    group = {"channel": "web", "group": "network_ship", "sku": "SKU1", "version": 3}
    position = {"channel": "web", "sku": "SKU1", "location": "S1", "version": 9}
    assert record_ident(group) == ("web", "group", "network_ship", "SKU1")
    assert ident_key(KEY_PREFIX, record_ident(group)) == group_redis_key(
        KEY_PREFIX, "web", "network_ship", "SKU1"
    ) == "invsync:avail:web:group:network_ship|SKU1"  # fmt: skip
    assert ident_key("t1.invsync:avail", record_ident(position)) == redis_key(
        "t1.invsync:avail", "web", "SKU1", "S1"
    )
    newest = newest_per_key([group, position, group | {"version": 4}, group | {"version": 2}])
    assert {ident: r["version"] for ident, r in newest.items()} == {
        ("web", "group", "network_ship", "SKU1"): 4,
        ("web", "SKU1", "S1"): 9,
    }


# --- the agents' batch logic (streams/aggregates.py) with fakes for Kafka, registry and store ---


NO_TICKET: Any = None  # the fakes need none


class FakeCodec:
    """Records pass as dicts; ``b"junk"`` is undecodable."""

    def decode(self, topic, value):
        from streams.codec import DecodeError

        if not isinstance(value, dict):
            raise DecodeError("undecodable", "not a record")
        return value

    def encode(self, spec, record):
        return dict(record, _schema=spec.schema)


class FakeOutputs:
    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes, Any]] = []

    def produce(self, ticket, topic, key, value, partition=-1) -> None:
        self.sent.append((topic, key, value))


class FakeStore:
    changelog = "app-group-aggregates-changelog"

    def __init__(self) -> None:
        self.data: dict[bytes, bytes] = {}

    def get_many(self, partition, keys):
        return [self.data.get(k) for k in keys]

    def put_many(self, partition, items) -> None:
        self.data.update(items)


def _app(topic_names):
    from types import SimpleNamespace

    from faust.types import TP

    assigned = {TP(t, 0) for t in topic_names}
    return SimpleNamespace(consumer=SimpleNamespace(assignment=lambda: assigned))


def _event(topic, offset, key, value):
    from types import SimpleNamespace

    from faust.types import TP

    return SimpleNamespace(
        message=SimpleNamespace(
            topic=topic, partition=0, offset=offset, key=key, value=value, tp=TP(topic, 0)
        )
    )


def _policy():
    from state.channel_policy import parse_policy

    return parse_policy(
        {
            "groups": {"ship": {"location_types": ["dc"], "locations": ["S1", "S2"]}},
            "channels": {
                "web": {
                    "location_types": ["dc", "store"],
                    "aggregates": ["ship"],
                    "min_confidence": 0.0,
                    "thresholds": {"out": 0, "low": 5},
                }
            },
        }
    )


def _settings():
    from invsync.settings import load_settings

    return load_settings(topic_prefix="p.", channels="web")


def avail_record(sku, location, offered, version, confidence=0.9, channel="web"):
    return {"channel": channel, "sku": sku, "location": location, "offered": offered,
            "confidence": confidence, "version": version, "as_of": 1000 * version}  # fmt: skip


def test_the_router_sends_the_newest_record_of_a_batch_to_every_group_of_its_location() -> None:
    from streams.aggregates import ContributionRouter, aggregating_channels

    settings, policy = _settings(), _policy()
    channels = aggregating_channels(settings, policy)
    outputs = FakeOutputs()
    router = ContributionRouter(
        _app(["p.availability.web"]), settings, cast(Any, FakeCodec()), cast(Any, outputs),
        channels, "p.dl",
    )  # fmt: skip
    topic = "p.availability.web"
    events = [
        _event(topic, 0, b"A|S1", avail_record("A", "S1", 3, 2)),
        _event(topic, 1, b"A|S1", avail_record("A", "S1", 5, 1)),  # older, same batch
        _event(topic, 2, b"A|S3", avail_record("A", "S3", 4, 1)),  # not in the group
        _event(topic, 3, b"A|DC1", avail_record("A", "DC1", 7, 1)),
        _event(topic, 4, b"A|S2", b"junk"),
        _event(topic, 5, b"A|S9", avail_record("A", "S2", 1, 1)),  # key mismatch
        _event(topic, 6, b"A|S2", avail_record("A", "S2", -1, 1)),  # impossible
    ]
    assert router.process(cast(Any, events), NO_TICKET) == events
    contributions = {
        (v["location"], v["offered"], v["version"])
        for t, k, v in outputs.sent
        if t == "p.invsync.group-contributions" and k == b"web|ship|A"
    }
    assert contributions == {("S1", 3, 2), ("DC1", 7, 1)}
    reasons = sorted(v["reason"] for t, _, v in outputs.sent if t == "p.dl")
    assert reasons == ["invalid_contribution", "key_mismatch", "undecodable"]


def test_the_group_fold_publishes_on_change_and_again_for_a_redelivery() -> None:
    from types import SimpleNamespace

    from streams.aggregates import GroupFolder, aggregating_channels

    settings, policy = _settings(), _policy()
    topic = "p.invsync.group-contributions"
    table = SimpleNamespace(app=_app([topic]))
    outputs = FakeOutputs()
    folder = GroupFolder(
        settings, cast(Any, FakeCodec()), cast(Any, table), cast(Any, outputs), policy,
        aggregating_channels(settings, policy), "p.dl",
    )  # fmt: skip
    folder.store = cast(Any, FakeStore())

    def fold(events: list[Any]) -> None:
        folder.process(events, NO_TICKET)

    def contribution(offset, location, offered, version, confidence=0.9, group="ship"):
        value = {"channel": "web", "group": group, "sku": "A"} | {
            "location": location, "offered": offered, "confidence": confidence,
            "version": version, "as_of": version,
        }  # fmt: skip
        return _event(topic, offset, f"web|{group}|A".encode(), value)

    def published():
        found = [v for t, _, v in outputs.sent if t == "p.availability.web.groups"]
        outputs.sent.clear()
        return [(v["offered"], v["status"], v["confidence"], v["version"]) for v in found]

    batch1 = [contribution(0, "S1", 3, 1), contribution(1, "DC1", 4, 2, 0.8)]
    fold(batch1)
    assert published() == [(7, "in", 0.8, 3)]
    # a newer version that changes nothing a channel sees: stored, not published
    fold([contribution(2, "S1", 3, 5)])
    assert published() == []
    # a duplicate from the router (new offset, old version): nothing
    fold([contribution(3, "DC1", 4, 2, 0.8)])
    assert published() == []
    # a redelivery (offset already stored): re-published, in case it was lost in a crash
    fold(batch1)
    assert published() == [(7, "in", 0.8, 7)]
    fold([contribution(4, "DC1", 0, 3)])
    assert published() == [(3, "low", 0.9, 8)]
    # a group the channel does not aggregate: dead-lettered
    fold([contribution(5, "S1", 1, 9, group="dcs")])
    assert [v["reason"] for t, _, v in outputs.sent if t == "p.dl"] == ["unknown_group"]
