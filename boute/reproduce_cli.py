"""`boute reproduce`: the paper's experiments in one command, as a Markdown report with figures.

Computation lives in `tuning._reproduce` (main results, Tables 1 and 3, characterization) and
`tuning._planning_time` (Table 2); this module runs them, writes ``reproduction.json`` (every
number), ``report.md`` and the PNG figures under ``--out``, and prints the tables.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from boute._shared import add_catalog_args, add_hardware_profiles_arg, emit, json_safe, stderr_note
from common.errors import BouteError

from ._reproduce_report import markdown, tables_text, write_figures

if TYPE_CHECKING:
    from tuning import Problem
    from tuning.paper import MainRow, TargetComparison

__all__ = ["add_reproduce"]

DEFAULT_SCENARIOS = ("paper-gsm8k", "paper-mtbench")
TABLE2_PRESETS = ("scale-3types", "scale-4types", "scale-5types", "scale-6types")
FULL = {"points": 5, "cap_s": 20.0, "no_db_evals": 3, "table2": TABLE2_PRESETS,
        "patience": 20, "mobo_limit_s": 60.0}
"""The full run; `patience` / `mobo_limit_s` are ``boute plan``'s stopping rule."""
QUICK = {"points": 3, "cap_s": 5.0, "no_db_evals": 1, "table2": ("scale-3types",),
         "patience": 3, "mobo_limit_s": 10.0}


def add_reproduce(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `boute reproduce`."""
    p = sub.add_parser("reproduce", help="the paper's experiments (main results, Tables 1-3, "
                       "characterization) as a Markdown report with figures and one JSON")
    p.add_argument("--scenario", action="append", default=None, metavar="S",
                   help="preset or YAML, repeatable (default: paper-gsm8k, paper-mtbench)")
    p.add_argument("--out", default="build/reproduction", help="report folder (default "
                   "build/reproduction)")
    p.add_argument("--quick", action="store_true", help="a smaller run: 3 quality points, "
                   "Table 2 on scale-3types only, 5 s raw-search cap, MOBO stopped after 3 "
                   "stable steps, 1 simulated evaluation")
    p.add_argument("--table2", default=None, metavar="P,...", help="presets of Table 2 "
                   f"(default {','.join(TABLE2_PRESETS)}; --quick: scale-3types)")
    p.add_argument("--points", type=int, default=None, help="quality targets per preset in "
                   "the main results (default 5, --quick 3)")
    p.add_argument("--cap-s", type=float, default=None, help="Table 2: wall-seconds cap of "
                   "the raw-encoding MOBO run (default 20, --quick 5)")
    p.add_argument("--no-db-evals", type=int, default=None, help="Table 2: evaluations timed "
                   "with the simulator in the loop (default 3, --quick 1)")
    p.add_argument("--seed", type=int, default=0)
    add_hardware_profiles_arg(p)
    add_catalog_args(p)
    p.set_defaults(run=_run_reproduce)


def _settings(args: argparse.Namespace) -> dict[str, Any]:
    """Flags over the defaults of the full or quick run.

    Raises:
        BouteError: a value out of range (named, with the fix).

    """
    s = dict(QUICK if args.quick else FULL)
    if args.table2 is not None:
        s["table2"] = tuple(x.strip() for x in args.table2.split(",") if x.strip())
    for flag, key, low in (("--points", "points", 1), ("--no-db-evals", "no_db_evals", 1)):
        value = getattr(args, key)
        if value is not None:
            if value < low:
                raise BouteError(f"{flag}={value} must be >= {low}")
            s[key] = value
    if args.cap_s is not None:
        if not 0 < args.cap_s <= 3600:
            raise BouteError(f"--cap-s={args.cap_s} must be > 0 and <= 3600 seconds")
        s["cap_s"] = args.cap_s
    s["scenarios"] = tuple(args.scenario or DEFAULT_SCENARIOS)
    return s


def _run_reproduce(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from common.errors import ScenarioError
    from profiling import load_catalog, load_scenario
    from tuning import planning_problem
    from tuning.paper import (
        characterization,
        compare_targets,
        headline,
        main_results,
        quality_grid,
        scheduling_time,
        table2_steps,
        violations,
    )

    start = time.perf_counter()
    load_start = _load_average()
    s = _settings(args)
    for flag, refs in (("--scenario", s["scenarios"]), ("--table2", s["table2"])):
        for ref in refs:
            try:
                load_scenario(ref)
            except ScenarioError as exc:
                raise BouteError(f"{flag}: {exc}") from None
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    catalog = load_catalog(args.gpu_catalog, args.model_catalog)

    def problem_of(ref: str) -> Problem:
        return planning_problem(ref, gpu_catalog=args.gpu_catalog,
                                model_catalog=args.model_catalog,
                                hardware_profiles=args.hardware_profiles, note=stderr_note)

    problems = [problem_of(ref) for ref in s["scenarios"]]
    grids = [quality_grid(p, s["points"]) for p in problems]
    total = sum(len(g) + len(p.scenario.targets) for p, g in zip(problems, grids, strict=True))
    bar = tqdm(total=total + table2_steps(s["table2"]), desc="reproduce", unit="step",
               file=sys.stderr)

    def tick(what: str) -> None:
        bar.set_postfix_str(what)
        bar.update()

    scenarios = []
    for problem, grid in zip(problems, grids, strict=True):
        rows = main_results(problem, grid, tick=tick)
        targets = [(t.single_quality, t.p95_s) for t in problem.scenario.targets]
        columns = compare_targets(problem, targets, seed=args.seed, tick=tick)
        scenarios.append(_scenario_block(problem, rows, columns, headline(rows),
                                         characterization(rows), violations(rows, columns)))
    table2 = [scheduling_time(problem_of(ref), catalog, cap_s=s["cap_s"],
                              patience=s["patience"], mobo_limit_s=s["mobo_limit_s"],
                              no_db_evals=s["no_db_evals"], seed=args.seed,
                              hardware_profiles=args.hardware_profiles, tick=tick)
              for ref in s["table2"]]
    bar.close()
    payload: dict[str, Any] = json_safe({
        "command": _command(args), "quick": bool(args.quick),
        "settings": {k: list(v) if isinstance(v, tuple) else v for k, v in s.items()},
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                    "python": platform.python_version(),
                    "load_average_1min": {"start": load_start, "end": _load_average()}},
        "paper": _paper_block(), "scenarios": scenarios,
        "table2": {"rule": TABLE2_RULE, "rows": [asdict(r) for r in table2]},
        "boute_never_worse": all(not sc["violations"] for sc in scenarios)})
    payload["figures"] = write_figures(out, payload)
    payload["wall_s"] = time.perf_counter() - start
    (out / "report.md").write_text(markdown(payload))
    (out / "reproduction.json").write_text(json.dumps(payload, indent=1) + "\n")
    payload["report"] = str(out / "report.md")
    emit(args, payload, lambda: tables_text(payload))
    return 0


def _load_average() -> float | None:
    """The 1-minute load average (None where the OS has none): the machine may be shared."""
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else None


def _command(args: argparse.Namespace) -> str:
    """The command line that makes this report (the flags given)."""
    parts = ["boute reproduce", *(f"--scenario {x}" for x in args.scenario or []),
             f"--out {args.out}"]
    parts += ["--quick"] if args.quick else []
    for flag in ("table2", "points", "cap_s", "no_db_evals"):
        if getattr(args, flag) is not None:
            parts.append(f"--{flag.replace('_', '-')} {getattr(args, flag)}")
    return " ".join(parts)


def _scenario_block(problem: Problem, rows: list[MainRow], columns: list[TargetComparison],
                    head: dict[str, Any], steps: list[dict[str, Any]], bad: list[str]
                    ) -> dict[str, Any]:
    """One scenario's part of the JSON."""
    from tuning import BASELINES
    from tuning.paper import budget_share

    sc = problem.scenario
    main = []
    for r in rows:
        main.append({"quality": r.quality, "throughput_p95_s": r.throughput_p95_s,
                     "plan_p95_s": r.plan_p95_s, "plan_solver": r.plan_solver,
                     "systems": {k: asdict(v) for k, v in r.points.items()},
                     "ratios": {n: {m: r.ratio(m, n) for m in ("p95", "mean", "throughput")}
                                for n in BASELINES}})
    table3 = [{"quality": c.quality, "p95_s": c.p95_s, "cost_per_hour": c.cost_per_hour,
               "reduction": c.reduction, "solver": c.result.solver} for c in columns]
    table1 = []
    for c in columns:
        a = c.allocation
        table1.append({"quality": c.quality, "p95_s": c.p95_s,
                       "strong_share": None if a is None else a["strong_share"],
                       "gpus": None if a is None else a["gpus"],
                       "budget_share": None if c.plan is None else budget_share(problem,
                                                                               c.plan)})
    return {"name": sc.name, "task": sc.task, "budget_per_hour": problem.budget,
            "rate_rps": problem.rate_rps, "models": list(problem.models),
            "gpus": {g: int(n) for g, n in zip(problem.gpu_types, problem.stock.tolist(),
                                               strict=True)},
            "main_results": main, "headline": head, "table3": table3, "table1": table1,
            "characterization": steps, "violations": bad}


TABLE2_RULE = ("the same convergence rule for every searcher: wall seconds until the "
               "hypervolume of its front (normalized quality vs log P95, under the budget) first "
               "reaches 99% of the exact DP front's, checked after each batch it evaluates; a "
               "MOBO run stops there or at the cap (> cap: not reached, with the ratio it got)")


def _paper_block() -> dict[str, Any]:
    """`tuning._reproduce.PAPER` as JSON (tuple keys become objects)."""
    from tuning.paper import PAPER, SYSTEMS

    out = {k: v for k, v in PAPER.items() if k not in ("table3", "table1", "table2_s")}
    out["table3"] = {task: [{"quality": q, "p95_s": sec, "cost_per_hour": dict(zip(
        SYSTEMS, costs, strict=True))} for (q, sec), costs in t.items()]
        for task, t in PAPER["table3"].items()}
    out["table1"] = {task: [{"quality": q, "strong_share": share, "allocation": alloc}
                            for q, (share, alloc) in t.items()]
                     for task, t in PAPER["table1"].items()}
    out["table2_s"] = {str(k): v for k, v in PAPER["table2_s"].items()}
    return out
