"""`load_problem` with an alias offer: a catalog GPU offered twice, on demand and spot."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from common.errors import PerfDBError
from profiling import Catalog, build_perfdb, load_scenario
from tests.conftest import write_scenario
from tuning import Goal, Problem, load_problem, plan_from_arrays, search

# RTX 4090 on demand at the catalog's $0.59/h (2 GPUs) and as spot at $0.34/h (1 GPU): the
# spot offer's stock holds a TP1 replica only. One 8B model as both weak and strong keeps the
# DB to 3 configs (tp1pp1, tp1pp2, tp2pp1) of one GPU.
SPOT = """
name: spot
gpus:
  RTX-4090: {count: 2}
  RTX-4090-spot: {gpu: RTX-4090, count: 1, price_per_hour: 0.34}
models: {weak: llama-3.1-8b, strong: llama-3.1-8b}
workload: {shape: gsm8k, rate_rps: 10}
budget_per_hour: 10
profile: {num_rates: 6, num_requests: 200}
"""


@pytest.fixture(scope="module")
def spot_problem(catalog: Catalog, tmp_path_factory: pytest.TempPathFactory) -> Problem:
    scenario = load_scenario(write_scenario(tmp_path_factory.mktemp("spot"), SPOT))
    db = build_perfdb(scenario.profile_spec(), catalog, workers=1, progress=False)
    assert {k[1] for k in db.keys} == {"RTX-4090"}        # swept once, for both offers
    return load_problem(scenario, db, catalog)


def _configs(problem: Problem, t: int) -> dict[tuple[int, int, int], int]:
    return {(int(problem.cfg_model[c]), int(problem.cfg_tp[c]), int(problem.cfg_pp[c])): int(c)
            for c in np.flatnonzero(problem.cfg_type == t)}


def test_alias_gets_its_gpu_rows_at_its_price_and_stock(spot_problem: Problem) -> None:
    p = spot_problem
    assert p.gpu_types == ("RTX-4090", "RTX-4090-spot")
    assert p.stock.tolist() == [2, 1]
    assert p.gpu_price.tolist() == [0.59, 0.34]
    base, spot = _configs(p, 0), _configs(p, 1)
    # Both models (the same 8B) x {tp1pp1, tp1pp2, tp2pp1} on demand; TP1 PP1 only on spot.
    assert sorted(base) == [(m, tp, pp) for m in (0, 1) for tp, pp in ((1, 1), (1, 2), (2, 1))]
    assert sorted(spot) == [(0, 1, 1), (1, 1, 1)]
    for key, c in spot.items():
        b = base[key]
        assert p.cfg_db[c] == p.cfg_db[b]                  # the same DB row...
        np.testing.assert_array_equal(p.cap[c], p.cap[b])  # ...so the same capacities
        assert p.cfg_price[c] == pytest.approx(0.34)       # 1 GPU x $0.34 (vs 0.59)
        assert p.cfg_price[b] == pytest.approx(0.59)


def test_a_plan_uses_both_offers(spot_problem: Problem) -> None:
    p = spot_problem
    # The most throughput under $10/h takes every GPU: 2 on demand + 1 spot,
    # 2 x 0.59 + 1 x 0.34 = $1.52/h.
    res = search(p, Goal("max-throughput"), solver="exact")
    plan = plan_from_arrays(p, res.plans, res.metrics, 0)
    assert {g.gpu for g in plan.groups} == {"RTX-4090", "RTX-4090-spot"}
    assert sum(g.tp * g.pp * g.replicas for g in plan.groups if g.gpu == "RTX-4090") == 2
    assert sum(g.tp * g.pp * g.replicas for g in plan.groups
               if g.gpu == "RTX-4090-spot") == 1
    assert plan.predicted.cost_per_hour == pytest.approx(1.52)
    assert plan.scenario["gpus"]["RTX-4090-spot"] == {"count": 1, "price_per_hour": 0.34}


def test_a_db_without_the_alias_gpu_is_named(spot_problem: Problem, catalog: Catalog,
                                             tmp_path: Path) -> None:
    other = load_scenario(write_scenario(tmp_path, "gpus: {H100-spot: {gpu: H100, count: 2}}\n"
                                         "models: {weak: llama-3.1-8b, strong: llama-3.1-8b}"))
    with pytest.raises(PerfDBError, match=r"has no rows for \['H100'\]"):
        load_problem(other, spot_problem.db, catalog)
