"""Channel policy: the file format's validation and the pure offer it drives."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from state.availability import assess_ledger, location_type, project
from state.channel_policy import (
    DEFAULT_POLICY,
    PolicyError,
    Thresholds,
    UnknownChannelError,
    default_channel,
    load_policy,
    offer,
)
from state.confidence import DAY_MS, PRIORS, Assessment, assess
from state.position import Ledger

EXAMPLE = Path(__file__).resolve().parents[2] / "ops" / "channels.example.toml"
HOUR = 3_600_000
T0 = 1_767_225_600_000

MINIMAL = """
[channels.web]
location_types = ["dc", "store"]
min_confidence = 0.8
thresholds = { low = 2 }
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "channels.toml"
    path.write_text(text)
    return path


def assessment(
    on_hand: int,
    reserved: int = 0,
    *,
    kind: str = "store",
    moved: int = 0,
    count_age_days: float | None = 0.0,
) -> Assessment:
    return assess(
        on_hand,
        reserved,
        units_moved_since_count=moved,
        last_count_age_ms=None if count_age_days is None else int(count_age_days * DAY_MS),
        since_last_sale_ms=HOUR,
        velocity_per_day=5.0,
        accuracy=PRIORS[kind],
    )


def offer_at(channel, location: str, a: Assessment, **terms: int):
    return offer(
        channel,
        location=location,
        location_type=location_type(location),
        on_hand=a.recorded,
        reserved=a.reserved,
        assessment=a,
        **terms,
    )


# --- the file --------------------------------------------------------------------------------


def test_the_example_file_loads_with_its_three_channels():
    policy = load_policy(EXAMPLE)
    assert set(policy.channels) == {"web", "bopis", "marketplace"}
    bopis, web, market = (policy.channel(n) for n in ("bopis", "web", "marketplace"))
    assert bopis.min_confidence["store"] == 0.95 and bopis.location_types == {"store"}
    assert web.min_confidence == {"dc": 0.8, "store": 0.8}
    assert market.publish_cap == 50 and market.rate_limit == 200
    assert market.min_confidence == {"dc": 0.9}  # one number: every eligible type
    assert web.aggregates == ("network_ship",)
    assert {"in_transit", "allocated"} <= market.atp.terms
    # ship to home counts units on their way; same-day pickup only the shelf
    assert "in_transit" in web.atp.terms and "in_transit" not in bopis.atp.terms
    assert bopis.atp.safety_stock == {"store": 1}
    network = policy.groups["network_ship"]
    assert network.contains("DC1", "dc") and network.contains("S001", "store")
    assert network.contains("S101", "store") and not network.contains("S200", "store")
    policy.require(["web", "bopis", "marketplace"])
    with pytest.raises(PolicyError, match=r"channels\.pos: not defined"):
        policy.require(["web", "pos"])
    with pytest.raises(UnknownChannelError, match="unknown channel 'pos'"):
        policy.channel("pos")


def test_a_minimal_file_takes_the_defaults(tmp_path):
    web = load_policy(write(tmp_path, MINIMAL)).channel("web")
    assert web.atp.terms == {"on_hand", "reserved"}
    assert (web.buffer_units, web.buffer_pct, web.publish_cap, web.rate_limit) == (0, 0, None, None)
    assert web.confidence_step == 0.05  # a file's channels publish changes that matter
    assert default_channel("web").confidence_step is None  # the built-in: every version
    assert (web.thresholds.out, web.thresholds.low, web.groups) == (0, 2, None)


def _bad(old: str, new: str) -> str:
    assert old in MINIMAL
    return MINIMAL.replace(old, new)


BAD_FILES = [
    # (file text, key path named, what is wrong)
    (MINIMAL + "colour = 1\n", "channels.web.colour", "unknown key"),
    ("version = 2\n" + MINIMAL, "version", "unknown key"),
    (_bad("min_confidence = 0.8", 'min_confidence = "high"'), "channels.web.min_confidence",
     "expected a number"),
    (_bad("min_confidence = 0.8", "min_confidence = {dc = 0.8, store = 1.5}"),
     "channels.web.min_confidence.store", "must be in [0, 1]"),
    (_bad("min_confidence = 0.8", "min_confidence = {dc = 0.8, store = -0.1}"),
     "channels.web.min_confidence.store", "must be in [0, 1]"),
    (_bad("min_confidence = 0.8", "min_confidence = {dc = 0.8}"),
     "channels.web.min_confidence.store", "missing"),
    (_bad("min_confidence = 0.8", "min_confidence = {dc = 0.8, store = 0.9, van = 0.5}"),
     "channels.web.min_confidence.van", "unknown location type"),
    (_bad('["dc", "store"]', '["dc", "van"]'), "channels.web.location_types[1]",
     "unknown location type 'van'"),
    (_bad('["dc", "store"]', "[]"), "channels.web.location_types", "eligible for nothing"),
    (_bad("location_types", "groups = []\nlocation_types"), "channels.web.groups",
     "eligible for nothing"),
    ("[groups.north]\nlocation_types = ['dc']\n" + _bad('["dc", "store"]', '["store"]')
     .replace("location_types", "groups = ['north']\nlocation_types", 1),
     "channels.web.groups", "eligible for nothing"),
    (MINIMAL + "buffer_units = -1\n", "channels.web.buffer_units", "must be >= 0"),
    (MINIMAL + "buffer_units = 1.5\n", "channels.web.buffer_units", "expected an integer"),
    (MINIMAL + "buffer_pct = 150\n", "channels.web.buffer_pct", "must be in [0, 100]"),
    (MINIMAL + "publish_cap = -5\n", "channels.web.publish_cap", "must be >= 0"),
    (MINIMAL + "rate_limit = 0\n", "channels.web.rate_limit", "must be > 0"),
    (MINIMAL + "confidence_step = 1.5\n", "channels.web.confidence_step", "must be in [0, 1]"),
    (MINIMAL + "rate_limit = nan\n", "channels.web.rate_limit", "must be in"),
    (_bad("{ low = 2 }", "{ out = 3, low = 2 }"), "channels.web.thresholds", "out of order"),
    (_bad("{ low = 2 }", "{ out = 0 }"), "channels.web.thresholds.low", "missing"),
    (_bad("{ low = 2 }", "{ low = true }"), "channels.web.thresholds.low", "expected an integer"),
    (_bad("thresholds = { low = 2 }\n", ""), "channels.web.thresholds", "missing"),
    (MINIMAL + "[channels.web.atp]\nterms = ['on_hand', 'backorders']\n",
     "channels.web.atp.terms[1]", "unknown ATP term 'backorders'"),
    (MINIMAL + "[channels.web.atp]\nterms = ['reserved']\n", "channels.web.atp.terms",
     "must count on_hand"),
    (MINIMAL + "[channels.web.atp]\nterms = ['on_hand', 'safety_stock']\n",
     "channels.web.atp.safety_stock", "missing"),
    (MINIMAL + "[channels.web.atp]\nterms = ['on_hand']\nsafety_stock = {store = 1}\n",
     "channels.web.atp.safety_stock", "not among the terms"),
    (MINIMAL + "[channels.web.atp]\nterms = ['on_hand', 'safety_stock']\n"
     "safety_stock = {store = -1}\n", "channels.web.atp.safety_stock.store", "must be >= 0"),
    ("[groups.empty]\ndescription = 'nothing'\n" + MINIMAL, "groups.empty", "no locations"),
    ("[groups.g]\nprefixes = ['']\n" + MINIMAL, "groups.g.prefixes[0]", "empty string"),
    ("[groups.g]\nlocation_types = ['kiosk']\n" + MINIMAL, "groups.g.location_types[0]",
     "unknown location type"),
    (_bad("location_types", "groups = ['nowhere']\nlocation_types"), "channels.web.groups[0]",
     "unknown group 'nowhere'"),
    (MINIMAL + "aggregates = ['nowhere']\n", "channels.web.aggregates[0]", "unknown group"),
    (MINIMAL.replace("channels.web", "channels.Web"), "channels.Web", "invalid channel name"),
    ("[groups]\n", "channels", "missing"),
    ("channels = 3\n", "channels", "expected a table"),
    ("[channels]\n", "channels", "empty"),
]  # fmt: skip


@pytest.mark.parametrize(("text", "key", "problem"), BAD_FILES, ids=[b[1] for b in BAD_FILES])
def test_a_bad_file_names_the_file_the_key_and_the_problem(tmp_path, text, key, problem):
    path = write(tmp_path, text)
    with pytest.raises(PolicyError) as caught:
        load_policy(path)
    error = caught.value
    assert (error.source, error.key) == (str(path), key), str(error)
    assert problem in error.problem, str(error)
    assert str(error).startswith(f"{path}: {key}: ")


def test_unreadable_and_malformed_files_name_the_file(tmp_path):
    with pytest.raises(PolicyError, match="cannot read"):
        load_policy(tmp_path / "absent.toml")
    with pytest.raises(PolicyError, match=r"channels\.toml: not valid TOML"):
        load_policy(write(tmp_path, "[channels.web\n"))


# --- the offer -------------------------------------------------------------------------------


def test_bopis_at_a_stale_store_offers_less_than_ship_at_the_same_position():
    policy = load_policy(EXAMPLE)
    stale = assessment(30, 2, moved=300, count_age_days=60)
    web = offer_at(policy.channel("web"), "S001", stale)
    bopis = offer_at(policy.channel("bopis"), "S001", stale)
    assert 0 <= bopis.offered < web.offered
    assert bopis.confidence >= 0.95 and web.confidence >= 0.8
    assert bopis.min_confidence == 0.95 and web.min_confidence == 0.8
    # the confidence alone makes the difference: same channel rules but the minimum
    strict = default_channel("bopis", min_confidence=0.95)
    loose = default_channel("ship", min_confidence=0.8)
    s, lo = offer_at(strict, "S001", stale), offer_at(loose, "S001", stale)
    assert s.offered < lo.offered < s.atp == 28
    assert s.bound_by == lo.bound_by == "confidence"
    # a fresh count restores it
    fresh = offer_at(strict, "S001", assessment(30, 2))
    assert fresh.offered > s.offered


@pytest.mark.parametrize("on_hand", [0, 1, 2, 3, 7, 40])
@pytest.mark.parametrize("reserved", [0, 1, 5])
def test_a_buffer_never_makes_offered_negative(tmp_path, on_hand, reserved):
    text = MINIMAL.replace("min_confidence = 0.8", "min_confidence = 0")
    path = write(tmp_path, text + "buffer_units = 4\nbuffer_pct = 25\n")
    web = load_policy(path).channel("web")
    a = assessment(on_hand, reserved)
    result = offer_at(web, "S001", a)
    atp = max(0, on_hand - reserved)
    held = 4 + -(-atp // 4)  # 25% of ATP rounded up
    assert result.held_back == held
    assert result.offered == max(0, atp - held) >= 0
    assert result.status == (
        "out" if result.offered == 0 else "low" if result.offered <= 2 else "in"
    )
    if result.offered == 0 and atp > 0:
        assert result.bound_by == "buffer"


def test_the_percent_buffer_is_exact():
    # 10% of 30 is 3 (not ceil(3.0000000000000004) = 4)
    channel = default_channel()
    assert replace(channel, buffer_pct=10.0).held_back(30) == 3
    assert replace(channel, buffer_pct=10.0).held_back(31) == 4
    assert replace(channel, buffer_pct=12.5, buffer_units=1).held_back(8) == 2


def test_the_cap_binds():
    policy = load_policy(EXAMPLE)
    deep = assessment(5_000, 0, kind="dc")
    market = offer_at(policy.channel("marketplace"), "DC1", deep)
    assert (market.offered, market.bound_by, market.status) == (50, "cap", "in")
    web = offer_at(policy.channel("web"), "DC1", deep)
    assert (web.offered, web.bound_by) == (500, "cap")
    shallow = offer_at(policy.channel("marketplace"), "DC1", assessment(20, 0, kind="dc"))
    assert shallow.offered < 50 and shallow.bound_by != "cap"


@pytest.mark.parametrize(
    ("channel", "location", "why"),
    [
        ("bopis", "DC1", "location type 'dc' is not eligible for bopis"),
        ("marketplace", "S001", "location type 'store' is not eligible for marketplace"),
        ("web", "S200", "location 'S200' is in none of web's groups (network_ship)"),
    ],
)
def test_ineligible_locations_get_nothing(channel, location, why):
    rules = load_policy(EXAMPLE).channel(channel)
    kind = location_type(location)
    result = offer_at(rules, location, assessment(100, 0, kind=kind))
    assert (result.offered, result.status, result.bound_by) == (0, "out", "ineligible")
    assert result.reason.startswith(why) and result.confidence == 1.0
    assert result.atp > 0  # the position has stock; the channel may not sell it


def test_eligible_group_members_are_offered():
    web = load_policy(EXAMPLE).channel("web")
    for location in ("DC7", "S001", "S101"):
        kind = location_type(location)
        assert offer_at(web, location, assessment(100, 0, kind=kind)).offered > 0


def test_atp_terms_and_safety_stock():
    policy = load_policy(EXAMPLE)
    a = assessment(40, 4, kind="dc")
    market = offer_at(policy.channel("marketplace"), "DC1", a, in_transit=10, allocated=6)
    assert market.atp == 40 + 10 - 4 - 6
    ignored = offer_at(default_channel(), "DC1", a, in_transit=10, allocated=6)
    assert ignored.atp == 36  # the default counts on hand - reserved only
    bopis = offer_at(policy.channel("bopis"), "S001", assessment(5, 0))
    assert bopis.atp == 4  # one unit of safety stock at stores
    with pytest.raises(ValueError, match="assessment"):
        offer(default_channel(), location="S1", location_type="store", on_hand=9, reserved=0,
              assessment=a)  # fmt: skip


def test_the_out_threshold_offers_nothing_at_or_below_it():
    single = replace(default_channel(), thresholds=Thresholds(out=1, low=3))
    one = offer_at(single, "S001", assessment(1, 0))
    assert (one.atp, one.offered, one.status, one.bound_by) == (1, 0, "out", "out_threshold")
    assert one.confidence == 1.0
    two = offer_at(single, "S001", assessment(2, 0))
    assert (two.offered, two.status, two.bound_by) == (2, "low", "atp")
    assert load_policy(EXAMPLE).channel("bopis").thresholds == Thresholds(out=1, low=3)


# --- the default is today's behaviour --------------------------------------------------------


def today(ledger: Ledger, location: str, stream_time: int) -> Assessment:
    """The assessment state.availability.project builds for this position."""
    return assess_ledger(ledger, stream_time=stream_time, accuracy=PRIORS[location_type(location)])


POSITIONS = [
    Ledger(),
    Ledger(on_hand=1, last_count_at=T0, as_of=T0),
    Ledger(on_hand=2, reserved=1, last_count_at=T0, as_of=T0),
    Ledger(on_hand=3, reserved=5, last_count_at=T0, as_of=T0),  # over-reserved
    Ledger(on_hand=3, last_count_at=T0 - 90 * DAY_MS, moved_since_count=400, as_of=T0),
    Ledger(on_hand=60, reserved=7, last_count_at=T0 - 5 * DAY_MS, moved_since_count=80,
           units_sold=80, first_sale_at=T0 - 5 * DAY_MS, last_sale_at=T0 - 2 * DAY_MS, as_of=T0),
    Ledger(on_hand=25, moved_since_count=10, as_of=T0),  # never counted
]  # fmt: skip


@pytest.mark.parametrize("location", ["S001", "DC1"])
@pytest.mark.parametrize("ledger", POSITIONS)
@pytest.mark.parametrize("minimum", [None, 0.5, 0.9])
def test_the_default_policy_is_todays_behaviour(ledger, location, minimum):
    now = max(T0, ledger.as_of)
    if minimum is None:  # the shipped default, and project()'s defaults
        channel = DEFAULT_POLICY.channel("web")
        expected = project("web", "SKU1", location, ledger, stream_time=now)
    else:
        channel = default_channel("web", min_confidence=minimum)
        expected = project("web", "SKU1", location, ledger, stream_time=now, min_confidence=minimum)
    a = today(ledger, location, now)
    result = offer_at(channel, location, a)
    assert (result.atp, result.offered, result.status) == (
        expected.atp,
        expected.offered,
        expected.status,
    )
    assert result.confidence == expected.confidence


def test_the_default_policy_has_only_web_with_no_buffers():
    assert set(DEFAULT_POLICY.channels) == {"web"}
    web = DEFAULT_POLICY.channel("web")
    assert web.min_confidence == {"store": 0.0, "dc": 0.0}
    assert (web.buffer_units, web.buffer_pct, web.publish_cap, web.thresholds.low) == (
        0,
        0,
        None,
        2,
    )


def test_in_transit_units_count_at_face_value_for_the_channels_that_list_them():
    """The confidence is about the shelf: units in transit shift the offer as certain, and the
    reported confidence is that of the shelf part of it."""
    web = load_policy(EXAMPLE).channel("web")
    shelf = assessment(20, 0, kind="dc")
    without = offer_at(web, "DC1", shelf)
    inbound = offer_at(web, "DC1", shelf, in_transit=12)
    assert inbound.atp == without.atp + 12
    assert inbound.offered == without.offered + 12  # minus nothing: taken at face value
    assert inbound.confidence == pytest.approx(without.confidence)
    assert offer_at(default_channel(), "DC1", shelf, in_transit=12).atp == 20  # not counted
