"""Hardware profiles: CSV schema, the roofline fit, the CPU profiler and its bad inputs."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from boute.cli import main
from common.errors import MeasurementTimeoutError, ProfilerError
from profiling import Efficiency, GpuType, ModelArch
from profiling._hardware import (
    ATTENTION_COLUMNS,
    BANDWIDTH_COLUMNS,
    GEMM_COLUMNS,
    CsvAppender,
    device_gpu_type,
    fit_efficiency,
    fit_report,
    load_hardware_profile,
)
from profiling.measure import HardwareSweep, layer_shapes, measure_hardware, resolve_device

REPO = Path(__file__).resolve().parents[2]
H100_REF = REPO / "benchmarks" / "data" / "hardware" / "h100-sxm-reference"
FAKE = GpuType("FAKE", 80, 1000.0, 100.0, "pcie", 32, 1, 1.0)
TINY = ModelArch("tiny", 2, 128, 4, 2, 32, 512, 500)


def _synthetic_profile(tmp_path: Path, e_c: float, e_m: float, tau_s: float) -> Path:
    """GEMM rows timed exactly by the roofline t = ||F/(C e_c), Q/(B e_m)||_3 + tau."""
    out = tmp_path / "synthetic"
    out.mkdir()
    app = CsvAppender(out / "gemm.csv", GEMM_COLUMNS)
    for m in (1, 4, 16, 64, 256, 1024, 4096):
        for n, k in ((4096, 4096), (14336, 4096), (4096, 14336)):
            tc = 2 * m * n * k / (100e12 * e_c)
            tm = 2 * (m * k + k * n + m * n) / (1000e9 * e_m)
            t_us = ((tc**3 + tm**3) ** (1 / 3) + tau_s) * 1e6
            app.append({"model": "x", "layer": "l", "tp": 1, "m": m, "n": n, "k": k,
                        "median_us": t_us, "tflops": 2 * m * n * k / t_us * 1e-6,
                        "gbps": 0.0, "min_us": t_us,
                        "reps": 1})
    return out


def test_fit_recovers_the_parameters_that_generated_the_rows(tmp_path: Path) -> None:
    prof = load_hardware_profile(_synthetic_profile(tmp_path, 0.5, 0.8, 10e-6))
    eff = fit_efficiency(prof, FAKE)
    assert eff.compute == pytest.approx(0.5, rel=1e-3)
    assert eff.memory == pytest.approx(0.8, rel=1e-3)
    assert eff.kernel_latency_s == pytest.approx(10e-6, rel=1e-2)
    assert eff.attention_compute == Efficiency().attention_compute  # no attention rows
    assert fit_report(prof, FAKE, eff)["worst_abs_rel_err"] < 1e-3


def test_profiler_schema_is_the_h100_reference_schema() -> None:
    for name, cols in (("gemm", GEMM_COLUMNS), ("attention", ATTENTION_COLUMNS),
                       ("bandwidth", BANDWIDTH_COLUMNS)):
        with (H100_REF / f"{name}.csv").open() as fh:
            assert tuple(next(csv.reader(fh))) == cols


def test_h100_reference_fit(catalog) -> None:
    prof = load_hardware_profile(H100_REF)
    h100 = catalog.gpu("H100")
    eff = fit_efficiency(prof, h100)
    # gemm.csv: large GEMMs 690-770 of 989.4 TFLOP/s; big weight-streaming GEMMs 2.4-2.8 of
    # 3.35 TB/s (gate_up m=1: 2.43 TB/s = 0.73, lm_head 2.76 = 0.82).
    assert 0.70 <= eff.compute <= 0.80
    assert 0.70 <= eff.memory <= 0.85
    # attention.csv, default backend, prefill 8192: 620, 600, 498, ... TFLOP/s -> ~0.5-0.63.
    assert 0.50 <= eff.attention_compute <= 0.63
    assert 2e-6 <= eff.kernel_latency_s <= 15e-6
    fitted, default = fit_report(prof, h100, eff), fit_report(prof, h100, Efficiency())
    assert fitted["gemm_rows"] == 563  # 566 lines - header - 2... = the file's data rows
    assert fitted["median_abs_rel_err"] < default["median_abs_rel_err"]


def test_device_gpu_type_takes_the_measured_peaks(tmp_path: Path) -> None:
    out = _synthetic_profile(tmp_path, 0.5, 0.8, 1e-6)
    bw = CsvAppender(out / "bandwidth.csv", BANDWIDTH_COLUMNS)
    for test, tbps in (("d2d_copy", 0.020), ("read_sum", 0.031)):
        bw.append({"test": test, "bytes_per_iter": 1, "bytes_moved": 1, "median_us": 1.0,
                   "min_us": 1.0, "tb_per_s": tbps, "reps": 1, "note": ""})
    (out / "meta.json").write_text(json.dumps({"gpu_type": "cpu-x", "memory_gib": 8}))
    gpu = device_gpu_type(load_hardware_profile(out))
    assert gpu.name == "cpu-x" and gpu.memory_gib == 8
    assert gpu.memory_bandwidth_gbps == pytest.approx(31.0)  # best test, 0.031 TB/s
    # The best GEMM: m = 4096, compute bound, just under C e_c = 100 x 0.5 = 50 TFLOP/s.
    assert 45 < gpu.bf16_tflops < 50


def test_layer_shapes_of_a_tp_shard(catalog) -> None:
    # Llama-3.1-8B: h 4096, 32 heads, 8 KV heads, hd 128, inter 14336, vocab 128256.
    shapes = dict((name, (n, k)) for name, n, k in layer_shapes(catalog.model("llama-3.1-8b"), 4))
    assert shapes["qkv_proj"] == ((8 + 2 * 2) * 128, 4096)   # 1536, as in gemm.csv tp=4
    assert shapes["o_proj"] == (4096, 1024)
    assert shapes["gate_up_proj"] == (7168, 4096)
    assert shapes["down_proj"] == (4096, 3584)
    assert shapes["lm_head"] == (32064, 4096)


def _sweep(**kw: object) -> HardwareSweep:
    base = dict(models=(TINY,), tps=(1,), token_counts=(1, 4), squares=(64,),
                prefill_lens=(64,), decode_batches=(1,), decode_contexts=(64,),
                copy_bytes=(1 << 20,), target_s=0.002)
    base.update(kw)
    return HardwareSweep(**base)  # type: ignore[arg-type]


def test_cpu_profiler_writes_every_row(tmp_path: Path) -> None:
    prof = measure_hardware(resolve_device("cpu"), _sweep(), tmp_path / "p", progress=False)
    # 1 square + 5 layers x 2 token counts; prefill 1 + decode 1x1; copy 1 + read + write.
    assert (len(prof.gemm), len(prof.attention), len(prof.bandwidth)) == (11, 2, 3)
    assert prof.meta["status"] == "complete" and prof.meta["gpu_type"].startswith("cpu-")
    assert all(r["median_us"] > 0 and r["reps"] >= 5 for r in prof.gemm)
    row = next(r for r in prof.gemm if r["layer"] == "down_proj" and r["m"] == 4)
    assert (row["n"], row["k"]) == (128, 512)
    assert row["tflops"] == pytest.approx(2 * 4 * 128 * 512 / row["median_us"] * 1e-6, rel=1e-4)


def test_timeout_keeps_the_rows_measured_before_it(tmp_path: Path) -> None:
    big = ModelArch("big", 1, 2048, 16, 16, 128, 2048, 2048)
    # m = 1 on the tiny shapes takes microseconds (milliseconds on a loaded machine, the
    # first call included); m = 8192 on 2048x2048 is ~69 GFLOP (several seconds at this
    # CPU's ~10-20 GFLOP/s bf16), far past 0.5 s.
    sweep = _sweep(models=(TINY, big), squares=(), token_counts=(1, 8192))
    with pytest.raises(MeasurementTimeoutError, match=r"--timeout-s=0\.5") as info:
        measure_hardware(resolve_device("cpu"), sweep, tmp_path / "p", timeout_s=0.5,
                         progress=False)
    assert info.value.partial_path == str(tmp_path / "p")
    prof = load_hardware_profile(tmp_path / "p")
    assert prof.meta["status"] == "partial" and "timeout" in prof.meta["error"]
    assert len(prof.gemm) >= 1 and all(r["m"] == 1 for r in prof.gemm[:1])


def test_unknown_device_is_an_error() -> None:
    with pytest.raises(ProfilerError, match="--device='tpu' is unknown"):
        resolve_device("tpu")


@pytest.mark.parametrize(("argv", "needle"), [
    (["profile", "hardware", "--device", "tpu"], "--device='tpu' is unknown"),
    (["profile", "hardware", "--device", "cpu", "--model", "/nonexistent"],
     "is not a directory with a config.json"),
    (["profile", "engine", "--model", "/tmp"], "no config.json in that directory"),
    (["profile", "engine", "--model", "/tmp", "--concurrency", "1,x"], "'x' is not an integer"),
])
def test_cli_bad_input_is_one_line(argv: list[str], needle: str,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and "\n" not in err and "Traceback" not in err
