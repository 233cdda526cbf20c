"""Where the exact DP stops being practical: its time and memory against the problem's size.

    python benchmarks/exact_scaling.py [--limit-s 120] [--sweeps types,stock,models,rate]
                                       [--json build/exact_scaling.json] [--no-copy]
                                       [--target KEY=VALUE]

The exact reference solver (`tuning._exact`: a knapsack DP over GPU types, run on each of the
192 latency levels and then refined) is timed on scenarios that grow along one axis at a time:

* **types**: the paper's scalability runs extended (benchmarks/data/reference/calibration.md
  s0: 3 types/24 GPUs ... 6/48, 8 GPUs per type, 100 req/s, $30/h) from 3 to 12 GPU types: the
  paper's four, A100-80G, L40S, H200, H100-PCIe, A100-40G, then three spot offers (`gpu:`
  aliases, the spot prices of the ``scale-12types-1k`` preset);
* **stock**: the paper's four types with 8, 16, 32, 64 and 128 GPUs each, rate and budget
  scaled with the fleet (100 req/s and $30/h per 8 GPUs of each type: the paper's problem,
  n/8 times larger);
* **models**: the paper's setting (4 types x 8) with each model pair: 8B+8B, 8B+70B, 70B+70B
  (the plan space has two models, weak and strong; the pair sets how many configs each has);
* **rate**: the paper's four types with 16 GPUs each and a $60/h budget (the paper's per 8
  GPUs of each type) at 50 ... 800 req/s (the DP clips capacities at the rate, so the rate
  bounds the number of distinct states).

Each case runs `tuning.search(problem, Goal(), solver="exact")` in its own process (the
problem built by `tuning.planning_problem`, as `benchmarks/search.py` does) under a
wall-clock limit; a case past the limit is killed and the larger cases of its sweep are
skipped (they only grow). Per case: seconds, peak RSS of the process and its RSS once the
problem is loaded (their difference is the DP's memory), DP runs, the largest number of Pareto
states one DP run kept, hypervolume, and for killed cases how many latency levels were done.

All cases share one perf DB (`build/exact_scaling/perfdb.parquet`, built once: the paper's
four types at 128 GPUs, the other five catalog GPUs at 8; `tuning.load_problem` keeps the
configs that fit each case's stock). Prints a table, writes JSON (and a copy to
benchmarks/data/exact_scaling.json). Targets (`TARGETS`): no case crashes, and the DP solves
every case of the paper's scalability range (types sweep, 3 to 6 types x 8 GPUs) within 10 s;
exits 1 when one is missed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _targets import Target, add_target_argument, check, passed, print_checks, resolve

WORK = Path("build") / "exact_scaling"
DB_PATH = WORK / "perfdb.parquet"
DATA_COPY = Path("benchmarks") / "data" / "exact_scaling.json"
PAPER_TYPES = ("H100", "RTX-PRO-6000", "RTX-5090", "RTX-4090")
# The types sweep's order: the paper's scalability presets (scale-3types ... scale-6types),
# then three more catalog GPUs, then spot offers at the scale-12types-1k preset's prices.
TYPE_ORDER = (*PAPER_TYPES, "A100-80G", "L40S", "H200", "H100-PCIe", "A100-40G",
              "L40S-spot", "RTX-4090-spot", "RTX-PRO-6000-spot")
SPOT = {"L40S-spot": ("L40S", 0.79), "RTX-4090-spot": ("RTX-4090", 0.34),
        "RTX-PRO-6000-spot": ("RTX-PRO-6000", 0.89)}
MAX_STOCK = 128
WEAK, STRONG = "llama-3.1-8b", "llama-3.1-70b"
SWEEPS = ("types", "stock", "models", "rate")
TARGETS = {
    "crashed": Target("<=", 0.0, "cases", "cases whose process crashed"),
    "paper_scale_s": Target("<=", 10.0, "s", "exact DP, slowest of the paper's scalability "
                            "range (3-6 types x 8 GPUs; inf when one did not finish)"),
}


@dataclass
class Case:
    """One scenario of a sweep."""

    sweep: str
    label: str
    gpus: dict[str, dict[str, Any]]
    weak: str = WEAK
    strong: str = STRONG
    rate_rps: float = 100.0
    budget_per_hour: float = 30.0

    @property
    def num_types(self) -> int:
        """GPU types on offer."""
        return len(self.gpus)

    @property
    def num_gpus(self) -> int:
        """GPUs on offer."""
        return sum(int(o["count"]) for o in self.gpus.values())

    def scenario(self) -> dict[str, Any]:
        """The scenario file's content."""
        return {"name": f"exact-scaling-{self.sweep}-{self.label}", "gpus": self.gpus,
                "models": {"weak": self.weak, "strong": self.strong}, "task": "gsm8k",
                "workload": {"shape": "gsm8k", "rate_rps": self.rate_rps,
                             "arrival": "poisson"},
                "budget_per_hour": self.budget_per_hour}


@dataclass
class Outcome:
    """What one case measured (None: not reached)."""

    status: str                       # ok | timeout | crashed | skipped
    wall_s: float | None = None       # the child process, start to end
    search_s: float | None = None     # `search(..., solver="exact")` alone
    peak_rss_mib: float | None = None
    loaded_rss_mib: float | None = None
    configs: int | None = None
    dp_runs: int | None = None
    levels_done: int = 0
    max_states: int = 0
    last_level_s: float | None = None
    hypervolume: float | None = None
    error: str | None = None
    level_trace: list[tuple[float, int, float]] = field(default_factory=list)
    front: list[tuple[float, float]] = field(default_factory=list)   # (p95_s, quality)


def _offer(gpu: str, count: int) -> dict[str, Any]:
    if gpu in SPOT:
        base, price = SPOT[gpu]
        return {"gpu": base, "count": count, "price_per_hour": price}
    return {"count": count}


def build_cases(sweeps: list[str]) -> list[Case]:
    """The cases of the chosen sweeps, smallest first within each sweep."""
    cases: list[Case] = []
    if "types" in sweeps:
        for n in range(3, len(TYPE_ORDER) + 1):
            cases.append(Case("types", f"{n}x8", {g: _offer(g, 8) for g in TYPE_ORDER[:n]}))
    if "stock" in sweeps:
        for k in (8, 16, 32, 64, MAX_STOCK):
            cases.append(Case("stock", f"4x{k}", {g: _offer(g, k) for g in PAPER_TYPES},
                              rate_rps=100.0 * k / 8, budget_per_hour=30.0 * k / 8))
    if "models" in sweeps:
        for weak, strong in ((WEAK, WEAK), (WEAK, STRONG), (STRONG, STRONG)):
            label = f"{weak.removeprefix('llama-3.1-')}+{strong.removeprefix('llama-3.1-')}"
            cases.append(Case("models", label, {g: _offer(g, 8) for g in PAPER_TYPES},
                              weak=weak, strong=strong))
    if "rate" in sweeps:
        for rate in (50, 100, 200, 400, 800):
            cases.append(Case("rate", f"4x16@{rate}", {g: _offer(g, 16) for g in PAPER_TYPES},
                              rate_rps=float(rate), budget_per_hour=60.0))
    return cases


def _superset_scenario() -> dict[str, Any]:
    """The DB's scenario: every GPU a case uses, at the most any case offers of it."""
    gpus = {g: {"count": MAX_STOCK if g in PAPER_TYPES else 8}
            for g in TYPE_ORDER if g not in SPOT}
    return {"name": "exact-scaling-db", "gpus": gpus,
            "models": {"weak": WEAK, "strong": STRONG}, "task": "gsm8k",
            "workload": {"shape": "gsm8k", "rate_rps": 100.0, "arrival": "poisson"},
            "budget_per_hour": 30.0}


def ensure_db() -> float:
    """Build (or check) the shared perf DB; returns the seconds it took."""
    from tuning import planning_problem

    WORK.mkdir(parents=True, exist_ok=True)
    path = WORK / "exact-scaling-db.yaml"
    path.write_text(yaml.safe_dump(_superset_scenario(), sort_keys=False))
    t0 = time.perf_counter()
    planning_problem(str(path), db=str(DB_PATH))
    return time.perf_counter() - t0


# -- the child: one case -------------------------------------------------------------------------
def _rss_mib() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0   # KiB on Linux


def _emit(**record: Any) -> None:
    print(json.dumps(record), flush=True)


def run_child(scenario_ref: str, db: str) -> int:
    """Load a problem, then run the exact solver, reporting as JSON lines on stdout.

    Each DP run (one latency level) is reported as it finishes, so a case killed at the limit
    still tells how far it got.
    """
    # The hypervolume imports torch and BoTorch (~150 MiB): imported first, so that the RSS
    # once loaded holds them and the growth after it is the DP's own.
    import botorch.utils.multi_objective.box_decompositions.dominated  # noqa: F401
    import numpy as np

    import tuning._exact as exact
    from tuning import Goal, planning_problem, search

    t0 = time.perf_counter()
    problem = planning_problem(scenario_ref, db=db)
    _emit(phase="loaded", configs=problem.num_configs, load_s=time.perf_counter() - t0,
          rss_mib=_rss_mib())
    solve = exact.solve_level

    def traced(*args: Any, **kwargs: Any) -> exact.LevelStates:
        start = time.perf_counter()
        states = solve(*args, **kwargs)
        _emit(phase="level", x_s=float(args[1]), states=len(states.cw),
              seconds=time.perf_counter() - start)
        return states

    exact.solve_level = traced       # exact_front looks it up in its module at each call
    start = time.perf_counter()
    result = search(problem, Goal(), solver="exact")
    front = result.front_mask(problem)
    _emit(phase="done", search_s=time.perf_counter() - start, dp_runs=result.exact_runs,
          hypervolume=result.hypervolume(problem), rss_mib=_rss_mib(),
          front=np.stack([result.metrics.p95_s[front], result.metrics.quality[front]],
                         axis=1).tolist())
    return 0


# -- the parent ------------------------------------------------------------------------------------
def run_case(case: Case, limit_s: float) -> Outcome:
    """Run one case in a child process under `limit_s` of wall clock."""
    path = WORK / f"{case.sweep}-{case.label.replace('+', '-').replace('@', '-')}.yaml"
    path.write_text(yaml.safe_dump(case.scenario(), sort_keys=False))
    return run_exact(str(path), str(DB_PATH), limit_s)


def run_exact(scenario_ref: str, db: str, limit_s: float) -> Outcome:
    """The exact front of a scenario (preset or file) in a child process, within `limit_s`.

    The child builds its problem with `planning_problem(scenario_ref, db=db)` (so the DB must
    exist and be current, else the child spends its time building it). A child past the limit
    is killed; its outcome says how many latency levels it had solved.
    """
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
           "OPENBLAS_NUM_THREADS": "1"}
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        start = time.perf_counter()
        proc = subprocess.Popen([sys.executable, __file__, "--child", scenario_ref,
                                 "--db", db], stdout=out, stderr=err, env=env,
                                start_new_session=True)
        timed_out = False
        while True:
            # wait4 on this child: its own resource usage (peak RSS), killed or not.
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid == proc.pid:
                break
            if time.perf_counter() - start > limit_s and not timed_out:
                timed_out = True
                os.killpg(proc.pid, signal.SIGKILL)
            time.sleep(0.05)
        proc.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - start
        out.seek(0)
        err.seek(0)
        lines, stderr = out.read().splitlines(), err.read()
    res = Outcome("timeout" if timed_out else "ok", wall_s=wall,
                  peak_rss_mib=usage.ru_maxrss / 1024.0)
    for line in lines:
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if rec.get("phase") == "loaded":
            res.configs, res.loaded_rss_mib = rec["configs"], rec["rss_mib"]
        elif rec.get("phase") == "level":
            res.levels_done += 1
            res.max_states = max(res.max_states, rec["states"])
            res.last_level_s = rec["x_s"]
            res.level_trace.append((rec["x_s"], rec["states"], rec["seconds"]))
        elif rec.get("phase") == "done":
            res.search_s, res.dp_runs = rec["search_s"], rec["dp_runs"]
            res.hypervolume = rec["hypervolume"]
            res.front = [(float(p), float(q)) for p, q in rec["front"]]
    if not timed_out and (proc.returncode != 0 or res.search_s is None):
        res.status = "crashed"
        res.error = (stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1]
    return res


def _cell(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def _row(case: Case, res: Outcome) -> str:
    dp_mib = (None if res.peak_rss_mib is None or res.loaded_rss_mib is None
              else res.peak_rss_mib - res.loaded_rss_mib)
    runs = (str(res.dp_runs) if res.dp_runs is not None
            else f"{res.levels_done} done" if res.status == "timeout" else "-")
    return (f"{case.sweep:<7}{case.label:<13}{case.num_types:>6}{case.num_gpus:>6}"
            f"{case.rate_rps:>7.0f}{case.budget_per_hour:>7.0f}{_cell(res.configs, 'd'):>8}"
            f"{res.status:>9}{_cell(res.search_s, '.2f'):>10}{runs:>10}"
            f"{res.max_states:>8}{_cell(res.peak_rss_mib, '.0f'):>9}{_cell(dp_mib, '.0f'):>8}"
            f"{_cell(res.hypervolume, '.4f'):>8}")


def _limits(cases: list[Case], results: list[Outcome], limit_s: float) -> dict[str, str]:
    """Per sweep, where the DP stopped finishing within the limit."""
    out: dict[str, str] = {}
    for sweep in dict.fromkeys(c.sweep for c in cases):
        pairs = [(c, r) for c, r in zip(cases, results, strict=True) if c.sweep == sweep]
        ok = [c for c, r in pairs if r.status == "ok"]
        late = next((c for c, r in pairs if r.status == "timeout"), None)
        largest = f"largest finished: {ok[-1].label}" if ok else "none finished"
        out[sweep] = (f"{largest}; first past {limit_s:g} s: {late.label}" if late else
                      f"{largest}; all finished within {limit_s:g} s")
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit-s", type=float, default=120.0,
                        help="wall-clock limit of one case, seconds (default 120)")
    parser.add_argument("--sweeps", default=",".join(SWEEPS),
                        help=f"comma-separated subset of {','.join(SWEEPS)}")
    parser.add_argument("--json", default="build/exact_scaling.json")
    parser.add_argument("--no-copy", action="store_true",
                        help=f"do not copy the JSON to {DATA_COPY}")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--db", default=str(DB_PATH), help=argparse.SUPPRESS)
    add_target_argument(parser, TARGETS)
    args = parser.parse_args()
    targets = resolve(TARGETS, args.target)
    if args.child is not None:
        return run_child(args.child, args.db)
    sweeps = [s for s in args.sweeps.split(",") if s]
    unknown = sorted(set(sweeps) - set(SWEEPS))
    if unknown:
        parser.error(f"--sweeps: unknown {unknown}; use a subset of {','.join(SWEEPS)}")
    cases = build_cases(sweeps)
    print(f"perf DB {DB_PATH} (built when missing) ...", flush=True)
    db_s = ensure_db()
    print(f"perf DB ready in {db_s:.1f} s; {len(cases)} cases, limit {args.limit_s:g} s each",
          flush=True)
    print(f"{'sweep':<7}{'case':<13}{'types':>6}{'GPUs':>6}{'req/s':>7}{'$/h':>7}"
          f"{'configs':>8}{'status':>9}{'exact s':>10}{'DP runs':>10}{'states':>8}"
          f"{'RSS MiB':>9}{'DP MiB':>8}{'HV':>8}", flush=True)
    results: list[Outcome] = []
    stopped: set[str] = set()
    start = time.perf_counter()
    for case in cases:
        if case.sweep in stopped:
            results.append(Outcome("skipped"))
        else:
            results.append(run_case(case, args.limit_s))
            if results[-1].status == "timeout":
                stopped.add(case.sweep)
        print(_row(case, results[-1]), flush=True)
    limits = _limits(cases, results, args.limit_s)
    crashed = [f"{c.sweep}/{c.label}: {r.error}" for c, r in zip(cases, results, strict=True)
               if r.status == "crashed"]
    measured: dict[str, float | None] = {"crashed": float(len(crashed))}
    paper = [r for c, r in zip(cases, results, strict=True)
             if c.sweep == "types" and c.num_types <= 6]
    if paper:       # the types sweep ran
        measured["paper_scale_s"] = (max(r.search_s for r in paper if r.search_s is not None)
                                     if all(r.status == "ok" for r in paper) else float("inf"))
    rows = check({k: t for k, t in targets.items() if k in measured}, measured)
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    payload = {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "loadavg_at_end": load},
        "args": {k: v for k, v in vars(args).items() if k not in ("child", "db")},
        "perfdb": {"path": str(DB_PATH), "seconds": db_s},
        "total_s": time.perf_counter() - start,
        "cases": [{**asdict(c), "num_types": c.num_types, "num_gpus": c.num_gpus,
                   **{k: v for k, v in asdict(r).items() if k != "front"
                      and (k != "level_trace" or r.status == "timeout")}}
                  for c, r in zip(cases, results, strict=True)],
        "limits": limits, "crashed": crashed, "targets": rows,
    }
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(payload, indent=1))
    if not args.no_copy:
        DATA_COPY.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(out, DATA_COPY)
    print("columns: exact s = search(solver='exact') alone; DP runs = latency levels solved "
          "(levels done before the kill for a timeout); states = most Pareto states one DP run "
          "kept; RSS = peak of the case's process; DP MiB = peak minus the RSS once loaded")
    for sweep, text in limits.items():
        print(f"{sweep}: {text}")
    for c in crashed:
        print("CRASHED:", c)
    print_checks(rows)
    print(f"wrote {out}" + ("" if args.no_copy else f" and {DATA_COPY}"))
    return 0 if passed(rows) else 1


if __name__ == "__main__":
    sys.exit(main())
