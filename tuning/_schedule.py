"""Plans over time: one plan per window of a day, with transitions priced and bounded.

A workload whose rate moves over hours (a daily profile, or a long trace) is served by a
*schedule*: window ``t`` (``window_s`` long, ``T`` per day) runs plan ``P_t``. Notation:

    lambda_t     the window's rate: its peak (the profile's maximum over the window)
    L            the goal's P95 target; every plan meets it at its level
    P_j, c_j     candidate plan j (planned by `plan_at` at level ell_j) and its $/h
    r_j(k)       replicas of replica config k (model, GPU offer, TP, PP, class) in P_j
    g(k), p(k)   GPUs per replica of k and their $/h; s(k) its cold start (`cold_start_s`)

Levels: each window's rate is rounded up to the grid ``ell = lambda_min (1 + step)^n``; each
distinct level is planned once by the house pipeline (`plan_at`: search, then headroom), so
``T`` windows cost a handful of plans.

Objective (the day's cost, cyclic: the last window hands over to the first):

    min  sum_t [ c_{j_t} window_h + sum_k max(0, r_{j_t}(k) - r_{j_{t-1}}(k)) g(k) p(k) s(k)/3600 ]

Constraints:

    C1  ell_{j_t} >= lambda_t                      each window served by a plan sized for it
    C2  sum_k |r_{j_t}(k) - r_{j_{t-1}}(k)| <= N    at most N replicas started + stopped a step
    C3  sum_{k of type G} max(r_{j_t}(k), r_{j_{t-1}}(k)) g(k) <= stock(G)
                                                    scale up before scale down: while new
                                                    replicas start, the old ones still run
    C4  every plan within the budget and stock      (the pipeline's own constraints)

The second term prices each transition: a replica started for window t runs (and is paid) for
its cold start before the window begins, the predictive schedule's lead time. The problem is
a shortest path over (window, plan) with ``J`` candidates: one dynamic program per starting
plan (the cycle closes on it), ``O(J^2 T)`` each: exact for the candidate set. The plan sized
for the peak serves every window, so staying on it is always feasible (a day with no
transition at all satisfies C2 and C3).

`compare_policies` evaluates the schedule against a static plan sized for the peak, one sized
for the mean rate, and reactive replanning (each window re-planned on the rate the previous window
showed, applied at once with the replanner's hysteresis, new replicas ready a cold start
later): $/day, SLO attainment (windows whose plan(s) in effect meet L at the window's rate,
by the evaluator), replicas started per day.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import numpy.typing as npt

from profiling import daily_curve

from ._plan import Plan

__all__ = ["Candidate", "PolicyResult", "Schedule", "ScheduleError", "compare_policies",
           "daily_rates", "level_grid", "plan_schedule", "replicas_of", "transition"]

FloatArray = npt.NDArray[np.float64]
Key = tuple[str, str, int, int, str | None]
DAY_S = 86_400.0


class ScheduleError(ValueError):
    """A schedule cannot be made as asked (no plan for the peak; bad settings)."""


@dataclass(frozen=True)
class Candidate:
    """One level's plan: its rate, $/h, replicas by config and GPUs per config."""

    level_rps: float
    plan: Plan
    cost_per_hour: float
    replicas: dict[Key, int]
    gpus: dict[Key, int]              # GPUs of one replica
    gpu_type: dict[Key, str]


def replicas_of(plan: Plan) -> tuple[dict[Key, int], dict[Key, int], dict[Key, str]]:
    """Replicas, GPUs per replica and GPU offer of each config of `plan`."""
    reps: dict[Key, int] = {}
    gpus: dict[Key, int] = {}
    types: dict[Key, str] = {}
    for g in plan.groups:
        k = (g.model, g.gpu, g.tp, g.pp, g.length_class)
        reps[k] = reps.get(k, 0) + g.replicas
        gpus[k] = g.tp * g.pp
        types[k] = g.gpu
    return reps, gpus, types


@dataclass(frozen=True)
class Transition:
    """From one plan to the next: replicas started, stopped, GPUs in use meanwhile, cost."""

    started: int
    stopped: int
    peak_gpus: dict[str, int]
    cost: float                        # $ of the started replicas' cold starts
    cold_start_s: float = 0.0          # the slowest of those cold starts (0: none started)

    @property
    def changes(self) -> int:
        """Replicas started plus stopped (C2)."""
        return self.started + self.stopped


def transition(a: Candidate, b: Candidate, cold_start_s: Callable[[Key], float],
               price_per_hour: Callable[[str], float]) -> Transition:
    """`a` -> `b` with scale up before scale down (module docstring, C2, C3 and the price)."""
    started = stopped = 0
    peak: dict[str, int] = {}
    cost = slowest = 0.0
    gpus = {**a.gpus, **b.gpus}
    types = {**a.gpu_type, **b.gpu_type}
    for k in set(a.replicas) | set(b.replicas):
        ra, rb = a.replicas.get(k, 0), b.replicas.get(k, 0)
        started += max(0, rb - ra)
        stopped += max(0, ra - rb)
        peak[types[k]] = peak.get(types[k], 0) + max(ra, rb) * gpus[k]
        if rb > ra:
            cold = cold_start_s(k)
            cost += (rb - ra) * gpus[k] * price_per_hour(types[k]) * cold / 3600
            slowest = max(slowest, cold)
    return Transition(started, stopped, peak, cost, slowest)


def daily_rates(profile: Sequence[float], mean_rps: float, window_s: float) -> FloatArray:
    """Each window's peak rate under a daily profile.

    The profile's per-minute curve (`profiling.daily_curve`: evenly spaced points from
    midnight, linear in between, mean 1 over the day); a window's rate is the curve's maximum
    over its minutes times `mean_rps`.

    Raises:
        ScheduleError: a window that is not a whole number of minutes dividing the day.
        TraceError: an empty or negative profile.

    """
    windows = DAY_S / window_s
    if not (window_s >= 60 and abs(windows - round(windows)) < 1e-9
            and abs(window_s / 60 - round(window_s / 60)) < 1e-9):
        raise ScheduleError(f"window_s={window_s:g} must be whole minutes dividing the day "
                            "(86,400 s), e.g. 900 (15 min) or 3600")
    per = daily_curve(profile).reshape(round(windows), -1)
    return np.asarray(per.max(axis=1) * mean_rps, dtype=np.float64)


def level_grid(rates: FloatArray, step: float) -> FloatArray:
    """Each rate rounded up to the grid ``min(rates) (1 + step)^n`` (C1's levels)."""
    lo = float(np.min(rates))
    if not (step > 0 and lo > 0):
        raise ScheduleError(f"level step={step!r} and every window's rate must be > 0")
    n = np.ceil(np.log(rates / lo) / math.log1p(step) - 1e-9)
    return np.asarray(lo * (1 + step) ** np.maximum(n, 0), dtype=np.float64)


@dataclass
class Schedule:
    """A day's plan per window: which candidate, and the transitions into it."""

    window_s: float
    rates: FloatArray
    candidates: list[Candidate]
    choice: list[int]
    transitions: list[Transition]
    max_changes: int
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def cost_per_day(self) -> float:
        """Running cost of every window plus every cold start, $."""
        run = sum(self.candidates[j].cost_per_hour * self.window_s / 3600 for j in self.choice)
        return run + sum(t.cost for t in self.transitions)

    @property
    def started_per_day(self) -> int:
        """Replicas started over the day (the wrap-around included)."""
        return sum(t.started for t in self.transitions)

    def to_dict(self) -> dict[str, Any]:
        """JSON view: the windows, the distinct plans and the totals."""
        return {"window_s": self.window_s, "cost_per_day": self.cost_per_day,
                "replicas_started_per_day": self.started_per_day,
                "max_changes": self.max_changes,
                "plans": [{"level_rps": c.level_rps, "cost_per_hour": c.cost_per_hour,
                           "plan": c.plan.to_dict()} for c in self.candidates],
                "windows": [{"start_s": i * self.window_s, "rate_rps": float(self.rates[i]),
                             "plan": j, "started": t.started, "stopped": t.stopped,
                             "transition_cost": t.cost, "cold_start_s": t.cold_start_s}
                            for i, (j, t) in enumerate(zip(self.choice, self.transitions,
                                                           strict=True))],
                **self.extra}


def plan_schedule(rates: FloatArray, plan_at: Callable[[float], Plan | None], *,
                  window_s: float, stock: dict[str, int], max_changes: int,
                  cold_start_s: Callable[[Key], float],
                  price_per_hour: Callable[[str], float], step: float = 0.1,
                  progress: Callable[[str], None] | None = None) -> Schedule:
    """The cheapest schedule for `rates` (module docstring).

    Args:
        rates: each window's rate, req/s (`daily_rates`).
        plan_at: the planning pipeline at a rate: a plan that holds the goal, or None.
        window_s: window length, s.
        stock: GPUs on offer per offer name (C3).
        max_changes: N of C2 (>= 0).
        cold_start_s: seconds before a new replica of a config serves.
        price_per_hour: $/h of one GPU of an offer.
        step: relative spacing of the levels.
        progress: called with a line per level planned.

    Raises:
        ScheduleError: no plan for the peak level, or `max_changes` < 0.

    """
    if max_changes < 0:
        raise ScheduleError(f"max_changes={max_changes} must be >= 0 replicas per step")
    levels = level_grid(rates, step)
    cands: list[Candidate] = []
    for level in sorted(set(levels.tolist())):
        plan = plan_at(level)
        if progress is not None:
            progress(f"level {level:.3g} req/s: " + ("no plan" if plan is None or
                                                    plan.predicted is None else
                                                    f"${plan.predicted.cost_per_hour:.2f}/h"))
        if plan is None or plan.predicted is None:
            continue
        reps, gpus, types = replicas_of(plan)
        cands.append(Candidate(level, plan, plan.predicted.cost_per_hour, reps, gpus, types))
    peak = float(levels.max())
    if not cands or cands[-1].level_rps < peak:
        raise ScheduleError(f"no plan meets the goal at the peak window's {peak:.3g} req/s; "
                            "relax a target, raise the budget or the stock")
    # A cheaper plan for a higher level dominates: use it for the lower levels too.
    for i in range(len(cands) - 2, -1, -1):
        if cands[i + 1].cost_per_hour < cands[i].cost_per_hour:
            cands[i] = replace(cands[i + 1], level_rps=cands[i].level_rps)
    return _solve(rates, cands, window_s, stock, max_changes, cold_start_s, price_per_hour)


def _solve(rates: FloatArray, cands: list[Candidate], window_s: float, stock: dict[str, int],
           max_changes: int, cold_start_s: Callable[[Key], float],
           price_per_hour: Callable[[str], float]) -> Schedule:
    """The cyclic shortest path over (window, candidate) (module docstring)."""
    n, t_count = len(cands), len(rates)
    run = np.array([c.cost_per_hour * window_s / 3600 for c in cands])
    trans = [[transition(a, b, cold_start_s, price_per_hour) for b in cands] for a in cands]
    ok = np.array([[t.changes <= max_changes and all(
        g <= stock.get(typ, 0) for typ, g in t.peak_gpus.items()) for t in row]
        for row in trans])
    step_cost = np.array([[t.cost for t in row] for row in trans])
    serves = np.array([[c.level_rps >= r * (1 - 1e-9) for c in cands] for r in rates])
    best: tuple[float, list[int]] | None = None
    for s in range(n):
        if not serves[0, s]:
            continue
        cost = np.full(n, np.inf)
        cost[s] = run[s]
        back = np.zeros((t_count, n), dtype=np.int64)
        for t in range(1, t_count):
            total = cost[:, None] + np.where(ok, step_cost, np.inf)      # (from, to)
            back[t] = np.argmin(total, axis=0)
            cost = total[back[t], np.arange(n)] + np.where(serves[t], run, np.inf)
        close = cost + np.where(ok[:, s], step_cost[:, s], np.inf)
        end = int(np.argmin(close))
        if not np.isfinite(close[end]) or (best is not None and close[end] >= best[0]):
            continue
        path = [end]
        for t in range(t_count - 1, 0, -1):
            path.append(int(back[t, path[-1]]))
        best = (float(close[end]), path[::-1])
    assert best is not None, "staying on the peak plan is always feasible"
    choice = best[1]
    transitions = [trans[choice[i - 1]][choice[i]] for i in range(t_count)]   # [0]: wrap
    return Schedule(window_s, rates, cands, choice, transitions, max_changes)


@dataclass(frozen=True)
class PolicyResult:
    """One way to serve the day: its cost, SLO attainment and churn."""

    name: str
    cost_per_day: float
    attainment: float               # share of windows meeting the P95 target
    started_per_day: int
    plans_used: int                 # distinct deployments (replicas per config) over the day

    def to_dict(self) -> dict[str, Any]:
        """JSON view."""
        return {"policy": self.name, "cost_per_day": self.cost_per_day,
                "attainment": self.attainment, "replicas_started_per_day":
                self.started_per_day, "plans_used": self.plans_used}


def _run_policy(name: str, rates: FloatArray, chosen: list[Candidate], window_s: float,
                meets: Callable[[Plan, float], bool], cold_start_s: Callable[[Key], float],
                price_per_hour: Callable[[str], float], *, lagged: bool) -> PolicyResult:
    """Cost and attainment of running `chosen[t]` in window t (cyclic day).

    `lagged`: the plan of window t is applied at its start and its new replicas serve a cold
    start later, so the previous plan must also meet the target at the window's rate.
    """
    cost = 0.0
    started = met = 0
    for t, c in enumerate(chosen):
        prev = chosen[t - 1]
        tr = transition(prev, c, cold_start_s, price_per_hour)
        cost += c.cost_per_hour * window_s / 3600 + tr.cost
        started += tr.started
        ok = meets(c.plan, float(rates[t]))
        if ok and lagged and tr.started:
            ok = meets(prev.plan, float(rates[t]))
        met += ok
    return PolicyResult(name, float(cost), met / len(chosen), started,
                        len({frozenset(c.replicas.items()) for c in chosen}))


def compare_policies(schedule: Schedule, mean_plan: Candidate | None,
            meets: Callable[[Plan, float], bool], cold_start_s: Callable[[Key], float],
            price_per_hour: Callable[[str], float], *, min_gain: float = 0.10,
            cooldown_s: float = 600.0) -> list[PolicyResult]:
    """The schedule against static peak, static mean and reactive replanning (docstring).

    Reactive replanning re-plans at each window start on the previous window's rate (the
    replan job's look-back), picks the candidate sized for it, and applies it when the running
    plan no longer meets the target at that rate or the new one is at least `min_gain`
    cheaper, at most once per `cooldown_s`.
    """
    rates, cands, w = schedule.rates, schedule.candidates, schedule.window_s

    def sized(rate: float) -> Candidate:
        fit = [c for c in cands if c.level_rps >= rate * (1 - 1e-9)]
        return fit[0] if fit else cands[-1]

    out = [_run_policy("schedule", rates, [cands[j] for j in schedule.choice], w, meets,
                       cold_start_s, price_per_hour, lagged=False),
           _run_policy("static-peak", rates, [cands[-1]] * len(rates), w, meets,
                       cold_start_s, price_per_hour, lagged=False)]
    if mean_plan is not None:
        out.append(_run_policy("static-mean", rates, [mean_plan] * len(rates), w, meets,
                               cold_start_s, price_per_hour, lagged=False))
    reactive: list[Candidate] = []
    running = sized(float(rates[-1]))
    last_change = -math.inf
    for t in range(len(rates)):
        seen = float(rates[t - 1])
        want = sized(seen)
        violated = not meets(running.plan, seen)
        cheaper = want.cost_per_hour <= (1 - min_gain) * running.cost_per_hour
        if want is not running and (violated or cheaper) and t * w - last_change >= cooldown_s:
            running, last_change = want, t * w
        reactive.append(running)
    out.append(_run_policy("reactive", rates, reactive, w, meets, cold_start_s,
                           price_per_hour, lagged=True))
    return out

