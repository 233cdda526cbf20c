"""`boute calibrate`: fit the stage-1 model on what the deployment served (the request log).

    boute calibrate --log build/request-log [--since 1800] [--plan build/plan.json]
                    --out build/calibration/served.json

Reads the window's successful requests (outcome ``ok``), splits them by replica group, replays
each group's arrivals and lengths through the simulator and fits each GPU type's efficiency
scale and engine step overhead and each group's front-end latency (`profiling.measure.
fit_served`). Writes the served calibration (`profiling._served`; `boute profile` /
`boute plan` ``--calibration FILE`` or the scenario's ``profile.served_calibration`` use it)
and prints the fidelity table per group: observed versus predicted P50 / P95 / mean of
latency and TTFT, before (the offline model) and after.

The window is the last ``--since`` seconds before ``--now`` (default: the newest logged
arrival, so an old log calibrates as well as a live one). Group names are the plan's
(``<model>-<gpu>-tp<T>pp<P>``); ``--plan`` gives each group's replica count (without it, every
group is taken as one replica: a group of several replicas then looks slower per replica
than it is; pass the plan).

**A fresh deployment** (item 2 of the served-stack calibration) starts from a model of what it
will actually serve: deploy a first plan (planned on the hardware profile and the in-process
engine calibration), then

    boute calibrate --via http://127.0.0.1:8000 --rate 2,4 --level-s 60 --log build/request-log \
                    --plan build/plan.json --out build/calibration/served.json

sends the calibration levels (open-loop, `bench_levels`) through the deployed stack (HTTP ->
router -> Serve -> engine) and fits exactly their window of the router's log; `boute profile
--calibration build/calibration/served.json` then rebuilds the perf DB (and `boute plan` the
plan) on it. Unlike the in-process engine calibration (`boute profile engine`), the fit sees
everything between the client and the engine: Serve's proxy, the router, the OpenAI layer and
whatever shares their CPUs. `benchmarks/cpu_e2e.py` measures what it buys.
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from boute._shared import add_catalog_args, add_hardware_profiles_arg, emit
from common.errors import BouteError, ProfilerError

if TYPE_CHECKING:
    from profiling import Catalog, EngineConfig, ServedCalibration, Trace

__all__ = ["LogCalibration", "add_calibrate", "bench_levels", "calibrate_log", "log_window",
           "trace_level"]

LOG_LAG_S = 2.0
"""Seconds waited after the last calibration level before the log is read: the router logs a
request when its reply ends, a moment after the client saw the last byte."""

def add_calibrate(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `boute calibrate`."""
    p = sub.add_parser("calibrate", help="fit the performance model on served traffic (the "
                       "request log): efficiency scale, engine overhead, front-end latency")
    p.add_argument("--log", default="build/request-log", help="the request log's folder")
    p.add_argument("--since", type=float, default=None, metavar="S", help="the window: the "
                   "last S seconds before --now (default: the whole log)")
    p.add_argument("--now", type=float, default=None, help="unix time the window ends at "
                   "(default: the newest logged arrival)")
    p.add_argument("--plan", default=None, help="the plan that served the window (its "
                   "groups' replica counts)")
    p.add_argument("--out", required=True, help="calibration file to write (JSON)")
    p.add_argument("--engine", default="vllm", help="engine profile the groups ran "
                   "(scheduler limits; the starting overheads)")
    p.add_argument("--min-requests", type=int, default=50, help="fewest successful requests "
                   "a group needs in the window to be fitted (others are skipped, named)")
    p.add_argument("--bootstrap", type=int, default=8, help="block-bootstrap refits for the "
                   "spread (0: none)")
    p.add_argument("--blocks", type=int, default=8, help="time blocks of the bootstrap")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--per-seq", action="store_true", help="fit the engine's overhead per "
                   "sequence and step as well (a served stack pays per streamed token); needs "
                   "a window whose load is the deployment's own: on a host shared with other "
                   "work, contention that comes and goes looks like a batch cost")
    via = p.add_argument_group("served engine calibration (a fresh deployment)")
    via.add_argument("--via", default=None, metavar="URL", help="first send the calibration "
                     "levels through the deployed stack at URL (HTTP -> router -> Serve -> "
                     "engines; its router must log to --log), then fit on exactly their "
                     "window (--since/--now are ignored)")
    via.add_argument("--rate", default="2", help="with --via: open-loop levels, total req/s, "
                     "e.g. 2,4 (Poisson arrivals)")
    via.add_argument("--level-s", type=float, default=60.0, help="with --via: seconds of "
                     "each level")
    via.add_argument("--shape", default="gsm8k", help="with --via: trace shape of the "
                     "levels' lengths (gsm8k, mtbench, sharegpt)")
    via.add_argument("--trace", default=None, help="with --via: a CSV/JSONL/Parquet trace "
                     "whose arrivals and lengths each level replays (rescaled to its rate) "
                     "instead of --shape")
    via.add_argument("--api-key", default=None, help="with --via: the endpoint's API key "
                     "(default as `boute bench`: $BOUTE_API_KEY, else build/api-key)")
    add_hardware_profiles_arg(p)
    add_catalog_args(p)
    p.set_defaults(run=_run_calibrate)


@dataclass(frozen=True)
class LogCalibration:
    """What `calibrate_log` fitted, and what it says about its inputs."""

    calibration: ServedCalibration
    notes: list[str]
    """One line per group skipped (too few requests in the window)."""
    base_source: dict[str, str]
    """GPU type -> where the efficiency the scale multiplies came from (``profile:<dir>``;
    absent: the spec sheet)."""


def log_window(arrivals_unix_s: npt.NDArray[np.float64], *, since_s: float | None = None,
               now_unix_s: float | None = None) -> tuple[float, float]:
    """The window (start, end) in unix seconds: the last `since_s` seconds before `now_unix_s`.

    `now_unix_s` defaults to the newest arrival (an old log calibrates as well as a live one),
    `since_s` to the whole log (start = the oldest arrival). NaN arrivals are ignored.
    """
    now = now_unix_s if now_unix_s is not None else float(np.nanmax(arrivals_unix_s))
    start = now - since_s if since_s is not None else float(np.nanmin(arrivals_unix_s))
    return start, now


def calibrate_log(
    log: str | Path,
    catalog: Catalog,
    *,
    since_s: float | None = None,
    now_unix_s: float | None = None,
    replicas: Mapping[str, int] | None = None,
    engine: EngineConfig | None = None,
    hardware_profiles: str | Path | None = None,
    min_requests: int = 50,
    bootstrap: int = 8,
    blocks: int = 8,
    seed: int = 0,
    per_seq: bool = False,
) -> LogCalibration:
    """`boute calibrate`'s fit as a function: the served calibration of a request-log window.

    Reads `log`'s successful requests with an arrival in `log_window` (`since_s`,
    `now_unix_s`), one `ServedGroup` per replica group (`replicas`: group name -> replica
    count, default 1), and fits them (`profiling.measure.fit_served`) on top of each GPU
    type's base efficiency (its hardware profile under `hardware_profiles`, else the spec
    sheet), starting from `engine` (default: current vLLM's profile). `per_seq`: fit the
    per-sequence step overhead too (``--per-seq``; False keeps the engine's).

    Raises:
        BouteError: no readable log under `log`, a group name outside `catalog`, or no group
            with `min_requests` successful requests in the window (each message says what
            to change).

    """
    from app.request_log import read_log
    from profiling import resolve_calibration
    from profiling.measure import fit_served, served_groups

    try:
        table = read_log(log)
    except FileNotFoundError as exc:
        raise BouteError(f"--log={str(log)!r}: {exc}") from None
    arrivals = np.asarray(table.column("arrival_s").to_numpy(zero_copy_only=False), float)
    start, now = log_window(arrivals, since_s=since_s, now_unix_s=now_unix_s)
    table = table.filter((arrivals >= start) & (arrivals <= now))
    cols = {n: table.column(n).to_numpy(zero_copy_only=False) for n in
            ("arrival_s", "prompt_tokens", "output_tokens", "ttft_s", "latency_s", "stream",
             "outcome", "group")}
    try:
        groups, notes = served_groups(cols, catalog, dict(replicas or {}), min_requests)
    except ProfilerError as exc:
        raise BouteError(str(exc)) from None
    if not groups:
        raise BouteError(f"--log={str(log)!r}: no replica group served --min-requests="
                         f"{min_requests} successful requests between {start:.0f} and "
                         f"{now:.0f} (unix s); widen --since or lower --min-requests")
    base = resolve_calibration(list({g.gpu.name: g.gpu for g in groups}.values()),
                               hardware_profiles)
    cal = fit_served(groups, engine=engine, base_efficiency=base.efficiency,
                     bootstrap=bootstrap, blocks=blocks, seed=seed, window=(start, now),
                     per_seq=per_seq)
    return LogCalibration(cal, notes, dict(base.source))


def _run_calibrate(args: argparse.Namespace) -> int:
    from profiling import engine_profile, load_catalog

    for flag, value, low in (("--min-requests", args.min_requests, 1),
                             ("--bootstrap", args.bootstrap, 0), ("--blocks", args.blocks, 1)):
        if value < low:
            raise BouteError(f"{flag}={value} must be >= {low}")
    if args.since is not None and not (args.since > 0 and math.isfinite(args.since)):
        raise BouteError(f"--since={args.since} must be a positive number of seconds")
    try:
        engine = engine_profile(args.engine)
    except KeyError as exc:
        raise BouteError(f"--engine: {exc.args[0]}") from None
    catalog = load_catalog(args.gpu_catalog, args.model_catalog)
    since, now, bench = args.since, args.now, None
    if args.via is not None:
        bench = _bench_via(args)
        # The window is exactly the calibration levels': nothing served before them counts.
        since, now = bench["end_unix_s"] - bench["start_unix_s"], bench["end_unix_s"]
    fit = calibrate_log(args.log, catalog, since_s=since, now_unix_s=now,
                        replicas=_plan_replicas(args.plan), engine=engine,
                        hardware_profiles=args.hardware_profiles,
                        min_requests=args.min_requests, bootstrap=args.bootstrap,
                        blocks=args.blocks, seed=args.seed, per_seq=args.per_seq)
    cal = fit.calibration
    path = cal.save(args.out)
    payload = {"out": str(path), "sha256": cal.sha256, "label": cal.label, "notes": fit.notes,
               "base_efficiency_source": fit.base_source, **cal.to_json()}
    if bench is not None:
        payload["via"] = bench
    emit(args, payload, lambda: _human(payload))
    return 0


def trace_level(trace: Trace, rate_rps: float, level_s: float) -> Trace:
    """`trace` replayed at `rate_rps` for `level_s` seconds: one calibration level.

    The trace's arrivals stretched to mean rate `rate_rps` (`Trace.scaled_to`), then its
    first ``max(1, round(rate_rps * level_s))`` requests (`check_load`'s count, as a
    generated level), fewer when the trace holds fewer.

    Raises:
        BenchError: the rate or duration out of bounds (`check_load`).

    """
    from boute.bench import check_load

    n = check_load(rate_rps, level_s, rate_flag="--rate", duration_flag="--level-s")
    return trace.scaled_to(rate_rps).head(n)


def bench_levels(url: str, rates_rps: Sequence[float], *, level_s: float,
                 shape: str = "gsm8k", trace: Trace | None = None, seed: int = 0,
                 api_key: str | None = None) -> dict[str, Any]:
    """Send the calibration levels through a deployed stack: one open-loop bench per rate.

    Each level is `boute bench`'s load (`run_bench` on `generated_requests`: Poisson
    arrivals of `shape`'s lengths, streamed) at one total rate for `level_s` seconds, seed
    ``seed + i`` for level i; with `trace`, that trace's arrivals and lengths instead
    (`trace_level`). Returns the window (``start_unix_s``: before the first
    request; ``end_unix_s``: `LOG_LAG_S` after the last reply, so the router has logged it)
    and per level its rate, request count, successes, errors, measured P95 / mean end-to-end
    latency, median TTFT, share per model and first error.

    Raises:
        BenchError: a rate or duration out of bounds, or an unknown shape (before anything
            is sent).

    """
    from boute.bench import generated_requests, run_bench, trace_requests

    loads = [trace_requests(trace_level(trace, r, level_s)) if trace is not None else
             generated_requests(shape, rate_rps=r, duration_s=level_s, seed=seed + i,
                                rate_flag="--rate", duration_flag="--level-s")
             for i, r in enumerate(rates_rps)]
    start = time.time()
    levels = []
    for rate, load in zip(rates_rps, loads, strict=True):
        s = run_bench(url, load, seed=seed, api_key=api_key).summary()
        levels.append({"rate_rps": rate, "requests": s["requests"], "ok": s["ok"],
                       "errors": s["errors"], "e2e_p95_s": s["e2e_s"].get("p95", math.nan),
                       "e2e_mean_s": s["e2e_s"].get("mean", math.nan),
                       "ttft_p50_s": s["ttft_s"].get("p50", math.nan),
                       "model_share": s["model_share"], "first_error": s["first_error"]})
    time.sleep(LOG_LAG_S)
    return {"url": url, "shape": shape if trace is None else f"trace:{trace.name}",
            "level_s": level_s, "start_unix_s": start,
            "end_unix_s": time.time(), "levels": levels}


def _bench_via(args: argparse.Namespace) -> dict[str, Any]:
    """`bench_levels` of ``--via`` with the flags' levels (checked first)."""
    from boute._shared import bench_api_key, parse_levels

    rates = parse_levels("--rate", args.rate, float)
    if not rates:
        raise BouteError("--via needs at least one --rate level, e.g. --rate 2,4")
    if not (args.level_s > 0 and math.isfinite(args.level_s)):
        raise BouteError(f"--level-s={args.level_s:g} must be a positive number of seconds")
    trace = None
    if args.trace is not None:
        from profiling import load_trace

        trace = load_trace(args.trace)
    return bench_levels(args.via, rates, level_s=args.level_s, shape=args.shape, trace=trace,
                        seed=args.seed, api_key=bench_api_key(args))


def _plan_replicas(path: str | None) -> dict[str, int]:
    """Group name -> replicas of the plan at `path` (empty without one)."""
    if path is None:
        return {}
    from tuning import Plan

    return {g.name: g.replicas for g in Plan.load(path).groups}


def _human(p: dict[str, Any]) -> str:
    lines = [f"served calibration {p['out']} ({p['label']}, sha256 {p['sha256']}, "
             f"{p['window']['requests']} requests, fit {p['fit']['fit_seconds']:.1f} s + "
             f"bootstrap {p['fit']['bootstrap_seconds']:.1f} s)"]
    lines += [f"note: {n}" for n in p["notes"]]
    if "via" in p:
        lines += [f"level {lv['rate_rps']:g} req/s via {p['via']['url']}: {lv['ok']}/"
                  f"{lv['requests']} ok, P95 {lv['e2e_p95_s']:.3f} s, mean "
                  f"{lv['e2e_mean_s']:.3f} s" for lv in p["via"]["levels"]]
    for gpu, row in p["gpus"].items():
        lines.append(f"{gpu}: efficiency scale {row['scale']:.3f} (p05-p95 "
                     f"{row['scale_p05']:.3f}-{row['scale_p95']:.3f}) x "
                     f"{p['base_efficiency_source'].get(gpu, 'spec-sheet')}")
    lines.append(f"{'group':<30}{'repl':>5}{'req/s':>7}{'step ms':>9}{'front ms':>10}")
    for g in p["groups"]:
        name = f"{g['model']}-{g['gpu']}-tp{g['tp']}pp{g['pp']}"
        lines.append(f"{name:<30}{g['replicas']:>5}{g['rate_rps']:>7.2f}"
                     f"{g['step_overhead_s'] * 1e3:>9.2f}{g['frontend_latency_s'] * 1e3:>10.1f}")
    lines.append("fidelity (predicted / observed - 1):")
    lines.append(f"{'group':<30}{'metric':<18}{'observed':>10}{'before':>9}{'after':>9}")
    for g in p["groups"]:
        name = f"{g['model']}-{g['gpu']}-tp{g['tp']}pp{g['pp']}"
        for metric, row in g["fidelity"].items():
            if math.isnan(row["observed"]):
                continue
            lines.append(f"{name:<30}{metric:<18}{row['observed']:>9.3f}s"
                         f"{row['before_err']:>+9.0%}{row['after_err']:>+9.0%}")
    return "\n".join(lines)
