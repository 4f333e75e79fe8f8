"""The invsync Grafana dashboard, as code (Grafana Foundation SDK, Grafana 11.6 line).

    python -m ops.grafana.dashboard           # (re)write ops/grafana/invsync.json
    python -m ops.grafana.dashboard --check   # exit 1 if the committed JSON is not what this builds

Rows: SLOs (lag seconds, end-to-end latency p99, dead-letter share), Sources (throughput per topic
and outcome, freshness), Sinks (retries, failures, in-flight, ERP accepted, Redis errors), Model
health (confidence distribution, phantom suspects, reservation age, table sizes), Worker (batch
time and size, rebalances, assigned partitions, processes up). Every query goes through the
`datasource` variable. The thresholds drawn are the alerting thresholds of
ops/prometheus/alerts.yml (lag 60 s, dead letters 1 %, source silent 15 min, 5 rebalances/15 min).
"""

from __future__ import annotations

import argparse
import difflib
import itertools
import json
import sys
from collections.abc import Iterator
from pathlib import Path

from grafana_foundation_sdk.builders import common as common_b
from grafana_foundation_sdk.builders import dashboard as dash_b
from grafana_foundation_sdk.builders import heatmap as heatmap_b
from grafana_foundation_sdk.builders import prometheus as prom_b
from grafana_foundation_sdk.builders import stat as stat_b
from grafana_foundation_sdk.builders import timeseries as ts_b
from grafana_foundation_sdk.cog import builder as cogbuilder
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models import dashboard as dash_m
from grafana_foundation_sdk.models import heatmap as heatmap_m
from grafana_foundation_sdk.models import prometheus as prom_m

JSON_PATH = Path(__file__).with_name("invsync.json")
UID = "invsync-overview"
DATASOURCE = dash_m.DataSourceRef(type_val="prometheus", uid="${datasource}")

# Alerting thresholds (ops/prometheus/alerts.yml), drawn on the panels.
LAG_SLO_SECONDS = 60.0
DLQ_SHARE_MAX = 0.01
SOURCE_SILENT_SECONDS = 900.0
REBALANCES_PER_15M_MAX = 5.0

RATE = "$__rate_interval"

Panels = list[cogbuilder.Builder[dash_m.Panel]]
Row = tuple[dash_b.Row, Panels]


def _rate(metric: str, by: str = "") -> str:
    grouping = f" by ({by}) " if by else ""
    return f"sum{grouping}(rate({metric}[{RATE}]))"


def _quantile(q: float, histogram: str, by: str = "") -> str:
    labels = f"{by}, le" if by else "le"
    return f"histogram_quantile({q}, sum by ({labels}) (rate({histogram}_bucket[{RATE}])))"


DLQ_SHARE = f"{_rate('invsync_dead_letters_total')} / {_rate('invsync_input_events_total')}"


class _Ids:
    """Stable panel ids, in the order the panels are declared."""

    def __init__(self) -> None:
        self._next: Iterator[int] = itertools.count(1)

    def __call__(self) -> int:
        return next(self._next)


def _query(expr: str, legend: str, ref: str = "A", fmt: str = "time_series") -> prom_b.Dataquery:
    return (
        prom_b.Dataquery()
        .expr(expr)
        .legend_format(legend)
        .ref_id(ref)
        .range()
        .editor_mode(prom_m.QueryEditorMode.CODE)
        .format(prom_m.PromQueryFormat(fmt))
        .datasource(DATASOURCE)
    )


def _thresholds(red_at: float | None) -> dash_b.ThresholdsConfig:
    steps = [dash_m.Threshold(value=None, color="green")]
    if red_at is not None:
        steps.append(dash_m.Threshold(value=red_at, color="red"))
    return dash_b.ThresholdsConfig().mode(dash_m.ThresholdsMode.ABSOLUTE).steps(steps)


def _timeseries(
    ids: _Ids,
    title: str,
    description: str,
    queries: list[prom_b.Dataquery],
    *,
    unit: str,
    width: int = 12,
    height: int = 8,
    red_at: float | None = None,
    min_val: float | None = 0.0,
    max_val: float | None = None,
) -> ts_b.Panel:
    panel = (
        ts_b.Panel()
        .id(ids())
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .targets(list(queries))
        .unit(unit)
        .span(width)
        .height(height)
        .line_width(1)
        .fill_opacity(10)
        .thresholds(_thresholds(red_at))
        .thresholds_style(
            common_b.GraphThresholdsStyleConfig().mode(
                common.GraphThresholdsStyleMode.DASHED
                if red_at is not None
                else common.GraphThresholdsStyleMode.OFF
            )
        )
        .legend(
            common_b.VizLegendOptions()
            .show_legend(True)
            .display_mode(common.LegendDisplayMode.TABLE)
            .placement(common.LegendPlacement.BOTTOM)
            .calcs(["lastNotNull", "max"])
        )
        .tooltip(
            common_b.VizTooltipOptions()
            .mode(common.TooltipDisplayMode.MULTI)
            .sort(common.SortOrder.DESCENDING)
        )
    )
    if min_val is not None:
        panel = panel.min(min_val)
    if max_val is not None:
        panel = panel.max(max_val)
    return panel


def _stat(
    ids: _Ids, title: str, description: str, expr: str, *, unit: str, red_at: float
) -> stat_b.Panel:
    return (
        stat_b.Panel()
        .id(ids())
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .with_target(_query(expr, title))
        .unit(unit)
        .span(8)
        .height(4)
        .thresholds(_thresholds(red_at))
        .color_mode(common.BigValueColorMode.BACKGROUND)
        .graph_mode(common.BigValueGraphMode.AREA)
        .reduce_options(common_b.ReduceDataOptions().calcs(["lastNotNull"]).values(False))
    )


def _slo_row(ids: _Ids) -> Row:
    row = dash_b.Row("SLOs").id(ids())
    return row, [
        _stat(
            ids,
            "Max consumer lag",
            "Worst partition's lag in event time (newest record minus last committed). "
            f"SLO: under {LAG_SLO_SECONDS:.0f} s (InvsyncLagAboveSLO).",
            "max(invsync_consumer_lag_seconds)",
            unit="s",
            red_at=LAG_SLO_SECONDS,
        ),
        _stat(
            ids,
            "Event-to-publish p99",
            "99th percentile of input occurred_at to availability record produced.",
            _quantile(0.99, "invsync_event_to_publish_seconds"),
            unit="s",
            red_at=LAG_SLO_SECONDS,
        ),
        _stat(
            ids,
            "Dead-letter share",
            f"Dead-lettered input as a share of all input. Alert above {DLQ_SHARE_MAX:.0%}.",
            DLQ_SHARE,
            unit="percentunit",
            red_at=DLQ_SHARE_MAX,
        ),
        _timeseries(
            ids,
            "Consumer lag (seconds) by partition",
            "Event time of the newest record minus that of the last committed record.",
            [
                _query(
                    "max by (topic, partition) (invsync_consumer_lag_seconds)",
                    "{{topic}}/{{partition}}",
                )
            ],
            unit="s",
            red_at=LAG_SLO_SECONDS,
        ),
        _timeseries(
            ids,
            "Consumer lag (messages) by partition",
            "Broker end offset minus the consumer's committed position.",
            [
                _query(
                    "sum by (topic, partition) (invsync_consumer_lag_messages)",
                    "{{topic}}/{{partition}}",
                )
            ],
            unit="short",
        ),
        _timeseries(
            ids,
            "Event-to-publish latency",
            "Input occurred_at to availability record produced.",
            [
                _query(_quantile(0.5, "invsync_event_to_publish_seconds"), "p50", "A"),
                _query(_quantile(0.99, "invsync_event_to_publish_seconds"), "p99", "B"),
            ],
            unit="s",
            red_at=LAG_SLO_SECONDS,
        ),
        _timeseries(
            ids,
            "Dead-letter share of input",
            f"Alert (InvsyncDeadLetterRate) above {DLQ_SHARE_MAX:.0%} for 10 minutes.",
            [_query(DLQ_SHARE, "dead-lettered / input")],
            unit="percentunit",
            red_at=DLQ_SHARE_MAX,
            width=6,
        ),
        _timeseries(
            ids,
            "Dead letters by reason",
            "Inputs sent to the dead-letter topic per second, by reason.",
            [_query(_rate("invsync_dead_letters_total", "reason"), "{{reason}}")],
            unit="ops",
            width=6,
        ),
    ]


def _sources_row(ids: _Ids) -> Row:
    row = dash_b.Row("Sources").id(ids())
    return row, [
        _timeseries(
            ids,
            "Input events by topic and outcome",
            "Events per second; outcome is applied, duplicate, late, redelivered or dead_lettered.",
            [
                _query(
                    _rate("invsync_input_events_total", "topic, outcome"), "{{topic}} {{outcome}}"
                )
            ],
            unit="ops",
        ),
        _timeseries(
            ids,
            "Source freshness (time since last event)",
            "Wall-clock time since each topic last delivered an event, for topics that have "
            f"spoken. Alert (InvsyncSourceSilent) above {SOURCE_SILENT_SECONDS / 60:.0f} min.",
            [
                _query(
                    "time() - max by (topic) (invsync_source_last_event_timestamp_seconds > 0)",
                    "{{topic}}",
                )
            ],
            unit="s",
            red_at=SOURCE_SILENT_SECONDS,
        ),
    ]


def _sinks_row(ids: _Ids) -> Row:
    row = dash_b.Row("Sinks").id(ids())
    return row, [
        _timeseries(
            ids,
            "Sink retries",
            "Retried writes per second, by sink.",
            [_query(_rate("invsync_sink_retries_total", "sink"), "{{sink}}")],
            unit="ops",
            width=8,
        ),
        _timeseries(
            ids,
            "Sink failures",
            "Writes that failed after their retries, per second (InvsyncSinkFailing).",
            [_query(_rate("invsync_sink_failures_total", "sink"), "{{sink}}")],
            unit="ops",
            width=8,
        ),
        _timeseries(
            ids,
            "Sink in-flight",
            "Writes sent and not yet acknowledged, by sink.",
            [_query("sum by (sink) (invsync_sink_in_flight)", "{{sink}}")],
            unit="short",
            width=8,
        ),
        _timeseries(
            ids,
            "ERP deltas accepted",
            "Stock deltas the ERP accepted, per second (ERP dispatcher).",
            [_query(_rate("invsync_erp_deltas_accepted_total"), "accepted")],
            unit="ops",
        ),
        _timeseries(
            ids,
            "Redis write errors",
            "Failed writes to the Redis read model, per second.",
            [_query(_rate("invsync_redis_write_errors_total"), "errors")],
            unit="ops",
        ),
    ]


def _model_row(ids: _Ids) -> Row:
    row = dash_b.Row("Model health").id(ids())
    confidence_heatmap = (
        heatmap_b.Panel()
        .id(ids())
        .title("Position confidence distribution")
        .description("How many position updates fell in each confidence bucket (all locations).")
        .datasource(DATASOURCE)
        .with_target(
            _query(
                f"sum by (le) (increase(invsync_position_confidence_bucket[{RATE}]))",
                "{{le}}",
                fmt="heatmap",
            )
        )
        .calculate(False)
        .color(
            heatmap_b.HeatmapColorOptions()
            .mode(heatmap_m.HeatmapColorMode.SCHEME)
            .scheme("Oranges")
            .scale(heatmap_m.HeatmapColorScale.EXPONENTIAL)
            .exponent(0.5)
            .steps(64)
        )
        .y_axis(heatmap_b.YAxisConfig().unit("percentunit").decimals(2))
        .span(12)
        .height(8)
    )
    return row, [
        confidence_heatmap,
        _timeseries(
            ids,
            "Position confidence by location type",
            "10th percentile and median of position confidence, per location type.",
            [
                _query(
                    _quantile(0.1, "invsync_position_confidence", "location_type"),
                    "{{location_type}} p10",
                    "A",
                ),
                _query(
                    _quantile(0.5, "invsync_position_confidence", "location_type"),
                    "{{location_type}} p50",
                    "B",
                ),
            ],
            unit="percentunit",
            max_val=1.0,
        ),
        _timeseries(
            ids,
            "Phantom-stock suspects",
            "Positions suspected of phantom stock, by location type.",
            [_query("sum by (location_type) (invsync_phantom_suspects)", "{{location_type}}")],
            unit="short",
            width=8,
        ),
        _timeseries(
            ids,
            "Reservation age",
            "Age of reservations when they are released or consumed.",
            [
                _query(_quantile(0.5, "invsync_reservation_age_seconds"), "p50", "A"),
                _query(_quantile(0.99, "invsync_reservation_age_seconds"), "p99", "B"),
            ],
            unit="s",
            width=8,
        ),
        _timeseries(
            ids,
            "Table sizes",
            "Keys per state table.",
            [_query("sum by (table) (invsync_table_keys)", "{{table}}")],
            unit="short",
            width=8,
        ),
    ]


def _worker_row(ids: _Ids) -> Row:
    row = dash_b.Row("Worker").id(ids())
    return row, [
        _timeseries(
            ids,
            "Fold batch time",
            "Time to fold one batch: decode, fold, table writes, emits.",
            [
                _query(_quantile(0.5, "invsync_fold_batch_seconds"), "p50", "A"),
                _query(_quantile(0.99, "invsync_fold_batch_seconds"), "p99", "B"),
            ],
            unit="s",
            width=8,
        ),
        _timeseries(
            ids,
            "Fold batch size",
            "Events per folded batch: mean and 99th percentile.",
            [
                _query(
                    f"{_rate('invsync_fold_batch_events_sum')}"
                    f" / {_rate('invsync_fold_batch_events_count')}",
                    "mean",
                    "A",
                ),
                _query(_quantile(0.99, "invsync_fold_batch_events"), "p99", "B"),
            ],
            unit="short",
            width=8,
        ),
        _timeseries(
            ids,
            "Rebalances in the last 15 min",
            "Consumer-group rebalances each worker saw in the trailing 15 minutes "
            f"(InvsyncRebalanceStorm above {REBALANCES_PER_15M_MAX:.0f}).",
            [
                _query(
                    "max by (instance) (increase(invsync_rebalances_total[15m]))",
                    "{{instance}}",
                )
            ],
            unit="short",
            width=8,
            red_at=REBALANCES_PER_15M_MAX,
        ),
        _timeseries(
            ids,
            "Assigned partitions",
            "Partitions assigned to each worker.",
            [_query("sum by (instance) (invsync_assigned_partitions)", "{{instance}}")],
            unit="short",
        ),
        _timeseries(
            ids,
            "Processes up",
            "Targets that answered their last scrape, per job (worker: invsync, ERP dispatcher: "
            "invsync-erp).",
            [_query('sum by (job) (up{job=~"invsync|invsync-erp"})', "{{job}}")],
            unit="short",
        ),
    ]


def build() -> dash_m.Dashboard:
    ids = _Ids()
    builder = (
        dash_b.Dashboard("invsync")
        .uid(UID)
        .description(
            "Real-time inventory availability: SLOs, sources, sinks, model health, worker."
        )
        .tags(["invsync"])
        .editable()
        .tooltip(dash_m.DashboardCursorSync.CROSSHAIR)
        .time("now-1h", "now")
        .refresh("30s")
        .timezone("browser")
        .with_variable(
            dash_b.DatasourceVariable("datasource").label("Data source").type("prometheus")
        )
    )
    for make_row in (_slo_row, _sources_row, _sinks_row, _model_row, _worker_row):
        row, panels = make_row(ids)
        builder = builder.with_row(row)
        for panel in panels:
            builder = builder.with_panel(panel)
    return builder.build()


def render() -> str:
    """The dashboard as the JSON text committed in ops/grafana/invsync.json."""
    return json.dumps(build(), cls=JSONEncoder, indent=2, sort_keys=True) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--check", action="store_true", help="compare with the committed JSON, write nothing"
    )
    parser.add_argument(
        "--output", type=Path, default=JSON_PATH, help="JSON file (default: %(default)s)"
    )
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        current = args.output.read_text() if args.output.exists() else ""
        if current == text:
            print(f"{args.output}: up to date")
            return 0
        diff = difflib.unified_diff(
            current.splitlines(keepends=True),
            text.splitlines(keepends=True),
            fromfile=f"{args.output} (committed)",
            tofile="generated",
            n=2,
        )
        sys.stdout.writelines(itertools.islice(diff, 60))
        print(f"\n{args.output} is stale: run `python -m ops.grafana.dashboard` and commit it")
        return 1
    args.output.write_text(text)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
