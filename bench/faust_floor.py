"""The Faust floor: what consuming the inputs through a Faust agent costs before any folding.

A bare agent on the worker's input topics, with the worker's Faust settings
(:func:`streams.app.app_config`), its consumer (:class:`streams.consumer.PromptConsumer`: the
short long-poll and the commit frontier) and its batching (``noack_take(batch_max, within)``):
it reports each event folded to the commit guard and acks it, exactly as the fold agent does
once a batch's outputs are delivered, and does nothing else: no decode, no table, no output.

Run by ``bench.run`` in its own process and consumer group (``INVSYNC_APP_ID``); reads
``--events`` events, then prints one JSON line ``{"events": n, "eps": ...}`` (events/s from the
first batch to the last) and exits. Any fold written as a Faust agent is bounded by this rate,
so ``bench.run`` reports invsync's throughput against it as well as against the raw consumer.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import os
import sys
import time
from typing import Any, cast

import orjson

from invsync.settings import load_settings
from invsync.worker import GC_THRESHOLDS
from streams import topics
from streams.consumer import PromptConsumer

# the topics bench.run's workload is produced to (the worker consumes these among others)
WORKLOAD_TOPICS = (topics.POS_SALES, topics.CYCLE_COUNTS)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, required=True)
    args = parser.parse_args()
    settings = load_settings()

    import faust
    import mode.loop

    from streams.app import app_config

    gc.set_threshold(*GC_THRESHOLDS)  # as the worker
    if importlib.util.find_spec("uvloop") is not None:
        mode.loop.use("uvloop")
    config = app_config(settings) | {"web_enabled": False, "store": "memory://"}
    app = faust.App(settings.app_id, **config)
    app.transport.Consumer = PromptConsumer  # type: ignore[misc]
    inputs = app.topic(
        *(spec.full_name(settings) for spec in WORKLOAD_TOPICS),
        key_type=bytes,
        value_type=bytes,
        key_serializer="raw",
        value_serializer="raw",
    )
    seen = {"n": 0, "first": 0.0}

    @app.agent(inputs, name="floor")
    async def floor(stream: faust.StreamT) -> None:
        faust_stream = cast(faust.Stream, stream)
        guard = cast(PromptConsumer, app.consumer).offset_guard
        batches = faust_stream.noack_take(
            settings.batch_max, within=settings.batch_within_ms / 1000
        )
        async for batch in batches:
            if not seen["first"]:
                seen["first"] = time.monotonic()
            for event in cast(list[Any], batch):
                guard.on_folded(event.message.tp, event.message.offset)
                await faust_stream.ack(event)
            seen["n"] += len(batch)
            if seen["n"] >= args.events:
                eps = seen["n"] / max(1e-9, time.monotonic() - seen["first"])
                print(orjson.dumps({"events": seen["n"], "eps": eps}).decode(), flush=True)
                os._exit(0)  # nothing to flush: no outputs, no table

    sys.argv = [sys.argv[0], "worker", "--without-web", "--loglevel", settings.log_level]
    app.main()


if __name__ == "__main__":
    main()
