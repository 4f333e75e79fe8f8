"""The worker's Prometheus metrics (one registry: prometheus-client's default).

Labels are bounded: topic names, outcomes and reasons, never a sku or location.

:func:`disable` (``INVSYNC_METRICS_ENABLED=false``, only to measure what the metrics cost)
rebinds every metric of this module to a no-op with the same methods and takes them off the
registry. Call sites must look metrics up at call time (``metrics.EVENTS.labels(...)``), never
keep a reference, so that it applies to them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from prometheus_client import REGISTRY, Counter, Gauge, Histogram
from prometheus_client.metrics import MetricWrapperBase

_F = TypeVar("_F", bound=Callable[..., Any])

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
LAG_MESSAGES = Gauge(
    "invsync_consumer_lag_messages",
    "Input records not yet processed: the partition's end offset minus the next offset to fold.",
    ["topic", "partition"],
)
LAG_SECONDS = Gauge(
    "invsync_consumer_lag_seconds",
    "How far processing trails the input: now minus the broker timestamp of the last processed "
    "record while records wait, else 0.",
    ["topic", "partition"],
)
EVENT_TO_PUBLISH = Histogram(
    "invsync_event_to_publish_seconds",
    "Input record timestamp to its availability record acknowledged by the broker (per record "
    "published, from the newest input it reflects).",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
)
SOURCE_LAST_EVENT = Gauge(
    "invsync_source_last_event_timestamp_seconds",
    "Wall-clock time (unix seconds) this worker last received an event from the topic.",
    ["topic"],
)
REFETCHES = Counter(
    "invsync_input_refetches_total",
    "Input partitions fetched again because a record was never delivered to the agent.",
    ["topic"],
)
REBALANCES = Counter("invsync_rebalances_total", "Partition assignments this worker received.")
ASSIGNED_PARTITIONS = Gauge("invsync_assigned_partitions", "Partitions assigned to this worker.")
SINK_RETRIES = Counter("invsync_sink_retries_total", "Retried deliveries, by sink.", ["sink"])
SINK_FAILURES = Counter("invsync_sink_failures_total", "Failed deliveries, by sink.", ["sink"])
SINK_IN_FLIGHT = Gauge(
    "invsync_sink_in_flight", "Records handed to a sink, not yet acknowledged.", ["sink"]
)
TABLE_KEYS = Gauge("invsync_table_keys", "Keys in a table's local store (estimate).", ["table"])
RESERVATION_AGE = Histogram(
    "invsync_reservation_age_seconds",
    "Event-time age of a hold when it ended (released, committed or expired).",
    buckets=(60, 300, 900, 1800, 3600, 7200, 14400, 43200, 86400, 259200),
)
POSITION_CONFIDENCE = Histogram(
    "invsync_position_confidence",
    "Confidence of each published availability record, by location type.",
    ["location_type"],
    buckets=(0.1, 0.25, 0.5, 0.75, 0.8, 0.9, 0.95, 0.99, 1.0),
)
CHANNEL_RECORDS = Counter(
    "invsync_channel_records_total",
    "Availability records of policy channels by outcome: published, or coalesced (superseded by "
    "a newer record of the key, or not a change that matters to the channel).",
    ["channel", "outcome"],
)
CHANNEL_WAITING = Gauge(
    "invsync_channel_waiting_records",
    "Records waiting for a channel's rate limit (one per key, latest wins).",
    ["channel"],
)
ERP_SNAPSHOTS = Counter(
    "invsync_erp_snapshots_total",
    "ERP snapshots reconciled, by location type and outcome (in_agreement, drift).",
    ["location_type", "outcome"],
)
ERP_DRIFT_UNITS = Histogram(
    "invsync_erp_drift_units",
    "Absolute drift of each reconciled ERP snapshot (ERP on hand - recorded, as of its time).",
    ["location_type"],
    buckets=(0, 1, 2, 5, 10, 25, 50, 100, 500),
)
PHANTOM_SUSPECTS = Gauge(
    "invsync_phantom_suspects",
    "Positions this worker last published as frozen (phantom-stock suspects), by location type.",
    ["location_type"],
)

TRANSFERS_ENDED = Counter(
    "invsync_transfers_ended_total",
    "Transfers into a location that ended, by its location type and outcome: received (in "
    "full), short, over, expired (not received within INVSYNC_TRANSFER_TIMEOUT_MS of event "
    "time), unshipped (a receipt whose shipment notice never came).",
    ["location_type", "outcome"],
)
TRANSIT_LOSS_UNITS = Counter(
    "invsync_transit_loss_units_total",
    "Units shipped to a location and not received: the shortfall of short receipts and all "
    "units of expired transfers, by the destination's location type.",
    ["location_type"],
)

ACCURACY_EVIDENCE = Counter(
    "invsync_accuracy_evidence_total",
    "Settled counts the accuracy learner folded, by location type and outcome: learned, "
    "first_count (a position's first count teaches nothing), duplicate (a count already "
    "learned), redelivered (an input offset already applied).",
    ["location_type", "outcome"],
)
ACCURACY_OBSERVATIONS = Gauge(
    "invsync_accuracy_observations",
    "Settled counts behind the accuracy this worker uses, by location type (0: the prior).",
    ["location_type"],
)
ACCURACY_LOSS_RATE = Gauge(
    "invsync_accuracy_loss_rate",
    "Unrecorded loss per unit moved (posterior mean) in the accuracy this worker uses, by "
    "location type.",
    ["location_type"],
)
ACCURACY_PHANTOM_RATE = Gauge(
    "invsync_accuracy_phantom_rate",
    "Phantom-stock onsets per position per day (posterior mean) in the accuracy this worker "
    "uses, by location type.",
    ["location_type"],
)
ACCURACY_INVALID = Counter(
    "invsync_accuracy_invalid_total",
    "Learned accuracy states ignored because they failed decoding or validation, by where they "
    "were read: topic (the worker keeps what it had) or table (the learner starts that location "
    "type again from its prior).",
    ["source"],
)


class NullMetric:
    """Every method the worker calls on a metric (and on its children), doing nothing."""

    def labels(self, *values: object, **labels: object) -> NullMetric:
        return self

    def remove(self, *values: object) -> None:
        pass

    def inc(self, amount: float = 1) -> None:
        pass

    def dec(self, amount: float = 1) -> None:
        pass

    def set(self, value: float) -> None:
        pass

    def set_function(self, f: Callable[[], float]) -> None:
        pass

    def observe(self, amount: float) -> None:
        pass

    def time(self) -> NullMetric:
        """A context manager and decorator that times nothing."""
        return self

    def __enter__(self) -> NullMetric:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def __call__(self, f: _F) -> _F:
        return f


NULL = NullMetric()
# Every metric defined above (define new ones above this line: tests/unit/test_metrics_switch.py)
_METRICS: dict[str, MetricWrapperBase] = {
    name: value for name, value in globals().items() if isinstance(value, MetricWrapperBase)
}


def disable() -> None:
    """Make every metric of this module a no-op and stop exporting them (idempotent)."""
    module = globals()
    for name, metric in _METRICS.items():
        if module[name] is metric:
            REGISTRY.unregister(metric)
            module[name] = NULL


def enable() -> None:
    """Undo :func:`disable`: the original metrics, with what they had counted, exported again."""
    module = globals()
    for name, metric in _METRICS.items():
        if module[name] is not metric:
            REGISTRY.register(metric)
            module[name] = metric
