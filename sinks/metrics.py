"""The sinks' Prometheus metrics (the one registry: prometheus-client's default).

The families shared with the worker's own Kafka sink are defined once in :mod:`streams.metrics`
and re-exported here under the same names (``invsync_sink_retries_total``,
``invsync_sink_failures_total``, ``invsync_sink_in_flight``), each labelled by ``sink``
(``redis``, ``erp``). Labels are bounded: sink, outcome, topic, partition; never a sku or location.

For the Redis sink a *failure* is one attempt at a batch that raised after redis-py's own retries
(or because the schema registry could not be reached); every failure is followed by a *retry* of
the same batch, so the two counters move together while Redis is down and the sink's lag grows.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from streams.metrics import SINK_FAILURES, SINK_IN_FLIGHT, SINK_RETRIES

__all__ = [
    "REDIS_WRITE_ERRORS",
    "SINK_BATCH_SECONDS",
    "SINK_COMMIT_FAILURES",
    "SINK_FAILURES",
    "SINK_IN_FLIGHT",
    "SINK_LAG_MESSAGES",
    "SINK_RECORDS",
    "SINK_RETRIES",
]

REDIS_WRITE_ERRORS = Counter(
    "invsync_redis_write_errors_total",
    "Batch writes to the Redis read model that raised after redis-py's retries.",
)
SINK_RECORDS = Counter(
    "invsync_sink_records_total",
    "Records a sink handled, by outcome (applied; stale: an equal or newer version was already "
    "there; undecodable: skipped and logged).",
    ["sink", "outcome"],
)
SINK_BATCH_SECONDS = Histogram(
    "invsync_sink_batch_seconds",
    "Time from a batch consumed to its offsets committed, retries included.",
    ["sink"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 30, 300),
)
SINK_LAG_MESSAGES = Gauge(
    "invsync_sink_lag_messages",
    "Records of an assigned partition not yet written by the sink: end offset minus the next "
    "offset to write (refreshed every few seconds, also while the sink is retrying).",
    ["sink", "topic", "partition"],
)
SINK_COMMIT_FAILURES = Counter(
    "invsync_sink_commit_failures_total",
    "Offset commits that failed after the records were written (they will be consumed and "
    "written again: duplicates only).",
    ["sink"],
)
