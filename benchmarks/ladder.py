"""What a third model and a shared pool buy: ladder presets against pairs and separate pools.

Issue 17's measurements.

    python benchmarks/ladder.py [--json build/ladder.json] [--no-copy] [--target KEY=VALUE]

* **ladder-gsm8k** (8B / 70B / 405B; the paper's four GPU types x 8 plus 32 H200): for each of
  its targets, the cheapest plan of the three-model ladder (`tuning.search`, mobo over the
  ladder encoding) against the cheapest plan of the 8B / 70B pair on the same stock (the
  exact DP): what the 405B buys, in $/h, with each plan's allocation (Table 1 style: share of
  queries and GPUs per model).
* **mixed-gsm8k-mtbench** (math 80 req/s + chat 20 req/s on the paper's pool): the joint plan
  against two pools planned separately, each on the whole stock (the most favourable to the
  separate pools: their sum may exceed the stock).

Every plan goes through `tuning._headroom.hold` (re-simulated on 3 fresh traces per group,
re-planned with derated configs until it holds), and the table says how many rounds that took.
Prints a table, writes JSON (and a copy to benchmarks/data/ladder.json). Targets (`TARGETS`):
the ladder is never dearer than the pair where both reach the target (tolerance 1%), reaches
the target the pair cannot, the joint pool costs no more than the separate ones, and every
plan holds on its fresh traces.
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
    "ladder_over_pair": Target("<=", 1.01, "", "ladder $/h over pair $/h where both reach "
                               "the target (worst)"),
    "unreachable_by_pair_reached": Target(">=", 1, "", "targets only the ladder reaches"),
    "joint_over_separate": Target("<=", 1.0, "", "joint pool $/h over separate pools' (worst)"),
    "plans_not_holding": Target("<=", 0, "", "plans failing their P95 on fresh traces"),
}


def _allocation(plan: Any) -> dict[str, Any]:
    gpus: dict[str, dict[str, int]] = {}
    for g in plan.groups:
        per = gpus.setdefault(g.model, {})
        per[g.gpu] = per.get(g.gpu, 0) + g.num_gpus
    rt = plan.routing
    shares = ({w.name: dict(zip(rt.models, w.shares, strict=True)) for w in rt.workloads}
              if rt.is_ladder else {"default": {plan.groups[0].model: 1.0}
                                    if len({g.model for g in plan.groups}) == 1 else
                                    {"strong": rt.strong_share}})
    return {"gpus": gpus, "shares": shares}


def _held(problem: Any, goal: Any, catalog: Any, seed: int) -> dict[str, Any]:
    from tuning import PlanOptions, choose_plan

    t0 = time.perf_counter()
    held = choose_plan(problem, goal, PlanOptions(seed=seed), catalog=catalog).held
    seconds = time.perf_counter() - t0
    if held.plan is None or held.plan.predicted is None:
        return {"cost_per_hour": None, "seconds": seconds, "solver": held.result.solver}
    return {"cost_per_hour": round(held.plan.predicted.cost_per_hour, 4),
            "p95_s": held.plan.predicted.p95_s, "quality": held.plan.predicted.quality,
            "allocation": _allocation(held.plan), "holds": held.holds, "rounds": held.rounds,
            "derated": held.derated, "seconds": seconds, "solver": held.result.solver}


def _pair_of(scenario: Any, models: tuple[str, str]) -> Any:
    from profiling import ModelPair

    gpus = {k: v for k, v in scenario.gpus.items()}
    return scenario.model_copy(update={"name": f"{scenario.name}-pair",
                                       "models": ModelPair(weak=models[0], strong=models[1]),
                                       "gpus": gpus})


def ladder_vs_pair(seed: int) -> list[dict[str, Any]]:
    """The three-model preset's targets: ladder against the pair."""
    from profiling import load_catalog
    from tuning import Goal, planning_problem, scenario_problem

    catalog = load_catalog()
    ladder = planning_problem("ladder-gsm8k", progress=False)
    sc = _pair_of(ladder.scenario, (ladder.models[0], ladder.models[1]))
    pair = scenario_problem(sc, catalog, db=Path("build") / "perfdb-ladder-gsm8k-pair.parquet",
                            progress=False)
    rows = []
    for t in ladder.scenario.targets:
        q = t.single_quality
        row: dict[str, Any] = {"quality": q, "p95_s": t.p95_s}
        row["ladder"] = _held(ladder, Goal("min-cost", q, t.p95_s), catalog, seed)
        if q <= pair.quality_range()[1]:
            row["pair"] = _held(pair, Goal("min-cost", q, t.p95_s), catalog, seed)
        else:
            row["pair"] = {"cost_per_hour": None, "unreachable": True}
        rows.append(row)
    return rows


def joint_vs_separate(seed: int) -> list[dict[str, Any]]:
    """The two-workload preset's targets: one pool against one pool per workload."""
    from profiling import load_catalog
    from tuning import Goal, db_paths, planning_problem, scenario_problem

    catalog = load_catalog()
    joint = planning_problem("mixed-gsm8k-mtbench", progress=False)
    alone = {name: scenario_problem(joint.scenario.for_workload(name), catalog, db=path,
                                    progress=False)
             for name, path in zip(joint.workloads, db_paths(joint.scenario), strict=True)}
    rows = []
    for t in joint.scenario.targets:
        qs = t.qualities(joint.workloads)
        row: dict[str, Any] = {"quality": dict(zip(joint.workloads, qs, strict=True)),
                               "p95_s": t.p95_s}
        row["joint"] = _held(joint, Goal("min-cost", None, t.p95_s, qs), catalog, seed)
        row["separate"] = {name: _held(pr, Goal("min-cost", None, t.p95_s, (q,)), catalog, seed)
                           for (name, pr), q in zip(alone.items(), qs, strict=True)}
        costs = [v["cost_per_hour"] for v in row["separate"].values()]
        row["separate_total"] = None if None in costs else round(sum(costs), 4)
        rows.append(row)
    return rows


def _table(ladder: list[dict[str, Any]], mixed: list[dict[str, Any]]) -> None:
    def cost(v: Any) -> str:
        return "-" if v is None else f"{v:.2f}"

    print("ladder-gsm8k: cheapest $/h meeting (quality, P95); 3 models vs the 8B/70B pair")
    print(f"{'target':<14}{'3 models':>10}{'pair':>10}{'saved':>8}  3-model allocation")
    for r in ladder:
        a, b = r["ladder"]["cost_per_hour"], r["pair"]["cost_per_hour"]
        saved = "-" if a is None or b is None else f"{1 - a / b:+.0%}"
        alloc = r["ladder"].get("allocation", {})
        text = "; ".join(f"{m}: {'+'.join(f'{n}x{g}' for g, n in per.items())}"
                         for m, per in alloc.get("gpus", {}).items())
        print(f"({r['quality']:g}, {r['p95_s']:g} s)".ljust(14)
              + f"{cost(a):>10}{cost(b):>10}{saved:>8}  {text}")
    print()
    print("mixed-gsm8k-mtbench: one pool for both workloads vs a pool per workload")
    print(f"{'target':<34}{'joint':>8}{'separate':>10}{'saved':>8}")
    for r in mixed:
        a, b = r["joint"]["cost_per_hour"], r["separate_total"]
        saved = "-" if a is None or b is None else f"{1 - a / b:+.0%}"
        tgt = ", ".join(f"{k} {v:g}" for k, v in r["quality"].items()) + f"; {r['p95_s']:g} s"
        print(f"{tgt:<34}{cost(a):>8}{cost(b):>10}{saved:>8}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", default="build/ladder.json")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-copy", action="store_true", help="do not copy the JSON to "
                   "benchmarks/data/ladder.json")
    add_target_argument(p, TARGETS)
    args = p.parse_args()
    t0 = time.perf_counter()
    ladder = ladder_vs_pair(args.seed)
    mixed = joint_vs_separate(args.seed)
    _table(ladder, mixed)
    both = [r for r in ladder if r["ladder"]["cost_per_hour"] and r["pair"]["cost_per_hour"]]
    plans = ([r["ladder"] for r in ladder] + [r["pair"] for r in ladder]
             + [r["joint"] for r in mixed]
             + [v for r in mixed for v in r["separate"].values()])
    measured = {
        "ladder_over_pair": max((r["ladder"]["cost_per_hour"] / r["pair"]["cost_per_hour"]
                                 for r in both), default=None),
        "unreachable_by_pair_reached": float(sum(
            1 for r in ladder if r["pair"].get("unreachable") and r["ladder"]["cost_per_hour"])),
        "joint_over_separate": max((r["joint"]["cost_per_hour"] / r["separate_total"]
                                    for r in mixed if r["joint"]["cost_per_hour"]
                                    and r["separate_total"]), default=None),
        "plans_not_holding": float(sum(1 for v in plans if v.get("cost_per_hour") is not None
                                       and not v.get("holds", False))),
    }
    rows = check(resolve(TARGETS, args.target), measured, {})
    print()
    print_checks(rows)
    payload = {"machine": {"platform": platform.platform(), "cpus": __import__("os").cpu_count(),
                           "python": platform.python_version()},
               "command": "python benchmarks/ladder.py", "seconds": time.perf_counter() - t0,
               "ladder_gsm8k": ladder, "mixed_gsm8k_mtbench": mixed, "targets": rows}
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(payload, indent=1, default=str) + "\n")
    if not args.no_copy:
        shutil.copy(out, REPO / "benchmarks" / "data" / "ladder.json")
    return 0 if passed(rows) else 1


if __name__ == "__main__":
    sys.exit(main())
