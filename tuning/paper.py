"""The paper's experiments, as `boute reproduce` and `boute compare` run them.

* main results at a fixed budget (`main_results` over a `quality_grid`: every system's
  P95, mean latency and throughput), the `headline` ratios and the `characterization`;
* Tables 1 and 3 (`compare_targets`: the cheapest $/hour per baseline and BOute for each
  target, BOute's allocation);
* Table 2 (`scheduling_time`: the wall seconds each searcher needs to converge);
* the paper's own figures to set beside them (`PAPER`, `CHARACTERIZATION`).

A facade over `tuning._reproduce` and `tuning._planning_time`; pure (no printing, no plots).
"""

from ._planning_time import (
    TARGET_HV_RATIO,
    ArmResult,
    NoDbResult,
    SchedulingRow,
    SimulatedEvaluator,
    scheduling_time,
    table2_steps,
)
from ._reproduce import (
    BISECT_STEPS,
    CHARACTERIZATION,
    PAPER,
    SYSTEMS,
    MainRow,
    SystemPoint,
    TargetComparison,
    allocation,
    budget_share,
    characterization,
    compare_targets,
    headline,
    main_results,
    min_p95_plan,
    quality_grid,
    violations,
)

__all__ = [
    "BISECT_STEPS",
    "CHARACTERIZATION",
    "PAPER",
    "SYSTEMS",
    "TARGET_HV_RATIO",
    "ArmResult",
    "MainRow",
    "NoDbResult",
    "SchedulingRow",
    "SimulatedEvaluator",
    "SystemPoint",
    "TargetComparison",
    "allocation",
    "budget_share",
    "characterization",
    "compare_targets",
    "headline",
    "main_results",
    "min_p95_plan",
    "quality_grid",
    "scheduling_time",
    "table2_steps",
    "violations",
]
