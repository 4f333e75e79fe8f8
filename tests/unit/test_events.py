"""Decoded records -> domain events: WMS movements (signs, validation), transfer notices."""

from __future__ import annotations

import pytest

from state.events import (
    INVALID_TRANSFER,
    MOVEMENT_SIGNS,
    TRANSIT_SOURCE,
    InvalidEvent,
    Kind,
    is_transfer_in,
    is_transfer_out,
    movement_from_record,
    notice_id,
    transit_from_record,
    transit_notice,
)
from streams.records import transfer_notice

T = 1_767_225_600_000


def record(movement_type: str, quantity: int, **extra: object) -> dict[str, object]:
    return {
        "event_id": "m1", "source": "wms1", "sku": "SKU1", "location": "DC1",
        "occurred_at": T, "movement_type": movement_type, "quantity": quantity,
        "transfer_id": None, "counterpart_location": None, **extra,
    }  # fmt: skip


@pytest.mark.parametrize(
    ("movement_type", "quantity", "change"),
    [("RECEIPT", 5, 5), ("PICK", 2, -2), ("SHIP", 3, -3), ("DAMAGE", 1, -1),
     ("QUARANTINE", 4, -4), ("ADJUSTMENT", -7, -7), ("ADJUSTMENT", 2, 2)],
)  # fmt: skip
def test_a_movement_is_a_signed_change_of_on_hand(movement_type, quantity, change):
    event = movement_from_record(record(movement_type, quantity))
    assert (event.kind, event.quantity, event.ref) == (Kind.MOVEMENT, change, movement_type)
    assert event.key == "SKU1|DC1" and event.effective_at == T


def test_a_transfer_out_names_its_transfer_and_destination():
    event = movement_from_record(
        record("TRANSFER_OUT", 5, transfer_id="t9", counterpart_location="S001")
    )
    assert (event.quantity, event.transfer_id, event.counterpart) == (-5, "t9", "S001")
    assert is_transfer_out(event) and not is_transfer_in(event)


def test_a_transfer_in_needs_its_transfer_id_but_not_its_origin():
    event = movement_from_record(record("TRANSFER_IN", 5, transfer_id="t9"))
    assert (event.quantity, event.transfer_id, event.counterpart) == (5, "t9", "")
    event = movement_from_record(
        record("TRANSFER_IN", 5, transfer_id="t9", counterpart_location="DC2")
    )
    assert event.counterpart == "DC2" and is_transfer_in(event)


@pytest.mark.parametrize(
    ("movement_type", "extra"),
    [
        ("TRANSFER_OUT", {}),
        ("TRANSFER_OUT", {"counterpart_location": "S001"}),  # no transfer id
        ("TRANSFER_OUT", {"transfer_id": " ", "counterpart_location": "S001"}),
        ("TRANSFER_OUT", {"transfer_id": "t9"}),  # nowhere to route it
        ("TRANSFER_OUT", {"transfer_id": "t9", "counterpart_location": ""}),
        ("TRANSFER_OUT", {"transfer_id": "t9", "counterpart_location": "S|1"}),
        ("TRANSFER_OUT", {"transfer_id": "t9", "counterpart_location": "DC1"}),  # to itself
        ("TRANSFER_IN", {}),
        ("TRANSFER_IN", {"counterpart_location": "DC2"}),
        ("TRANSFER_IN", {"transfer_id": "t9", "counterpart_location": "DC1"}),  # from itself
    ],
)
def test_transfers_that_cannot_be_tracked_are_invalid(movement_type, extra):
    with pytest.raises(InvalidEvent) as raised:
        movement_from_record(record(movement_type, 5, **extra))
    assert raised.value.reason == INVALID_TRANSFER


def test_the_notice_of_a_transfer_out_is_deterministic_and_reads_back_the_same():
    out = movement_from_record(
        record("TRANSFER_OUT", 7, transfer_id="t9", counterpart_location="S001")
    )
    notice = transit_notice(out)
    assert notice == transit_notice(out)  # a redelivered TRANSFER_OUT routes the same notice
    assert (notice.kind, notice.key, notice.quantity, notice.effective_at) == (
        Kind.TRANSIT, "SKU1|S001", 7, T
    )  # fmt: skip
    assert (notice.source, notice.transfer_id, notice.counterpart) == (TRANSIT_SOURCE, "t9", "DC1")
    assert transit_from_record(transfer_notice(out)) == notice
    # another TRANSFER_OUT identity, another notice identity (also when ids contain ':')
    assert notice_id("a:b", "c") != notice_id("a", "b:c")
    other = out._replace(event_id="m2")
    assert transit_notice(other).identity != notice.identity


def test_the_notice_record_validates_against_its_schema():
    import fastavro
    import orjson
    from fastavro.validation import validate

    from streams.topics import TRANSFERS, schema_text

    out = movement_from_record(
        record("TRANSFER_OUT", 7, transfer_id="t9", counterpart_location="S001")
    )
    schema = fastavro.parse_schema(orjson.loads(schema_text(TRANSFERS.schema)))
    assert validate(transfer_notice(out), schema, raise_errors=True)


@pytest.mark.parametrize(
    ("bad", "reason"),
    [({"quantity": 0}, "invalid_quantity"), ({"quantity": -3}, "invalid_quantity"),
     ({"origin": "S001"}, INVALID_TRANSFER), ({"transfer_id": ""}, "missing_key"),
     ({"location": "S|1"}, "invalid_key")],
)  # fmt: skip
def test_bad_notices_are_invalid(bad, reason):
    out = movement_from_record(
        record("TRANSFER_OUT", 7, transfer_id="t9", counterpart_location="S001")
    )
    with pytest.raises(InvalidEvent) as raised:
        transit_from_record({**transfer_notice(out), **bad})
    assert raised.value.reason == reason


@pytest.mark.parametrize(
    ("movement_type", "quantity", "reason"),
    [("TELEPORT", 1, "unknown_movement_type"), ("RECEIPT", -1, "invalid_quantity"),
     ("PICK", 0, "invalid_quantity"), ("ADJUSTMENT", 0, "invalid_quantity")],
)  # fmt: skip
def test_bad_movements_are_invalid_with_a_reason(movement_type, quantity, reason):
    with pytest.raises(InvalidEvent) as raised:
        movement_from_record(record(movement_type, quantity))
    assert raised.value.reason == reason


def test_every_movement_type_in_the_schema_has_a_sign():
    import orjson

    from streams.topics import WMS_MOVEMENTS, schema_text

    fields = {f["name"]: f for f in orjson.loads(schema_text(WMS_MOVEMENTS.schema))["fields"]}
    documented = set(fields["movement_type"]["doc"].replace(" ", "").split("|"))
    assert documented == set(MOVEMENT_SIGNS)


def test_snapshot_records_are_validated() -> None:
    from state.events import snapshot_from_record

    base = {"event_id": "e1", "source": "erp", "sku": "SKU1", "location": "S001",
            "occurred_at": 10_000, "as_of": 5_000, "on_hand": 12}  # fmt: skip
    event = snapshot_from_record(base)
    assert (event.kind, event.effective_at, event.quantity) == (Kind.SNAPSHOT, 5_000, 12)
    cases = [
        ({"on_hand": -1}, "invalid_quantity"),
        ({"on_hand": True}, "invalid_quantity"),
        ({"as_of": 10_000 + 300_001}, "future_snapshot"),
        ({"sku": ""}, "missing_key"),
    ]
    for bad, reason in cases:
        with pytest.raises(InvalidEvent) as caught:
            snapshot_from_record({**base, **bad})
        assert caught.value.reason == reason
