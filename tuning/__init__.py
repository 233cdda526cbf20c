"""Planning: problems, plans, the evaluator, searchers (BoTorch MOBO, exact, random), baselines.

`choose_plan` is the one planning pipeline (search, headroom check, length classes) every
caller uses; `tuning.paper` holds the paper's experiments, `tuning.tune` the Ray Tune adapter.
Pure planning code: Ray is imported only by the Ray Tune adapter.
"""

from ._auto import ExactBudgetExceeded
from ._baselines import BASELINES, baseline_min_cost
from ._certificate import Certificate
from ._certify import certify, front_bound
from ._deadline import CpuDeadline
from ._disagg import PdChoice, PdOffer, PdPlanner, check_pd_plan
from ._drift import (
    DriftReport,
    GroupDrift,
    GroupObserved,
    GroupPredicted,
    PredictionTable,
    detect_drift,
    interpolate_prediction,
    observe_groups,
    predict_groups,
    prediction_table,
)
from ._encoding import RawEncoding, StructuredEncoding
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
from ._mobo import MoboSettings, run_mobo
from ._pd_plan import (
    PdHeld,
    check_models,
    evaluate_pd,
    hold_pd,
    plan_disaggregated,
    refuse_disaggregate,
)
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
from ._problem import (
    Problem,
    db_paths,
    default_db_path,
    load_problem,
    planning_problem,
    scenario_problem,
)
from ._replan import Decision, GroupChange, Hysteresis, decide, diff_groups
from ._replay import GroupReplay, Replay, replay
from ._schedule import Schedule, ScheduleError, compare_policies, daily_rates, plan_schedule
from ._schedule_planner import SchedulePlanner
from ._search import Goal, SearchError, SearchResult, StopRule, exact_search, search
from ._slo import WindowSLO, attainment, window_p95s, window_quantile

__all__ = [
    "BASELINES",
    "LENGTH_CLASSES",
    "BatchMetrics",
    "Certificate",
    "Chosen",
    "CpuDeadline",
    "Decision",
    "DriftReport",
    "ExactBudgetExceeded",
    "ExactFront",
    "Goal",
    "Group",
    "GroupChange",
    "GroupDrift",
    "GroupObserved",
    "GroupPredicted",
    "GroupReplay",
    "Hysteresis",
    "InfeasiblePlanError",
    "LengthRouting",
    "MoboSettings",
    "PdChoice",
    "PdHeld",
    "PdOffer",
    "PdPlanner",
    "Plan",
    "PlanArrays",
    "PlanError",
    "PlanOptions",
    "Predicted",
    "PredictionTable",
    "Problem",
    "RawEncoding",
    "Replay",
    "Routing",
    "Schedule",
    "ScheduleError",
    "SchedulePlanner",
    "SearchError",
    "SearchResult",
    "StopRule",
    "StructuredEncoding",
    "WindowSLO",
    "WorkloadRouting",
    "attainment",
    "baseline_min_cost",
    "certify",
    "check_models",
    "check_pd_plan",
    "choose_plan",
    "compare_policies",
    "daily_rates",
    "db_paths",
    "decide",
    "default_db_path",
    "detect_drift",
    "diff_groups",
    "evaluate_arrays",
    "evaluate_pd",
    "evaluate_plan",
    "exact_front",
    "exact_max_throughput",
    "exact_min_cost",
    "exact_search",
    "fresh_seeds",
    "front_bound",
    "hold_pd",
    "hypervolume",
    "interpolate_prediction",
    "load_problem",
    "observe_groups",
    "pareto_mask",
    "plan_disaggregated",
    "plan_from_arrays",
    "plan_schedule",
    "plan_to_arrays",
    "planning_problem",
    "predict_groups",
    "prediction_table",
    "refuse_disaggregate",
    "replay",
    "run_mobo",
    "scenario_problem",
    "search",
    "window_p95s",
    "window_quantile",
]
