"""Plans over time: daily rates, levels, transitions by hand, and the schedule's DP."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import numpy as np
import pytest

from boute.cli import main
from tuning import Plan
from tuning._schedule import (
    Candidate,
    ScheduleError,
    compare_policies,
    daily_rates,
    level_grid,
    plan_schedule,
    replicas_of,
    transition,
)

PRICE = {"H100": 2.0, "RTX-4090": 0.5}
COLD_S = 360.0                      # 0.1 h: a started GPU costs 0.1 x its $/h


def _plan(groups: list[tuple[str, str, int, int]], cost: float) -> Plan:
    """A plan of (model, gpu, tp, replicas) groups costing `cost` $/h."""
    return Plan.from_dict({
        "routing": {"strong_share": 0.5, "threshold": 0.5},
        "groups": [{"model": m, "gpu": g, "tp": tp, "pp": 1, "replicas": r, "share": 1.0}
                   for m, g, tp, r in groups],
        "predicted": {"p95_s": 1.0, "system_p95_s": 1.0, "mean_s": 0.5, "quality": 90.0,
                      "cost_per_hour": cost, "throughput_rps": 1.0}})


def _cand(level: float, groups: list[tuple[str, str, int, int]], cost: float) -> Candidate:
    plan = _plan(groups, cost)
    return Candidate(level, plan, cost, *replicas_of(plan))


def test_daily_rates_by_hand() -> None:
    """Profile [1, 3] at 00:00 and 12:00, linear: mean 2; each 12 h window's peak."""
    r = daily_rates([1.0, 3.0], 10.0, 43_200.0)
    # Window 0's last minute sample: 1 + 2 x 719/720; window 1 starts at the peak, 3.
    assert r.tolist() == pytest.approx([10 * (1 + 2 * 719 / 720) / 2, 10 * 3 / 2])
    with pytest.raises(ScheduleError, match=r"window_s=700 must be whole minutes dividing the day"):
        daily_rates([1.0, 3.0], 10.0, 700.0)


def test_levels_round_up_by_at_most_the_step() -> None:
    got = level_grid(np.array([10.0, 10.5, 12.1, 20.0]), 0.1)
    # 10.5: log(1.05)/log(1.1) = 0.51 -> 1; 12.1 = 10 x 1.1^2 exactly; 20 -> n = 8.
    assert got.tolist() == pytest.approx([10.0, 11.0, 12.1, 10 * 1.1**8])


def test_transition_by_hand() -> None:
    a = _cand(10, [("m", "H100", 2, 2)], 8.0)
    b = _cand(20, [("m", "H100", 2, 1), ("m", "RTX-4090", 1, 3)], 5.5)
    t = transition(a, b, lambda k: COLD_S, PRICE.__getitem__)
    assert (t.started, t.stopped, t.changes) == (3, 1, 4)
    # Scale up before down: both H100 replicas still run while the 4090s start.
    assert t.peak_gpus == {"H100": 4, "RTX-4090": 3}
    assert t.cost == pytest.approx(3 * 1 * 0.5 * 0.1)


def _brute(rates: list[float], cands: list[Candidate], window_s: float, stock: dict[str, int],
           n: int) -> float:
    best = math.inf
    for seq in itertools.product(range(len(cands)), repeat=len(rates)):
        if any(cands[j].level_rps < r for j, r in zip(seq, rates, strict=True)):
            continue
        cost = 0.0
        for t, j in enumerate(seq):
            tr = transition(cands[seq[t - 1]], cands[j], lambda k: COLD_S, PRICE.__getitem__)
            if tr.changes > n or any(g > stock.get(ty, 0) for ty, g in tr.peak_gpus.items()):
                cost = math.inf
                break
            cost += cands[j].cost_per_hour * window_s / 3600 + tr.cost
        best = min(best, cost)
    return best


def test_schedule_is_the_exact_cheapest_and_respects_the_bounds() -> None:
    rng = np.random.default_rng(4)
    checked = 0
    for _ in range(12):
        levels = sorted(rng.choice([10.0, 20.0, 30.0, 40.0], size=3, replace=False))
        cands = {}
        for i, lv in enumerate(levels):
            reps = [("m", "H100", 1, int(rng.integers(1, 4))),
                    ("m", "RTX-4090", 1, int(rng.integers(0, 5)))]
            groups = [g for g in reps if g[3] > 0]
            cands[lv] = _cand(lv, groups, 1.0 + 2.0 * i + float(rng.random()))
        rates = rng.choice(levels, size=4).tolist()
        stock = {"H100": int(rng.integers(3, 7)), "RTX-4090": int(rng.integers(4, 9))}
        n = int(rng.integers(1, 6))
        peak_gpus = replicas_of(cands[levels[-1]].plan)[0]
        if any(v > stock[k[1]] for k, v in peak_gpus.items()):
            continue
        def at(lv: float, cands: dict[float, Candidate] = cands,
               levels: list[float] = levels) -> Plan:
            return cands[min(levels, key=lambda x: abs(x - lv))].plan

        sched = plan_schedule(np.array(rates), at, window_s=3600.0,
                              stock=stock, max_changes=n, cold_start_s=lambda k: COLD_S,
                              price_per_hour=PRICE.__getitem__, step=1e-6)
        for t in sched.transitions:
            assert t.changes <= n
            assert all(g <= stock[ty] for ty, g in t.peak_gpus.items())
        # The candidate set after dominance is what the DP sees; brute force over it.
        assert sched.cost_per_day == pytest.approx(
            _brute(rates, sched.candidates, 3600.0, stock, n), rel=1e-9)
        checked += 1
    assert checked >= 8


def test_alternating_day_and_the_change_bound() -> None:
    """Low 1 $/h (1 replica) vs high 3 $/h (3 replicas); windows low, high, low, high."""
    low = _cand(10, [("m", "H100", 1, 1)], 1.0)
    high = _cand(33, [("m", "H100", 1, 3)], 3.0)
    plans = {10.0: low.plan, 30.0: high.plan}
    rates = np.array([10.0, 30.0, 10.0, 30.0])

    def at(level: float) -> Plan:
        return plans[10.0 if level < 20 else 30.0]

    sched = plan_schedule(rates, at, window_s=3600.0, stock={"H100": 8}, max_changes=2,
                          cold_start_s=lambda k: COLD_S, price_per_hour=PRICE.__getitem__,
                          step=2.0)
    # Two switches up (2 replicas, 0.1 h x $2 each) and two down: 1 + 3 + 1 + 3 + 2 x 0.4.
    assert [sched.candidates[j].cost_per_hour for j in sched.choice] == [1.0, 3.0, 1.0, 3.0]
    assert sched.cost_per_day == pytest.approx(8.0 + 0.8)
    assert sched.started_per_day == 4
    stuck = plan_schedule(rates, at, window_s=3600.0, stock={"H100": 8}, max_changes=1,
                          cold_start_s=lambda k: COLD_S, price_per_hour=PRICE.__getitem__,
                          step=2.0)
    assert stuck.cost_per_day == pytest.approx(12.0) and stuck.started_per_day == 0
    # Only 4 H100 for the switch (1 old + 3 new would be fine; 3 old + 1 new too).
    tight = plan_schedule(rates, at, window_s=3600.0, stock={"H100": 3}, max_changes=2,
                          cold_start_s=lambda k: COLD_S, price_per_hour=PRICE.__getitem__,
                          step=2.0)
    assert tight.cost_per_day == pytest.approx(8.8)
    # Reactive: re-planned on the previous window's rate, so it meets the target only
    # where the previous window's plan was big enough.
    policies = {p.name: p for p in compare_policies(
        sched, low, lambda plan, rate: rate <= (33 if plan is high.plan else 10),
        lambda k: COLD_S, PRICE.__getitem__)}
    assert policies["schedule"].attainment == 1.0
    assert policies["static-peak"].cost_per_day == pytest.approx(12.0)
    assert policies["static-mean"].attainment == 0.5
    assert policies["reactive"].attainment < 1.0


def test_boute_schedule_on_the_diurnal_preset(tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["--json", "schedule", "--scenario", "diurnal-gsm8k", "--quality", "89",
                 "--p95", "10", "--resim-seeds", "0", "--level-step", "0.25",
                 "--window-s", "3600", "--out", str(tmp_path / "s.json"), "--plot", ""])
    out = json.loads(capsys.readouterr().out)
    assert code == 0
    pol = {p["policy"]: p for p in out["policies"]}
    assert pol["schedule"]["attainment"] == 1.0
    assert pol["schedule"]["cost_per_day"] <= 0.8 * pol["static-peak"]["cost_per_day"]
    assert pol["static-mean"]["attainment"] < 1.0
    saved = json.loads((tmp_path / "s.json").read_text())
    assert len(saved["windows"]) == 24
    assert all(w["started"] + w["stopped"] <= 8 for w in saved["windows"])
