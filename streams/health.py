"""What the worker reports about itself: consumer lag, source freshness, rebalances, table size,
and the liveness/readiness answers behind ``/livez`` and ``/readyz``.

Lag is computed here because Faust's sensors have none: per assigned input partition, the end
offset the consumer last saw (``highwater``) minus the next offset to fold, where "folded" means
acked — its outputs durable — not merely fetched. Lag in seconds is now minus the broker timestamp
of the last acked record while records wait, 0 when none wait; it is the age of the data the
worker is working through, the number an SLO on freshness needs. Gauges are refreshed every
``REFRESH_S`` seconds and removed for partitions this worker no longer owns.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any

import faust
from faust.types import TP

from streams import metrics
from streams.partition_store import PartitionStore

REFRESH_S = 5.0


class Progress:
    """Per input partition: the offset and broker timestamp of the last acked event."""

    def __init__(self, input_topics: set[str]) -> None:
        self.input_topics = input_topics
        self.acked: dict[TP, tuple[int, float]] = {}
        self._reported: set[TP] = set()

    def on_acked(self, tp: TP, offset: int, timestamp: float) -> None:
        self.acked[tp] = (offset, timestamp)

    def report(self, app: faust.App) -> None:
        """Refresh the lag gauges from the consumer's assignment and end offsets."""
        consumer = app.consumer
        assigned = {tp for tp in consumer.assignment() if tp.topic in self.input_topics}
        now = time.time()
        for tp in assigned:
            try:
                end = consumer.highwater(tp)
            except Exception:  # not fetched yet
                continue
            if end is None:
                continue
            acked = self.acked.get(tp)
            next_offset = acked[0] + 1 if acked else _committed(consumer, tp)
            waiting = max(0, end - next_offset)
            labels = (tp.topic, str(tp.partition))
            metrics.LAG_MESSAGES.labels(*labels).set(waiting)
            seconds = max(0.0, now - acked[1]) if waiting and acked else 0.0
            metrics.LAG_SECONDS.labels(*labels).set(seconds)
        for tp in self._reported - assigned:
            for gauge in (metrics.LAG_MESSAGES, metrics.LAG_SECONDS):
                with contextlib.suppress(KeyError):
                    gauge.remove(tp.topic, str(tp.partition))
            self.acked.pop(tp, None)
        self._reported = assigned


def _committed(consumer: Any, tp: TP) -> int:
    committed = getattr(consumer, "_committed_offset", {}).get(tp)
    return int(committed) if committed is not None else 0


def ready(app: faust.App) -> tuple[bool, str]:
    """Ready = the group is not rebalancing and every assigned partition's tables are
    recovered (so what the worker serves and publishes is current)."""
    if app.rebalancing:
        return False, "rebalancing"
    recovery = getattr(app.tables, "recovery", None)
    if app.in_recovery or (recovery is not None and not recovery.completed.is_set()):
        return False, "recovering tables"
    return True, "ready"


def install(app: faust.App, progress: Progress, store: PartitionStore, table_name: str) -> None:
    """Register the refresh timer, the rebalance counter and the probe pages on ``app``."""

    @app.timer(REFRESH_S)
    async def refresh_gauges() -> None:
        progress.report(app)
        keys = store.approximate_keys()
        if keys is not None:
            metrics.TABLE_KEYS.labels(table_name).set(keys)

    async def on_assigned(*args: Any, **kwargs: Any) -> None:
        metrics.REBALANCES.inc()
        metrics.ASSIGNED_PARTITIONS.set(len(app.consumer.assignment()))

    app.on_partitions_assigned.connect(on_assigned)

    @app.page("/livez")
    async def livez(web: faust.web.View, request: faust.web.Request) -> faust.web.Response:
        return web.json({"status": "alive"})

    @app.page("/readyz")
    async def readyz(web: faust.web.View, request: faust.web.Request) -> faust.web.Response:
        ok, why = ready(app)
        return web.json({"status": why}, status=200 if ok else 503)
