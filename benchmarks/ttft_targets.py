"""What a TTFT P95 target costs: each paper preset's first target planned under tighter ones.

Issue 28, item 1 (targets as users write them).

    python benchmarks/ttft_targets.py [--json build/ttft_targets.json] [--no-copy]
        [--presets paper-gsm8k,paper-mtbench] [--seeds 3] [--target KEY=VALUE]

For each preset, its first (quality, P95) target is planned min-cost with `tuning.choose_plan`
(auto solver, the headroom check on ``--seeds`` fresh traces per group) without a TTFT target,
then with TTFT P95 targets at 100%, 80%, 60% and 40% of the unconstrained plan's worst group
TTFT P95 (perf DB, at its rate). Each row: $/h, planning P95, the worst group's predicted TTFT
P95, the worst fresh-trace TTFT P95, goodput (requests meeting the end-to-end and TTFT
targets on the fresh traces) and whether the plan holds.

Prints a table, writes JSON (and a copy to benchmarks/data/ttft_targets.json). Targets
(`TARGETS`): every chosen plan holds its targets on its fresh traces, and tightening the TTFT
target never makes the plan cheaper (a tighter problem).
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from pathlib import Path
from typing import Any

from _results import write_results
from _targets import Target, add_target_argument, check, passed, print_checks, resolve

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

TARGETS = {
    "plans_not_holding": Target("<=", 0, "", "chosen plans missing a target on fresh traces"),
    "cheaper_when_tighter": Target("<=", 0, "", "TTFT steps whose plan is cheaper than the "
                                   "looser step's"),
}
PRESETS = ("paper-gsm8k", "paper-mtbench")
FRACTIONS = (1.0, 0.8, 0.6, 0.4)


def _row(problem: Any, goal: Any, seeds: int) -> dict[str, Any]:
    """Plan `goal` on `problem` (with the headroom check) and report the plan's figures."""
    from tuning import PlanOptions, choose_plan, fresh_seeds

    t0 = time.perf_counter()
    chosen = choose_plan(problem, goal, PlanOptions(check_seeds=fresh_seeds(seeds)))
    plan, held = chosen.plan, chosen.held
    row: dict[str, Any] = {"ttft_target_s": goal.ttft_p95_s, "seconds": 0.0}
    if plan is None or plan.predicted is None:
        row.update(cost_per_hour=None, holds=False)
    else:
        pr = plan.predicted
        tokens = held.summary().get("tokens") or {}
        row.update(cost_per_hour=pr.cost_per_hour, p95_s=pr.p95_s,
                   ttft_p95_s=pr.ttft_p95_s, fresh_ttft_p95_s=tokens.get("worst_ttft_p95_s"),
                   goodput=pr.goodput, holds=held.holds if held.checks else None,
                   groups=[f"{g.replicas}x {g.name}" for g in plan.groups])
    row["seconds"] = round(time.perf_counter() - t0, 2)
    return row


def _worst_ttft(problem: Any, goal: Any) -> float:
    """The unconstrained min-cost plan's worst group TTFT P95 (perf DB, at its rate)."""
    from tuning import plan_from_arrays, search

    res = search(problem, goal)
    b = res.best(problem)
    if b is None:
        raise SystemExit(f"{problem.scenario.name}: no plan meets {goal}")
    view = problem.with_token_targets(1e9, None)       # clips nothing, reports the TTFT P95
    plan = plan_from_arrays(view, res.plans, res.metrics, b)
    assert plan.predicted is not None and plan.predicted.ttft_p95_s is not None
    return float(plan.predicted.ttft_p95_s)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", default="build/ttft_targets.json")
    p.add_argument("--presets", default=",".join(PRESETS))
    p.add_argument("--seeds", type=int, default=3, help="fresh traces per group (headroom)")
    p.add_argument("--no-copy", action="store_true", help="do not copy the JSON to "
                   "benchmarks/data/")
    add_target_argument(p, TARGETS)
    args = p.parse_args()
    from tuning import Goal, planning_problem

    cases: list[dict[str, Any]] = []
    print(f"{'preset':<15}{'TTFT target':>12}{'$/h':>8}{'P95 s':>8}{'TTFT DB':>9}"
          f"{'TTFT fresh':>11}{'goodput':>9}{'holds':>7}{'s':>7}")
    for name in args.presets.split(","):
        problem = planning_problem(name, progress=False)
        t = problem.scenario.targets[0]
        base = Goal("min-cost", t.single_quality, t.p95_s)
        worst = _worst_ttft(problem, base)
        goals = [base] + [Goal("min-cost", t.single_quality, t.p95_s,
                               ttft_p95_s=round(f * worst, 4)) for f in FRACTIONS]
        rows = [_row(problem, g, args.seeds) for g in goals]
        for r in rows:
            def f(v: Any, fmt: str) -> str:
                return "-" if v is None else format(v, fmt)
            print(f"{name:<15}{f(r['ttft_target_s'], '.4f'):>12}{f(r['cost_per_hour'], '.2f'):>8}"
                  f"{f(r.get('p95_s'), '.2f'):>8}{f(r.get('ttft_p95_s'), '.4f'):>9}"
                  f"{f(r.get('fresh_ttft_p95_s'), '.4f'):>11}"
                  f"{f(None if r.get('goodput') is None else 100 * r['goodput'], '.1f'):>9}"
                  f"{r.get('holds')!s:>7}{r['seconds']:>7.1f}")
        cases.append({"preset": name, "quality": t.single_quality, "p95_s": t.p95_s,
                      "unconstrained_worst_ttft_p95_s": worst, "rows": rows})
    not_holding = sum(1 for c in cases for r in c["rows"] if r["holds"] is False)
    cheaper = 0
    for c in cases:
        costs = [r["cost_per_hour"] for r in c["rows"]]       # no target first, then tighter
        cheaper += sum(1 for a, b in itertools.pairwise(costs)
                       if a is not None and b is not None and b < a - 1e-9)
    rows_checked = check(resolve(TARGETS, args.target),
                         {"plans_not_holding": not_holding, "cheaper_when_tighter": cheaper},
                         {})
    print_checks(rows_checked)
    payload = {"seeds": args.seeds, "fractions": FRACTIONS, "cases": cases,
               "targets": rows_checked}
    write_results(payload, args.json, None if args.no_copy else "ttft_targets.json")
    return 0 if passed(rows_checked) else 1


if __name__ == "__main__":
    sys.exit(main())
