"""The P/D planner: splits only where it pays, never dearer than co-located; plan JSON."""

from __future__ import annotations

import numpy as np
import pytest

from common.errors import BouteError
from profiling import Trace, generate_trace, load_catalog
from tuning import Group, PdOffer, PdPlanner, Plan, Routing, check_pd_plan

CAT = load_catalog()
OFFERS = [PdOffer("H100", 8, 2.69), PdOffer("RTX-PRO-6000", 8, 1.84)]
M8 = ("llama-3.1-8b",)


def _prefill_heavy(n: int = 300, seed: int = 0, rate: float = 1.0) -> Trace:
    """~1,500-token prompts, ~20-token answers (an Azure-code-like shape)."""
    rng = np.random.default_rng(seed)
    prompts = np.clip(np.rint(1500 * np.exp(0.5 * rng.standard_normal(n))), 16, 6000)
    answers = np.clip(np.rint(15 * np.exp(0.7 * rng.standard_normal(n))), 2, 200)
    arrivals = np.cumsum(rng.exponential(1.0 / rate, n))
    return Trace(arrivals - arrivals[0], prompts.astype(np.int64), answers.astype(np.int64),
                 None, name="prefill-heavy")


def test_splitting_pays_on_prefill_heavy_traffic_with_a_tight_tpot() -> None:
    # Co-located, a 20 ms TPOT P95 leaves an H100 little room for 1,500-token prefills
    # ($10.76/h: 4 H100 GPUs); 2 prefill + 1 decode H100 carry the same 30 req/s ($8.07/h).
    planner = PdPlanner(CAT, OFFERS, _prefill_heavy(), ttft_p95_s=1.0, tpot_p95_s=0.02,
                        models=M8)
    rates = {"llama-3.1-8b": 30.0}
    colo = planner.plan(rates, disaggregate=False)
    pd = planner.plan(rates, disaggregate=True)
    assert pd.cost_per_hour < colo.cost_per_hour
    assert pd.disaggregated == ("llama-3.1-8b",)
    assert {g.role for g in pd.groups} >= {"prefill", "decode"}
    fresh = check_pd_plan(planner, pd, lambda r: _prefill_heavy(600, seed=7, rate=r))
    assert fresh["holds"], fresh


def test_solver_never_splits_when_splitting_costs_more() -> None:
    # Short prompts and a loose TPOT target: co-located replicas batch decodes as well as a
    # decode pool does and need no second pool; the planner keeps the co-located plan.
    base = generate_trace("gsm8k", rate_rps=1.0, num_requests=300, seed=0)
    planner = PdPlanner(CAT, OFFERS, base, ttft_p95_s=2.0, tpot_p95_s=0.2, models=M8)
    rates = {"llama-3.1-8b": 30.0}
    colo = planner.plan(rates, disaggregate=False)
    pd = planner.plan(rates, disaggregate=True)
    assert pd.cost_per_hour == pytest.approx(colo.cost_per_hour)
    assert pd.disaggregated == ()
    assert all(g.role is None for g in pd.groups)
    # Every split option listed costs at least the co-located optimum.
    split = [c for c in planner.candidates("llama-3.1-8b", 30.0, disaggregate=True)
             if any(p.role != "co" for p in c.parts)]
    assert split and min(c.cost_per_hour for c in split) >= colo.cost_per_hour - 1e-9


def test_budget_and_stock_are_enforced() -> None:
    planner = PdPlanner(CAT, OFFERS, _prefill_heavy(), ttft_p95_s=1.5, tpot_p95_s=0.03,
                        models=M8)
    with pytest.raises(BouteError, match="over the budget"):
        planner.plan({"llama-3.1-8b": 12.0}, budget_per_hour=1.0)
    with pytest.raises(BouteError, match=r"within the stock|fits the stock"):
        planner.plan({"llama-3.1-8b": 5000.0})


def test_plan_json_carries_the_pools_and_old_plans_read_the_same() -> None:
    groups = (Group("llama-3.1-8b", "H100", 1, 1, 2, 1.0, role="prefill"),
              Group("llama-3.1-8b", "RTX-PRO-6000", 1, 1, 1, 1.0, role="decode"),
              Group("llama-3.1-70b", "H100", 4, 1, 1, 1.0))
    plan = Plan(Routing(0.3, 0.5, "builtin"), groups)
    data = plan.to_dict()
    assert [g.get("role") for g in data["groups"]] == ["prefill", "decode", None]
    assert "role" not in data["groups"][2]            # a co-located group is written as before
    back = Plan.from_dict(data)
    assert back.groups == groups
    assert groups[0].name == "llama-3.1-8b-H100-tp1pp1-prefill"
    old = {"routing": {"strong_share": 0.3}, "groups": [
        {"model": "llama-3.1-8b", "gpu": "H100", "tp": 1, "pp": 1, "replicas": 1, "share": 1.0}]}
    assert Plan.from_dict(old).groups[0].role is None
    assert Plan.from_dict(old).to_dict()["groups"] == old["groups"]
