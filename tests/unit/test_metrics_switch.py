"""``INVSYNC_METRICS_ENABLED=false``: :func:`streams.metrics.disable` makes the worker's
instrumentation no-ops (only to measure what it costs, ``make bench BENCH_METRICS=compare``).

Every call site must still work (the null metric has every method they call, and they look the
metric up at call time) and nothing may be recorded or exported. ``enable`` restores the real
metrics, so the other tests see them.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from prometheus_client import REGISTRY, generate_latest

from streams import metrics
from streams.dead_letters import dead_letter, send_dead_letters
from streams.hold_batch import _observe_age

STREAMS = Path(metrics.__file__).parent


@pytest.fixture
def disabled() -> Iterator[None]:
    metrics.disable()
    try:
        yield
    finally:
        metrics.enable()


def _family_names() -> set[str]:
    return {family.name for family in REGISTRY.collect()}


def _worker_family_names() -> set[str]:
    return {family.name for metric in metrics._METRICS.values() for family in metric.describe()}


def _exported() -> list[str]:
    """The invsync samples /metrics would serve (the process collectors move by themselves)."""
    return [line for line in generate_latest().decode().splitlines() if "invsync_" in line]


def _recorded() -> dict[str, list[tuple[str, tuple[tuple[str, str], ...], float]]]:
    """Every sample of the real (original) metric objects, registered or not."""
    return {
        name: [
            (s.name, tuple(sorted(s.labels.items())), s.value)
            for family in metric.collect()
            for s in family.samples
        ]
        for name, metric in metrics._METRICS.items()
    }


def _chain(node: ast.AST) -> list[str]:
    """``metrics.EVENTS.labels(t, o).inc(n)`` -> ["metrics", "EVENTS", "labels", "inc"]."""
    parts: list[str] = []
    while True:
        if isinstance(node, ast.Attribute):
            parts.append(node.attr)
            node = node.value
        elif isinstance(node, ast.Call):
            node = node.func
        elif isinstance(node, ast.Name):
            parts.append(node.id)
            return parts[::-1]
        else:
            return []


def call_sites() -> dict[str, set[str]]:
    """Metric name -> the methods called on it (or its children) anywhere in streams/."""
    used: dict[str, set[str]] = {}
    for path in sorted(STREAMS.glob("*.py")):
        if path.name == "metrics.py":
            continue
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module == "streams.metrics":
                pytest.fail(f"{path.name}: `from streams.metrics import` escapes disable()")
            chain = _chain(node) if isinstance(node, ast.Attribute) else []
            if len(chain) >= 2 and chain[0] == "metrics" and chain[1].isupper():
                used.setdefault(chain[1], set()).update(chain[2:])
    return used


def test_every_call_site_names_a_metric_and_uses_methods_the_null_metric_has() -> None:
    used = call_sites()
    assert {"EVENTS", "BATCH_SECONDS", "SINK_IN_FLIGHT", "LAG_SECONDS"} <= set(used)
    assert set(used) <= set(metrics._METRICS), "a call site names a metric disable() misses"
    methods = set().union(*used.values())
    assert {"labels", "inc", "set", "observe", "time", "set_function"} <= methods
    missing = {m for m in methods if not callable(getattr(metrics.NULL, m, None))}
    assert not missing, f"NullMetric lacks {missing}"
    # metrics.LAG_* are also removed through a loop variable (streams/health.py)
    assert callable(metrics.NULL.remove)


def test_after_disable_the_call_sites_work_and_nothing_is_recorded_or_exported(
    disabled: None,
) -> None:
    originals = metrics._METRICS
    assert all(getattr(metrics, name) is metrics.NULL for name in originals)
    assert not _family_names() & _worker_family_names(), "a disabled metric is still exported"
    before, real_before = _exported(), _recorded()

    # real call sites
    codec = SimpleNamespace(encode=lambda spec, record: b"")
    outputs = SimpleNamespace(produce=lambda *args: None)
    letter = dead_letter("undecodable", "bad bytes", "pos.sales", 0, 7, b"k", b"v")
    send_dead_letters([letter], codec, outputs, SimpleNamespace(), "dead-letters")  # type: ignore[arg-type]
    _observe_age(SimpleNamespace(ended_at=5_000, expires_at=9_000, created_at=1_000))  # type: ignore[arg-type]
    # every method the call sites use, on every metric, as they use it
    for name in originals:
        metric: Any = getattr(metrics, name)
        child = metric.labels("a", "b")
        for target in (metric, child):
            target.inc()
            target.inc(3)
            target.dec(2)
            target.set(4.5)
            target.set_function(lambda: 1.0)
            target.observe(0.2)
            with target.time():
                pass
        metric.remove("a", "b")

    assert _exported() == before, "something was exported while disabled"
    assert not _family_names() & _worker_family_names()
    assert _recorded() == real_before, "the real metrics counted behind the scenes"


def test_disable_is_idempotent_and_enable_restores_the_real_metrics() -> None:
    metrics.disable()
    metrics.disable()
    metrics.enable()
    metrics.enable()
    assert all(getattr(metrics, name) is metric for name, metric in metrics._METRICS.items())
    assert _worker_family_names() <= _family_names()
    sample = ("invsync_dead_letters_total", {"reason": "metrics-switch-test"})
    before = REGISTRY.get_sample_value(*sample) or 0.0
    metrics.DEAD_LETTERS.labels("metrics-switch-test").inc()
    assert REGISTRY.get_sample_value(*sample) == before + 1
