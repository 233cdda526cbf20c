"""Offline preparation for planning.

Catalogs, workload traces, replica model, load simulation, perf DB and quality curves: what
*predicts*. What *measures* (the hardware profiler, engine profiles, the fidelity report, device
names, tiny test models) is `profiling.measure`, which reads from this package and is never
read by it (as Vidur keeps its profiler apart from its simulator). Pure planning code: no
Ray, no Serve.
"""

from ._arrivals import (
    MAX_CHECK_REQUESTS,
    MAX_STREAM_REQUESTS,
    ScaledTraffic,
    ThinnedTraffic,
    Traffic,
)
from ._catalog import Catalog, GpuType, ModelArch, cold_start_s, load_catalog, load_hf_config
from ._perfdb import PerfDB, build_perfdb, mixture_quantile
from ._quality import PUBLISHED_SCORES, CascadeQuality, QualityCurve, default_quality_curve
from ._replica import ENGINE_PROFILES, Efficiency, EngineConfig, ReplicaModel, parallel_configs
from ._scenario import (
    DEFAULT_SCENARIO,
    LengthClasses,
    NamedWorkload,
    ProfileSpec,
    Scenario,
    length_thresholds,
    list_presets,
    load_scenario,
    request_tokens,
)
from ._scheduler import BatchScheduler, SequenceTooLongError, StepPlan
from ._simulator import QUANTILES, SimResult, capacity_rps, simulate, simulate_closed_loop
from ._sweep import ConfigMapper, SweepJob, map_serial, process_mapper, sweep_config
from ._workload import (
    TRACE_SHAPES,
    Trace,
    TraceReport,
    daily_curve,
    generate_trace,
    load_trace,
    read_trace,
)

__all__ = [
    "DEFAULT_SCENARIO",
    "ENGINE_PROFILES",
    "MAX_CHECK_REQUESTS",
    "MAX_STREAM_REQUESTS",
    "PUBLISHED_SCORES",
    "QUANTILES",
    "TRACE_SHAPES",
    "BatchScheduler",
    "CascadeQuality",
    "Catalog",
    "ConfigMapper",
    "Efficiency",
    "EngineConfig",
    "GpuType",
    "LengthClasses",
    "ModelArch",
    "NamedWorkload",
    "PerfDB",
    "ProfileSpec",
    "QualityCurve",
    "ReplicaModel",
    "ScaledTraffic",
    "Scenario",
    "SequenceTooLongError",
    "SimResult",
    "StepPlan",
    "SweepJob",
    "ThinnedTraffic",
    "Trace",
    "TraceReport",
    "Traffic",
    "build_perfdb",
    "capacity_rps",
    "cold_start_s",
    "daily_curve",
    "default_quality_curve",
    "generate_trace",
    "length_thresholds",
    "list_presets",
    "load_catalog",
    "load_hf_config",
    "load_scenario",
    "load_trace",
    "map_serial",
    "mixture_quantile",
    "parallel_configs",
    "process_mapper",
    "read_trace",
    "request_tokens",
    "simulate",
    "simulate_closed_loop",
    "sweep_config",
]
