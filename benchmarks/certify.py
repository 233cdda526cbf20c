"""Certificates of the presets beyond the pair: the bound, the gap of `boute plan`'s answer.

For each preset (default ladder-gsm8k and mixed-gsm8k-mtbench) and goal (the default Pareto
front, and min-cost at each of the preset's targets):

* the search as `boute plan` runs it (`tuning.search`, solver auto: mobo here) without its
  certificate, timed;
* the certificate (`tuning._certify.certify`) under ``--deadline-s``, timed: the bound
  (hypervolume from above / $/h from below), the answer it finds with the bound's plans, and
  the gap.

Prints a table and writes JSON under benchmarks/data/ (``--out``). Torch runs on one thread.

    python benchmarks/certify.py [--presets ladder-gsm8k,mixed-gsm8k-mtbench] [--deadline-s 60]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

DEFAULT_PRESETS = ("ladder-gsm8k", "mixed-gsm8k-mtbench")


def _goals(problem: Any) -> list[tuple[str, Any]]:
    from tuning import Goal

    out: list[tuple[str, Any]] = [("pareto", Goal())]
    for t in problem.scenario.targets:
        q = t.quality
        if isinstance(q, dict):
            goal = Goal("min-cost", None, t.p95_s, tuple(float(q[w]) for w in problem.workloads))
            label = ",".join(f"{w}={q[w]:g}" for w in problem.workloads)
        else:
            goal = Goal("min-cost", float(q), t.p95_s)
            label = f"{q:g}"
        out.append((f"min-cost q={label} p95={t.p95_s:g}", goal))
    return out


def run_one(preset: str, deadline_s: float, seed: int) -> list[dict[str, Any]]:
    """Rows of one preset: one per goal."""
    from tuning import CpuDeadline, certify, planning_problem, search

    problem = planning_problem(preset, progress=False)
    rows = []
    for label, goal in _goals(problem):
        # the search alone (its certificate is taken apart below, with its own clock)
        t0, c0 = time.perf_counter(), time.process_time()
        res = search(problem, goal, seed=seed, certificate=False)
        search_wall, search_cpu = time.perf_counter() - t0, time.process_time() - c0
        before = (res.hypervolume(problem) if goal.mode == "pareto" else _best_cost(problem, res))
        t0, c0 = time.perf_counter(), time.process_time()
        res = certify(problem, res, deadline=CpuDeadline.after(deadline_s))
        cert_wall, cert_cpu = time.perf_counter() - t0, time.process_time() - c0
        cert = res.certificate
        assert cert is not None
        gap_before = ((cert.bound - before) / cert.bound if goal.mode == "pareto"
                      else (before - cert.bound) / cert.bound)
        rows.append({
            "preset": preset, "goal": label, "solver": res.solver,
            "evaluations": len(res.plans), "search_wall_s": search_wall,
            "search_cpu_s": search_cpu, "stopped": res.stopped,
            "answer_before": before, "gap_before": gap_before,
            "answer": cert.found, "bound": cert.bound, "gap": cert.gap, "exact": cert.exact,
            "exact_program": cert.exact_program, "levels": cert.levels,
            "complete": cert.complete, "certify_wall_s": cert_wall, "certify_cpu_s": cert_cpu,
            "line": cert.line()})
    return rows


def _best_cost(problem: Any, res: Any) -> float:
    b = res.best(problem)
    return float("inf") if b is None else float(res.metrics.cost_per_hour[b])


def main() -> None:
    """Run the benchmark and write its JSON."""
    import torch

    torch.set_num_threads(1)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", default=",".join(DEFAULT_PRESETS))
    ap.add_argument("--deadline-s", type=float, default=60.0,
                    help="CPU seconds of each certificate, capped at 3x in wall seconds (the "
                    "default search uses 5)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="benchmarks/data/certify.json")
    args = ap.parse_args()
    rows: list[dict[str, Any]] = []
    load = os.getloadavg()
    for preset in args.presets.split(","):
        rows.extend(run_one(preset, args.deadline_s, args.seed))
    head = (f"{'preset':<22}{'goal':<40}{'search s':>9}{'before':>10}{'answer':>10}"
            f"{'bound':>10}{'gap %':>8}{'cert s':>8}{'cert cpu':>9}{'levels':>7}")
    print(head)
    for r in rows:
        print(f"{r['preset']:<22}{r['goal'][:39]:<40}{r['search_wall_s']:>9.1f}"
              f"{r['answer_before']:>10.4f}{r['answer']:>10.4f}{r['bound']:>10.4f}"
              f"{100 * r['gap']:>8.2f}{r['certify_wall_s']:>8.1f}{r['certify_cpu_s']:>9.1f}"
              f"{r['levels']:>7}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"load_average_at_start": load, "deadline_s": args.deadline_s,
                               "rows": rows}, indent=1))
    print(f"written {out}")


if __name__ == "__main__":
    main()
