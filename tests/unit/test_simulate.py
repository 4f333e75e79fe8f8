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
    RESERVATION_TTL_MS,
    UNKNOWN_MOVEMENT_TYPE,
    SimRecord,
    SimulationConfig,
    demand_factor,
    generate,
)
from state.events import MOVEMENT_SIGNS, InvalidEvent, movement_from_record
from state.reservations import (
    UNKNOWN_RESERVATION,
    ExpiryIndex,
    Outcome,
    Reservation,
    apply_reservation,
    expire_due,
    reservation_from_record,
)
from streams.topics import (
    CYCLE_COUNTS,
    ERP_SNAPSHOTS,
    INPUTS,
    POS_SALES,
    RESERVATIONS,
    WMS_MOVEMENTS,
    make_key,
    schema_text,
)

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
def long_records() -> tuple[SimRecord, ...]:
    """Several simulated days at low rates: every movement type, transfers that arrive, and the
    whole lifecycle of many reservations, with every fault at a high share."""
    return records(
        events=40_000, sales_per_second=0.05, reservations_per_second=0.01,
        movements_per_second=0.004,
    )  # fmt: skip


@cache
def parsed_schema(stem: str) -> Any:
    return fastavro.parse_schema(orjson.loads(schema_text(stem)))


def effective_at(value: dict) -> int:
    return value["counted_at"] if "counted_at" in value else value["occurred_at"]


def test_same_seed_same_stream_other_seed_other_stream() -> None:
    assert records() == tuple(generate(config()))
    assert {r.spec.name for r in records()} == {spec.name for spec in INPUTS}
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
    assert {r.kind for r in recs} <= {"sale", "return", "count", "movement", "reservation",
                                      "invalid", "snapshot"}  # fmt: skip
    times = [r.value["occurred_at"] for r in recs if r.value]
    assert times == sorted(times)


def test_every_value_validates_against_its_schema() -> None:
    for record in records():
        if record.kind == "poison":
            continue
        assert record.raw is None
        assert record.spec in INPUTS
        schema = parsed_schema(record.spec.schema)
        fields = {f["name"] for f in orjson.loads(schema_text(record.spec.schema))["fields"]}
        assert record.value is not None
        assert set(record.value) == fields
        assert validate(record.value, schema, raise_errors=True)


def assert_key_convention(record: SimRecord) -> None:
    """``sku|location`` on the position topics, the reservation id on reservation events."""
    if record.spec == RESERVATIONS:
        assert record.key.startswith("R-")
        assert "|" not in record.key
        if record.value is not None:
            assert record.key == record.value["reservation_id"]
        return
    sku, location = record.key.split("|")
    assert sku.startswith("SKU")
    assert location.startswith(("S", "DC"))
    if record.value is not None:
        assert record.key == make_key(record.value["sku"], record.value["location"])


def test_keys_match_values() -> None:
    for recs in (records(), long_records()):
        for record in recs:
            assert_key_convention(record)
    poisoned = {r.spec.name for r in long_records() if r.kind == "poison"}
    assert poisoned == {spec.name for spec in INPUTS}


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
        assert_key_convention(record)
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


def test_the_stream_spans_most_of_a_day_at_the_defaults() -> None:
    recs = list(generate(SimulationConfig(start_ms=START)))
    times = [r.value["occurred_at"] for r in recs if r.value is not None]
    assert 15 * HOUR < max(times) - START < 30 * HOUR


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
        ("movements_per_second", -0.1),
        ("reservations_per_second", float("nan")),
        ("start_ms", -5),
    ],
)
def test_invalid_options_are_rejected_by_name(option: str, value: object) -> None:
    with pytest.raises(ValueError, match=option):
        config(**{option: value})


# --- WMS movements and reservations -----------------------------------------------------------


def test_every_movement_parses_except_the_unknown_type() -> None:
    types: Counter[str] = Counter()
    for record in long_records():
        if record.spec != WMS_MOVEMENTS or record.value is None:
            continue
        movement_type = record.value["movement_type"]
        types[movement_type] += 1
        if movement_type == UNKNOWN_MOVEMENT_TYPE:
            assert record.kind in ("invalid", "duplicate")
            with pytest.raises(InvalidEvent) as caught:
                movement_from_record(record.value)
            assert caught.value.reason == "unknown_movement_type"
            continue
        assert record.kind in ("movement", "duplicate")
        event = movement_from_record(record.value)
        assert event.key == record.key
        assert event.source == f"wms-{record.value['location']}"
        assert abs(event.quantity) == abs(record.value["quantity"]) > 0
        if movement_type != "ADJUSTMENT":
            assert event.quantity == MOVEMENT_SIGNS[movement_type] * record.value["quantity"]
    assert set(types) == {*MOVEMENT_SIGNS} - {"QUARANTINE"} | {UNKNOWN_MOVEMENT_TYPE}


def test_movements_happen_where_they_belong() -> None:
    for record in long_records():
        if record.spec != WMS_MOVEMENTS or record.value is None:
            continue
        value = record.value
        at_dc = value["location"].startswith("DC")
        if value["movement_type"] in ("RECEIPT", "TRANSFER_OUT", "PICK", "SHIP", "RELOCATE"):
            assert at_dc
        elif value["movement_type"] == "TRANSFER_IN":
            assert not at_dc
            assert value["counterpart_location"].startswith("DC")


def transfer_pairs(
    recs: tuple[SimRecord, ...],
) -> tuple[list[tuple[int, int]], dict[str, tuple[str, str, str, int, int]], int]:
    """(shipped, received) units of every received transfer, the transfers never received
    (id -> sku, DC, store, units, shipped at), and the stream's last event time; checking that
    every TRANSFER_IN (at a store) follows, in the stream, the TRANSFER_OUT (at its DC) with the
    same transfer id, sku and locations, and that a transfer id is shipped once."""
    shipped: dict[str, tuple[str, str, str, int, int]] = {}
    pairs: list[tuple[int, int]] = []
    last = 0
    for record in recs:
        value = record.value
        if record.spec != WMS_MOVEMENTS or value is None or record.kind == "duplicate":
            continue
        last = max(last, value["occurred_at"])
        if value["movement_type"] == "TRANSFER_OUT":
            assert value["transfer_id"] not in shipped
            shipped[value["transfer_id"]] = (
                value["sku"], value["location"], value["counterpart_location"], value["quantity"],
                value["occurred_at"],
            )  # fmt: skip
            assert movement_from_record(value).counterpart == value["counterpart_location"]
        elif value["movement_type"] == "TRANSFER_IN":
            sku, dc, store, quantity, _ = shipped.pop(value["transfer_id"])
            assert (sku, store) == (value["sku"], value["location"])
            assert value["counterpart_location"] == dc
            pairs.append((quantity, value["quantity"]))
        else:
            assert value["transfer_id"] is None
    return pairs, shipped, last


def test_transfers_pair_up_and_some_arrive_short() -> None:
    pairs, in_transit, _ = transfer_pairs(long_records())
    assert len(pairs) > 100
    assert all(0 < received <= shipped for shipped, received in pairs)
    assert all(shipped - received <= 2 for shipped, received in pairs)
    assert 0 < sum(received < shipped for shipped, received in pairs) < 0.1 * len(pairs)
    assert in_transit  # some still in transit at the end


def test_some_transfers_never_arrive(monkeypatch: pytest.MonkeyPatch) -> None:
    from invsync import simulate

    monkeypatch.setattr(simulate, "TRANSIT_LOSS_SHARE", 0.2)  # "rarely" is too rare to test
    recs = tuple(generate(config(
        events=20_000, sales_per_second=0.05, reservations_per_second=0.0,
        movements_per_second=0.0, duplicate_share=0.0, poison_share=0.0,
    )))  # fmt: skip
    pairs, in_transit, last = transfer_pairs(recs)
    overdue = [t for t in in_transit.values() if t[4] < last - 36 * HOUR]  # past the lead time
    assert pairs and overdue
    assert 0.1 < len(overdue) / (len(pairs) + len(overdue)) < 0.3


def fold_reservations(recs: tuple[SimRecord, ...]) -> dict[str, Reservation]:
    """Fold the reservation events as the worker does, in arrival order, expiring holds by stream
    time; check each event's outcome against what the simulator meant by it."""
    table: dict[str, Reservation] = {}
    index = ExpiryIndex()
    invalid: set[tuple[str, str]] = set()
    stream_time = 0
    for record in recs:
        if record.spec != RESERVATIONS or record.value is None:
            continue
        event = reservation_from_record(record.value)  # raises on a malformed one
        assert record.key == event.reservation_id
        step = apply_reservation(table.get(event.reservation_id), event)
        if record.kind == "invalid":  # a release for a reservation nobody created
            invalid.add(event.identity)
            assert (step.outcome, step.reason) == (Outcome.REJECTED, UNKNOWN_RESERVATION)
        elif record.kind == "duplicate":
            if event.identity in invalid:
                assert (step.outcome, step.reason) == (Outcome.REJECTED, UNKNOWN_RESERVATION)
            else:
                assert step.outcome is Outcome.DUPLICATE
        else:
            assert record.kind == "reservation"
            assert step.outcome is Outcome.APPLIED, (step, event)
        if step.state is not None:
            table[event.reservation_id] = step.state
            index.track(step.state)
        stream_time = max(stream_time, event.occurred_at)
        due = [table[rid] for rid in index.pop_due(stream_time)]
        for expired in expire_due(due, stream_time):
            assert expired.state is not None
            table[expired.state.reservation_id] = expired.state
    return table


def test_reservations_follow_their_lifecycle() -> None:
    """Created, then at most one end, in time; the only rejections are the deliberate ones."""
    for recs in (long_records(), records()):
        table = fold_reservations(recs)
        statuses = Counter(r.status.value for r in table.values())
        assert statuses["committed"] > 5 * statuses["released"] > 0
        assert statuses["expired"] > 0


def test_reservation_events_are_well_formed() -> None:
    created: dict[str, dict[str, Any]] = {}
    ends: Counter[str] = Counter()
    for record in long_records():
        value = record.value
        if record.spec != RESERVATIONS or value is None or record.kind != "reservation":
            continue
        assert value["source"] == "oms"
        assert value["channel"] == "web"
        assert 1 <= value["quantity"] <= 3
        rid = value["reservation_id"]
        if value["action"] == "created":
            assert rid not in created
            ttl = value["expires_at"] - value["occurred_at"]
            assert RESERVATION_TTL_MS[0] <= ttl <= RESERVATION_TTL_MS[1]
            created[rid] = value
        else:
            assert value["action"] in ("committed", "released")
            assert value["expires_at"] is None
            hold = created[rid]  # its created came first, even with out-of-order delivery
            assert (value["sku"], value["location"], value["quantity"]) == (
                hold["sku"], hold["location"], hold["quantity"]
            )  # fmt: skip
            assert hold["occurred_at"] + MAX_HOLD_MS < value["occurred_at"] < hold["expires_at"]
            ends[rid] += 1
    assert max(ends.values()) == 1
    assert 0.85 < len(ends) / len(created) < 0.99  # the rest is left to expire
    locations = Counter(v["location"][:2] for v in created.values())
    assert locations["DC"] > locations["S0"] > 0


def test_commits_are_followed_by_a_pick_or_a_sale_at_that_location() -> None:
    recs = records(
        events=40_000, sales_per_second=0.05, reservations_per_second=0.01,
        movements_per_second=0.004, duplicate_share=0.0, out_of_order_share=0.0,
        poison_share=0.0,
    )  # fmt: skip
    last = max(r.value["occurred_at"] for r in recs if r.value is not None)
    commits: list[tuple[str, int]] = []
    departures: dict[str, list[int]] = {}
    for record in recs:
        value = record.value
        if value is None:
            continue
        if record.spec == RESERVATIONS and value["action"] == "committed":
            if value["occurred_at"] < last - 7 * HOUR:  # its pick-up has happened by the end
                commits.append((make_key(value["sku"], value["location"]), value["occurred_at"]))
        elif record.kind == "sale" or (
            record.spec == WMS_MOVEMENTS and value["movement_type"] in ("PICK", "SHIP")
        ):
            departures.setdefault(record.key, []).append(value["occurred_at"])
    assert commits
    followed = sum(
        any(at < left <= at + 6 * HOUR for left in departures.get(key, ())) for key, at in commits
    )
    assert followed / len(commits) > 0.97  # the rest: short picks (the shelf was empty)


def test_rates_of_the_new_streams_follow_the_options() -> None:
    def kinds(**overrides: object) -> Counter[tuple[str, str]]:
        recs = records(events=15_000, opening_counts=False, **overrides)
        return Counter((r.spec.name, r.kind) for r in recs)

    base = kinds()
    assert base[("reservations.events", "reservation")] > 0
    assert base[("wms.movements", "movement")] > 0
    none = kinds(reservations_per_second=0.0, wms=False, erp_snapshots=False)
    assert {spec for spec, _ in none} == {"pos.sales", "inventory.counts"}
    more = kinds(reservations_per_second=0.3, movements_per_second=0.2)
    sales = ("pos.sales", "sale")
    for spec in ("reservations.events", "wms.movements"):
        assert more[(spec, "reservation" if spec[0] == "r" else "movement")] / more[sales] > 2 * (
            base[(spec, "reservation" if spec[0] == "r" else "movement")] / base[sales]
        )


def test_without_wms_receipts_are_verified_by_counts() -> None:
    with_wms = Counter(r.kind for r in long_records())
    without = Counter(r.kind for r in records(
        events=40_000, sales_per_second=0.05, reservations_per_second=0.01, wms=False
    ))  # fmt: skip
    assert without["movement"] == 0
    assert without["count"] > with_wms["count"]


def test_topics_of_a_config() -> None:
    assert config().topics() == [
        POS_SALES,
        CYCLE_COUNTS,
        WMS_MOVEMENTS,
        RESERVATIONS,
        ERP_SNAPSHOTS,
    ]
    quiet = config(wms=False, reservations_per_second=0.0, erp_snapshots=False)
    assert quiet.topics() == [POS_SALES, CYCLE_COUNTS]
