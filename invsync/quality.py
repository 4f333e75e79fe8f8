"""Decision quality on a simulated network with a hidden true stock (``invsync quality``).

The simulation keeps the TRUE sellable on hand of every sku-location and, beside it, the RECORDED
ledger that the service would hold, built with the real :func:`state.position.apply` from the
events the sources would send: POS sales as scanned (with scan errors), WMS receipts and picks,
cycle counts with miscounts. What happens on the shelf and is never recorded: shrink/theft
(stores far more than DCs), phantom stock events (the units of a facing vanish - misplaced,
damaged out of sight - but stay on the record), lost sales when the shelf is empty.

Demand arrives one unit at a time as a Poisson process with per-SKU (skewed, log-normal) and
per-location velocity, a daily profile within trading hours and a weekly profile. Each demand
arrival is a decision point: every policy states what it would offer a channel for that
sku-location at that instant, from the recorded ledger only, and is scored against the truth:

* ``phantom`` = share of demand arriving when the policy offered >= 1 unit but truly 0 were
  sellable (oversell risk);
* ``hidden`` = share of demand arriving when the policy offered 0 but >= 1 truly were (lost sales).

Demand is served from the shelf whatever the policies say (a walk-in buys what is there; a DC
picks what is there), so the three policies are scored on the same trajectory.

Policies:

* ``naive_atp`` - recorded ATP (on hand - reserved, floored at 0);
* ``static_buffer`` - ATP minus one buffer per location type, tuned the way a retailer would, on
  a separate tuning run (``tuning_seed``, never the evaluation seed): for each buffer 0..max the
  phantom and hidden shares of that location type are measured and the buffer is chosen by the
  scenario's rule - ``min_cost`` (default): the buffer minimising
  ``phantom_cost * phantom + hidden``; ``phantom_target``: the smallest buffer whose phantom
  share is <= ``phantom_target``;
* ``confidence`` - the largest quantity whose confidence meets a fixed minimum per location type
  (scenario ``min_confidence``, set a priori like a channel policy, not tuned), with the
  accuracy per location type *learned* from the count discrepancies seen so far
  (:meth:`ClassAccuracy.learn`, starting from :data:`PRIORS`; a position's first count is not
  learned from).

Each decision assesses the recorded ledger with :func:`state.availability.assess_ledger`, the
function the worker's ``project()`` uses, with the accuracy learned so far.

Calibration: the stated ``confidence(1)`` of every decision is bucketed into deciles, and each
bucket reports ``[mean stated, observed share of decisions with >= 1 truly sellable]``.
"""

from __future__ import annotations

import argparse
import heapq
import json
import math
import random
import sys
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from state.availability import assess_ledger
from state.confidence import PRIORS, ClassAccuracy, learn_from_count
from state.events import Kind, StockEvent
from state.position import Ledger, apply
from state.trading_hours import ALWAYS_OPEN, TradingHours

HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS
POLICIES = ("naive_atp", "static_buffer", "confidence")
TYPES = ("store", "dc")

# event kinds in the simulation's queue (ties at the same instant: lower first)
_COUNT, _RECEIPT, _PHANTOM, _THEFT, _DEMAND = range(5)

DEFAULTS: dict[str, Any] = {
    "name": "unnamed",
    "seed": 1,
    "tuning_seed": 1001,
    "days": 60,
    "warmup_days": 14,
    "network": {"stores": 20, "dcs": 2, "skus": 40},
    "demand": {
        "store_mean_velocity": 0.8,  # units/day per sku-store, averaged over skus
        "dc_mean_velocity": 6.0,  # units/day per sku-dc (online orders shipped from the DC)
        "velocity_skew": 1.0,  # log-normal sigma of the per-sku velocity
        "location_skew": 0.3,  # log-normal sigma of the per-location velocity
        "daily_amplitude": 0.5,  # hourly profile: 1 + a * cos(2 pi (h - peak) / 24)
        "peak_hour": 17,
        "weekly": [0.9, 0.9, 0.95, 1.0, 1.1, 1.3, 0.85],  # Monday first
    },
    "store": {
        "open_hour": 8,
        "close_hour": 22,
        "shrink_rate": 0.02,  # units stolen/lost unrecorded per unit of demand
        "scan_error_rate": 0.02,  # share of sales scanned wrongly
        "scan_wrong_sku_share": 0.5,  # of which: scanned as another sku (else: wrong quantity)
        "miscount_rate": 0.1,  # share of counts off by 1..miscount_max
        "miscount_max": 2,
        "phantom_per_year": 1.0,  # phantom stock events per sku-location per year
        "count_every_days": 30,
        "count_hour": 6,
        "lead_time_days": 3,
        "safety_days": 3,
        "order_cover_days": 14,
        "delivery_hour": 5,
    },
    "dc": {
        "open_hour": 0,
        "close_hour": 24,
        "shrink_rate": 0.001,
        "scan_error_rate": 0.002,
        "scan_wrong_sku_share": 0.5,
        "miscount_rate": 0.01,
        "miscount_max": 1,
        "phantom_per_year": 0.1,
        "count_every_days": 90,
        "count_hour": 4,
        "lead_time_days": 7,
        "safety_days": 5,
        "order_cover_days": 21,
        "delivery_hour": 3,
    },
    "policies": {
        "static_buffer_rule": "min_cost",  # or "phantom_target"
        "phantom_cost": 4.0,  # a promised unit that is not there costs ~4 lost sales
        "phantom_target": 0.01,
        "max_buffer": 10,
        # per location type; empty: the break-even of the phantom cost, c / (1 + c)
        "min_confidence": {},
        # silence since the last sale for the freezing evidence: "trading" (only the location
        # type's trading hours count, as the confidence model asks) or "calendar"
        "silence_clock": "trading",
    },
}


def min_confidence(scenario: dict[str, Any]) -> dict[str, float]:
    """The confidence policy's minimum per location type: the scenario's, else the break-even
    of its phantom cost ``c`` (offering a unit pays when P(there) * 1 >= (1 - P) * c)."""
    pol = scenario["policies"]
    cost = float(pol["phantom_cost"])
    return {k: float(pol["min_confidence"].get(k, cost / (1.0 + cost))) for k in TYPES}


def load_scenario(path: str | Path) -> dict[str, Any]:
    """A scenario file (TOML) merged over :data:`DEFAULTS`; ``name`` defaults to the file stem."""
    with open(path, "rb") as f:
        data = tomllib.load(f)
    data.setdefault("name", Path(path).stem)
    return scenario_from(data)


def scenario_from(data: dict[str, Any]) -> dict[str, Any]:
    """``data`` merged over :data:`DEFAULTS` (one level of tables deep), validated."""
    merged: dict[str, Any] = {}
    for key, default in DEFAULTS.items():
        value = data.get(key, default)
        if isinstance(default, dict):
            if not isinstance(value, dict):
                raise ValueError(f"scenario: {key} must be a table")
            unknown = set(value) - set(default)
            if unknown:
                raise ValueError(f"scenario: unknown keys in [{key}]: {sorted(unknown)}")
            value = {**default, **value}
        merged[key] = value
    unknown = set(data) - set(DEFAULTS)
    if unknown:
        raise ValueError(f"scenario: unknown keys: {sorted(unknown)}")
    if merged["days"] <= merged["warmup_days"]:
        raise ValueError("scenario: days must exceed warmup_days")
    if len(merged["demand"]["weekly"]) != 7:
        raise ValueError("scenario: demand.weekly needs 7 values")
    if merged["seed"] == merged["tuning_seed"]:
        raise ValueError("scenario: tuning_seed must differ from seed")
    return merged


# --- the simulated network --------------------------------------------------------------------


@dataclass(slots=True)
class Site:
    """One sku-location: the truth, the record, and what its replenishment has on order."""

    sku: int
    location: str
    kind: str
    velocity: float  # units/day
    true: int
    ledger: Ledger
    on_order: int = 0
    seq: int = 0  # event ids


@dataclass(slots=True)
class Tally:
    """Demand-weighted outcomes of one policy."""

    demand: dict[str, int] = field(default_factory=lambda: dict.fromkeys(TYPES, 0))
    phantom: dict[str, int] = field(default_factory=lambda: dict.fromkeys(TYPES, 0))
    hidden: dict[str, int] = field(default_factory=lambda: dict.fromkeys(TYPES, 0))

    def add(self, kind: str, offered: int, truly: int) -> None:
        self.demand[kind] += 1
        if offered >= 1 and truly == 0:
            self.phantom[kind] += 1
        elif offered == 0 and truly >= 1:
            self.hidden[kind] += 1

    def shares(self) -> dict[str, Any]:
        n = sum(self.demand.values())
        out: dict[str, Any] = {
            "phantom": sum(self.phantom.values()) / n if n else 0.0,
            "hidden": sum(self.hidden.values()) / n if n else 0.0,
        }
        out["by_location_type"] = {
            k: {
                "phantom": self.phantom[k] / self.demand[k] if self.demand[k] else 0.0,
                "hidden": self.hidden[k] / self.demand[k] if self.demand[k] else 0.0,
                "demand": self.demand[k],
            }
            for k in TYPES
        }
        return out


def _hour_profile(params: dict[str, Any], demand: dict[str, Any]) -> list[float]:
    """Share of a day's demand in each hour (sums to 1 over the trading hours)."""
    open_h, close_h = params["open_hour"], params["close_hour"]
    a, peak = demand["daily_amplitude"], demand["peak_hour"]
    raw = [
        max(0.0, 1.0 + a * math.cos(2 * math.pi * (h - peak) / 24)) if open_h <= h < close_h else 0
        for h in range(24)
    ]
    total = sum(raw)
    return [r / total for r in raw]


@dataclass(slots=True)
class Outcome:
    """What one simulation run produced."""

    tallies: dict[str, Tally]
    calibration: list[list[float]]  # per decile: [sum stated, sum observed, n]
    buffer_curve: dict[str, list[list[int]]]  # per type: [[atp (capped), truly >= 1, n], ...]
    counts: dict[str, int]
    accuracy: dict[str, ClassAccuracy]
    min_true: int


def simulate(
    scenario: dict[str, Any],
    seed: int,
    *,
    buffers: dict[str, int] | None = None,
    assess_confidence: bool = True,
) -> Outcome:
    """One run of the network. ``buffers`` per location type for ``static_buffer`` (None: the
    tuning run, which only records the ATP/truth histogram); ``assess_confidence`` False skips
    the confidence policy (faster tuning runs)."""
    rng = random.Random(seed)
    net, dem, pol = scenario["network"], scenario["demand"], scenario["policies"]
    params = {"store": scenario["store"], "dc": scenario["dc"]}
    profile = {k: _hour_profile(params[k], dem) for k in TYPES}
    weekly = [w * 7 / sum(dem["weekly"]) for w in dem["weekly"]]
    peak_rate = {k: max(profile[k]) * max(weekly) for k in TYPES}  # per hour per unit velocity
    min_conf = min_confidence(scenario)
    max_buffer = int(pol["max_buffer"])
    if pol["silence_clock"] not in ("calendar", "trading"):
        raise ValueError(f"scenario: unknown silence_clock {pol['silence_clock']!r}")
    trading = {
        k: TradingHours(params[k]["open_hour"], params[k]["close_hour"]).check()
        if pol["silence_clock"] == "trading"
        else ALWAYS_OPEN
        for k in TYPES
    }
    days = int(scenario["days"])
    end_h = days * 24.0
    warmup_ms = int(scenario["warmup_days"]) * DAY_MS

    sku_weight = [rng.lognormvariate(0.0, dem["velocity_skew"]) for _ in range(net["skus"])]
    mean_w = sum(sku_weight) / len(sku_weight)
    sku_weight = [w / mean_w for w in sku_weight]
    locations = [(f"S{i:03d}", "store") for i in range(net["stores"])]
    locations += [(f"DC{i:02d}", "dc") for i in range(net["dcs"])]
    mean_velocity = {"store": dem["store_mean_velocity"], "dc": dem["dc_mean_velocity"]}

    sites: list[Site] = []
    for location, kind in locations:
        loc_weight = rng.lognormvariate(-(dem["location_skew"] ** 2) / 2, dem["location_skew"])
        for sku in range(net["skus"]):
            v = mean_velocity[kind] * sku_weight[sku] * loc_weight
            p = params[kind]
            start = max(1, round(v * (p["safety_days"] + p["order_cover_days"] / 2)))
            opening = StockEvent("count", f"{location}-{sku}-0", f"SKU{sku:04d}", location,
                                 Kind.COUNT, 0, start, "opening")  # fmt: skip
            sites.append(Site(sku, location, kind, v, start, apply(Ledger(), opening)))
    by_location: dict[str, list[int]] = {}
    for i, site in enumerate(sites):
        by_location.setdefault(site.location, []).append(i)

    queue: list[tuple[float, int, int, int, int]] = []  # (hour, kind, tiebreak, site, qty)
    tiebreak = 0

    def push(hour: float, kind: int, index: int, qty: int = 0) -> None:
        nonlocal tiebreak
        if hour < end_h:
            tiebreak += 1
            heapq.heappush(queue, (hour, kind, tiebreak, index, qty))

    def next_demand(index: int, after: float) -> None:
        site = sites[index]
        peak = site.velocity * peak_rate[site.kind]
        if peak <= 0:
            return
        prof, t = profile[site.kind], after
        while True:  # thinning of a non-homogeneous Poisson process
            t += rng.expovariate(peak)
            if t >= end_h:
                return
            day = int(t // 24)
            rate = site.velocity * prof[int(t % 24)] * weekly[day % 7]
            if rng.random() * peak < rate:
                push(t, _DEMAND, index)
                return

    def next_poisson(index: int, kind: int, per_day: float, after: float) -> None:
        if per_day > 0:
            push(after + rng.expovariate(per_day / 24.0), kind, index)

    for i, site in enumerate(sites):
        p = params[site.kind]
        next_demand(i, 0.0)
        next_poisson(i, _THEFT, p["shrink_rate"] * site.velocity, 0.0)
        next_poisson(i, _PHANTOM, p["phantom_per_year"] / 365.0, 0.0)
        every = int(p["count_every_days"])
        if every > 0:
            push(rng.randrange(every) * 24.0 + p["count_hour"], _COUNT, i)

    accuracy = dict(PRIORS)
    tallies = {name: Tally() for name in POLICIES}
    calibration = [[0.0, 0.0, 0] for _ in range(10)]
    curve = {k: [[a, t, 0] for a in range(max_buffer + 2) for t in (0, 1)] for k in TYPES}
    counts = {"demand": 0, "sales": 0, "lost_sales": 0, "thefts": 0, "phantom_events": 0,
              "scan_errors": 0, "counts": 0, "miscounts": 0, "learned_from": 0, "receipts": 0,
              "decisions": 0}  # fmt: skip
    min_true = min(s.true for s in sites)

    def record(site: Site, kind: Kind, at: int, qty: int, ref: str = "") -> None:
        site.seq += 1
        source = "pos" if kind is Kind.SALE else "wms" if kind is Kind.MOVEMENT else "count"
        event = StockEvent(source, f"{site.location}-{site.sku}-{site.seq}", f"SKU{site.sku:04d}",
                           site.location, kind, at, qty, ref)  # fmt: skip
        site.ledger = apply(site.ledger, event)

    def review(index: int, hour: float) -> None:
        """Continuous review on the recorded position: order up to S when at or below s."""
        site = sites[index]
        p = params[site.kind]
        v = site.velocity
        reorder = max(1, math.ceil(v * (p["lead_time_days"] + p["safety_days"])))
        position = site.ledger.on_hand + site.on_order
        if position <= reorder:
            qty = max(1, math.ceil(reorder + v * p["order_cover_days"]) - position)
            site.on_order += qty
            arrive = (math.floor(hour / 24) + p["lead_time_days"]) * 24.0 + p["delivery_hour"]
            push(arrive, _RECEIPT, index, qty)

    def sale(site: Site, at: int, qty: int) -> None:
        if site.kind == "store":
            record(site, Kind.SALE, at, -qty)
        else:
            record(site, Kind.MOVEMENT, at, -qty, "PICK")

    while queue:
        hour, what, _, index, qty = heapq.heappop(queue)
        site = sites[index]
        p = params[site.kind]
        at = int(hour * HOUR_MS)
        if what == _DEMAND:
            next_demand(index, hour)
            counts["demand"] += 1
            if at >= warmup_ms:
                counts["decisions"] += 1
                ledger, truly, k = site.ledger, site.true, site.kind
                atp = max(0, ledger.on_hand - ledger.reserved)
                tallies["naive_atp"].add(k, atp, truly)
                if buffers is not None:
                    tallies["static_buffer"].add(k, max(0, atp - buffers[k]), truly)
                cell = curve[k][2 * min(atp, max_buffer + 1) + (truly >= 1)]
                cell[2] += 1
                if assess_confidence:
                    a = assess_ledger(
                        ledger, stream_time=at, accuracy=accuracy[k], trading_hours=trading[k]
                    )
                    offered = min(atp, a.offerable(min_conf[k]))
                    tallies["confidence"].add(k, offered, truly)
                    if atp >= 1:  # a unit the record would promise: its stated confidence
                        stated = a.confidence(1)
                        bucket = calibration[min(9, int(stated * 10))]
                        bucket[0] += stated
                        bucket[1] += truly >= 1
                        bucket[2] += 1
            if site.true >= 1:
                site.true -= 1
                counts["sales"] += 1
                if rng.random() < p["scan_error_rate"]:
                    counts["scan_errors"] += 1
                    if rng.random() < p["scan_wrong_sku_share"]:
                        others = by_location[site.location]
                        other = others[rng.randrange(len(others))]
                        sale(sites[other], at, 1)
                        review(other, hour)
                    else:
                        recorded = rng.choice((0, 2))
                        if recorded:
                            sale(site, at, recorded)
                else:
                    sale(site, at, 1)
                review(index, hour)
            else:
                counts["lost_sales"] += 1
        elif what == _THEFT:
            next_poisson(index, _THEFT, p["shrink_rate"] * site.velocity, hour)
            if site.true >= 1:
                site.true -= 1
                counts["thefts"] += 1
        elif what == _PHANTOM:
            next_poisson(index, _PHANTOM, p["phantom_per_year"] / 365.0, hour)
            if site.true >= 1:
                site.true = 0  # the facing is gone from where anyone looks; the record keeps it
                counts["phantom_events"] += 1
        elif what == _RECEIPT:
            site.true += qty
            site.on_order -= qty
            counts["receipts"] += 1
            record(site, Kind.MOVEMENT, at, qty, "RECEIPT")
        elif what == _COUNT:
            push(hour + p["count_every_days"] * 24.0, _COUNT, index)
            counted = site.true
            if rng.random() < p["miscount_rate"]:
                counts["miscounts"] += 1
                counted = max(0, counted + rng.choice((-1, 1)) * rng.randint(1, p["miscount_max"]))
            before = site.ledger
            counts["counts"] += 1
            record(site, Kind.COUNT, at, counted, f"c{site.seq}")
            after = site.ledger
            learned = None
            if after.last_discrepancy is not None:  # the terms of the worker's SettledCount
                learned = learn_from_count(
                    accuracy[site.kind],
                    discrepancy=after.last_discrepancy,
                    units_moved=before.moved_since_count,
                    counted=counted,
                    counted_at=at,
                    previous_count_at=before.last_count_at,
                    last_sighting_at=before.last_sighting,
                )
            if learned is not None:
                accuracy[site.kind] = learned
                counts["learned_from"] += 1
            review(index, hour)
        min_true = min(min_true, site.true)

    return Outcome(tallies, calibration, curve, counts, accuracy, min_true)


def tune_buffers(scenario: dict[str, Any]) -> tuple[dict[str, int], dict[str, Any]]:
    """One buffer per location type, chosen on the tuning run (``tuning_seed``) by the
    scenario's rule; returns the buffers and the phantom/hidden curve they were chosen from."""
    pol = scenario["policies"]
    outcome = simulate(scenario, int(scenario["tuning_seed"]), assess_confidence=False)
    max_buffer, rule = int(pol["max_buffer"]), pol["static_buffer_rule"]
    if rule not in ("min_cost", "phantom_target"):
        raise ValueError(f"scenario: unknown static_buffer_rule {rule!r}")
    buffers: dict[str, int] = {}
    curves: dict[str, Any] = {}
    for kind in TYPES:
        cells = outcome.buffer_curve[kind]
        n = sum(c[2] for c in cells) or 1
        curve = []
        for b in range(max_buffer + 1):
            phantom = sum(c[2] for c in cells if c[0] > b and not c[1]) / n
            hidden = sum(c[2] for c in cells if c[0] <= b and c[1]) / n
            curve.append((b, phantom, hidden))
        if rule == "min_cost":
            best = min(curve, key=lambda c: (pol["phantom_cost"] * c[1] + c[2], c[0]))
        else:
            meets = [c for c in curve if c[1] <= pol["phantom_target"]]
            best = meets[0] if meets else curve[-1]
        buffers[kind] = best[0]
        curves[kind] = [[b, round(ph, 5), round(hi, 5)] for b, ph, hi in curve]
    return buffers, curves


def run(scenario: dict[str, Any]) -> dict[str, Any]:
    """Tune the static buffers on the tuning seed, then evaluate the three policies on the
    evaluation seed. Returns the JSON-ready result (see the module docstring)."""
    scenario = scenario_from(scenario) if "network" not in scenario else scenario
    started = time.perf_counter()
    buffers, curves = tune_buffers(scenario)
    outcome = simulate(scenario, int(scenario["seed"]), buffers=buffers)
    calibration = [[s / n, o / n] for s, o, n in outcome.calibration if n]
    calibration_n = [n for _, _, n in outcome.calibration if n]
    policies = {name: outcome.tallies[name].shares() for name in POLICIES}
    cost = float(scenario["policies"]["phantom_cost"])
    for metrics in policies.values():
        metrics["expected_cost"] = cost * metrics["phantom"] + metrics["hidden"]
    static, conf = policies["static_buffer"], policies["confidence"]
    worst = max(
        (abs(s - o) for (s, o), n in zip(calibration, calibration_n, strict=True) if n >= 100),
        default=0.0,
    )
    target = {
        "phantom_ratio": conf["phantom"] / static["phantom"] if static["phantom"] else None,
        "phantom_met": conf["phantom"] <= 0.2 * static["phantom"],
        "cost_ratio": conf["expected_cost"] / static["expected_cost"]
        if static["expected_cost"]
        else None,
        "hidden_met": conf["hidden"] <= static["hidden"],
        "calibration_max_error": worst,
        "calibration_met": worst <= 0.05,
    }
    return {
        "scenario": scenario["name"],
        "static_buffer_at_confidence_hidden": _equal_hidden(outcome, policies, scenario),
        "policies": policies,
        "calibration": calibration,
        "calibration_counts": calibration_n,
        "counts": outcome.counts,
        "static_buffers": buffers,
        "static_buffer_tuning": {
            "rule": scenario["policies"]["static_buffer_rule"],
            "tuning_seed": scenario["tuning_seed"],
            "curve": curves,  # per type: [buffer, phantom, hidden] on the tuning run
        },
        "min_confidence": min_confidence(scenario),
        "phantom_cost": cost,
        "learned_accuracy": {
            k: {
                "loss_rate": a.loss_rate,
                "drift_scale": a.drift_scale,
                "observations": a.observations,
            }
            for k, a in outcome.accuracy.items()
        },
        "target": target,
        "min_true_on_hand": outcome.min_true,
        "seconds": round(time.perf_counter() - started, 2),
    }


def _equal_hidden(
    outcome: Outcome, policies: dict[str, Any], scenario: dict[str, Any]
) -> dict[str, Any]:
    """Diagnostic on the evaluation run (not used for tuning): per location type, the smallest
    static buffer whose hidden share reaches the confidence policy's, and its phantom share -
    the two policies compared at (about) equal hidden availability."""
    out: dict[str, Any] = {}
    for kind in TYPES:
        cells = outcome.buffer_curve[kind]
        n = sum(c[2] for c in cells) or 1
        target = policies["confidence"]["by_location_type"][kind]["hidden"]
        chosen = None
        for b in range(int(scenario["policies"]["max_buffer"]) + 1):
            phantom = sum(c[2] for c in cells if c[0] > b and not c[1]) / n
            hidden = sum(c[2] for c in cells if c[0] <= b and c[1]) / n
            chosen = {"buffer": b, "phantom": phantom, "hidden": hidden}
            if hidden >= target:
                break
        out[kind] = chosen
    return out


def table(result: dict[str, Any]) -> str:
    """A small text table of the result."""
    lines = [
        f"scenario {result['scenario']}: {result['counts']['decisions']} decisions, "
        f"buffers {result['static_buffers']}, min_confidence {result['min_confidence']}",
        f"{'policy':<14}{'phantom':>9}{'hidden':>9}{'cost':>9}   store ph/hi      dc ph/hi",
    ]
    for name, m in result["policies"].items():
        s, d = m["by_location_type"]["store"], m["by_location_type"]["dc"]
        lines.append(
            f"{name:<14}{m['phantom']:>9.4f}{m['hidden']:>9.4f}{m['expected_cost']:>9.4f}   "
            f"{s['phantom']:.4f}/{s['hidden']:.4f}   {d['phantom']:.4f}/{d['hidden']:.4f}"
        )
    t = result["target"]
    ratio = "n/a" if t["phantom_ratio"] is None else f"{t['phantom_ratio']:.3f}"
    lines.append(
        f"target: phantom ratio {ratio} (<= 0.2: {t['phantom_met']}), hidden <= static: "
        f"{t['hidden_met']}, calibration max error {t['calibration_max_error']:.3f} "
        f"(<= 0.05: {t['calibration_met']})"
    )
    if t["cost_ratio"] is not None:
        lines.append(
            f"expected cost (phantom cost {result['phantom_cost']:g} x phantom + hidden): "
            f"confidence {t['cost_ratio']:.2f} x the static buffer's"
        )
    eq = result["static_buffer_at_confidence_hidden"]["store"]
    lines.append(
        f"stores at equal hidden: static buffer {eq['buffer']} -> phantom {eq['phantom']:.4f}, "
        f"hidden {eq['hidden']:.4f}"
    )
    lines.append(
        "calibration: "
        + ", ".join(
            f"{s:.2f}->{o:.2f} (n={n})"
            for (s, o), n in zip(result["calibration"], result["calibration_counts"], strict=True)
        )
    )
    return "\n".join(lines)


def plot(result: dict[str, Any], path: str | Path) -> None:
    """Calibration plot: stated confidence vs observed rate, with the diagonal."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", label="perfect calibration")
    xs = [s for s, _ in result["calibration"]]
    ys = [o for _, o in result["calibration"]]
    sizes = [max(10.0, 200 * math.sqrt(n / max(result["calibration_counts"])))
             for n in result["calibration_counts"]]  # fmt: skip
    ax.plot(xs, ys, color="tab:blue")
    ax.scatter(xs, ys, s=sizes, color="tab:blue", label="confidence(1) deciles")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("stated confidence that >= 1 unit is there")
    ax.set_ylabel("observed share with >= 1 truly sellable")
    ax.set_title(f"Calibration - scenario {result['scenario']}")
    ax.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="invsync quality", description=__doc__.split("\n")[0])
    parser.add_argument("--scenario", default="scenarios/default.toml")
    parser.add_argument("--json", dest="json_out", help="write the result here")
    parser.add_argument("--plot", help="write a calibration PNG here")
    args = parser.parse_args(argv)
    result = run(load_scenario(args.scenario))
    print(table(result))
    print(f"({result['seconds']} s)")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(result, indent=2) + "\n")
    if args.plot:
        plot(result, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
