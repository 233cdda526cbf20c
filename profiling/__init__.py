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
from ._hardware import (
    ATTENTION_COLUMNS,
    BANDWIDTH_COLUMNS,
    GEMM_COLUMNS,
    SPEC_SHEET,
    Calibration,
    CsvAppender,
    HardwareProfile,
    device_gpu_type,
    fit_efficiency,
    fit_report,
    load_hardware_profile,
    resolve_calibration,
    scan_hardware_profiles,
)
from ._perfdb import PERFDB_SCHEMA, PerfDB, build_perfdb, mixture_quantile, spec_calibration
from ._quality import (
    PUBLISHED_SCORES,
    CascadeQuality,
    QualityCurve,
    QualityError,
    default_quality_curve,
)
from ._replica import (
    ENGINE_PROFILES,
    Efficiency,
    EngineConfig,
    ReplicaModel,
    engine_profile,
    parallel_configs,
)
from ._scenario import (
    DEFAULT_SCENARIO,
    LengthClasses,
    ModelPair,
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
    "ATTENTION_COLUMNS",
    "BANDWIDTH_COLUMNS",
    "DEFAULT_SCENARIO",
    "ENGINE_PROFILES",
    "GEMM_COLUMNS",
    "MAX_CHECK_REQUESTS",
    "MAX_STREAM_REQUESTS",
    "PERFDB_SCHEMA",
    "PUBLISHED_SCORES",
    "QUANTILES",
    "SPEC_SHEET",
    "TRACE_SHAPES",
    "BatchScheduler",
    "Calibration",
    "CascadeQuality",
    "Catalog",
    "ConfigMapper",
    "CsvAppender",
    "Efficiency",
    "EngineConfig",
    "GpuType",
    "HardwareProfile",
    "LengthClasses",
    "ModelArch",
    "ModelPair",
    "NamedWorkload",
    "PerfDB",
    "ProfileSpec",
    "QualityCurve",
    "QualityError",
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
    "device_gpu_type",
    "engine_profile",
    "fit_efficiency",
    "fit_report",
    "generate_trace",
    "length_thresholds",
    "list_presets",
    "load_catalog",
    "load_hardware_profile",
    "load_hf_config",
    "load_scenario",
    "load_trace",
    "map_serial",
    "mixture_quantile",
    "parallel_configs",
    "process_mapper",
    "read_trace",
    "request_tokens",
    "resolve_calibration",
    "scan_hardware_profiles",
    "simulate",
    "simulate_closed_loop",
    "spec_calibration",
    "sweep_config",
]
