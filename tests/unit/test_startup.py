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


def test_a_bad_channel_policy_exits_2_naming_the_file_and_key(tmp_path):
    policy = tmp_path / "channels.toml"
    example = (Path(__file__).parents[2] / "ops" / "channels.example.toml").read_text()
    policy.write_text(example.replace("store = 0.95", "store = 1.5", 1))
    result = run_worker(INVSYNC_CHANNEL_POLICY=str(policy), INVSYNC_CHANNELS="web,bopis")
    assert result.returncode == 2
    out = result.stdout + result.stderr
    assert "INVSYNC_CHANNEL_POLICY" in out and str(policy) in out and "min_confidence" in out


def test_a_channel_missing_from_the_policy_exits_2():
    example = Path(__file__).parents[2] / "ops" / "channels.example.toml"
    result = run_worker(INVSYNC_CHANNEL_POLICY=str(example), INVSYNC_CHANNELS="web,outlet")
    assert result.returncode == 2
    assert "channels.outlet" in result.stdout + result.stderr
