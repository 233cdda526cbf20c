"""The planning pipeline at any rate of one workload: what `tuning.plan_schedule` plans with.

`SchedulePlanner.plan_at` is `boute plan`'s min-cost pipeline (`tuning.choose_plan`: search,
the headroom check on fresh traffic, length classes) for the scenario at a rate; `meets`
evaluates a plan at a rate; the window rates come from the workload's daily profile or a long
trace's own clock.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from profiling import Catalog, Scenario, cold_start_s

from ._evaluator import InfeasiblePlanError, evaluate_plan
from ._pipeline import PlanOptions, choose_plan, fresh_seeds
from ._plan import Plan
from ._problem import Problem, scenario_problem
from ._run import Goal
from ._schedule import Candidate, FloatArray, Key, ScheduleError, daily_rates, replicas_of

__all__ = ["SchedulePlanner"]


class SchedulePlanner:
    """The house pipeline at any rate of one workload, for `plan_schedule` and `compare_policies`.

    `plan_at` plans the scenario at a rate as `boute plan` does (min-cost at the goal, then
    the headroom check with `resim_seeds` fresh traces per group); `meets` evaluates a plan
    at a rate; problems are cached by rate (a Poisson workload's perf DB is shared by every
    rate; a modulated or trace workload gets one per rate, its DB depending on the rate).

    Raises:
        ScheduleError: a scenario with several workloads.

    """

    def __init__(self, scenario: Scenario, catalog: Catalog, *, quality: float | None,
                 p95_s: float, resim_seeds: int = 1,
                 note: Callable[[str], None] | None = None) -> None:
        if len(scenario.named_workloads) != 1:
            raise ScheduleError("a schedule plans one workload; the scenario has "
                                f"{len(scenario.named_workloads)}: give each its own scenario")
        self.scenario = scenario
        self.catalog = catalog
        self.workload = scenario.named_workloads[0]
        self.goal = Goal("min-cost", quality, p95_s)
        self.resim_seeds = resim_seeds
        self.note = note
        self.problems: dict[tuple[float, int | None], Problem] = {}

    def problem(self, rate: float, threshold_tokens: int | None = None) -> Problem:
        """The planning problem at `rate` req/s, split at `threshold_tokens` (cached)."""
        key = (round(rate, 9), threshold_tokens)
        if key not in self.problems:
            sc = self.scenario.with_rates({self.workload.name: rate})
            if self.workload.arrival_model in ("trace", "modulated"):
                sc = sc.model_copy(update={"name": f"{sc.name}-at{rate:.6g}"})
            self.problems[key] = scenario_problem(sc, self.catalog, note=self.note,
                                                  progress=False,
                                                  threshold_tokens=threshold_tokens)
        return self.problems[key]

    def plan_at(self, rate: float) -> Plan | None:
        """The min-cost plan at `rate` that holds its goal on fresh traffic, or None."""
        chosen = choose_plan(self.problem(rate), self.goal,
                             PlanOptions(check_seeds=fresh_seeds(self.resim_seeds)),
                             with_threshold=lambda tau: self.problem(rate, tau),
                             catalog=self.catalog)
        return chosen.plan if chosen.plan is not None and chosen.held.holds else None

    def candidate(self, rate: float) -> Candidate | None:
        """`plan_at` as a `Candidate` (None without a plan)."""
        plan = self.plan_at(rate)
        if plan is None or plan.predicted is None:
            return None
        return Candidate(rate, plan, plan.predicted.cost_per_hour, *replicas_of(plan))

    def meets(self, plan: Plan, rate: float) -> bool:
        """Whether `plan` meets the P95 target at `rate` (the evaluator's planning P95)."""
        assert self.goal.p95_s is not None
        try:
            got = evaluate_plan(self.problem(rate), plan)
        except InfeasiblePlanError:
            return False
        return got.predicted is not None and got.predicted.p95_s <= self.goal.p95_s * (1 + 1e-9)

    def rates(self, window_s: float) -> FloatArray:
        """Each window's rate: the daily profile's, or a trace's own clock (module docstring).

        Raises:
            ScheduleError: no daily profile and no trace, or a trace shorter than 2 windows.

        """
        wl = self.workload
        if wl.daily_profile is not None:
            return daily_rates(wl.daily_profile, wl.rate_rps, window_s)
        if wl.trace is None:
            raise ScheduleError("a schedule needs a rate that moves: set workload."
                                "daily_profile (e.g. 24 hourly relative rates) or "
                                "workload.trace")
        trace = wl.load()
        counts = trace.window_counts(window_s)
        if counts.size < 2:
            raise ScheduleError(f"workload.trace spans {trace.duration_s:.0f} s, fewer than "
                                f"two {window_s:g} s windows; use a longer trace or shorter "
                                "windows")
        return np.asarray(np.maximum(counts / window_s * wl.rate_rps / trace.rate_rps, 1e-6),
                          dtype=np.float64)

    def cold_start(self, key: Key) -> float:
        """Cold start of a config's replica (`profiling.cold_start_s`)."""
        gpu = self.catalog.gpu(self.scenario.catalog_gpu(key[1]))
        return cold_start_s(self.catalog.model(key[0]), gpu)

    def price(self, offer: str) -> float:
        """$/h of one GPU of `offer`."""
        return self.scenario.offered_gpus(self.catalog)[offer].price_per_hour

    @property
    def stock(self) -> dict[str, int]:
        """GPUs on offer by offer name."""
        return {k: o.count for k, o in self.scenario.gpus.items()}
