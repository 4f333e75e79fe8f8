"""The metrics contract the dashboard and the alerts are checked against.

Names are the exposed families (counters end in `_total`); a histogram is used in PromQL as
`<name>_bucket` (with `le`), `<name>_sum` and `<name>_count`. A name or label used in a panel or an
alert that is not here fails tests/ops/test_dashboard.py, so a typo cannot ship.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
ALERTS = REPO / "ops" / "prometheus" / "alerts.yml"
RULE_TESTS = REPO / "ops" / "prometheus" / "tests"
PROMETHEUS_CONFIG = REPO / "ops" / "prometheus" / "prometheus.yml"
DASHBOARD_JSON = REPO / "ops" / "grafana" / "invsync.json"


@dataclass(frozen=True)
class Metric:
    kind: str  # counter | gauge | histogram
    labels: tuple[str, ...] = ()


CONTRACT: dict[str, Metric] = {
    "invsync_input_events_total": Metric("counter", ("topic", "outcome")),
    "invsync_dead_letters_total": Metric("counter", ("reason",)),
    "invsync_fold_batch_seconds": Metric("histogram"),
    "invsync_fold_batch_events": Metric("histogram"),
    "invsync_consumer_lag_messages": Metric("gauge", ("topic", "partition")),
    "invsync_consumer_lag_seconds": Metric("gauge", ("topic", "partition")),
    "invsync_event_to_publish_seconds": Metric("histogram"),
    "invsync_source_last_event_timestamp_seconds": Metric("gauge", ("topic",)),
    "invsync_rebalances_total": Metric("counter"),
    "invsync_assigned_partitions": Metric("gauge"),
    "invsync_sink_retries_total": Metric("counter", ("sink",)),
    "invsync_sink_failures_total": Metric("counter", ("sink",)),
    "invsync_sink_in_flight": Metric("gauge", ("sink",)),
    "invsync_erp_deltas_accepted_total": Metric("counter"),
    "invsync_redis_write_errors_total": Metric("counter"),
    "invsync_reservation_age_seconds": Metric("histogram"),
    "invsync_position_confidence": Metric("histogram", ("location_type",)),
    "invsync_phantom_suspects": Metric("gauge", ("location_type",)),
    "invsync_table_keys": Metric("gauge", ("table",)),
    # Prometheus' own per-target series: job "invsync" (worker), "invsync-erp" (ERP dispatcher).
    "up": Metric("gauge"),
}

OUTCOMES = ("applied", "duplicate", "late", "redelivered", "dead_lettered")
JOBS = ("invsync", "invsync-erp")
# Labels Prometheus attaches to every scraped series, and the histogram bucket label.
TARGET_LABELS = frozenset({"job", "instance"})


def series_names() -> dict[str, tuple[str, frozenset[str]]]:
    """Every series name PromQL may select, mapped to (family, labels it may be matched on)."""
    names: dict[str, tuple[str, frozenset[str]]] = {}
    for family, metric in CONTRACT.items():
        labels = frozenset(metric.labels) | TARGET_LABELS
        if metric.kind == "histogram":
            names[f"{family}_bucket"] = (family, labels | {"le"})
            names[f"{family}_sum"] = (family, labels)
            names[f"{family}_count"] = (family, labels)
        else:
            names[family] = (family, labels)
    return names
