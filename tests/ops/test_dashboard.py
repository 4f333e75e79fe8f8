"""The Grafana dashboard as code: committed JSON is what the generator builds, every query parses
and uses only contract metrics and labels, and (with /usr/bin/prometheus) every panel query returns
data from a real Prometheus scraping a fake exposition of the contract."""

from __future__ import annotations

import http.server
import io
import json
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import promql_parser
import pytest
import yaml

from ops import dashboard_live
from ops.grafana import dashboard
from tests.ops import ALERTS, CONTRACT, DASHBOARD_JSON, OUTCOMES, series_names

ROWS = ["SLOs", "Sources", "Sinks", "Model health", "Worker"]
SERIES = series_names()


def _dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD_JSON.read_text())


def _alert_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def contract_problems(expr: str) -> list[str]:
    """What in a PromQL expression is not in the metrics contract (empty: all of it is)."""
    problems: list[str] = []
    allowed: set[str] = set()
    grouping: set[str] = set()

    def visit(node: Any) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            if node.name not in SERIES:
                problems.append(f"metric {node.name!r} is not in the contract")
                return
            labels = SERIES[node.name][1]
            allowed.update(labels)
            for matcher in node.matchers.matchers:
                if matcher.name != "__name__" and matcher.name not in labels:
                    problems.append(f"{node.name} has no label {matcher.name!r}")
        elif isinstance(node, promql_parser.AggregateExpr) and node.modifier is not None:
            grouping.update(node.modifier.labels)
        elif isinstance(node, promql_parser.BinaryExpr) and node.modifier is not None:
            if node.modifier.matching is not None:
                grouping.update(node.modifier.matching.labels)
            grouping.update(node.modifier.group_labels or [])

    promql_parser.walk(promql_parser.parse(expr), visit)
    problems += [f"grouping by unknown label {label!r}" for label in sorted(grouping - allowed)]
    return problems


# -- generated == committed ------------------------------------------------------------------------


def test_committed_json_is_what_the_generator_builds() -> None:
    assert DASHBOARD_JSON.read_text() == dashboard.render(), (
        "ops/grafana/invsync.json is stale: run `python -m ops.grafana.dashboard` and commit it"
    )


def test_check_mode_reports_a_stale_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    stale = tmp_path / "invsync.json"
    stale.write_text(dashboard.render().replace("Sink failures", "Sink failurez"))
    assert dashboard.main(["--check", "--output", str(stale)]) == 1
    assert "is stale" in capsys.readouterr().out
    assert dashboard.main(["--output", str(stale)]) == 0
    assert dashboard.main(["--check", "--output", str(stale)]) == 0


def test_rows_panels_and_datasource_variable() -> None:
    board = _dashboard()
    panels = board["panels"]
    assert [p["title"] for p in panels if p["type"] == "row"] == ROWS
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    variables = board["templating"]["list"]
    assert {"name": "datasource", "type": "datasource", "query": "prometheus"}.items() <= (
        variables[0].items()
    )
    for panel in panels:
        if panel["type"] == "row":
            continue
        assert panel["targets"], f"panel {panel['title']!r} has no query"
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}"


def test_what_people_watch_is_on_the_dashboard() -> None:
    """Every contract metric is shown somewhere (DOMAIN.md, "What people watch")."""
    used: set[str] = set()

    def visit(node: Any) -> None:
        if isinstance(node, promql_parser.VectorSelector) and node.name in SERIES:
            used.add(SERIES[node.name][0])

    for query in dashboard_live.panel_queries(_dashboard()):
        promql_parser.walk(promql_parser.parse(dashboard_live.expand(query.expr)), visit)
    assert set(CONTRACT) - used == set()


# -- PromQL parses and uses only the contract ------------------------------------------------------


def _panel_exprs() -> list[tuple[str, str]]:
    return [(q.label, q.expr) for q in dashboard_live.panel_queries(_dashboard())]


@pytest.mark.parametrize(("label", "expr"), _panel_exprs(), ids=[q[0] for q in _panel_exprs()])
def test_panel_query_parses_and_uses_the_contract(label: str, expr: str) -> None:
    expanded = dashboard_live.expand(expr, "5m")
    promql_parser.parse(expanded)  # raises on a syntax error
    assert contract_problems(expanded) == [], f"{label}: {expr}"


@pytest.mark.parametrize("rule", _alert_rules(), ids=lambda r: r["alert"])
def test_alert_expression_parses_and_uses_the_contract(rule: dict[str, Any]) -> None:
    promql_parser.parse(rule["expr"])
    assert contract_problems(rule["expr"]) == [], f"{rule['alert']}: {rule['expr']}"


@pytest.mark.parametrize(
    ("expr", "problem"),
    [
        ("sum(rate(invsync_input_event_total[5m]))", "'invsync_input_event_total' is not"),
        ("invsync_fold_batch_seconds_total", "not in the contract"),
        ('invsync_sink_in_flight{sinc="redis"}', "no label 'sinc'"),
        ("sum by (topc) (invsync_consumer_lag_seconds)", "unknown label 'topc'"),
        ("histogram_quantile(0.9, sum by (le) (rate(invsync_fold_batch_events_bucket[5m])))", None),
    ],
)
def test_contract_check_catches_typos(expr: str, problem: str | None) -> None:
    problems = contract_problems(expr)
    if problem is None:
        assert problems == []
    else:
        assert any(problem in p for p in problems), problems


def test_unknown_dashboard_variable_is_an_error() -> None:
    assert dashboard_live.expand("rate(x[$__rate_interval])", "2m") == "rate(x[2m])"
    with pytest.raises(ValueError, match="topic"):
        dashboard_live.expand('x{topic="$topic"}')


def test_a_syntax_error_is_caught() -> None:
    with pytest.raises(ValueError, match="parenthesis"):
        promql_parser.parse("sum(rate(invsync_input_events_total[5m])")


# -- every panel query returns data from a real Prometheus ----------------------------------------

_LABEL_VALUES = {
    "topic": ("inv.sales", "inv.counts"),
    "outcome": OUTCOMES,
    "partition": ("0", "1"),
    "reason": ("schema", "unknown_location"),
    "sink": ("redis", "erp"),
    "location_type": ("store", "dc"),
    "table": ("positions", "reservations"),
}
_BUCKETS = ("0.1", "0.5", "1", "5", "+Inf")


def _label_sets(labels: tuple[str, ...]) -> Iterator[str]:
    combos: list[list[tuple[str, str]]] = [[]]
    for label in labels:
        combos = [[*c, (label, v)] for c in combos for v in _LABEL_VALUES[label]]
    for combo in combos:
        yield ",".join(f'{k}="{v}"' for k, v in combo)


def fake_exposition(scrape: int, leave_out: frozenset[str] = frozenset()) -> str:
    """Text exposition of every contract metric; counters and histograms grow on each scrape."""
    out = io.StringIO()
    for name, metric in CONTRACT.items():
        if name == "up" or name in leave_out:
            continue
        family = name.removesuffix("_total") if metric.kind == "counter" else name
        out.write(f"# HELP {family} fake\n# TYPE {family} {metric.kind}\n")
        for labels in _label_sets(metric.labels):
            sep = "," if labels else ""
            if metric.kind == "counter":
                out.write(f"{name}{{{labels}}} {scrape * 10}\n")
            elif metric.kind == "gauge":
                value = time.time() - 5 if "timestamp" in name else 3 + scrape
                out.write(f"{name}{{{labels}}} {value}\n")
            else:
                for i, le in enumerate(_BUCKETS):
                    out.write(f'{name}_bucket{{{labels}{sep}le="{le}"}} {scrape * (i + 1)}\n')
                out.write(f"{name}_sum{{{labels}}} {scrape * 2.5}\n")
                out.write(f"{name}_count{{{labels}}} {scrape * len(_BUCKETS)}\n")
    return out.getvalue()


class _FakeWorker(http.server.ThreadingHTTPServer):
    leave_out: frozenset[str] = frozenset()
    scrapes = 0


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _FakeWorker

    def do_GET(self) -> None:
        if self.path != "/metrics":
            self.send_error(404)
            return
        self.server.scrapes += 1
        body = fake_exposition(self.server.scrapes, self.server.leave_out).encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def fake_worker() -> Iterator[_FakeWorker]:
    server = _FakeWorker(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


needs_prometheus = pytest.mark.skipif(
    not os.access(dashboard_live.PROMETHEUS, os.X_OK),
    reason=f"{dashboard_live.PROMETHEUS} not installed (apt-get install -y prometheus)",
)


def _live(worker: _FakeWorker) -> tuple[list[dashboard_live.PanelQuery], str]:
    out = io.StringIO()
    url = f"http://127.0.0.1:{worker.server_address[1]}/metrics"
    missing = dashboard_live.run([dashboard_live.Target.parse(url)], timeout=60, out=out)
    return missing, out.getvalue()


@needs_prometheus
def test_every_panel_query_returns_data_from_a_real_prometheus(fake_worker: _FakeWorker) -> None:
    missing, log = _live(fake_worker)
    assert missing == [], log
    assert fake_worker.scrapes >= 3
    assert dashboard_live.port_free(dashboard_live.DEFAULT_PORT), "prometheus was not stopped"


@needs_prometheus
def test_panels_without_data_are_listed_and_exit_1(
    fake_worker: _FakeWorker, capsys: pytest.CaptureFixture[str]
) -> None:
    fake_worker.leave_out = frozenset({"invsync_redis_write_errors_total", "invsync_table_keys"})
    url = f"http://127.0.0.1:{fake_worker.server_address[1]}/metrics"
    assert dashboard_live.main([url]) == 1
    listed = [line for line in capsys.readouterr().err.splitlines() if line.startswith("  ")]
    assert [line.split(":")[0].strip() for line in listed] == [
        "Sinks / Redis write errors [A]",
        "Model health / Table sizes [A]",
    ]
    assert dashboard_live.port_free(dashboard_live.DEFAULT_PORT), "prometheus was not stopped"


@needs_prometheus
def test_an_unreachable_target_fails_fast_with_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    started = time.monotonic()
    assert dashboard_live.main(["http://127.0.0.1:9/metrics", "--timeout", "60"]) == 2
    err = capsys.readouterr().err
    assert "not scraped 3 times: {'http://127.0.0.1:9/metrics': " in err, err
    assert "connection refused" in err, err
    assert time.monotonic() - started < 30
    assert dashboard_live.port_free(dashboard_live.DEFAULT_PORT), "prometheus was not stopped"
