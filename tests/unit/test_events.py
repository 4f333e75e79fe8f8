"""Decoded records -> domain events: WMS movements (signs, validation)."""

from __future__ import annotations

import pytest

from state.events import MOVEMENT_SIGNS, InvalidEvent, Kind, movement_from_record

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


def test_transfers_need_their_transfer_id():
    with pytest.raises(InvalidEvent) as raised:
        movement_from_record(record("TRANSFER_OUT", 5))
    assert raised.value.reason == "invalid_field"
    event = movement_from_record(record("TRANSFER_IN", 5, transfer_id="t9"))
    assert event.quantity == 5


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
