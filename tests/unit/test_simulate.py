"""The simulator's pure generator: deterministic, well-formed, with the faults it promises."""

from __future__ import annotations

from collections import Counter
from functools import cache
from itertools import islice
from typing import Any

import fastavro
import orjson
import pytest
from fastavro.validation import validate

from invsync.simulate import (
    MAX_HOLD_MS,
    SimRecord,
    SimulationConfig,
    demand_factor,
    generate,
)
from streams.topics import CYCLE_COUNTS, POS_SALES, make_key, schema_text

START = 1_700_006_400_000  # 2023-11-15T00:00:00Z
LATENESS_MS = 600_000  # the default lateness bound: disorder must stay inside it
HOUR = 3_600_000


def config(**overrides: object) -> SimulationConfig:
    base: dict[str, object] = {
        "events": 20_000,
        "rate": 0,
        "skus": 200,
        "stores": 10,
        "dcs": 2,
        "duplicate_share": 0.05,
        "out_of_order_share": 0.05,
        "poison_share": 0.02,
        "seed": 11,
        "start_ms": START,
    }
    return SimulationConfig(**(base | overrides))  # type: ignore[arg-type]


@cache
def records(**overrides: object) -> tuple[SimRecord, ...]:
    return tuple(generate(config(**overrides)))


@cache
def parsed_schema(stem: str) -> Any:
    return fastavro.parse_schema(orjson.loads(schema_text(stem)))


def effective_at(value: dict) -> int:
    return value["counted_at"] if "counted_at" in value else value["occurred_at"]


def test_same_seed_same_stream_other_seed_other_stream() -> None:
    assert records() == tuple(generate(config()))
    other = records(seed=12)
    assert [r.value for r in other[:2000]] != [r.value for r in records()[:2000]]


def test_yields_exactly_the_requested_number_of_events() -> None:
    assert len(records()) == 20_000
    assert len(list(generate(config(events=1)))) == 1


def test_endless_when_events_is_zero() -> None:
    assert len(list(islice(generate(config(events=0)), 30_000))) == 30_000


def test_fault_shares_are_roughly_as_configured() -> None:
    recs = records()
    kinds = Counter(r.kind for r in recs)
    n = len(recs)
    assert kinds["poison"] / n == pytest.approx(0.02, abs=0.005)
    assert kinds["duplicate"] / n == pytest.approx(0.05, abs=0.01)
    delayed = sum(1 for r in recs if r.delay_ms > 0)
    primaries = n - kinds["poison"] - kinds["duplicate"]
    assert delayed / primaries == pytest.approx(0.05, abs=0.01)
    assert kinds["sale"] > kinds["count"] > 0
    assert kinds["return"] / (kinds["sale"] + kinds["return"]) == pytest.approx(0.02, abs=0.01)


def test_no_faults_when_shares_are_zero() -> None:
    recs = records(duplicate_share=0.0, out_of_order_share=0.0, poison_share=0.0)
    assert {r.kind for r in recs} <= {"sale", "return", "count"}
    times = [r.value["occurred_at"] for r in recs if r.value]
    assert times == sorted(times)


def test_every_value_validates_against_its_schema() -> None:
    for record in records():
        if record.kind == "poison":
            continue
        assert record.raw is None
        assert record.spec in (POS_SALES, CYCLE_COUNTS)
        schema = parsed_schema(record.spec.schema)
        fields = {f["name"] for f in orjson.loads(schema_text(record.spec.schema))["fields"]}
        assert record.value is not None
        assert set(record.value) == fields
        assert validate(record.value, schema, raise_errors=True)


def test_keys_match_values() -> None:
    for record in records():
        sku, location = record.key.split("|")
        assert sku.startswith("SKU")
        assert location.startswith(("S", "DC"))
        if record.value is not None:
            assert record.key == make_key(record.value["sku"], record.value["location"])


def test_counts_are_as_of_snapshots_and_never_negative() -> None:
    counts = [r.value for r in records() if r.spec == CYCLE_COUNTS and r.value is not None]
    assert counts
    for value in counts:
        assert value["counted_at"] <= value["occurred_at"]
        assert value["counted_quantity"] >= 0
    locations = {value["location"] for value in counts}
    assert any(loc.startswith("DC") for loc in locations)
    assert any(loc.startswith("S") for loc in locations)


def test_sales_only_at_stores_and_never_zero() -> None:
    sales = [r for r in records() if r.kind in ("sale", "return")]
    for record in sales:
        assert record.spec == POS_SALES
        assert record.value is not None
        quantity = record.value["quantity"]
        assert quantity != 0
        assert (quantity > 0) == (record.kind == "sale")
        assert record.value["location"].startswith("S")
        assert record.value["source"] == f"pos-{record.value['location']}"


def test_event_ids_are_unique_per_source_except_duplicates() -> None:
    seen: set[tuple[str, str]] = set()
    for record in records():
        if record.value is None or record.kind == "duplicate":
            continue
        ident = (record.value["source"], record.value["event_id"])
        assert ident not in seen
        seen.add(ident)


def test_duplicates_repeat_an_earlier_record_exactly() -> None:
    earlier: dict[tuple[str, str], tuple[str, dict]] = {}
    duplicates = 0
    for record in records():
        if record.value is None:
            continue
        ident = (record.value["source"], record.value["event_id"])
        if record.kind == "duplicate":
            duplicates += 1
            assert earlier[ident] == (record.key, record.value)
        else:
            earlier[ident] = (record.key, record.value)
    assert duplicates > 0


def test_poison_is_not_wire_format_avro_but_has_a_valid_key() -> None:
    poison = [r for r in records() if r.kind == "poison"]
    assert poison
    variants = set()
    for record in poison:
        assert record.value is None
        assert record.raw
        sku, location = record.key.split("|")
        assert sku and location
        raw = record.raw
        if raw[0] != 0:
            variants.add("json" if raw.startswith(b"{") else "random")
        elif len(raw) < 5:
            variants.add("truncated")
        else:
            assert raw[1:5] == b"\x7f\xff\xff\xff"
            variants.add("unknown_schema")
    assert variants == {"random", "json", "truncated", "unknown_schema"}


def test_disorder_stays_within_the_lateness_bound() -> None:
    newest = 0
    worst = 0
    for record in records():
        if record.value is None:
            continue
        at = effective_at(record.value)
        worst = max(worst, newest - at)
        newest = max(newest, at)
        assert record.delay_ms <= MAX_HOLD_MS
    assert 0 < worst <= LATENESS_MS


def test_popularity_is_skewed() -> None:
    units: Counter[str] = Counter()
    for record in records(skus=500, stores=20, opening_counts=False):
        if record.kind == "sale" and record.value is not None:
            units[record.value["sku"]] += record.value["quantity"]
    ranked = sorted(units.values(), reverse=True) + [0] * (500 - len(units))
    total = sum(ranked)
    top_tenth = sum(ranked[:50]) / total
    bottom_half = sum(ranked[250:]) / total
    assert top_tenth > 3 * bottom_half


def test_daily_cycle_sells_more_by_day_than_at_night() -> None:
    by_hour: Counter[int] = Counter()
    for record in records(events=40_000, opening_counts=False):
        if record.kind == "sale" and record.value is not None:
            by_hour[(record.value["occurred_at"] // HOUR) % 24] += 1
    night = sum(by_hour[h] for h in range(1, 5))
    midday = sum(by_hour[h] for h in range(11, 15))
    assert midday > 10 * night
    assert demand_factor(12.5 * HOUR) > 1 > demand_factor(3 * HOUR)


def test_opening_counts_cover_every_key_before_the_first_sale() -> None:
    recs = records(events=5_000, duplicate_share=0.0, out_of_order_share=0.0, poison_share=0.0)
    keys = 200 * 12
    opening = recs[:keys]
    assert all(r.kind == "count" for r in opening)
    assert len({r.key for r in opening}) == keys
    assert all(r.value is not None and r.value["counted_at"] < START for r in opening)
    first_sale = recs[keys].value
    assert first_sale is not None and first_sale["occurred_at"] >= START


def test_the_stream_spans_about_a_day_at_the_defaults() -> None:
    recs = list(generate(SimulationConfig(start_ms=START)))
    times = [r.value["occurred_at"] for r in recs if r.value is not None]
    assert 18 * HOUR < max(times) - START < 30 * HOUR


def test_start_defaults_to_a_day_ago() -> None:
    import time

    first = next(generate(config(start_ms=None)))
    assert first.value is not None
    day_ago = time.time() * 1000 - 24 * HOUR
    assert abs(first.value["counted_at"] - day_ago) < HOUR


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("events", -1),
        ("rate", -1.0),
        ("skus", 0),
        ("stores", 0),
        ("dcs", 0),
        ("duplicate_share", 1.0),
        ("out_of_order_share", -0.1),
        ("poison_share", 1.5),
        ("sales_per_second", 0.0),
        ("start_ms", -5),
    ],
)
def test_invalid_options_are_rejected_by_name(option: str, value: object) -> None:
    with pytest.raises(ValueError, match=option):
        config(**{option: value})
