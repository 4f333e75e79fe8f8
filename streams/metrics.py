"""The worker's Prometheus metrics (one registry: prometheus-client's default).

Labels are bounded: topic names, outcomes and reasons, never a sku or location.
"""

from __future__ import annotations

from prometheus_client import Counter, Histogram

EVENTS = Counter(
    "invsync_input_events_total",
    "Input events by topic and outcome (applied, duplicate, late, redelivered, dead_lettered).",
    ["topic", "outcome"],
)
DEAD_LETTERS = Counter(
    "invsync_dead_letters_total", "Inputs sent to the dead-letter topic, by reason.", ["reason"]
)
BATCH_SECONDS = Histogram(
    "invsync_fold_batch_seconds",
    "Time to fold one batch: decode, fold, table writes, emits.",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
BATCH_EVENTS = Histogram(
    "invsync_fold_batch_events",
    "Events per folded batch.",
    buckets=(1, 10, 50, 100, 250, 500, 1000, 2000, 5000, 10000),
)
