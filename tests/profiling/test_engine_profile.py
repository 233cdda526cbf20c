"""Engine profiles: per-point metrics, the file format, and the engine-overhead fit."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest

from common.errors import ProfilerError
from profiling import ModelArch
from profiling.measure import (
    EngineOverheads,
    JsonlWriter,
    calibrate_replicas,
    fit_engine_overhead,
    load_engine_profile,
    point_summary,
    predict_point,
    replica_for_profile,
)

TINY = ModelArch("tiny", 2, 128, 4, 2, 32, 512, 500)
CPU = dict(name="cpu-test", memory_gib=16, memory_bandwidth_gbps=20.0, bf16_tflops=0.015,
           interconnect="pcie", link_bandwidth_gbps=1.0, gpus_per_node=1, price_per_hour=0.0)


def test_point_summary_by_hand() -> None:
    # Two requests: arrive 0 s and 1 s; 3 and 5 output tokens; TTFT 0.1 and 0.2 s; latency
    # 1.1 and 2.2 s. TPOT (1.1-0.1)/2 = 0.5 s and (2.2-0.2)/4 = 0.5 s; last finish 3.2 s,
    # so throughput (3 + 5) / 3.2 = 2.5 tok/s.
    s = point_summary([0.0, 1.0], [3, 5], [0.1, 0.2], [1.1, 2.2])
    assert s["tpot_ms"] == pytest.approx(500.0)
    assert s["ttft_ms"] == pytest.approx(150.0)
    assert s["throughput_tok_s"] == pytest.approx(2.5)
    assert s["duration_s"] == pytest.approx(3.2)
    assert s["latency_s_p50"] == pytest.approx(1.65)


def _write_profile(path: Path, points: list[dict], *, end: bool = True,
                   role: str = "measure") -> Path:
    w = JsonlWriter(path)
    w.write({"kind": "meta", "arch": asdict(TINY), "device": "cpu", "gpu_type": "cpu-test",
             "role": role, "engine": {"max_num_seqs": 32, "max_num_batched_tokens": 2048,
                                      "max_model_len": 1024}})
    for p in points:
        w.write({"kind": "point", **p})
    if end:
        w.write({"kind": "end", "status": "complete"})
    return path


def _simulated_points(o0_s: float, o1_s: float, levels: tuple[int, ...], out_len: int,
                      frontend_s: float = 0.0) -> list[dict]:
    """Closed-loop points measured on a 'true' engine = the replica model with (o0, o1, d)."""
    from profiling import GpuType
    from profiling.measure import EnginePoint

    truth = replica_for_profile(_fake_profile(), GpuType(**CPU), None,
                                EngineOverheads(o0_s, o1_s, frontend_s))
    out = []
    for c in levels:
        n = max(12, 3 * c)
        arr = np.zeros(n)
        point = EnginePoint("concurrency", c, arr, np.full(n, 32.0), np.full(n, float(out_len)),
                            arr, arr, {})
        out.append({"mode": "concurrency", "level": c,
                    "requests": {"arrival_s": [0.0] * n, "input_tokens": [32] * n,
                                 "output_tokens": [out_len] * n, "ttft_s": [0.0] * n,
                                 "latency_s": [0.0] * n},
                    "summary": predict_point(truth, point)})
    return out


def _fake_profile():  # type: ignore[no-untyped-def]
    from profiling.measure import EngineProfile

    meta = {"arch": asdict(TINY), "device": "cpu", "engine": {
        "max_num_seqs": 32, "max_num_batched_tokens": 2048, "max_model_len": 1024}}
    return EngineProfile(Path("fake"), meta, [], "complete", None)


def test_overhead_fit_recovers_known_overheads(tmp_path: Path) -> None:
    from profiling import GpuType

    path = _write_profile(tmp_path / "c.jsonl",
                          _simulated_points(3e-3, 200e-6, (1, 24), 64, frontend_s=5e-3))
    calib = load_engine_profile(path)
    start = replica_for_profile(calib, GpuType(**CPU))      # default 1.5 ms, 5 us, 0 ms
    fitted = fit_engine_overhead(start, calib.points)
    assert fitted.engine.step_overhead_s == pytest.approx(3e-3, rel=0.02)
    assert fitted.engine.step_overhead_per_seq_s == pytest.approx(200e-6, rel=0.05)
    assert fitted.engine.frontend_latency_s == pytest.approx(5e-3, rel=0.05)


def test_calibrated_model_predicts_held_out_levels(tmp_path: Path) -> None:
    from profiling import GpuType

    calib = load_engine_profile(_write_profile(
        tmp_path / "c.jsonl", _simulated_points(3e-3, 200e-6, (1, 24), 64, 5e-3),
        role="calibration"))
    valid = load_engine_profile(_write_profile(
        tmp_path / "v.jsonl", _simulated_points(3e-3, 200e-6, (2, 4, 8, 16), 100, 5e-3)))
    reps = calibrate_replicas(valid, GpuType(**CPU), None, [calib])
    assert reps.fitted_on["frontend_latency_s"] == pytest.approx(5e-3, rel=0.05)
    for p in valid.points:
        pred = predict_point(reps.after, p)
        for key in ("tpot_ms", "ttft_ms", "throughput_tok_s"):
            assert pred[key] == pytest.approx(p.summary[key], rel=0.03), key
    with pytest.raises(ValueError, match="cannot be judged"):
        calibrate_replicas(calib, GpuType(**CPU), None, [calib])


def test_partial_file_and_bad_lines(tmp_path: Path) -> None:
    path = _write_profile(tmp_path / "p.jsonl", _simulated_points(3e-3, 0.0, (1,), 8), end=False)
    prof = load_engine_profile(path)
    assert prof.status == "partial" and len(prof.points) == 1
    path.write_text(path.read_text() + "{not json\n")
    with pytest.raises(ProfilerError, match="line 3: not JSON"):
        load_engine_profile(path)
    with pytest.raises(ProfilerError, match="run `boute profile engine"):
        load_engine_profile(tmp_path / "missing.jsonl")
    (tmp_path / "nometa.jsonl").write_text(json.dumps({"kind": "end"}) + "\n")
    with pytest.raises(ProfilerError, match="no meta line"):
        load_engine_profile(tmp_path / "nometa.jsonl")
