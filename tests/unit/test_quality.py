"""invsync quality: the decision-quality simulation on a tiny network (fast)."""

from __future__ import annotations

import json

import pytest

from invsync import quality

TINY = {
    "name": "tiny",
    "seed": 3,
    "tuning_seed": 33,
    "days": 20,
    "warmup_days": 3,
    "network": {"stores": 4, "dcs": 1, "skus": 6},
    "store": {"shrink_rate": 0.08, "phantom_per_year": 8.0, "count_every_days": 10},
}


@pytest.fixture(scope="module")
def result() -> dict:
    return quality.run(quality.scenario_from(dict(TINY)))


def test_same_seed_same_result(result: dict) -> None:
    again = quality.run(quality.scenario_from(dict(TINY)))
    result, again = dict(result), dict(again)
    result.pop("seconds"), again.pop("seconds")
    assert json.dumps(result, sort_keys=True) == json.dumps(again, sort_keys=True)


def test_other_seed_differs() -> None:
    scenario = quality.scenario_from({**TINY, "seed": 4})
    a = quality.simulate(scenario, 3, buffers={"store": 0, "dc": 0})
    b = quality.simulate(scenario, 4, buffers={"store": 0, "dc": 0})
    assert a.counts != b.counts


def test_true_stock_never_negative(result: dict) -> None:
    assert result["min_true_on_hand"] >= 0


def test_metrics_are_shares(result: dict) -> None:
    for metrics in result["policies"].values():
        assert 0.0 <= metrics["phantom"] <= 1.0
        assert 0.0 <= metrics["hidden"] <= 1.0
        assert metrics["phantom"] + metrics["hidden"] <= 1.0
        for by_type in metrics["by_location_type"].values():
            assert 0.0 <= by_type["phantom"] <= 1.0
            assert 0.0 <= by_type["hidden"] <= 1.0
    for stated, observed in result["calibration"]:
        assert 0.0 <= stated <= 1.0
        assert 0.0 <= observed <= 1.0


def test_naive_has_at_least_the_buffers_phantom_under_shrink(result: dict) -> None:
    assert result["counts"]["thefts"] > 0
    naive, static = result["policies"]["naive_atp"], result["policies"]["static_buffer"]
    assert naive["phantom"] >= static["phantom"]
    assert naive["phantom"] > 0


def test_json_shape(result: dict, tmp_path) -> None:
    out = tmp_path / "q.json"
    png = tmp_path / "q.png"
    scenario = tmp_path / "tiny.toml"
    scenario.write_text(
        "seed = 3\ntuning_seed = 33\ndays = 8\nwarmup_days = 2\n"
        "[network]\nstores = 2\ndcs = 1\nskus = 3\n"
    )
    plot = pytest.importorskip("matplotlib") is not None
    args = ["--scenario", str(scenario), "--json", str(out)] + (
        ["--plot", str(png)] if plot else []
    )
    assert quality.main(args) == 0
    data = json.loads(out.read_text())
    assert data["scenario"] == "tiny"
    assert set(data["policies"]) == {"naive_atp", "static_buffer", "confidence"}
    for metrics in data["policies"].values():
        assert isinstance(metrics["phantom"], float)
        assert isinstance(metrics["hidden"], float)
    assert all(len(pair) == 2 for pair in data["calibration"])
    assert len(data["calibration_counts"]) == len(data["calibration"])
    assert data["counts"]["decisions"] > 0
    if plot:
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_buffers_tuned_on_the_tuning_seed_only() -> None:
    scenario = quality.scenario_from(dict(TINY))
    buffers, _ = quality.tune_buffers(scenario)
    moved = quality.scenario_from({**TINY, "seed": 99})
    assert quality.tune_buffers(moved)[0] == buffers
    with pytest.raises(ValueError, match="tuning_seed"):
        quality.scenario_from({**TINY, "tuning_seed": TINY["seed"]})


def test_unknown_scenario_key_is_an_error() -> None:
    with pytest.raises(ValueError, match="unknown keys"):
        quality.scenario_from({**TINY, "store": {"shrinkage": 1}})


@pytest.mark.parametrize("name", ["default", "high_shrink", "sparse_counts", "phantom_target"])
def test_shipped_scenarios_load(name: str) -> None:
    scenario = quality.load_scenario(f"scenarios/{name}.toml")
    assert scenario["name"] == name
