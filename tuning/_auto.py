"""`--solver auto`: an exact solver when it can certify the answer within seconds, else MOBO.

Two models and one workload: the pair's knapsack DP (below). One workload beyond the pair (K
models, with or without length classes): the level program (`tuning._bound`, exact there;
`choose_level`). Several workloads: MOBO, whose answer `tuning._certify` certifies.

The exact solver (`tuning._exact`) is a DP over GPU types run once per latency level: a
Pareto front runs it on every level of the problem's grid and then on bisected levels until
the hypervolume bracket closes (`exact_front`: 1.5-2.4 runs per grid level on the presets);
min-cost and max-throughput run it once, at the target level. Its cost per run grows with the
states that survive dominance pruning, which depends on the stock, the number of types and the
level, and which no closed formula predicts. So the estimate is measured:

1. **Probe.** Run the DP at `PROBE_LEVELS` levels spread over the grid (the target level for
   the single-run goals), under a deadline of ``PROBE_DEADLINE_FACTOR * EXACT_BUDGET_S`` CPU
   seconds (`tuning._deadline.CpuDeadline`, capped at `tuning._deadline.WALL_CAP_FACTOR`
   times as many wall seconds), and take the mean *CPU* seconds of this process per run
   ``t``: CPU time is what the problem costs, wall time also counts whatever else the machine
   runs (a busy core made the paper preset's estimate flip to MOBO, 2.5 s -> 33 s).
2. **Estimate.** ``t * runs``, with ``runs = RUNS_PER_LEVEL * len(levels)`` for a front
   (the largest ratio seen on the presets, rounded up) and 1 otherwise.
3. **Decide.** Exact when the estimate is at most `EXACT_BUDGET_S`; the exact run itself then
   carries a deadline of ``EXACT_DEADLINE_FACTOR * EXACT_BUDGET_S`` CPU seconds (capped in
   wall seconds as the probe's) and, if it runs past it
   anyway, MOBO takes over (the result's ``reason`` says so). Otherwise MOBO.

A probe that runs past its deadline, or a DP step that would pair more than
`tuning._exact.MAX_DP_PAIRS` states and options, decides for MOBO at once. The probe's CPU
deadline is also ``EXACT_BUDGET_S * len(levels) / runs``: past it the estimate is over budget
whatever the remaining levels cost (the same decision, without spending the whole budget).

**The level program** (one workload beyond the pair; pareto and min-cost goals): a MILP per
latency level whose incumbent is the best plan at that level. Min-cost solves one level (the
target P95): `auto` takes it at once. A front solves the ceiling and bisected levels until the
hypervolume gap is at most `tuning._certify.EXACT_GAP` (`tuning._certify.front_bound`): probe
`LEVEL_PROBES` levels (the ceiling and the middle of the grid; each `LEVEL_PROBE_REPEATS`
times, its least time counting) in CPU seconds ``t`` per level,
estimate ``t * LEVEL_RUNS_PER_GRID_LEVEL * len(levels)``, and run it when that is at most
`LEVEL_BUDGET_S`, under a deadline of ``LEVEL_DEADLINE_FACTOR * LEVEL_BUDGET_S`` CPU seconds
(`tuning._deadline.CpuDeadline`, capped at `tuning._deadline.WALL_CAP_FACTOR` times as many
wall seconds); a run that does not close the gap by then hands over to MOBO.
"""

from __future__ import annotations

import time

import numpy as np

from ._bound import level_program
from ._certify import LEVEL_MIN_LIMIT_S
from ._deadline import WALL_CAP_FACTOR, CpuDeadline
from ._exact import ExactBudgetExceeded, solve_level
from ._problem import Problem
from ._run import Goal, SolverChoice

__all__ = ["EXACT_BUDGET_S", "LEVEL_BUDGET_S", "ExactBudgetExceeded", "SolverChoice",
           "choose_solver", "exact_deadline", "level_deadline"]

EXACT_BUDGET_S = 2.0
"""Estimated exact-DP seconds up to which `auto` runs the exact solver."""
EXACT_DEADLINE_FACTOR = 3.0
"""The exact run chosen by `auto` is stopped at this multiple of the budget (CPU seconds)."""
PROBE_DEADLINE_FACTOR = 1.0
"""The probe is stopped at this multiple of the budget (CPU seconds)."""
PROBE_LEVELS = 6
RUNS_PER_LEVEL = 2.5
LEVEL_BUDGET_S = 6.0
"""Estimated CPU seconds of the level program's front up to which `auto` runs it (the fronts of
scale-8types-256 and scale-12types-1k took 4.7 CPU s: they fit, with `boute plan` within 10 s)."""
LEVEL_DEADLINE_FACTOR = 2.0
"""The level program's front chosen by `auto` stops at this multiple of its budget (CPU s)."""
LEVEL_PROBES = 2
LEVEL_PROBE_REPEATS = 2
"""Runs of each probe level; its least CPU time counts (`choose_level`)."""
LEVEL_RUNS_PER_GRID_LEVEL = 1.0
"""Probe-level CPU costs per level of the grid that a front spends: ladder-gsm8k solved 78
level programs over a 192-level grid in 1.93 CPU s, 2.5x the probes' 10 ms each (other levels
are harder than the ceiling and the middle, and the incumbents are evaluated): 0.41 x 2.5."""


def exact_deadline(budget_s: float = EXACT_BUDGET_S) -> CpuDeadline:
    """The deadline of an exact run chosen by `auto` (CPU s, capped in wall s)."""
    return CpuDeadline.after(EXACT_DEADLINE_FACTOR * budget_s)


def level_deadline(budget_s: float = LEVEL_BUDGET_S) -> CpuDeadline:
    """The deadline of a level-program front chosen by `auto` (CPU s, capped in wall s)."""
    return CpuDeadline.after(LEVEL_DEADLINE_FACTOR * budget_s)


def choose_level(problem: Problem, goal: Goal, *, budget_s: float = LEVEL_BUDGET_S
                 ) -> SolverChoice | None:
    """One workload, K >= 2 models beyond the pair: ``level`` when its estimate fits.

    None for other problems and goals (max-throughput; one model: its front is the one
    fastest plan, which the level program at the ceiling does not look for).
    """
    if (len(problem.workloads) != 1 or problem.num_models < 2
            or goal.mode not in ("pareto", "min-cost")):
        return None
    what = (f"{problem.num_models} models" + (f", length classes at "
                                              f"{problem.threshold_tokens} tokens"
                                              if problem.classes else "") + ", one workload")
    if goal.mode == "min-cost":
        return SolverChoice("level", f"{what}: min-cost is one level program (a MILP, exact "
                            "for one workload)", None)
    levels = np.asarray(problem.levels_s, dtype=np.float64)
    probes = [problem.ceiling_s, float(levels[len(levels) // 2])][:LEVEL_PROBES]
    spent = 0.0
    for x in probes:
        # Each probe twice, its least CPU time: a busy core beside this one (the shared 2-core
        # box) inflates a single timing by up to 1.5x, which flipped scale-12types-1k's
        # estimate over budget (to MOBO: 100 CPU s instead of 4); the same program costs the
        # same work, so the least time is the least disturbed measurement of it.
        times = []
        for _ in range(LEVEL_PROBE_REPEATS):
            cpu0 = time.process_time()
            level_program(problem, x, mode="pareto", budget_per_hour=problem.budget,
                          time_limit_s=max(LEVEL_MIN_LIMIT_S, WALL_CAP_FACTOR * budget_s))
            times.append(time.process_time() - cpu0)
        spent += min(times)
    per_run = spent / len(probes)
    runs = LEVEL_RUNS_PER_GRID_LEVEL * len(levels)
    estimate = per_run * runs
    size = f"{per_run * 1e3:.1f} CPU ms per level program x {runs:g} levels"
    if estimate <= budget_s:
        return SolverChoice("level", f"{what}: the level program's front (exact for one "
                            f"workload) is estimated at {estimate:.2f} CPU s <= {budget_s:g} s "
                            f"({size})", estimate)
    return SolverChoice("mobo", f"{what}: the level program's front is estimated at "
                        f"{estimate:.1f} CPU s > {budget_s:g} s ({size})", estimate)


def _probe_levels(problem: Problem, goal: Goal) -> tuple[list[float], float, float]:
    """Levels to probe, runs of the full solve, and the clip of the capacities."""
    lam = problem.rate_rps
    if goal.mode == "min-cost":
        assert goal.p95_s is not None
        return [goal.p95_s], 1.0, lam
    if goal.mode == "max-throughput":
        level = goal.p95_s if goal.p95_s is not None else problem.ceiling_s
        return [level], 1.0, np.inf
    levels = np.asarray(problem.levels_s, dtype=np.float64)
    pick = np.unique(np.linspace(0, len(levels) - 1, PROBE_LEVELS).round().astype(int))
    return [float(x) for x in levels[pick]], RUNS_PER_LEVEL * len(levels), lam


def choose_solver(problem: Problem, goal: Goal, *, budget_s: float = EXACT_BUDGET_S,
                  level: bool = True) -> SolverChoice:
    """Probe an exact solver and pick ``exact``, ``level`` or ``mobo`` (module docstring).

    Args:
        problem: the planning problem.
        goal: what to optimize.
        budget_s: the pair DP's budget; the level program's is ``LEVEL_BUDGET_S * budget_s /
            EXACT_BUDGET_S`` (one knob scales both).
        level: consider the level program (False: a fixed-effort search was asked for).

    The pair takes the level program (exact for it too) when its DP is over budget and the
    level program's front is not: on scale-8types-256 and scale-12types-1k it closes the gap
    in about 5 CPU s, where the DP needs minutes.

    """
    level_budget_s = LEVEL_BUDGET_S * budget_s / EXACT_BUDGET_S
    if not problem.is_pair:
        lv = choose_level(problem, goal, budget_s=level_budget_s) if level else None
        if lv is not None:
            return lv
        what = (f"{problem.num_models} model(s) and {len(problem.workloads)} workload(s)"
                if not problem.classes else f"length classes at {problem.threshold_tokens} "
                "tokens")
        polish = (" (min-cost: the deployment of its best routings is then solved exactly)"
                  if goal.mode == "min-cost" else "")
        return SolverChoice("mobo", f"{what}: the exact DP covers two models and one "
                            f"workload without length classes{polish}", None)
    dp = _choose_dp(problem, goal, budget_s)
    if dp.solver == "exact" or not level:
        return dp
    lv = choose_level(problem, goal, budget_s=level_budget_s)
    if lv is None or lv.solver != "level":
        return dp
    return SolverChoice("level", f"{dp.reason}; {lv.reason}", lv.estimate_s)


def _choose_dp(problem: Problem, goal: Goal, budget_s: float) -> SolverChoice:
    """The pair: probe the DP and pick ``exact`` or ``mobo``."""
    levels, runs, clip = _probe_levels(problem, goal)
    budget = None if goal.mode == "min-cost" else problem.budget
    probe_limit_s = PROBE_DEADLINE_FACTOR * budget_s
    # The estimate is (probe CPU s / levels) x runs: once the probe has spent
    # ``budget_s * levels / runs`` CPU seconds it is over budget whatever the levels left
    # cost, so the probe stops there (25 ms for a front on a 192-level grid, not 2 s).
    decided_s = budget_s * len(levels) / runs
    cpu0 = time.process_time()
    deadline = CpuDeadline(cpu0 + min(probe_limit_s, decided_s),
                           time.perf_counter() + WALL_CAP_FACTOR * probe_limit_s)
    try:
        for x in levels:
            solve_level(problem, x, budget=budget, clip=clip, deadline=deadline)
    except ExactBudgetExceeded as exc:
        spent = time.process_time() - cpu0
        if decided_s < probe_limit_s and spent > decided_s:
            return SolverChoice("mobo", f"the exact DP is estimated at > {budget_s:g} s "
                                f"(probing {len(levels)} latency level(s) spent "
                                f"{spent:.3f} CPU s > {decided_s:.3f} s = {budget_s:g} s x "
                                f"{len(levels)} / {runs:g} runs; {exc})", None)
        return SolverChoice("mobo", f"probing the exact DP on {len(levels)} latency "
                            f"level(s) ran past {probe_limit_s:g} CPU s ({exc})", None)
    per_run = (time.process_time() - cpu0) / len(levels)
    estimate = per_run * runs
    size = (f"{len(problem.gpu_types)} GPU types, {int(np.sum(problem.stock)):,} GPUs; "
            f"{per_run * 1e3:.2f} CPU ms per DP run x {runs:g} runs")
    if estimate <= budget_s:
        return SolverChoice("exact", f"the certified answer is estimated at {estimate:.2f} s "
                            f"<= {budget_s:g} s ({size})", estimate)
    return SolverChoice("mobo", f"the exact DP is estimated at {estimate:.1f} s > "
                        f"{budget_s:g} s ({size})", estimate)
