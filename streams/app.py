"""The Faust app: topics, the positions table and the fold agent, wired from settings.

Delivery guarantee: at-least-once input with idempotent effects. Offsets are committed by Faust
only for acked events, after flushing the producer; the fold agent acks an event only after its
batch's table writes and outputs are handed to the producer, and never acks one whose partition
was taken by a rebalance meanwhile (see :mod:`streams.fold_batch`). Faust's ``exactly_once``
mode is not used.
"""

from __future__ import annotations

import logging
from typing import cast

import faust
from faust.web import Request, Response, View
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from invsync.settings import Settings
from streams import metrics, topics
from streams.codec import Codec
from streams.fold_batch import BatchFolder

log = logging.getLogger(__name__)

POSITIONS_TABLE = "positions"


def create_app(settings: Settings, codec: Codec | None = None) -> faust.App:
    """A Faust app for these settings, with the fold agent registered (not started)."""
    app = faust.App(
        settings.app_id,
        broker=[f"kafka://{server}" for server in settings.kafka_bootstrap.split(",")],
        store="rocksdb://" if settings.store == "rocksdb" else "memory://",
        datadir=str(settings.state_dir),
        topic_partitions=settings.partitions,
        topic_replication_factor=settings.replication_factor,
        topic_allow_declare=True,  # the table's changelog; inputs/outputs exist already
        topic_disable_leader=True,
        consumer_auto_offset_reset="earliest",
        producer_acks=-1,
        producer_linger_ms=5,
        producer_max_batch_size=512 * 1024,
        producer_max_request_size=4 * 1024 * 1024,
        stream_buffer_maxsize=max(4096, settings.batch_max * 2),
        broker_max_poll_records=max(500, settings.batch_max),
        consumer_max_fetch_size=8 * 1024 * 1024,
        web_port=settings.web_port,
        web_bind="0.0.0.0",
        web_in_thread=False,
        table_standby_replicas=0,
    )
    codec = codec or Codec(settings)

    def raw_topic(*names: str) -> faust.TopicT:
        return app.topic(
            *names,
            key_type=bytes,
            value_type=bytes,
            key_serializer="raw",
            value_serializer="raw",
        )

    inputs = raw_topic(
        topics.POS_SALES.full_name(settings), topics.CYCLE_COUNTS.full_name(settings)
    )
    availability = {
        channel: topics.availability(channel).full_name(settings) for channel in settings.channels
    }
    dead_letters = topics.DEAD_LETTERS.full_name(settings)
    table = app.Table(  # bytes in, bytes out: the "raw" codec; we encode with orjson
        POSITIONS_TABLE, partitions=settings.partitions, key_type=bytes, value_type=bytes
    )
    folder = BatchFolder(settings, codec, table, availability, dead_letters)

    @app.agent(inputs, name="fold")
    async def fold_agent(stream: faust.StreamT) -> None:
        # noack_take, not take_events: take_events acks a batch in a `finally`, so a batch
        # cut short (shutdown, crash) would be committed unprocessed. Here an event is acked
        # only after its batch is written and produced (see streams/fold_batch.py).
        faust_stream = cast(faust.Stream, stream)
        batches = faust_stream.noack_take(
            settings.batch_max, within=settings.batch_within_ms / 1000
        )
        async for batch in batches:
            with metrics.BATCH_SECONDS.time():
                result = await folder.process(batch)
            metrics.BATCH_EVENTS.observe(len(batch))
            for event in result.ackable:
                await faust_stream.ack(event)

    @app.page("/metrics")
    async def prometheus_metrics(web: View, request: Request) -> Response:
        # aiohttp refuses a charset inside content_type; the exposition format is UTF-8 anyway
        return web.bytes(generate_latest(), content_type=CONTENT_TYPE_LATEST.split(";")[0])

    return app
