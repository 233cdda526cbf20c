"""Online optimization: plans, evaluator, searchers (BoTorch MOBO, exact, random), baselines.

Pure planning code: Ray is imported only by the Ray Tune adapter.
"""

from ._baselines import BASELINES, baseline_min_cost
from ._evaluator import (
    BatchMetrics,
    InfeasiblePlanError,
    PlanArrays,
    evaluate_arrays,
    evaluate_plan,
    plan_from_arrays,
    plan_to_arrays,
)
from ._exact import ExactFront, exact_front, exact_max_throughput, exact_min_cost
from ._front import hypervolume, pareto_mask
from ._pipeline import Chosen, PlanOptions, choose_plan, fresh_seeds
from ._plan import (
    LENGTH_CLASSES,
    Group,
    LengthRouting,
    Plan,
    PlanError,
    Predicted,
    Routing,
    WorkloadRouting,
)
from ._problem import Problem, db_paths, default_db_path, load_problem, planning_problem
from ._replan import Decision, GroupChange, Hysteresis, decide, diff_groups
from ._replay import GroupReplay, Replay, replay
from ._schedule import Schedule, daily_rates, plan_schedule
from ._schedule_planner import SchedulePlanner
from ._search import Goal, SearchResult, StopRule, search
from ._slo import WindowSLO, attainment, window_p95s

__all__ = [
    "BASELINES",
    "LENGTH_CLASSES",
    "BatchMetrics",
    "Chosen",
    "Decision",
    "ExactFront",
    "Goal",
    "Group",
    "GroupChange",
    "GroupReplay",
    "Hysteresis",
    "InfeasiblePlanError",
    "LengthRouting",
    "Plan",
    "PlanArrays",
    "PlanError",
    "PlanOptions",
    "Predicted",
    "Problem",
    "Replay",
    "Routing",
    "Schedule",
    "SchedulePlanner",
    "SearchResult",
    "StopRule",
    "WindowSLO",
    "WorkloadRouting",
    "attainment",
    "baseline_min_cost",
    "choose_plan",
    "daily_rates",
    "db_paths",
    "decide",
    "default_db_path",
    "diff_groups",
    "evaluate_arrays",
    "evaluate_plan",
    "exact_front",
    "exact_max_throughput",
    "exact_min_cost",
    "fresh_seeds",
    "hypervolume",
    "load_problem",
    "pareto_mask",
    "plan_from_arrays",
    "plan_schedule",
    "plan_to_arrays",
    "planning_problem",
    "replay",
    "search",
    "window_p95s",
]
