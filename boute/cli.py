"""The `boute` command line: a thin layer over the library, one function pair per command.

Every command takes `--json`: it then prints exactly one JSON object on stdout (progress bars
go to stderr). Errors in the user's input print one line on stderr and exit with status 2.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from boute._shared import add_catalog_args, add_hardware_profiles_arg, emit, save_figure
from common.errors import BouteError
from common.pairs import parse_pairs

__all__ = ["main"]

EXIT_USAGE = 2


MAX_GENERATED_REQUESTS = 10_000_000
"""Most requests `boute simulate` and `boute trace` generate: their columns alone are
~240 MB (three 8-byte numbers per request), the simulator's state several times that."""


def _check_requests(n: int, flag: str) -> None:
    """Check a generated request count: in [1, `MAX_GENERATED_REQUESTS`].

    Raises:
        BouteError: naming `flag`, the value and the bound.

    """
    if not 1 <= n <= MAX_GENERATED_REQUESTS:
        raise BouteError(f"{flag}={n} must be >= 1 and <= {MAX_GENERATED_REQUESTS:,}")


def _fmt(x: float, spec: str = ".2f") -> str:
    return "inf" if not math.isfinite(x) else format(x, spec)


# -- boute profile -------------------------------------------------------------------------------
def _add_profile(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
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
    add_catalog_args(p)
    p.set_defaults(run=_run_profile)
    from boute.profile_cli import add_profile_modes

    add_profile_modes(p)


def _run_profile(args: argparse.Namespace) -> int:
    from profiling import load_catalog, load_scenario
    from profiling._replica import engine_profile

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
    from profiling._perfdb import spec_calibration

    spec = scenario.profile_spec()
    calibration = spec_calibration(spec, catalog, hardware_profiles=args.hardware_profiles)
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
               "seconds": seconds, "p95_target_s": args.p95, "best": list(best.values()),
               "configs_summary": summary}

    def human() -> str:
        lines = [f"perf DB {path}: {db.table.num_rows} rows, {len(db.keys)} feasible configs, "
                 f"{len(db.meta['infeasible'])} infeasible, built in {seconds:.1f} s with "
                 f"{built_with}",
                 "efficiency: " + ", ".join(f"{g} {src}" for g, src
                                            in calibration.source.items()),
                 f"best config per model and GPU (most req/s per $ with P95 <= {args.p95:g} s):",
                 f"{'model':<15}{'gpu':<14}{'tp':>3}{'pp':>3}{'$/h':>7}{'cap rps':>9}"
                 f"{'rps@P95':>9}{'rps/$':>8}{'P95 idle':>10}"]
        for r in sorted(best.values(), key=lambda r: (r["model"], -r["rps_per_dollar"])):
            lines.append(f"{r['model']:<15}{r['gpu']:<14}{r['tp']:>3}{r['pp']:>3}"
                         f"{r['price_per_hour']:>7.2f}{r['capacity_rps']:>9.1f}"
                         f"{r['rps_at_p95']:>9.1f}{r['rps_per_dollar']:>8.2f}"
                         f"{_fmt(r['p95_idle_s']):>9}s")
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


# -- boute simulate ------------------------------------------------------------------------------
def _add_simulate(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("simulate", help="predict latency and throughput of one replica")
    p.add_argument("--model", required=True)
    p.add_argument("--gpu", required=True)
    p.add_argument("--tp", type=int, default=1)
    p.add_argument("--pp", type=int, default=1)
    load = p.add_mutually_exclusive_group(required=True)
    load.add_argument("--concurrency", type=int, help="closed loop with this many clients")
    load.add_argument("--rate", type=float, help="open loop, Poisson arrivals, req/s "
                      "('inf': all requests at t = 0)")
    p.add_argument("--input-len", type=int, help="prompt tokens per request")
    p.add_argument("--output-len", type=int, help="output tokens per request")
    p.add_argument("--shape", default=None, help="draw lengths from a trace shape instead "
                   "(gsm8k, mtbench, sharegpt)")
    p.add_argument("--requests", type=int, default=None, help="requests to simulate "
                   "(default 1000 open loop, max(200, 10 x concurrency) closed loop)")
    p.add_argument("--engine", default="vllm", help="engine profile")
    p.add_argument("--max-num-seqs", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    add_hardware_profiles_arg(p)
    add_catalog_args(p)
    p.set_defaults(run=_run_simulate)


def _run_simulate(args: argparse.Namespace) -> int:
    from profiling import ReplicaModel, load_catalog, simulate, simulate_closed_loop
    from profiling._hardware import resolve_calibration

    catalog = load_catalog(args.gpu_catalog, args.model_catalog)
    model, gpu = catalog.model(args.model), catalog.gpu(args.gpu)
    calibration = resolve_calibration([gpu], args.hardware_profiles)
    engine = _simulate_engine(args)
    n = _simulate_requests(args)
    replica = ReplicaModel(model, gpu, args.tp, args.pp, engine, calibration.for_gpu(gpu.name))
    trace = _simulate_trace(args, n)
    if args.concurrency is not None:
        result = simulate_closed_loop(replica, trace, args.concurrency)
    else:
        result = simulate(replica, trace)
    payload = _simulate_payload(args, replica, calibration.source[gpu.name], result, n)
    emit(args, payload, lambda: _simulate_human(args, payload, replica))
    return 0


def _simulate_engine(args: argparse.Namespace) -> Any:
    """The ``--engine`` profile with ``--max-num-seqs`` applied (an `EngineConfig`).

    Raises:
        BouteError: an unknown profile or a bad override.

    """
    from profiling._replica import engine_profile

    overrides = {} if args.max_num_seqs is None else {"max_num_seqs": args.max_num_seqs}
    try:
        return engine_profile(args.engine, **overrides)
    except KeyError as exc:
        raise BouteError(f"--engine: {exc.args[0]}") from None
    except ValueError as exc:
        raise BouteError(str(exc)) from None


def _simulate_requests(args: argparse.Namespace) -> int:
    """Requests to simulate: ``--requests``, else 1000 open loop, max(200, 10 c) closed loop.

    Raises:
        BouteError: ``--concurrency`` < 1, ``--rate`` <= 0, or too many requests.

    """
    if args.concurrency is not None and args.concurrency < 1:
        raise BouteError(f"--concurrency={args.concurrency} must be >= 1")
    if args.rate is not None and not args.rate > 0:
        raise BouteError(f"--rate={args.rate} must be > 0 (or 'inf')")
    n: int = args.requests if args.requests is not None else (
        1000 if args.rate is not None else max(200, 10 * args.concurrency))
    _check_requests(n, "--requests" if args.requests is not None
                    else "--requests (default 10 x --concurrency)")
    return n


def _simulate_trace(args: argparse.Namespace, n: int) -> Any:
    """`n` requests at ``--rate`` (1 req/s closed loop: the arrivals are not used).

    Lengths are drawn from ``--shape``, else fixed at ``--input-len`` / ``--output-len``
    (arrivals as a gsm8k trace's with the same seed).

    Raises:
        BouteError: no ``--shape`` and a length missing or < 1.

    """
    import numpy as np

    from profiling import Trace, generate_trace

    rate = args.rate if args.rate is not None else 1.0
    if args.shape:
        return generate_trace(args.shape, rate_rps=rate, num_requests=n, seed=args.seed)
    for flag, value in (("--input-len", args.input_len), ("--output-len", args.output_len)):
        if value is None or value < 1:
            raise BouteError(f"{flag}={value} must be an integer >= 1 (or give --shape)")
    base = generate_trace("gsm8k", rate_rps=rate, num_requests=n, seed=args.seed)
    return Trace(base.arrival_s, np.full(n, args.input_len, dtype=np.int64),
                 np.full(n, args.output_len, dtype=np.int64), None, "fixed-lengths")


def _simulate_payload(args: argparse.Namespace, replica: Any, efficiency_source: str,
                      result: Any, n: int) -> dict[str, Any]:
    """``boute simulate``'s JSON object: the replica, its efficiency, latencies, throughput."""
    s = result.summary()
    mem, eff = replica.memory, replica.efficiency
    return {
        "model": replica.model.name, "gpu": replica.gpu.name, "tp": args.tp, "pp": args.pp,
        "engine": replica.engine.name, "efficiency_source": efficiency_source,
        "efficiency": {"compute": eff.compute, "memory": eff.memory,
                       "attention_compute": eff.attention_compute,
                       "kernel_latency_s": eff.kernel_latency_s},
        "ttft_ms": s["ttft_ms"]["p50"], "tpot_ms": s["tpot_ms"]["p50"],
        "ttft_ms_stats": s["ttft_ms"], "tpot_ms_stats": s["tpot_ms"],
        "latency_s": s["latency_s"], "throughput_tok_s": s["throughput_tok_s"],
        "throughput_rps": s["throughput_rps"], "saturated": s["saturated"],
        "capacity_rps": result.extra.get("capacity_rps"), "requests": n,
        "preemptions": s["preemptions"],
        "memory": {"weights_gib": mem.weights_gib, "kv_gib": mem.kv_gib,
                   "kv_capacity_tokens": mem.kv_capacity_tokens},
    }


def _simulate_human(args: argparse.Namespace, payload: dict[str, Any], replica: Any) -> str:
    """``boute simulate``'s text: the payload as a few aligned lines."""
    lat, e, mem = payload["latency_s"], payload["efficiency"], replica.memory
    load = (f"concurrency {args.concurrency}" if args.concurrency is not None
            else f"{args.rate:g} req/s")
    lines = [f"{replica.label}, {replica.engine.name}, {load}, {payload['requests']} requests",
             f"  efficiency ({payload['efficiency_source']}): compute {e['compute']:.3f}, "
             f"memory {e['memory']:.3f}, attention {e['attention_compute']:.3f}, kernel "
             f"latency {e['kernel_latency_s'] * 1e6:.1f} us",
             f"  memory: weights {mem.weights_gib:.1f} GiB/GPU, KV cache {mem.kv_gib:.1f} GiB "
             f"= {mem.kv_capacity_tokens:,} tokens",
             f"  TTFT p50 {_fmt(payload['ttft_ms'], '.1f')} ms   TPOT p50 "
             f"{_fmt(payload['tpot_ms'], '.2f')} ms",
             f"  latency p50 {_fmt(lat['p50'])} s  p95 {_fmt(lat['p95'])} s  "
             f"p99 {_fmt(lat['p99'])} s",
             f"  throughput {payload['throughput_tok_s']:.1f} tok/s, "
             f"{payload['throughput_rps']:.2f} req/s"]
    if payload["capacity_rps"] is not None:
        lines.append(f"  capacity {payload['capacity_rps']:.2f} req/s"
                     + ("   SATURATED: offered load exceeds capacity, latency diverges"
                        if payload["saturated"] else ""))
    return "\n".join(lines)


# -- boute trace ---------------------------------------------------------------------------------
def _add_trace(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("trace", help="summarize a trace file or a generated trace: lengths, "
                       "rate and burstiness")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--file", help="CSV, JSONL or Parquet trace")
    src.add_argument("--shape", help="generate: gsm8k, mtbench, sharegpt")
    p.add_argument("--columns", default="", help="column mapping ours=theirs,... "
                   "(arrival_s, input_tokens, output_tokens, prompt)")
    p.add_argument("--time-unit", default="auto", choices=["auto", "s", "ms", "us", "ns"],
                   help="unit of a numeric arrival column (auto: seconds, or an epoch clock "
                   "detected by magnitude); datetimes are read as such")
    p.add_argument("--rate", type=float, default=None, help="rescale (or generate) to req/s")
    p.add_argument("--requests", type=int, default=1000)
    p.add_argument("--arrival", default="poisson", choices=["poisson", "gamma"])
    p.add_argument("--cv", type=float, default=1.0, help="burstiness of gamma arrivals")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="write the (rescaled) trace; the format follows "
                   "the suffix: .parquet, .csv or .jsonl")
    p.add_argument("--plot", default=None, metavar="PNG", help="plot the request rate over "
                   "time (per 10 s and per minute) to this PNG")
    p.set_defaults(run=_run_trace)


def _run_trace(args: argparse.Namespace) -> int:
    from profiling import generate_trace, read_trace

    if args.rate is not None and not (args.rate > 0 and math.isfinite(args.rate)):
        raise BouteError(f"--rate={args.rate:g} must be a number of requests/s > 0")
    if not (args.cv > 0 and math.isfinite(args.cv)):
        raise BouteError(f"--cv={args.cv:g} must be a number > 0 (1 = Poisson)")
    notes: list[str] = []
    if args.file:
        mapping = parse_pairs(args.columns.split(","), "--columns item")
        trace, report = read_trace(args.file, columns=mapping, time_unit=args.time_unit)
        notes = report.notes()
        if args.rate is not None:
            trace = trace.scaled_to(args.rate)
    else:
        _check_requests(args.requests, "--requests")
        trace = generate_trace(args.shape, rate_rps=1.0 if args.rate is None else args.rate,
                               num_requests=args.requests, arrival=args.arrival,
                               burstiness_cv=args.cv, seed=args.seed)
    if args.out:
        trace.save(args.out)
    plot = _plot_rate(trace, args.plot) if args.plot else None
    burst = trace.burstiness()

    def human() -> str:
        lines = [trace.format_summary()]
        if burst:
            lines.append("burstiness: " + ", ".join(
                f"count CV per {k.removeprefix('count_cv_')} {v:.2f}"
                for k, v in burst.items() if k.startswith("count_cv_"))
                + (f"; busiest minute {burst['minute_peak_to_mean']:.2f}x the mean, "
                   f"quietest {burst['minute_trough_to_mean']:.2f}x"
                   if "minute_peak_to_mean" in burst else ""))
        lines += [f"note: {n}" for n in notes]
        if plot:
            lines.append(f"rate plot: {plot}")
        return "\n".join(lines)

    emit(args, {"name": trace.name, **trace.summary(), "burstiness": burst, "notes": notes,
                "plot": plot, "fingerprint": trace.fingerprint()}, human)
    return 0


def _plot_rate(trace: Any, path: str) -> str:
    """The request rate per 10 s and per minute over the trace's time, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not path.lower().endswith(".png"):
        raise BouteError(f"--plot={path!r} must name a .png file")
    fig, ax = plt.subplots(figsize=(8, 3.5))
    for window_s, style in ((10.0, "-"), (60.0, "-o")):
        counts = trace.window_counts(window_s)
        if counts.size:
            t_min = (np.arange(counts.size) + 0.5) * window_s / 60.0
            ax.plot(t_min, counts / window_s, style, ms=3, lw=1,
                    label=f"per {window_s:g} s")
    ax.axhline(trace.rate_rps, color="grey", ls="--", lw=1, label="mean")
    ax.set_xlabel("time since the first request (min)")
    ax.set_ylabel("requests/s")
    ax.set_title(f"{trace.name}: {len(trace)} requests")
    ax.grid(alpha=0.3)
    ax.legend()
    return save_figure(fig, path, dpi=110)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand."""
    parser = argparse.ArgumentParser(prog="boute", description="BOute: cost-efficient LLM "
                                     "serving on heterogeneous models and GPUs")
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    sub = parser.add_subparsers(dest="command", required=True)
    from boute.keys_cli import add_keys
    from boute.plan_cli import add_compare, add_evaluate, add_plan
    from boute.replan_cli import add_replan
    from boute.reproduce_cli import add_reproduce
    from boute.schedule_cli import add_schedule
    from boute.serve_cli import add_bench, add_deploy, add_node_resources
    from boute.slo_cli import add_slo

    for add in (_add_profile, _add_simulate, _add_trace, add_plan, add_evaluate, add_compare,
                add_deploy, add_bench, add_node_resources, add_replan, add_keys,
                add_reproduce, add_slo, add_schedule):
        add(sub)
    for p in sub.choices.values():
        p.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                       help="print one JSON object on stdout")
    return parser


def one_line(exc: BaseException) -> str:
    """The error's message on one line (a cause quoted inside it may span several)."""
    text = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
    return text or type(exc).__name__


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `boute` console script; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code: int = args.run(args)
    except BouteError as exc:
        print(f"boute {args.command}: error: {one_line(exc)}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"boute {args.command}: interrupted", file=sys.stderr)
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
