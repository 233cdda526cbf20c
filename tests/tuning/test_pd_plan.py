"""`boute plan --disaggregate` / `boute evaluate` of P/D plans: refusals, the derate loop, the
P/D simulator's numbers."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from boute.cli import main
from common.errors import BouteError
from profiling import Trace, kv_link, load_catalog, simulate_pd
from tuning import Goal, Group, PdOffer, PdPlanner, Plan, evaluate_pd, hold_pd, planning_problem
from tuning import refuse_disaggregate as refuse
from tuning._disagg import _Cfg
from tuning._pd_plan import pd_planner

CAT = load_catalog()
M8, M70 = "llama-3.1-8b", "llama-3.1-70b"
GOAL = Goal("min-cost", 89.0, ttft_p95_s=1.5, tpot_p95_s=0.05)
SCENARIO = """
name: tiny-pd
gpus:
  H100: {count: 8}
  RTX-4090: {count: 8}
models: {weak: llama-3.1-8b, strong: llama-3.1-70b}
task: gsm8k
workload: {shape: gsm8k, rate_rps: 4}
budget_per_hour: 60
profile: {num_rates: 4, num_requests: 200}
"""


def _problem(**kw: Any) -> Any:
    """What `refuse_disaggregate` reads of a problem: a pair, one workload, no classes."""
    base: dict[str, Any] = {"workloads": ("default",), "is_pair": True, "models": (M8, M70),
                            "threshold_tokens": None,
                            "scenario": SimpleNamespace(length_classes=None)}
    return SimpleNamespace(**{**base, **kw})


@pytest.mark.parametrize(("problem", "goal", "message"), [
    (_problem(workloads=("math", "chat")), GOAL, "the scenario has 2 workloads (math, chat)"),
    (_problem(is_pair=False, models=("a", "b", "c")), GOAL, "a ladder of 3 models"),
    (_problem(threshold_tokens=512), GOAL, "remove the scenario's length_classes"),
    (_problem(scenario=SimpleNamespace(length_classes=object())), GOAL, "length classes"),
    (_problem(), Goal("min-cost", 89.0, ttft_p95_s=1.5), "pass both --ttft-p95 and --tpot-p95"),
    (_problem(), Goal("min-cost", None, ttft_p95_s=1.5, tpot_p95_s=0.05), "needs --quality"),
    (_problem(), Goal("min-cost", 89.0, 8.0, ttft_p95_s=1.5, tpot_p95_s=0.05), "drop --p95"),
])
def test_refusals_name_the_flag_and_why(problem: Any, goal: Goal, message: str) -> None:
    with pytest.raises(BouteError, match="disaggregate") as e:
        refuse(problem, goal)
    assert message in str(e.value)


def _code_trace(n: int = 200, seed: int = 0, rate: float = 1.0) -> Trace:
    """Azure-code-like lengths (prompt mean/median 2,048/1,500; answer 28/13), Poisson."""
    rng = np.random.default_rng(seed)

    def lognormal(mean: float, median: float, cap: int) -> Any:
        sigma = math.sqrt(2.0 * math.log(mean / median))
        return np.clip(np.rint(median * np.exp(sigma * rng.standard_normal(n))), 1, cap
                       ).astype(np.int64)

    prompts, answers = lognormal(2048, 1500, 7000), lognormal(28, 13, 400)
    gaps = rng.exponential(1.0 / rate, n)
    gaps[0] = 0.0
    return Trace(np.cumsum(gaps), prompts, answers, None, name="code")


@pytest.mark.parametrize(("over", "factor"), [
    (1.25, 0.8),            # 1 / 1.25
    (1.01, 0.98),           # 1 / 1.01 = 0.990, capped at DERATE = 0.98
    (3.0, 0.5),             # 1 / 3 floored at MIN_FACTOR = 0.5
    (math.inf, 0.5),        # saturated
])
def test_a_pool_pair_missing_on_fresh_traffic_is_derated_and_replanned(
        over: float, factor: float) -> None:
    offers = [PdOffer(g, 8, CAT.gpu(g).price_per_hour) for g in ("H100", "RTX-4090")]
    planner = PdPlanner(CAT, offers, _code_trace(), ttft_p95_s=1.5, tpot_p95_s=0.05)
    rates = {M8: 4.0, M70: 2.0}
    plans: list[Any] = []

    def check(p: PdPlanner, choice: Any) -> dict[str, dict[str, Any]]:
        plans.append(choice)
        miss = len(plans) == 1          # the first plan's 70B pools miss TTFT by `over`
        return {m: {"ttft_p95_s": 1.5 * over if miss and m == M70 else 0.1,
                    "tpot_p95_s": 0.01, "holds": not (miss and m == M70)} for m in rates}

    held = hold_pd(planner, rates, budget_per_hour=1000.0, strong_share=1 / 3, check=check)
    assert held.rounds == 2 and held.holds and len(plans) == 2
    assert held.costs == (plans[0].cost_per_hour, plans[1].cost_per_hour)
    first = [g for g in plans[0].groups if g.model == M70]
    # The prefill-heavy 70B traffic is split into a pool pair (the reason to derate pools).
    assert {g.role for g in first} == {"prefill", "decode"}
    assert held.factors == {f"{g.role} {M70} {g.gpu} tp{g.tp}": factor for g in first}
    # Lower rates: never cheaper; the 8B model, which held, keeps its groups.
    assert plans[1].cost_per_hour >= plans[0].cost_per_hour
    assert [g for g in plans[1].groups if g.model == M8] == [
        g for g in plans[0].groups if g.model == M8]
    # Each re-planned 70B pool on a derated config carries its share at the derated rate.
    for g in plans[1].groups:
        if g.model != M70 or g.role is None:
            continue
        cfg = _Cfg(g.model, g.gpu, g.tp, g.pp)
        f = plans[1].decode_fraction[M70]
        if g.role == "decode":
            rate = planner.decode_rate(cfg, f)
        else:
            d = next(x for x in plans[1].groups if x.role == "decode")
            rate = planner.prefill_rate(cfg, f, kv_link(
                planner.replica(cfg), planner.replica(_Cfg(d.model, d.gpu, d.tp, d.pp)),
                same_node=False))
        scale = held.factors.get(f"{g.role} {M70} {g.gpu} tp{g.tp}", 1.0)
        assert g.replicas * rate * scale >= rates[M70] * g.share - 1e-9
    # The planner given in is not changed: its rates carry no factor.
    assert not hasattr(planner, "factors")


def test_hold_without_a_check_is_one_round() -> None:
    planner = PdPlanner(CAT, [PdOffer("H100", 8, 2.69)], _code_trace(), ttft_p95_s=1.5,
                        tpot_p95_s=0.05, models=(M8,))
    held = hold_pd(planner, {M8: 4.0}, budget_per_hour=100.0, strong_share=0.0, check=None)
    assert held.rounds == 1 and held.holds and held.checks == ()


def _tiny(tmp_path: Path) -> tuple[Path, Path]:
    path = tmp_path / "tiny-pd.yaml"
    path.write_text(SCENARIO)
    return path, tmp_path / "db.parquet"


def test_evaluate_of_a_pool_pair_is_simulate_pd(tmp_path: Path) -> None:
    sc, db = _tiny(tmp_path)
    problem = planning_problem(str(sc), db=db, progress=False)
    s = 0.5
    groups = (Group(M8, "RTX-4090", 1, 1, 1, 1.0),
              Group(M70, "H100", 2, 1, 1, 1.0, role="prefill"),
              Group(M70, "H100", 4, 1, 1, 1.0, role="decode"))
    plan = Plan(problem_routing(problem, s), groups, goal=GOAL)
    got = evaluate_pd(problem, plan, CAT)
    # By hand: the pair at s * 4 req/s on the planning trace; 2 + 4 H100s share a node.
    base = pd_planner(problem, CAT, GOAL).base
    pr = pd_planner(problem, CAT, GOAL).replica(_Cfg(M70, "H100", 2))
    dr = pd_planner(problem, CAT, GOAL).replica(_Cfg(M70, "H100", 4))
    assert pr.gpu.gpus_per_node >= 6
    want = simulate_pd(pr, dr, base.scaled_to(s * 4.0), n_prefill=1, n_decode=1,
                       link=kv_link(pr, dr, same_node=True))
    assert got[M70]["ttft_p95_s"] == want.p95("ttft")
    assert got[M70]["tpot_p95_s"] == want.p95("tpot")
    assert set(got) == {M8, M70}


def problem_routing(problem: Any, s: float) -> Any:
    from tuning import Routing

    return Routing(s, problem.quality.threshold_for(s))


def test_evaluate_refuses_a_prefill_pool_without_its_decode_pool(tmp_path: Path) -> None:
    sc, db = _tiny(tmp_path)
    problem = planning_problem(str(sc), db=db, progress=False)
    plan = Plan(problem_routing(problem, 0.5), (
        Group(M8, "RTX-4090", 1, 1, 1, 1.0), Group(M70, "H100", 2, 1, 1, 1.0, role="prefill")))
    with pytest.raises(BouteError, match=r"llama-3\.1-70b has 1 prefill and 0 decode groups"):
        evaluate_pd(problem, plan, CAT)


def test_plan_disaggregate_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sc, db = _tiny(tmp_path)
    out = tmp_path / "plan.json"
    common = ["--scenario", str(sc), "--db", str(db), "--quality", "89", "--out", str(out)]
    assert main(["plan", *common, "--disaggregate", "--ttft-p95", "1.5"]) == 2
    assert "pass both --ttft-p95 and --tpot-p95" in capsys.readouterr().err
    code = main(["--json", "plan", *common, "--disaggregate", "--ttft-p95", "1.5",
                 "--tpot-p95", "0.05", "--resim-seeds", "1"])
    payload = json.loads(capsys.readouterr().out)
    assert code == 0 and payload["disaggregation"]["holds"]
    saved = Plan.load(out)
    assert saved.predicted is not None and saved.predicted.ttft_p95_s is not None
    assert saved.predicted.ttft_p95_s <= 1.5 and saved.predicted.tpot_p95_s <= 0.05
    # Its groups evaluate (with or without pool pairs).
    assert main(["evaluate", str(out), "--scenario", str(sc), "--db", str(db)]) == 0
