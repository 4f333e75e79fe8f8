"""Alerting rules: promtool validates them and runs their unit tests; every alert has a case where
it fires and one where it must stay quiet, a severity, and summary/description/runbook."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.ops import ALERTS, PROMETHEUS_CONFIG, RULE_TESTS

PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None,
    reason="promtool not installed (Debian package `prometheus`; CI installs it)",
)
SEVERITIES = {"critical", "warning"}


def _promtool(*args: str) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run(
        [PROMTOOL, *args], capture_output=True, text=True, timeout=120, check=False
    )


def _alerts() -> dict[str, dict[str, Any]]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return {rule["alert"]: rule for group in groups for rule in group["rules"] if "alert" in rule}


def _rule_test_files() -> list[str]:
    return sorted(str(p) for p in RULE_TESTS.glob("*.yml"))


@needs_promtool
def test_promtool_check_rules() -> None:
    result = _promtool("check", "rules", str(ALERTS))
    assert result.returncode == 0, result.stdout + result.stderr


@needs_promtool
def test_promtool_test_rules() -> None:
    files = _rule_test_files()
    assert files, f"no rule unit tests in {RULE_TESTS}"
    result = _promtool("test", "rules", *files)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("SUCCESS") == len(files), result.stdout


@needs_promtool
def test_promtool_check_local_prometheus_config() -> None:
    result = _promtool("check", "config", str(PROMETHEUS_CONFIG))
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_issue_alerts_exist() -> None:
    assert {
        "InvsyncLagAboveSLO",
        "InvsyncNoProgress",
        "InvsyncDeadLetterRate",
        "InvsyncSinkFailing",
        "InvsyncSourceSilent",
        "InvsyncWorkerDown",
        "InvsyncRebalanceStorm",
    } <= set(_alerts())


@pytest.mark.parametrize("name", sorted(_alerts()))
def test_alert_has_severity_and_annotations(name: str) -> None:
    rule = _alerts()[name]
    assert rule.get("labels", {}).get("severity") in SEVERITIES, name
    annotations = rule.get("annotations", {})
    for key in ("summary", "description", "runbook"):
        assert annotations.get(key, "").strip(), f"{name}: annotation {key!r} missing"
    assert f"> {name}" in annotations["runbook"], f"{name}: runbook should name its README entry"


def test_every_alert_has_a_firing_and_a_quiet_unit_test() -> None:
    firing: set[str] = set()
    quiet: set[str] = set()
    for path in _rule_test_files():
        for case in yaml.safe_load(Path(path).read_text()).get("tests", []):
            for check in case.get("alert_rule_test", []):
                (firing if check.get("exp_alerts") else quiet).add(check["alertname"])
    alerts = set(_alerts())
    missing = {
        name: [kind for kind, seen in (("firing", firing), ("quiet", quiet)) if name not in seen]
        for name in sorted(alerts)
    }
    missing = {name: kinds for name, kinds in missing.items() if kinds}
    assert not missing, f"alerts without a unit test case (ops/prometheus/tests): {missing}"
    assert (firing | quiet) <= alerts, f"tests for unknown alerts: {(firing | quiet) - alerts}"
