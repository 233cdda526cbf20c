"""`boute simulate`: predict the latency and throughput of one replica (the performance model)."""

from __future__ import annotations

import argparse
from typing import Any

import numpy as np

from boute._shared import (
    add_catalog_args,
    add_hardware_profiles_arg,
    check_requests,
    emit,
    fmt,
)
from common.errors import BouteError

__all__ = ["add_simulate"]


# -- boute simulate ------------------------------------------------------------------------------
def add_simulate(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `boute simulate`."""
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
    from profiling import (
        ReplicaModel,
        load_catalog,
        resolve_calibration,
        simulate,
        simulate_closed_loop,
    )

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
    from profiling import engine_profile

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
    check_requests(n, "--requests" if args.requests is not None
                    else "--requests (default 10 x --concurrency)")
    return n


def _simulate_trace(args: argparse.Namespace, n: int) -> Any:
    """`n` requests at ``--rate`` (1 req/s closed loop: the arrivals are not used).

    Lengths are drawn from ``--shape``, else fixed at ``--input-len`` / ``--output-len``
    (arrivals as a gsm8k trace's with the same seed).

    Raises:
        BouteError: no ``--shape`` and a length missing or < 1.

    """
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
             f"  TTFT p50 {fmt(payload['ttft_ms'], '.1f')} ms   TPOT p50 "
             f"{fmt(payload['tpot_ms'], '.2f')} ms",
             f"  latency p50 {fmt(lat['p50'])} s  p95 {fmt(lat['p95'])} s  "
             f"p99 {fmt(lat['p99'])} s",
             f"  throughput {payload['throughput_tok_s']:.1f} tok/s, "
             f"{payload['throughput_rps']:.2f} req/s"]
    if payload["capacity_rps"] is not None:
        lines.append(f"  capacity {payload['capacity_rps']:.2f} req/s"
                     + ("   SATURATED: offered load exceeds capacity, latency diverges"
                        if payload["saturated"] else ""))
    return "\n".join(lines)
