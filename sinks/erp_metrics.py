"""Metrics of the ERP dispatcher (``sinks/erp.py``), on prometheus-client's default registry.

The dispatcher also reports through the shared sink metrics of :mod:`streams.metrics`, labelled
``sink="erp"``: ``invsync_sink_retries_total`` (every retried ERP attempt),
``invsync_sink_failures_total`` (every ``erp_max_attempts`` consecutive failed attempts of one
delta: the ERP is unavailable or refuses the dispatcher, and it keeps retrying; this is what
``InvsyncSinkFailing`` alerts on), ``invsync_sink_in_flight`` (records taken from Kafka and not
yet accepted or dead-lettered), and ``invsync_dead_letters_total{reason}``.

``invsync_erp_deltas_accepted_total`` is part of the dashboard's metrics contract
(``tests/ops/__init__.py``); the others here are the dispatcher's own. Labels are bounded
(outcomes and partition numbers, never a sku, location or delta id).
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

DELTAS_ACCEPTED = Counter(
    "invsync_erp_deltas_accepted",
    "Stock deltas the ERP acknowledged with a 2xx (new, or a replay it already had).",
)
REQUESTS = Counter(
    "invsync_erp_requests",
    "ERP delivery attempts by outcome: created (201), already_accepted (other 2xx), rejected "
    "(400/409/413/422: dead-lettered), refused (other 3xx/4xx: retried), server_error (5xx, "
    "408, 425, 429: retried), timeout, connection_error.",
    ["outcome"],
)
REQUEST_SECONDS = Histogram(
    "invsync_erp_request_seconds",
    "Duration of one ERP request, answered or not.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
LAG_MESSAGES = Gauge(
    "invsync_erp_lag_messages",
    "Stock-delta records not yet delivered to the ERP: end offset minus the next offset to "
    "deliver, per partition of the ERP stock-delta topic.",
    ["partition"],
)
OLDEST_PENDING_SECONDS = Gauge(
    "invsync_erp_oldest_pending_seconds",
    "Age (now minus broker timestamp) of the oldest record taken from Kafka and not yet accepted "
    "or dead-lettered; 0 when none waits.",
)
ASSIGNED_PARTITIONS = Gauge(
    "invsync_erp_assigned_partitions",
    "Partitions of the ERP stock-delta topic assigned to this dispatcher.",
)
LAST_ACCEPTED = Gauge(
    "invsync_erp_last_accepted_timestamp_seconds",
    "Wall-clock time (unix seconds) the ERP last acknowledged a delta.",
)
