"""Headroom: re-simulating plans on fresh traffic, and re-planning the ones on the edge."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from profiling import Catalog, generate_trace, load_scenario
from tuning import (
    Goal,
    Problem,
    SearchResult,
    WindowSLO,
    plan_from_arrays,
    planning_problem,
    replay,
    search,
)
from tuning._headroom import FRESH_SEEDS, _derated, hold, resimulate
from tuning._problem import scenario_problem


@pytest.fixture(scope="module")
def mtbench() -> Problem:
    return planning_problem("paper-mtbench", progress=False)


def test_derating_shifts_latency_and_scales_capacity(small_problem: Problem) -> None:
    pr = small_problem
    c = int(np.argmax(pr.cap[:, -1]))
    d = _derated(pr, {c: (0.9, 2.0)})
    for x in (2.0, 5.0, 8.0):
        # a cap(x / r): the config's P95 at every rate taken twice as high, 10% less capacity.
        assert d.cap_at(x)[c] == pytest.approx(0.9 * float(pr.cap_at(x / 2.0)[c]), rel=1e-9)
    other = (c + 1) % pr.num_configs
    assert np.array_equal(d.cap[other], pr.cap[other])
    assert np.array_equal(d.caps[0], d.cap)


def test_an_edge_plan_is_replanned_until_it_holds(mtbench: Problem, catalog: Catalog) -> None:
    """paper-mtbench (8.5, 30 s): the cheapest plan's 8B group saturates on fresh traces."""
    goal = Goal("min-cost", 8.5, 30.0)
    res = search(mtbench, goal, solver="exact")
    b = res.best(mtbench)
    assert b is not None
    first = plan_from_arrays(mtbench, res.plans, res.metrics, b)
    checks = resimulate(mtbench, first, catalog, target_s=30.0)
    assert len(checks) == len(first.groups) * len(FRESH_SEEDS)
    assert any(not c.holds for c in checks)
    held = hold(mtbench, goal, lambda pr: search(pr, goal, solver="exact"), catalog)
    assert held.holds and held.rounds >= 2 and held.derated
    assert held.plan is not None and held.plan.predicted is not None
    assert first.predicted is not None
    assert held.plan.predicted.cost_per_hour >= first.predicted.cost_per_hour
    summary = held.summary()
    assert summary["holds"] and summary["worst"]["p95_s"] <= 30.0
    # No seeds: the search's plan as it is.
    same = hold(mtbench, goal, lambda pr: search(pr, goal, solver="exact"), catalog, seeds=())
    assert same.plan is not None and same.plan.predicted is not None
    assert same.plan.predicted.cost_per_hour == first.predicted.cost_per_hour
    assert same.checks == [] and same.rounds == 1



def test_fresh_runs_kept_across_rounds_are_not_simulated_again(
        mtbench: Problem, catalog: Catalog, monkeypatch: pytest.MonkeyPatch) -> None:
    """`hold` keeps each round's runs: an unchanged group's checks come back without a run."""
    import tuning._headroom as headroom

    goal = Goal("min-cost", 8.5, 30.0)
    res = search(mtbench, goal, solver="exact")
    b = res.best(mtbench)
    assert b is not None
    plan = plan_from_arrays(mtbench, res.plans, res.metrics, b)
    runs: dict = {}
    first = resimulate(mtbench, plan, catalog, target_s=30.0, seeds=(101,), runs=runs)
    assert len(runs) == len(first) == len(plan.groups)

    def no_run(*_: object, **__: object) -> None:
        raise AssertionError("an unchanged group was simulated again")

    monkeypatch.setattr(headroom, "simulate", no_run)
    again = resimulate(mtbench, plan, catalog, target_s=30.0, seeds=(101,), runs=runs)
    assert again == first

BURSTY = """
name: bursty-{kind}
gpus: {{RTX-4090: {{count: 8}}, RTX-5090: {{count: 8}}}}
models: [llama-3.1-8b]
task: gsm8k
workload:
  trace: log.parquet
  columns: {{arrival_s: TIMESTAMP, input_tokens: ContextTokens, output_tokens: GeneratedTokens}}
  rate_rps: 30
  arrival: {kind}
budget_per_hour: 20
profile: {{num_rates: 12, num_requests: 400}}
"""


@pytest.mark.slow
def test_a_plan_that_holds_on_poisson_but_not_on_the_bursts_is_rejected(
        catalog: Catalog, tmp_path: Path) -> None:
    """A 40-minute log whose per-minute rate swings with CV 1 (0.1x to 4x the mean).

    Planned on Poisson arrivals, the plan holds on fresh Poisson traffic but its groups miss
    on fresh stretches of the log; planned on the log's own arrivals, it costs more and holds.
    """
    t = generate_trace("gsm8k", rate_rps=4.0, num_requests=9600, arrival="modulated",
                       minute_cv=1.0, seed=7)
    stamps = (np.datetime64("2024-05-10T00:00:00", "ms")
              + (t.arrival_s * 1e3).astype("timedelta64[ms]"))
    pq.write_table(pa.table({"TIMESTAMP": stamps, "ContextTokens": t.input_tokens,
                             "GeneratedTokens": t.output_tokens}), tmp_path / "log.parquet")
    problems = {}
    for kind in ("poisson", "trace"):
        (tmp_path / f"{kind}.yaml").write_text(BURSTY.format(kind=kind))
        sc = load_scenario(tmp_path / f"{kind}.yaml")
        problems[kind] = scenario_problem(sc, catalog, db=tmp_path / f"{kind}.parquet",
                                          progress=False)
    goal = Goal("min-cost", None, 4.0)

    def run(pr: Problem) -> SearchResult:
        return search(pr, goal, solver="auto", progress=False)

    on_poisson = hold(problems["poisson"], goal, run, catalog)
    assert on_poisson.holds and on_poisson.plan is not None
    checks = resimulate(problems["trace"], on_poisson.plan, catalog, target_s=4.0)
    assert any(not c.holds for c in checks)
    worst = max(c.p95_s for c in checks)
    assert worst > 4.0 * 1.05, [(c.group, c.p95_s) for c in checks]
    on_bursts = hold(problems["trace"], goal, run, catalog)
    assert on_bursts.holds and on_bursts.plan is not None
    assert on_bursts.plan.predicted is not None and on_poisson.plan.predicted is not None
    assert on_bursts.plan.predicted.cost_per_hour > on_poisson.plan.predicted.cost_per_hour
    # The burst-aware plan on the whole log with its real arrivals: within its target.
    whole = problems["trace"].scenario.named_workloads[0].load().scaled_to(30.0)
    rep = replay(problems["trace"], on_bursts.plan, catalog, [whole], target_s=4.0)
    assert rep.holds, rep.to_dict()
    bad = replay(problems["trace"], on_poisson.plan, catalog, [whole], target_s=4.0)
    assert not bad.holds
    # A window SLO (P95 <= 4 s in 90% of minutes): judged on >= 30 windows per fresh trace.
    slo = Goal("min-cost", None, 4.0, slo=WindowSLO(0.9, 60.0))
    windowed = hold(problems["trace"], slo, lambda pr: search(pr, slo, solver="auto",
                                                               progress=False), catalog)
    assert windowed.holds and windowed.plan is not None
    assert all(c.window_p95s is not None and len(c.window_p95s) >= 30
               for c in windowed.checks)
    block = windowed.summary()["slo"]
    assert isinstance(block, dict) and block["predicted_attainment"] >= 0.9
