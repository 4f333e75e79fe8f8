"""Bad configuration fails fast, with a message that says what to fix (no services needed)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from invsync.settings import SettingsError, load_settings

INVSYNC = Path(sys.executable).parent / "invsync"


def run_worker(**env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(INVSYNC), "worker"], env=os.environ | env, capture_output=True, text=True, timeout=60
    )


def test_a_bad_setting_exits_2_naming_it():
    result = run_worker(INVSYNC_PARTITIONS="zero")
    assert result.returncode == 2
    assert "INVSYNC_PARTITIONS" in result.stdout + result.stderr


def test_an_unreachable_broker_is_retried_then_exits_1():
    result = run_worker(INVSYNC_KAFKA_BOOTSTRAP="127.0.0.1:1", INVSYNC_STARTUP_TIMEOUT_S="3")
    assert result.returncode == 1
    out = result.stdout + result.stderr
    assert "not reachable yet" in out  # the retry log line
    assert "127.0.0.1:1" in out and "INVSYNC_KAFKA_BOOTSTRAP" in out


@pytest.mark.parametrize(
    ("overrides", "name"),
    [
        ({"channels": ""}, "INVSYNC_CHANNELS"),
        ({"channels": "Web Shop"}, "INVSYNC_CHANNELS"),
        ({"kafka_bootstrap": "localhost"}, "INVSYNC_KAFKA_BOOTSTRAP"),
        ({"lateness_ms": -1}, "INVSYNC_LATENESS_MS"),
        ({"schema_registry_url": "ftp://x"}, "INVSYNC_SCHEMA_REGISTRY_URL"),
    ],
)
def test_invalid_values_name_the_variable(overrides, name):
    with pytest.raises(SettingsError) as caught:
        load_settings(**overrides)
    assert name in str(caught.value)
