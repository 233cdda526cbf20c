"""`boute evaluate`: the predicted metrics of a plan file on its scenario (or another).

A plan made for TTFT / TPOT targets (its ``search.goal``) is evaluated under them: a group
past its token rate cap is reported as saturated.
"""

from __future__ import annotations

import argparse

from boute._planning import add_planning_args, format_plan, load_planning_problem

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
    lc = plan.routing.length_classes
    problem = load_planning_problem(args, None if lc is None else lc.threshold_tokens)
    if plan.goal is not None:           # its TTFT / TPOT targets, if any (none: as loaded)
        problem = problem.for_goal(plan.goal)
    evaluated = evaluate_plan(problem, plan)

    from boute._shared import emit

    emit(args, evaluated.to_dict(), lambda: format_plan(evaluated))
    return 0
