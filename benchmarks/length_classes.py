"""What request classes by length buy: each preset's targets planned with and without them.

Issue 17's length-class measurement.

    python benchmarks/length_classes.py [--json build/length_classes.json] [--no-copy]
        [--cases single-70b-gsm8k,paper-gsm8k,...] [--target KEY=VALUE]

For every case and target, `tuning._lengths.choose` plans the scenario without classes and
with each candidate threshold (a short/long split of prompt + max_tokens, each class served by
its own groups), every plan through `tuning._headroom.hold` (re-simulated on 3 fresh traces
per group, re-planned with derated configs until it holds). Solvers: ``auto`` (the exact DP
for a two-model pair without classes, else mobo with the exact-deployment polish).

* **single-70b-gsm8k** (Llama-3.1-70B alone, 200 req/s, P95 12 s, the paper's 4 GPU types x 8):
  the case where Melange's ILP found $36.00/h against our $39.68/h; thresholds at the
  40/50/60% quantiles of the requests' lengths.
* **paper-gsm8k, paper-mtbench, mixed-gsm8k-mtbench, ladder-gsm8k**: each preset's targets,
  with one candidate threshold (the median length; the presets' class DBs dominate the run
  time).

Prints a table, writes JSON (and a copy to benchmarks/data/length_classes.json). Targets
(`TARGETS`): the 70B case costs at most $36.5/h with classes, the chosen plan is never dearer
than the plan without classes, and every chosen plan holds its P95 on its fresh traces.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from _targets import Target, add_target_argument, check, passed, print_checks, resolve

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

TARGETS = {
    "single_70b_cost_per_hour": Target("<=", 36.5, "$/h", "70B alone, 200 req/s, P95 12 s, "
                                       "with length classes"),
    "chosen_over_without": Target("<=", 1.0, "", "chosen plan $/h over the plan without "
                                  "classes (worst)"),
    "plans_not_holding": Target("<=", 0, "", "chosen plans failing their P95 on fresh traces"),
}
CASES = ("single-70b-gsm8k", "paper-gsm8k", "paper-mtbench", "mixed-gsm8k-mtbench",
         "ladder-gsm8k")


def _problem(scenario: Any, catalog: Any, tau: int | None) -> Any:
    """The scenario's planning problem (DBs under build/, built if need be)."""
    from tuning import scenario_problem

    return scenario_problem(scenario, catalog, progress=False, threshold_tokens=tau)


def _plan_row(choice: Any) -> dict[str, Any]:
    plan = choice.held.plan
    if plan is None or plan.predicted is None:
        return {"cost_per_hour": None}
    lc = plan.routing.length_classes
    return {"cost_per_hour": round(plan.predicted.cost_per_hour, 4),
            "p95_s": plan.predicted.p95_s, "quality": plan.predicted.quality,
            "threshold_tokens": None if lc is None else lc.threshold_tokens,
            "holds": choice.held.holds, "rounds": choice.held.rounds,
            "groups": [g.to_dict() for g in plan.groups]}


def run_case(name: str, seed: int) -> list[dict[str, Any]]:
    """Every target of preset `name`: without classes and with each candidate threshold."""
    from profiling import LengthClasses, length_thresholds, load_catalog, load_scenario
    from tuning import Goal, PlanOptions, choose_plan

    catalog = load_catalog()
    sc = load_scenario(name)
    if sc.length_classes is None:
        sc = sc.model_copy(update={"length_classes": LengthClasses()})
        auto = length_thresholds(sc)
        thresholds: tuple[int, ...] = (auto[len(auto) // 2],)
    else:
        thresholds = length_thresholds(sc)
    rows = []
    for t in sc.targets:
        names = sc.workload_names
        goal = (Goal("min-cost", None, t.p95_s, t.qualities(names)) if len(names) > 1 else
                Goal("min-cost", t.single_quality, t.p95_s))
        t0 = time.perf_counter()
        choice = choose_plan(_problem(sc, catalog, None), goal, PlanOptions(seed=seed),
                             with_threshold=lambda tau: _problem(sc, catalog, tau),
                             thresholds=thresholds, catalog=catalog).lengths
        assert choice is not None
        rows.append({"target": {"quality": t.quality, "p95_s": t.p95_s},
                     "tries": choice.tries, "chosen": _plan_row(choice),
                     "seconds": time.perf_counter() - t0})
        print(f"  {name} {t.quality} @ {t.p95_s:g} s: "
              + ", ".join(f"{tr['threshold_tokens']}: {tr['cost_per_hour']}" for tr in
                          choice.tries), flush=True)
    return rows


def _table(results: dict[str, list[dict[str, Any]]]) -> None:
    def cost(v: Any) -> str:
        return "-" if v is None else f"{v:.2f}"

    print(f"{'case':<22}{'target':<26}{'no classes':>11}{'classes':>9}{'tokens':>8}"
          f"{'chosen':>9}{'saved':>7}  holds")
    for name, rows in results.items():
        for r in rows:
            tries = r["tries"]
            none = tries[0]["cost_per_hour"]
            with_cls = [x for x in tries[1:] if x["cost_per_hour"] is not None]
            best = min(with_cls, key=lambda x: x["cost_per_hour"], default=None)
            ch = r["chosen"]["cost_per_hour"]
            saved = "-" if none is None or ch is None else f"{1 - ch / none:+.0%}"
            q = r["target"]["quality"]
            tgt = (", ".join(f"{k} {v:g}" for k, v in q.items()) if isinstance(q, dict)
                   else f"{q:g}") + f"; {r['target']['p95_s']:g} s"
            print(f"{name:<22}{tgt:<26}{cost(none):>11}"
                  f"{cost(None if best is None else best['cost_per_hour']):>9}"
                  f"{'-' if best is None else best['threshold_tokens']:>8}{cost(ch):>9}"
                  f"{saved:>7}  {r['chosen'].get('holds')}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", default="build/length_classes.json")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cases", default=",".join(CASES))
    p.add_argument("--no-copy", action="store_true", help="do not copy the JSON to "
                   "benchmarks/data/length_classes.json")
    add_target_argument(p, TARGETS)
    args = p.parse_args()
    t0 = time.perf_counter()
    results = {name: run_case(name, args.seed) for name in args.cases.split(",")}
    print()
    _table(results)
    rows = [r for rs in results.values() for r in rs]
    single = results.get("single-70b-gsm8k", [])
    ratios = [round(r["chosen"]["cost_per_hour"] / r["tries"][0]["cost_per_hour"], 6)
              for r in rows
              if r["chosen"]["cost_per_hour"] and r["tries"][0]["cost_per_hour"]]
    measured = {
        "single_70b_cost_per_hour": (single[0]["chosen"]["cost_per_hour"] if single else None),
        "chosen_over_without": max(ratios, default=None),
        "plans_not_holding": float(sum(1 for r in rows if r["chosen"]["cost_per_hour"]
                                       is not None and not r["chosen"]["holds"])),
    }
    checks = check(resolve(TARGETS, args.target), measured, {})
    print()
    print_checks(checks)
    payload = {"machine": {"platform": platform.platform(), "cpus": __import__("os").cpu_count(),
                           "python": platform.python_version()},
               "command": f"python benchmarks/length_classes.py --cases {args.cases}",
               "seconds": time.perf_counter() - t0, "cases": results, "targets": checks}
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(payload, indent=1, default=str) + "\n")
    if not args.no_copy:
        shutil.copy(out, REPO / "benchmarks" / "data" / "length_classes.json")
    return 0 if passed(checks) else 1


if __name__ == "__main__":
    sys.exit(main())
