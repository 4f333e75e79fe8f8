"""Input events as the domain sees them, and the checks that turn a decoded record into one.

A decoded Avro record (a dict) becomes a :class:`StockEvent` or raises :class:`InvalidEvent` with
a machine-readable reason. Nothing here knows about Kafka; the caller dead-letters what raises.

Transfers between locations: a ``TRANSFER_OUT`` lowers on hand where it is reported and names
the destination (``counterpart_location``); the fold routes a **shipment notice**
(:func:`transit_notice`, kind :attr:`Kind.TRANSIT`) to the destination's position, where the
units are in transit until the destination's ``TRANSFER_IN`` with the same ``transfer_id``
(:mod:`state.position`). How strict the checks are (reason ``invalid_transfer``):

* a ``TRANSFER_OUT`` needs a ``transfer_id`` (to be matched) and a ``counterpart_location`` (to
  be routed) that is a valid location other than its own;
* a ``TRANSFER_IN`` needs a ``transfer_id``; its ``counterpart_location`` (the origin) is kept
  when given but not required: the receipt is matched by ``transfer_id`` at its own location,
  and rejecting it would lose a real on-hand increase for a field the matching does not use.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any, NamedTuple

KEY_SEPARATOR = "|"


class Kind(StrEnum):
    SALE = "sale"  # POS: on hand decreases by the units sold (a return is negative)
    MOVEMENT = "movement"  # WMS: signed change of on hand; ``ref`` is the movement type
    RESERVE = "reserve"  # a hold opened (+) or ended (-): changes reserved, not on hand
    COUNT = "count"  # cycle count: on hand as of counted_at is the counted quantity
    SNAPSHOT = "snapshot"  # ERP on hand as of a time: reconciled (drift), never applied
    # units shipped to this location by a TRANSFER_OUT elsewhere (routed by the fold): in
    # transit until the TRANSFER_IN with the same transfer_id; never changes on hand
    TRANSIT = "transit"


# WMS movement type -> sign of its effect on on hand (ADJUSTMENT carries its own sign).
# DAMAGE and QUARANTINE take units out of sellable on hand. Transfers change the on hand of the
# location they are reported at; the units between the two are in transit to the destination
# (see the module docstring).
MOVEMENT_SIGNS = {
    "RECEIPT": 1,
    "TRANSFER_IN": 1,
    "PICK": -1,
    "SHIP": -1,
    "TRANSFER_OUT": -1,
    "DAMAGE": -1,
    "QUARANTINE": -1,
    "ADJUSTMENT": 1,
}


class InvalidEvent(ValueError):
    """A record that decodes but cannot be applied. ``reason`` is a short, stable label."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class StockEvent(NamedTuple):
    """One input event, normalised (immutable; a tuple, cheap to build).

    ``effective_at`` is the event time at which the event takes effect: ``occurred_at`` for a
    movement, ``counted_at`` for a count (a count is an as-of snapshot). ``quantity`` is the
    signed change of on hand for a movement and the counted units for a count, the units
    shipped (> 0) for a shipment notice. ``transfer_id`` and ``counterpart`` are set for
    transfers only: the other location is the destination of a ``TRANSFER_OUT`` and the origin
    of a ``TRANSFER_IN`` or a notice.
    """

    source: str
    event_id: str
    sku: str
    location: str
    kind: Kind
    effective_at: int  # event time, UTC millis
    quantity: int
    ref: str = ""  # count_id for counts, the movement type for movements
    transfer_id: str = ""
    counterpart: str = ""

    @property
    def identity(self) -> tuple[str, str]:
        return (self.source, self.event_id)

    @property
    def key(self) -> str:
        return f"{self.sku}{KEY_SEPARATOR}{self.location}"

    def order_key(self) -> tuple[int, int, str, str]:
        """Total order used to fold events: event time, counts and snapshots before movements at
        the same instant (a count at t contains what happened before t), then identity."""
        as_of = self.kind is Kind.COUNT or self.kind is Kind.SNAPSHOT
        return (self.effective_at, 0 if as_of else 1, self.source, self.event_id)


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)


def millis_field(value: Any, field: str) -> int:
    """A timestamp field as UTC millis: an int as is, a datetime exactly (naive means UTC)."""
    if isinstance(value, datetime):
        aware = value if value.tzinfo is not None else value.replace(tzinfo=UTC)
        return (aware - _EPOCH) // _MS
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    raise InvalidEvent("invalid_field", f"{field} is not a timestamp: {value!r}")


def text_field(record: dict[str, Any], field: str) -> str:
    """A non-blank string field; sku and location may not contain the key separator."""
    value = record.get(field)
    if not isinstance(value, str) or not value.strip():
        raise InvalidEvent("missing_key", f"{field} is missing or empty")
    if KEY_SEPARATOR in value and field in ("sku", "location"):
        raise InvalidEvent("invalid_key", f"{field} {value!r} contains {KEY_SEPARATOR!r}")
    return value


def _common(record: dict[str, Any]) -> dict[str, Any]:
    return {
        "source": text_field(record, "source"),
        "event_id": text_field(record, "event_id"),
        "sku": text_field(record, "sku"),
        "location": text_field(record, "location"),
    }


def sale_from_record(record: dict[str, Any]) -> StockEvent:
    """A POS sale (or return, when negative). Zero units is not a sale."""
    quantity = record.get("quantity")
    if not isinstance(quantity, int) or quantity == 0:
        raise InvalidEvent(
            "invalid_quantity", f"sale quantity must be a non-zero int: {quantity!r}"
        )
    return StockEvent(
        **_common(record),
        kind=Kind.SALE,
        effective_at=millis_field(record.get("occurred_at"), "occurred_at"),
        quantity=-quantity,
    )


def movement_from_record(record: dict[str, Any]) -> StockEvent:
    """A WMS movement. Units are > 0 except for ADJUSTMENT, which is signed and non-zero; an
    unknown movement type is invalid (dead-lettered), not guessed."""
    movement_type = record.get("movement_type")
    sign = MOVEMENT_SIGNS.get(movement_type) if isinstance(movement_type, str) else None
    if sign is None or not isinstance(movement_type, str):
        raise InvalidEvent("unknown_movement_type", f"movement_type {movement_type!r}")
    quantity = record.get("quantity")
    signed_type = movement_type == "ADJUSTMENT"
    if not isinstance(quantity, int) or quantity == 0 or (quantity < 0 and not signed_type):
        raise InvalidEvent(
            "invalid_quantity", f"{movement_type} quantity must be a positive int: {quantity!r}"
        )
    common = _common(record)
    transfer_id = counterpart = ""
    if movement_type.startswith("TRANSFER_"):
        transfer_id, counterpart = _transfer_fields(record, movement_type, common["location"])
    return StockEvent(
        **common,
        kind=Kind.MOVEMENT,
        effective_at=millis_field(record.get("occurred_at"), "occurred_at"),
        quantity=sign * quantity,
        ref=movement_type,
        transfer_id=transfer_id,
        counterpart=counterpart,
    )


INVALID_TRANSFER = "invalid_transfer"


def _transfer_fields(record: dict[str, Any], movement_type: str, location: str) -> tuple[str, str]:
    """(transfer_id, counterpart) of a transfer movement, checked as the module docstring says."""
    transfer_id = record.get("transfer_id")
    if not isinstance(transfer_id, str) or not transfer_id.strip():
        raise InvalidEvent(INVALID_TRANSFER, f"{movement_type} without transfer_id")
    counterpart = record.get("counterpart_location")
    if counterpart is None and movement_type == "TRANSFER_IN":
        return transfer_id, ""  # the origin is not needed to match the receipt
    if not isinstance(counterpart, str) or not counterpart.strip():
        raise InvalidEvent(INVALID_TRANSFER, f"{movement_type} without counterpart_location")
    if KEY_SEPARATOR in counterpart:
        detail = f"counterpart_location {counterpart!r} contains {KEY_SEPARATOR!r}"
        raise InvalidEvent(INVALID_TRANSFER, detail)
    if counterpart == location:
        raise InvalidEvent(INVALID_TRANSFER, f"{movement_type} from {location!r} to itself")
    return transfer_id, counterpart


def is_transfer_out(event: StockEvent) -> bool:
    """A ``TRANSFER_OUT``: the fold routes its :func:`transit_notice` to the destination."""
    return event.kind is Kind.MOVEMENT and event.ref == "TRANSFER_OUT"


def is_transfer_in(event: StockEvent) -> bool:
    return event.kind is Kind.MOVEMENT and event.ref == "TRANSFER_IN"


TRANSIT_SOURCE = "transfers"  # the source of every shipment notice


def notice_id(source: str, event_id: str) -> str:
    """The event id of the notice routed for the TRANSFER_OUT ``(source, event_id)``: a function
    of that identity only, and a different identity gives a different id (the length prefix
    keeps ``("a:b", "c")`` and ``("a", "b:c")`` apart)."""
    return f"{len(source)}:{source}:{event_id}"


def transit_notice(out: StockEvent) -> StockEvent:
    """The shipment notice a ``TRANSFER_OUT`` routes to its destination: keyed
    ``sku|destination``, at the shipment's event time, the units shipped (> 0), identity
    ``(TRANSIT_SOURCE, notice_id(out))``. Deterministic: a redelivered TRANSFER_OUT routes the
    same notice again, which the destination recognises as a duplicate (within the memory
    :mod:`state.position` states)."""
    if not is_transfer_out(out) or not out.counterpart or not out.transfer_id:
        raise ValueError(f"not a routable TRANSFER_OUT: {out!r}")
    return StockEvent(
        TRANSIT_SOURCE, notice_id(out.source, out.event_id), out.sku, out.counterpart,
        Kind.TRANSIT, out.effective_at, -out.quantity, "", out.transfer_id, out.location,
    )  # fmt: skip


def transit_from_record(record: dict[str, Any]) -> StockEvent:
    """A shipment notice from ``invsync.transfers`` (schemas/avro/transfer_notice.avsc): the
    units shipped must be > 0 and the origin another location than the destination."""
    quantity = record.get("quantity")
    if not isinstance(quantity, int) or isinstance(quantity, bool) or quantity <= 0:
        raise InvalidEvent("invalid_quantity", f"units shipped must be > 0: {quantity!r}")
    destination = text_field(record, "location")
    origin = text_field(record, "origin")
    if origin == destination:
        raise InvalidEvent(INVALID_TRANSFER, f"shipment from {origin!r} to itself")
    return StockEvent(
        TRANSIT_SOURCE,
        text_field(record, "notice_id"),
        text_field(record, "sku"),
        destination,
        Kind.TRANSIT,
        millis_field(record.get("shipped_at"), "shipped_at"),
        quantity,
        "",
        text_field(record, "transfer_id"),
        origin,
    )


RESERVATIONS_SOURCE = "reservations"


def reserved_delta_from_record(record: dict[str, Any]) -> StockEvent:
    """A reserved delta from the reservations agent; its ``delta_id`` is the event id, so a
    re-emitted delta is a duplicate at the position."""
    quantity = record.get("quantity")
    if not isinstance(quantity, int) or quantity == 0:
        raise InvalidEvent("invalid_quantity", f"reserved delta must be non-zero: {quantity!r}")
    return StockEvent(
        RESERVATIONS_SOURCE,
        text_field(record, "delta_id"),
        text_field(record, "sku"),
        text_field(record, "location"),
        Kind.RESERVE,
        millis_field(record.get("at"), "at"),
        quantity,
        text_field(record, "reservation_id"),
    )


def _as_of(
    record: dict[str, Any], quantity_field: str, time_field: str, future: str, skew_ms: int
) -> tuple[int, int]:
    """(units >= 0, as-of time) of an as-of snapshot (a count, an ERP snapshot): a negative
    quantity, or an as-of time more than ``skew_ms`` after it was reported (``occurred_at``), is
    invalid (reasons ``invalid_quantity`` and ``future``)."""
    units = record.get(quantity_field)
    if not isinstance(units, int) or isinstance(units, bool) or units < 0:
        raise InvalidEvent("invalid_quantity", f"{quantity_field} must be >= 0: {units!r}")
    as_of = millis_field(record.get(time_field), time_field)
    reported_at = millis_field(record.get("occurred_at"), "occurred_at")
    if as_of > reported_at + skew_ms:
        detail = f"{time_field} {as_of} is after occurred_at {reported_at} + skew"
        raise InvalidEvent(future, detail)
    return units, as_of


def count_from_record(record: dict[str, Any], *, skew_ms: int = 300_000) -> StockEvent:
    """A cycle count as of ``counted_at`` (see :func:`_as_of` for what is invalid)."""
    counted, counted_at = _as_of(record, "counted_quantity", "counted_at", "future_count", skew_ms)
    return StockEvent(
        **_common(record),
        kind=Kind.COUNT,
        effective_at=counted_at,
        quantity=counted,
        ref=text_field(record, "count_id"),
    )


def snapshot_from_record(record: dict[str, Any], *, skew_ms: int = 300_000) -> StockEvent:
    """An ERP snapshot: on hand as of ``as_of`` (see :func:`_as_of` for what is invalid)."""
    on_hand, as_of = _as_of(record, "on_hand", "as_of", "future_snapshot", skew_ms)
    return StockEvent(**_common(record), kind=Kind.SNAPSHOT, effective_at=as_of, quantity=on_hand)
