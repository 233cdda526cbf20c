"""`boute evaluate`: the predicted metrics of a plan file on its scenario (or another).

A plan made for TTFT / TPOT targets (its ``search.goal``) is evaluated under them: a group
past its token rate cap is reported as saturated.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from boute._planning import add_planning_args, format_plan, load_planning_problem

if TYPE_CHECKING:
    from tuning import Plan

__all__ = ["add_evaluate"]


# -- boute evaluate ------------------------------------------------------------------------------
def add_evaluate(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `boute evaluate`."""
    p = sub.add_parser("evaluate", help="predicted metrics of a plan file")
    p.add_argument("plan", help="plan JSON")
    add_planning_args(p)
    p.set_defaults(run=_run_evaluate)


def _run_evaluate(args: argparse.Namespace) -> int:
    from tuning import Plan, evaluate_plan

    plan = Plan.load(args.plan)
    if args.scenario is None and plan.scenario.get("name"):
        from profiling import list_presets

        if plan.scenario["name"] in list_presets():
            args.scenario = plan.scenario["name"]
    if any(g.role is not None for g in plan.groups):
        return _evaluate_pd(args, plan)
    lc = plan.routing.length_classes
    problem = load_planning_problem(args, None if lc is None else lc.threshold_tokens)
    if plan.goal is not None:           # its TTFT / TPOT targets, if any (none: as loaded)
        problem = problem.for_goal(plan.goal)
    evaluated = evaluate_plan(problem, plan)

    from boute._shared import emit

    emit(args, evaluated.to_dict(), lambda: format_plan(evaluated))
    return 0


def _evaluate_pd(args: argparse.Namespace, plan: Plan) -> int:
    """A plan with prefill/decode pools: `tuning.evaluate_pd` (pairs with the P/D simulator)."""
    from boute._shared import emit
    from profiling import load_catalog
    from tuning import evaluate_pd

    problem = load_planning_problem(args)
    per_model = evaluate_pd(problem, plan, load_catalog(args.gpu_catalog, args.model_catalog))
    payload = {"plan": plan.to_dict(), "pd": per_model}

    def human() -> str:
        lines = [f"{len(plan.groups)} groups, strong share {plan.routing.strong_share:.3f} "
                 f"at {problem.rate_rps:g} req/s (P/D simulator for pool pairs):"]
        for g in plan.groups:
            role = {"prefill": "prefill pool", "decode": "decode pool"}.get(g.role or "",
                                                                           "co-located")
            lines.append(f"  {g.replicas}x {g.model} on {g.gpu} tp{g.tp} pp{g.pp}  [{role}]")
        for m, v in per_model.items():
            lines.append(f"{m}: TTFT P95 {v['ttft_p95_s']:.3f} s, TPOT P95 "
                         f"{1e3 * v['tpot_p95_s']:.1f} ms"
                         + ("" if plan.goal is None else
                            f" ({'meets' if v['holds'] else 'MISSES'} the plan's targets)"))
        return "\n".join(lines)

    emit(args, payload, human)
    return 0
