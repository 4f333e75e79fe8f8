"""Build input records (the Avro value dicts of ``schemas/avro``) for producers of test data.

The simulator, the benchmark and the tests produce the same record types; this is the one
place that knows their fields (and of the fold's own shipment notices). Timestamps are UTC millis.
"""

from __future__ import annotations

from typing import Any

from state.events import StockEvent, transit_notice


def pos_sale(
    event_id: str, source: str, sku: str, location: str, occurred_at: int, quantity: int,
    transaction_id: str | None = None,
) -> dict[str, Any]:  # fmt: skip
    return {"event_id": event_id, "source": source, "sku": sku, "location": location,
            "occurred_at": occurred_at, "quantity": quantity,
            "transaction_id": transaction_id}  # fmt: skip


def cycle_count(
    event_id: str, source: str, sku: str, location: str, *, counted_at: int, reported_at: int,
    counted: int, count_id: str,
) -> dict[str, Any]:  # fmt: skip
    return {"event_id": event_id, "source": source, "sku": sku, "location": location,
            "occurred_at": reported_at, "count_id": count_id, "counted_at": counted_at,
            "counted_quantity": counted}  # fmt: skip


def erp_snapshot(
    event_id: str, source: str, sku: str, location: str, *, as_of: int, reported_at: int,
    on_hand: int,
) -> dict[str, Any]:  # fmt: skip
    return {"event_id": event_id, "source": source, "sku": sku, "location": location,
            "occurred_at": reported_at, "as_of": as_of, "on_hand": on_hand}  # fmt: skip


def wms_movement(
    event_id: str, source: str, sku: str, location: str, occurred_at: int, movement_type: str,
    quantity: int, transfer_id: str | None = None, counterpart_location: str | None = None,
) -> dict[str, Any]:  # fmt: skip
    return {"event_id": event_id, "source": source, "sku": sku, "location": location,
            "occurred_at": occurred_at, "movement_type": movement_type, "quantity": quantity,
            "transfer_id": transfer_id,
            "counterpart_location": counterpart_location}  # fmt: skip


def reservation_event(
    event_id: str, source: str, sku: str, location: str, occurred_at: int, reservation_id: str,
    action: str, quantity: int = 0, *, expires_at: int | None = None, channel: str | None = None,
) -> dict[str, Any]:  # fmt: skip
    """``action`` is created | released | committed | expired; ``created`` needs a quantity > 0
    and ``expires_at`` after ``occurred_at``. Keyed by ``reservation_id`` on its topic."""
    return {"event_id": event_id, "source": source, "sku": sku, "location": location,
            "occurred_at": occurred_at, "reservation_id": reservation_id, "action": action,
            "quantity": quantity, "expires_at": expires_at,
            "channel": channel}  # fmt: skip


def transfer_notice(out: StockEvent) -> dict[str, Any]:
    """The shipment notice the fold routes for a TRANSFER_OUT (``invsync.transfers``, keyed by
    the destination's sku|location): :func:`state.events.transit_notice` as a record, which
    :func:`state.events.transit_from_record` reads back to the same event."""
    notice = transit_notice(out)
    return {"notice_id": notice.event_id, "transfer_id": notice.transfer_id, "sku": notice.sku,
            "location": notice.location, "origin": notice.counterpart,
            "shipped_at": notice.effective_at, "quantity": notice.quantity,
            "source": out.source, "event_id": out.event_id}  # fmt: skip
