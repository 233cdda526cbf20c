"""Measuring: the device at hand and real engines, against what `profiling` predicts.

* the hardware profiler (`measure_hardware`: GEMM, attention and memory bandwidth with torch,
  written as the hardware-profile tables `profiling` fits its stage-1 efficiencies on);
* engine profiles (`EngineProfile`: a real engine's TTFT, TPOT, throughput and latency per
  load, measured by `app.engine_profiler`) and the fitted engine overheads;
* the fidelity report (`compare_points`, `error_summary`: predicted versus measured);
* served calibration (`fit_served`: the stage-1 model's efficiency scale, engine overhead
  and front-end latency fitted on a request-log window, replayed through the simulator);
* device-name detection (`gpu_type_from_name`) and tiny random-weight models for local runs.

It imports `profiling`; `profiling` never imports it (`tests/test_layers.py`).
"""

from ._engine_profile import (
    EngineOverheads,
    EnginePoint,
    EngineProfile,
    JsonlWriter,
    fit_engine_overhead,
    load_engine_profile,
    point_summary,
    predict_point,
)
from ._fidelity import calibrate_replicas, compare_points, error_summary, replica_for_profile
from ._gpu_names import gpu_type_from_name
from ._hwbench import HardwareSweep, default_sweep, layer_shapes, measure_hardware, resolve_device
from ._served_fit import (
    ServedGroup,
    fidelity_table,
    fit_served,
    replay_group,
    served_groups,
    synthetic_group,
)
from ._tiny import make_tiny_llama

__all__ = [
    "EngineOverheads",
    "EnginePoint",
    "EngineProfile",
    "HardwareSweep",
    "JsonlWriter",
    "ServedGroup",
    "calibrate_replicas",
    "compare_points",
    "default_sweep",
    "error_summary",
    "fidelity_table",
    "fit_engine_overhead",
    "fit_served",
    "gpu_type_from_name",
    "layer_shapes",
    "load_engine_profile",
    "make_tiny_llama",
    "measure_hardware",
    "point_summary",
    "predict_point",
    "replay_group",
    "replica_for_profile",
    "resolve_device",
    "served_groups",
    "synthetic_group",
]
