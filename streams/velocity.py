"""Demand velocity per sku-location: a Faust windowed table over the netted ERP deltas.

Agent ``velocity`` consumes ``erp.stock-deltas`` (the fold's output: one record per
sku-location per settled netting window, ``reasons`` = net units per reason code), not the
input topics, so Faust's per-event cost is paid per netted window, not per sale. Each delta's
demand (:func:`state.velocity.demand_units`: sales net of returns, picks, ships) goes into the
``demand-velocity`` table: **hourly tumbling windows kept 7 days**, keyed ``sku|location``, in
**event time** (the window holding the delta's ``window_start``: the wrapper is cloned with
``relative_to`` a function of the event, which ``.value()`` and writes use; ``.current()`` would
not). A window's value is
``{delta_id: demand}``, so a delta delivered twice is counted once.

Why tumbling hours: every delta is one write to one window (a 1-day hopping window with a
1-hour step would write each delta to 24 windows), and any trailing span of whole hours is a sum
at read time: :func:`demand_velocity` reads the 24 and 168 hourly windows up to the hour of the
position's stream time and :func:`state.velocity.demand_rate` turns them into units per day.
Deltas with no demand (receipts, transfers, count adjustments) are not written.

Reads (:func:`demand_velocity`, for ``GET /v1/positions/{sku}/{location}``) come from the local
table of the worker that owns the key's partition: ``erp.stock-deltas``, the positions
changelog and this table's changelog have the same partition count and are subscribed by every
worker of the app, so Faust assigns partition ``p`` of all of them to one worker (co-partitioned).

Guarantees and limits: at-least-once, idempotent by ``delta_id``. Like the count-discrepancy
table, an event is reported folded to the offset guard once its window is written, and Faust
flushes the table's changelog before it commits offsets; a crash may redeliver deltas (counted
once). Faust expires windows by the **wall clock** (``expires`` is measured against the
current time, for windows written since the worker started), so deltas replayed from more than
7 days ago are dropped by Faust's cleanup soon after they are written: the table serves the
live week, not history. Hourly resolution; the newest minutes are in only once their netting
window settled (lateness bound past its end).
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any, cast

import faust

from invsync.settings import Settings
from state.velocity import LONG_HOURS, demand_rate, demand_units, window_starts
from streams import topics
from streams.codec import Codec, DecodeError
from streams.consumer import PromptConsumer
from streams.event_time import RecordTime

log = logging.getLogger(__name__)

VELOCITY_TABLE = "demand-velocity"
WINDOW = timedelta(hours=1)
RETAIN = timedelta(days=7)


def register_velocity(app: faust.App, settings: Settings, codec: Codec) -> None:
    """Declare the ``demand-velocity`` windowed table and register its agent on ``app``."""
    deltas_topic = topics.ERP_STOCK_DELTAS.full_name(settings)
    window_time = RecordTime(codec, deltas_topic, "window_start")  # the netting window's

    windows = (
        app.Table(VELOCITY_TABLE, default=dict, partitions=settings.partitions)
        .tumbling(WINDOW, expires=RETAIN)
        .clone(relative_to=window_time)
    )
    deltas = app.topic(
        deltas_topic, key_type=bytes, value_type=bytes, key_serializer="raw",
        value_serializer="raw",
    )  # fmt: skip

    @app.agent(deltas, name="velocity")
    async def fold_velocity(stream: faust.StreamT) -> None:
        guard = cast(PromptConsumer, app.consumer).offset_guard
        async for event in stream.events():  # per event: Faust's table API needs it
            message = event.message
            try:
                record = codec.decode(message.topic, event.value)
                demand = demand_units(record["reasons"])
                key = topics.make_key(str(record["sku"]), str(record["location"]))
                delta_id = str(record["delta_id"])
                at = record["window_start"]
            except (DecodeError, KeyError, TypeError, ValueError) as exc:
                # our own topic (the ERP dispatcher dead-letters what it cannot read): a bug
                log.error("unreadable ERP delta at %s offset %s: %s", message.tp, message.offset,
                          exc)  # fmt: skip
                guard.on_folded(message.tp, message.offset)
                continue
            if demand:
                window_time.set(event, at)
                window = windows[key].value()
                if window.get(delta_id) != demand:
                    windows[key] = {**window, delta_id: demand}  # a new dict: the store's stays
            # committable once written: Faust flushes the table's changelog before it commits
            guard.on_folded(message.tp, message.offset)


def demand_velocity(
    app: faust.App, sku: str, location: str, as_of_ms: int | None
) -> dict[str, Any] | None:
    """The demand velocity of ``sku`` at ``location`` as of event time ``as_of_ms`` from this
    worker's ``demand-velocity`` table (:class:`state.velocity.DemandRate` as a dict), or
    ``None`` without a time or without the table. Read-only; meaningful on the worker that owns
    the key's partition (the query API checks that before it calls this)."""
    table: Any = app.tables.get(VELOCITY_TABLE)  # the Table behind the windowed wrapper
    window = None if table is None else table.window
    if table is None or window is None or as_of_ms is None:
        return None
    key = topics.make_key(sku, location)
    hourly: dict[int, int] = {}
    for start in window_starts(as_of_ms, LONG_HOURS):
        value = table.get((key, window.current(start / 1000)))
        if value:
            hourly[start] = sum(int(units) for units in value.values())
    return demand_rate(hourly, as_of_ms).to_record()
