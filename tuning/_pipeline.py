"""The planning pipeline: (problem, goal, options) -> the chosen plan. Every caller uses it.

``boute plan``, ``boute compare``, ``boute reproduce``, the schedule planner and the replan job
all choose a plan here, so the same window and goal give the same plan whichever asks:

1. **search** (`tuning.search`, or Ray Tune trials with ``options.tune``) for the goal;
2. **headroom** (`tuning._headroom.hold`): the search's plan is re-simulated on
   ``options.check_seeds`` fresh traces per replica group and, while a group misses its
   target, its config is derated and the search runs again (``check_seeds=()``: the search's
   plan as it is, what the paper's tables compare); a re-plan starts from the last search
   (`tuning._run.Warm`: `auto`'s solver choice, the level program's still-tight levels);
3. **length classes** (`tuning._lengths.choose`): when the scenario names
   ``length_classes``, steps 1-2 run without classes and with each candidate threshold
   (``with_threshold(tau)`` builds that problem) and the best plan that holds wins;
4. **extras**: the plan carries its goal (`Plan.goal`, written as ``search.goal``), its
   search (solver, objective), the headroom summary and the length-class tries; with a TTFT
   or TPOT target, its goodput on the fresh traces (`Predicted.goodput`).

A goal's TTFT / TPOT targets clip the problem's capacity tables first
(`Problem.for_goal`); `Chosen.problem` is that clipped problem.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from common.errors import BouteError
from profiling import Catalog, load_catalog

from ._headroom import FRESH_SEEDS, Held, hold
from ._lengths import LengthChoice, choose
from ._plan import Plan
from ._problem import Problem
from ._run import Goal, SearchResult, StopRule, Warm
from ._search import search

__all__ = ["Chosen", "PlanOptions", "choose_plan", "fresh_seeds"]


def fresh_seeds(n: int) -> tuple[int, ...]:
    """``n`` seeds of fresh traces for the headroom check (`FRESH_SEEDS` first).

    Raises:
        BouteError: a negative `n`.

    """
    if n < 0:
        raise BouteError(f"resim_seeds={n} must be >= 0 (0: no check)")
    return FRESH_SEEDS[:n] if n <= len(FRESH_SEEDS) else tuple(range(101, 101 + n))


@dataclass(frozen=True)
class PlanOptions:
    """How `choose_plan` searches and checks.

    Attributes:
        solver: ``auto``, ``mobo``, ``exact`` or ``random`` (`tuning.search`).
        seed: of the searcher.
        stop: when mobo / random stop (default `StopRule()`).
        max_evals: exactly this many plans (overrides `stop`).
        check_seeds: fresh traces per replica group of the headroom check; ``()``: none.
        tune: evaluate MOBO proposals as Ray Tune trials (`tuning.tune`).
        tune_address: with `tune`, the address of a running Ray cluster to use (neither
            started nor stopped); None: a local Ray, started for the search.
        progress: draw the search's progress bar on stderr.
        hardware_profiles: as for the perf DB (the fresh runs use the same replica model).

    """

    solver: str = "auto"
    seed: int = 0
    stop: StopRule | None = None
    max_evals: int | None = None
    check_seeds: tuple[int, ...] = FRESH_SEEDS
    tune: bool = False
    tune_address: str | None = None
    progress: bool = False
    hardware_profiles: str | None = None


@dataclass(frozen=True)
class Chosen:
    """What `choose_plan` found.

    Attributes:
        problem: the problem the plan was chosen on (the winning length-class threshold's).
        result: its last search.
        plan: the chosen plan with its extras, or None when no plan meets the goal.
        held: the headroom outcome (`Held`).
        lengths: the length-class choice and its tries, or None without classes.

    """

    problem: Problem
    result: SearchResult
    plan: Plan | None
    held: Held
    lengths: LengthChoice | None


def _search(problem: Problem, goal: Goal, options: PlanOptions, warm: Warm | None = None
            ) -> SearchResult:
    if options.tune_address is not None and not options.tune:
        raise BouteError(f"--address={options.tune_address} is the Ray cluster of --tune; add "
                         "--tune, or drop --address")
    if options.tune:
        if options.solver not in ("auto", "mobo"):
            raise BouteError("--tune runs the mobo solver; drop --solver or use --solver mobo")
        from .tune import search_with_tune

        res = search_with_tune(problem, goal, seed=options.seed, stop=options.stop,
                               address=options.tune_address)
        res.reason = "mobo through Ray Tune trials (--tune" + (
            f" on the cluster at {options.tune_address})" if options.tune_address else ")")
        return res
    return search(problem, goal, solver=options.solver, seed=options.seed,
                  max_evals=options.max_evals, stop=options.stop, progress=options.progress,
                  warm=warm)


def choose_plan(problem: Problem, goal: Goal, options: PlanOptions | None = None, *,
                with_threshold: Callable[[int], Problem] | None = None,
                thresholds: Sequence[int] | None = None,
                catalog: Catalog | None = None) -> Chosen:
    """Search, check on fresh traffic, choose the length classes, attach the extras.

    Args:
        problem: the planning problem; one already split at a length threshold is planned
            as it is (no threshold is chosen).
        goal: what to optimize.
        options: how (default `PlanOptions()`: auto solver, three fresh seeds).
        with_threshold: ``tokens -> Problem`` split at that length threshold; needed when the
            scenario names ``length_classes`` (`tuning.planning_problem` with
            ``threshold_tokens``).
        thresholds: the candidate thresholds, tokens (default: the scenario's,
            `profiling.length_thresholds`); given, they are tried even when the scenario
            names no ``length_classes``.
        catalog: the merged catalog the fresh runs use (default: the embedded one).

    Raises:
        BouteError: length classes without `with_threshold`; from the search (a goal
            missing its targets, an unknown solver).

    """
    options = options or PlanOptions()
    problem = problem.for_goal(goal)       # the token targets' rate caps (none: itself)
    cat = catalog if catalog is not None else load_catalog()

    def held_plan(pr: Problem) -> Held:
        last: list[SearchResult] = []

        def run(p: Problem) -> SearchResult:
            # A re-plan after a derate starts from the last search (`tuning._run.Warm`).
            res = _search(p, goal, options, warm=last[-1].warm if last else None)
            last[:] = [res]
            return res

        return hold(pr, goal, run, cat, seeds=options.check_seeds,
                    hardware_profiles=options.hardware_profiles)

    lengths = None
    if not problem.classes and (problem.scenario.length_classes is not None
                                or thresholds is not None):
        if with_threshold is None:
            raise BouteError(f"scenario {problem.scenario.name!r} names length_classes: pass "
                             "with_threshold=(tokens -> Problem) to plan them, or drop "
                             "length_classes from the scenario")
        from profiling import length_thresholds

        build = with_threshold
        lengths = choose(length_thresholds(problem.scenario) if thresholds is None
                         else tuple(thresholds),
                         lambda tau: problem if tau is None else build(tau).for_goal(goal),
                         held_plan, goal)
        problem, held = lengths.problem, lengths.held
    else:
        held = held_plan(problem)
    plan = None
    if held.plan is not None:
        extra: dict[str, Any] = {"search": {
            "solver": held.result.solver, "reason": held.result.reason, "objective": goal.mode}}
        if held.result.certificate is not None:
            extra["search"]["certificate"] = held.result.certificate.to_dict()
        if held.result.startup_s is not None:     # Ray Tune: its start-up apart from the search
            extra["search"].update(ray_startup_s=held.result.startup_s,
                                   search_s=held.result.seconds)
        if held.checks:
            extra["headroom"] = held.summary()
        if lengths is not None:
            extra["length_classes"] = lengths.summary()
        plan = replace(held.plan.with_extra(extra), goal=goal)
        if held.goodput is not None and plan.predicted is not None:
            plan = plan.with_predicted(replace(plan.predicted, goodput=held.goodput))
    return Chosen(problem, held.result, plan, held, lengths)
