"""The Faust app: topics, the positions table and the fold agent, wired from settings.

Delivery guarantee: at-least-once input with idempotent effects. An agent reports an event
folded (and acks it) only after the broker acknowledged its batch's changelog records and
outputs (:mod:`streams.delivery`), and never one whose partition was taken by a rebalance
meanwhile (:mod:`streams.fold_batch`). The consumer commits, per partition, only offsets below
every folded event (:mod:`streams.offset_guard`), not Faust's own ack bookkeeping. On a
rebalance Faust waits for every started event to be acked before it commits and gives
partitions away, so in-flight outputs are durable before another worker takes over. Faust's
``exactly_once`` mode is not used.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine
from datetime import timedelta
from typing import Any, cast

import faust
from faust.types import EventT
from faust.web import Request, Response, View
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from invsync.settings import Settings
from state.channel_policy import ChannelPolicy
from streams import health, metrics, topics
from streams.aggregates import register_aggregates
from streams.channel_publisher import register_publishers
from streams.codec import Codec, DecodeError
from streams.consumer import PromptConsumer
from streams.delivery import Outputs, Ticket
from streams.event_time import RecordTime
from streams.fold_batch import BatchFolder
from streams.hold_batch import HoldFolder
from streams.learning import register_learning
from streams.partition_store import PartitionStore
from streams.query_api import register_query_api
from streams.velocity import register_velocity

log = logging.getLogger(__name__)

POSITIONS_TABLE = "positions"
RESERVATIONS_TABLE = "reservations"
DISCREPANCIES_TABLE = "count-discrepancies"
MAX_IN_FLIGHT_BATCHES = 4  # folded, not yet acknowledged by the broker: bounds memory and redo
SWEEP_TICK_S, SWEEP_IDLE_S = 0.1, 0.5  # the sweep timer: its period, and input quiet this long


def create_app(settings: Settings, policy: ChannelPolicy, codec: Codec | None = None) -> faust.App:
    """A Faust app for these settings and channel policy (validated by the worker's preflight),
    with its agents registered (not started)."""
    if not settings.metrics_enabled:
        metrics.disable()  # only to measure what the metrics cost (bench --compare-metrics)
    app = faust.App(settings.app_id, **app_config(settings))
    app.transport.Consumer = PromptConsumer  # type: ignore[misc]  # see streams/consumer.py
    codec = codec or Codec(settings, millis_timestamps=True)

    def raw_topic(*names: str) -> faust.TopicT:
        return app.topic(
            *names,
            key_type=bytes,
            value_type=bytes,
            key_serializer="raw",
            value_serializer="raw",
        )

    inputs = raw_topic(
        *(spec.full_name(settings) for spec in (topics.POS_SALES, topics.WMS_MOVEMENTS,
                                                topics.CYCLE_COUNTS, topics.RESERVED_DELTAS,
                                                topics.ERP_SNAPSHOTS, topics.TRANSFERS))
    )  # fmt: skip
    reservation_events = raw_topic(topics.RESERVATIONS.full_name(settings))
    dead_letters = topics.DEAD_LETTERS.full_name(settings)
    # bytes in, bytes out (the "raw" codec): values are encoded by the folds with orjson
    positions = app.Table(
        POSITIONS_TABLE, partitions=settings.partitions, key_type=bytes, value_type=bytes
    )
    register_query_api(app, settings, positions, policy=policy)
    reservations = app.Table(
        RESERVATIONS_TABLE, partitions=settings.partitions, key_type=bytes, value_type=bytes
    )
    changelogs = frozenset(t.changelog_topic.get_topic_name() for t in (positions, reservations))
    outputs = Outputs(settings, changelogs)
    # per channel, where the fold writes its records: availability.<channel>, or the changes topic
    # of a policy channel's publisher (changes that matter, coalesced, rate-limited)
    availability = register_publishers(app, settings, policy, codec, outputs)
    folder = BatchFolder(settings, codec, positions, outputs, availability, dead_letters, policy)
    holds = HoldFolder(settings, codec, reservations, outputs, dead_letters)
    stores = (folder.store, holds.store)
    progress = health.Progress({*folder.parsers, holds.topic})
    health.install(app, progress, folder.store, POSITIONS_TABLE)

    def fold(batch: list[EventT], ticket: Ticket) -> list[EventT]:
        return folder.process(batch, ticket).ackable

    app.agent(inputs, name="fold")(_batched(app, settings, outputs, stores, progress, fold))
    app.agent(reservation_events, name="holds")(
        _batched(app, settings, outputs, stores, progress, holds.process)
    )
    register_aggregates(app, settings, policy, codec, outputs, progress)  # network sums
    # accuracy per location type learned from settled counts; the fold projects with it
    folder.accuracy = register_learning(app, settings, codec, outputs, progress).get
    if settings.demand_velocity:  # off by default: a Faust table write per netted delta
        register_velocity(app, settings, codec)  # demand per sku|location, hourly windows

    # Count discrepancies per location, kept 90 days in daily event-time windows (by counted_at,
    # not the record's timestamp). Values: count_id -> [discrepancy, units moved], so a count
    # delivered more than once is kept once.
    discrepancies_topic = topics.COUNT_DISCREPANCIES.full_name(settings)
    counted_at = RecordTime(codec, discrepancies_topic, "counted_at")
    discrepancy_windows = (
        app.Table(DISCREPANCIES_TABLE, default=dict, partitions=settings.partitions)
        .tumbling(timedelta(days=1), expires=timedelta(days=90))
        .clone(relative_to=counted_at)
    )

    @app.agent(raw_topic(discrepancies_topic), name="discrepancies")
    async def keep_discrepancies(stream: faust.StreamT) -> None:
        guard = cast(PromptConsumer, app.consumer).offset_guard
        async for event in stream.events():  # per event: Faust's table API needs it
            # committable once folded: Faust flushes the table's changelog before it commits
            guard.on_folded(event.message.tp, event.message.offset)
            try:
                record = codec.decode(event.message.topic, event.value)
            except DecodeError as exc:  # our own topic: a bug, not input data
                log.error(
                    "undecodable count discrepancy at offset %s: %s", event.message.offset, exc
                )
                continue
            counted_at.set(event, record["counted_at"])
            day = dict(discrepancy_windows[record["location"]].value())
            day[record["count_id"]] = [record["discrepancy"], record["units_moved"]]
            discrepancy_windows[record["location"]] = day

    @app.timer(1.0)
    async def expire_idle_holds() -> None:
        """Quiet reservation partitions still expire holds (see streams/hold_batch.py)."""
        assigned = {tp.partition for tp in app.consumer.assignment() if tp.topic == holds.topic}
        ticket = outputs.ticket()
        holds.advance_idle(assigned, ticket)
        ticket.seal()
        await _delivered(app, ticket, stores)

    @app.timer(SWEEP_TICK_S)
    async def finish_sweeps() -> None:
        """Due keys left by a bounded sweep are advanced when the input has stopped (while it
        flows, each batch advances its share: see streams/fold_batch.py)."""
        if time.monotonic() - folder.last_batch_at < SWEEP_IDLE_S:
            return
        partitions = folder.sweep_backlog()
        if partitions:
            ticket = outputs.ticket()
            folder.sweep(partitions, ticket)
            ticket.seal()
            await _delivered(app, ticket, stores)

    async def close_outputs(*args: Any, **kwargs: Any) -> None:
        await asyncio.get_running_loop().run_in_executor(None, outputs.close)

    cast(Any, app.on_before_shutdown).connect(close_outputs)

    @app.page("/metrics")
    async def prometheus_metrics(web: View, request: Request) -> Response:
        # aiohttp refuses a charset inside content_type; the exposition format is UTF-8 anyway
        return web.bytes(generate_latest(), content_type=CONTENT_TYPE_LATEST.split(";")[0])

    return app


def app_config(settings: Settings) -> dict[str, Any]:
    """Faust's settings for the worker (and for ``bench.faust_floor``, which measures what a
    bare agent with the same consumer costs): broker, store, buffers, producer and web."""
    return {
        "broker": [f"kafka://{server}" for server in settings.kafka_bootstrap.split(",")],
        "store": "rocksdb://" if settings.store == "rocksdb" else "memory://",
        "datadir": str(settings.state_dir),
        "topic_partitions": settings.partitions,
        "topic_replication_factor": settings.replication_factor,
        "topic_allow_declare": True,  # the table's changelog; inputs/outputs exist already
        "topic_disable_leader": True,
        "consumer_auto_offset_reset": "earliest",
        "producer_acks": -1,
        "producer_linger_ms": 5,
        "producer_max_batch_size": 512 * 1024,
        "producer_max_request_size": 4 * 1024 * 1024,
        "stream_buffer_maxsize": max(4096, settings.batch_max * 2),
        "broker_max_poll_records": max(500, settings.batch_max),
        "consumer_max_fetch_size": 8 * 1024 * 1024,
        "web_port": settings.web_port,
        "web_bind": "0.0.0.0",
        "web_in_thread": False,
        "table_standby_replicas": settings.standby_replicas,
    }


Process = Callable[[list[EventT], Ticket], list[EventT]]


def _batched(
    app: faust.App,
    settings: Settings,
    outputs: Outputs,
    stores: tuple[PartitionStore, ...],
    progress: health.Progress,
    process: Process,
) -> Callable[[faust.StreamT], Coroutine[Any, Any, None]]:
    """An agent that folds batches with ``process`` and acks them once delivered."""

    async def agent(stream: faust.StreamT) -> None:
        # noack_take, not take_events: take_events acks a batch in a `finally`, so a batch
        # cut short (shutdown, crash) would be committed unprocessed. Here an event is acked
        # only after the records its batch caused are acknowledged by the broker.
        faust_stream = cast(faust.Stream, stream)
        in_flight: asyncio.Queue[tuple[Ticket, list[EventT]]] = asyncio.Queue(MAX_IN_FLIGHT_BATCHES)
        acker = asyncio.ensure_future(
            _ack_when_delivered(app, faust_stream, in_flight, stores, progress)
        )
        acker.add_done_callback(lambda task: _crash_if_failed(app, task))
        try:
            batches = faust_stream.noack_take(
                settings.batch_max, within=settings.batch_within_ms / 1000
            )
            async for batch in batches:
                ticket = outputs.ticket()
                with metrics.BATCH_SECONDS.time():
                    ackable = process(cast(list[EventT], batch), ticket)
                ticket.seal()
                metrics.BATCH_EVENTS.observe(len(batch))
                await in_flight.put((ticket, ackable))
        finally:
            acker.cancel()

    return agent


_CRASHING: set[asyncio.Future[None]] = set()


def _crash_if_failed(app: faust.App, task: asyncio.Future[None]) -> None:
    """A dead acker would leave every later event unacked: stop the worker instead."""
    if not task.cancelled() and (exc := task.exception()) is not None:
        log.critical("the acker failed; stopping the worker: %r", exc, exc_info=exc)
        crash = asyncio.ensure_future(app.crash(exc))
        _CRASHING.add(crash)
        crash.add_done_callback(_CRASHING.discard)


async def _ack_when_delivered(
    app: faust.App,
    stream: faust.Stream,
    in_flight: asyncio.Queue[tuple[Ticket, list[EventT]]],
    stores: tuple[PartitionStore, ...],
    progress: health.Progress,
) -> None:
    """Ack each batch's events, in order, once the broker has its records; a delivery failure
    stops the worker with those events unacked (they are redelivered)."""
    while True:
        ticket, events = await in_flight.get()
        if not await _delivered(app, ticket, stores):
            return
        now = time.time()
        for published_at in ticket.published_at:
            metrics.EVENT_TO_PUBLISH.observe(now - published_at)
        guard = cast(PromptConsumer, app.consumer).offset_guard
        for event in events:
            message = event.message
            guard.on_folded(message.tp, message.offset)
            await stream.ack(event)  # releases it for Faust's rebalance wait; commits: the guard
            progress.on_acked(message.tp, message.offset, message.timestamp)


async def _delivered(app: faust.App, ticket: Ticket, stores: tuple[PartitionStore, ...]) -> bool:
    """Wait for ``ticket``; then let the stores remember the changelog they contain. False (and
    the worker crashing, nothing acked) if a record could not be delivered."""
    try:
        await ticket.done
    except Exception as exc:
        log.critical("output delivery failed, stopping without acking: %s", exc)
        await app.crash(exc)
        return False
    for store in stores:
        store.mark_changelog_applied(ticket.changelog_offsets)
    return True
