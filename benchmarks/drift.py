"""Drift, measured: one group's engines slow down mid-run; who notices, and how well we refit.

A local fake cluster (dashboard on) serves the min-cost plan of benchmarks/data/replan (an 8B
model on a deliberately slow GPU type, one 2-GPU replica, emulated engines; P95 target 7 s)
under steady load (GSM8K-shaped, streamed, `--rate` req/s). The router gets the plan's
prediction table at deploy time (`tuning.prediction_table` of the plan's perf DB) and a
`--window-s` drift window. Phases:

1. **baseline** (`--baseline-s`): the router's live prediction error (`/health`
   ``groups[g].prediction``, the same report as ``boute_prediction_error``) must not flag;
2. **slow-down**: the group's engines run `--slowdown` x slower (`app.deploy.set_engine_speed`,
   ``speed_factor = 1 / slowdown``, a dry-run feature); ``/health`` is polled every 2 s:
   seconds until the router flags the group ``drifted``;
3. **replan** once the replan window holds only slowed traffic: a ``boute replan
   --recalibrate-on-drift`` Ray job (window `--window-s`, cool-down 0): does it flag drift,
   how long it takes, does the recalibrated plan apply, with how many failed requests (429s
   counted apart: the router's fail-safe refusal at a group's in-flight bound);
4. **after** (`--after-s`): the recalibrated model against the new truth: the router's new
   prediction table (shipped by the replan from the recalibrated perf DB) at the group's
   observed per-replica rate, against the P95 and median TPOT it served after the change
   (from the request log); the deploy-time table in the same window for contrast.

    PYTHONPATH=. python benchmarks/drift.py [--quick] [--json build/drift_bench.json]

(The script puts this checkout first on ``PYTHONPATH`` for Ray's workers and the replan job.)
Exits 1 when a target is missed (`TARGETS`; flags: no false flag at baseline, the router and
the job flag drift, the replan applies).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:       # run as a script: the repo's packages
    sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _results import write_results  # noqa: E402  (the folder's shared helpers)
from _targets import (  # noqa: E402
    Target,
    add_target_argument,
    check,
    passed,
    print_checks,
    resolve,
)

DATA = REPO / "benchmarks" / "data" / "replan"
# The P95 target: one 2-GPU replica meets it at 5 req/s (3.8 s predicted; the DB's curve);
# 1.6x slower, it does not (~ its P95 at 1.6 x 5 = 8 req/s, 5.4 s, times 1.6: 8.7 s), but
# two to four slowed replicas do (a slowed replica's P95 at light load is ~1.6 x 3.2 s, and
# a loaded machine slows the emulated engines further), for less than moving the load to an
# H100 ($0.8-1.6/h against $2.69/h). With 4 s (benchmarks/replan.py's) a 1.6x slower card
# misses the target at any rate: the replan moved the load to an H100 group, whose model was
# not recalibrated, and the error against the new truth was not measured.
P95_TARGET_S = 7.0

TARGETS = {
    "recalibrated_p95_error": Target("<=", 0.10, "", "|P95 error| of the recalibrated model "
                                     "against the slowed group after the change"),
    "recalibrated_tpot_error": Target("<=", 0.10, "", "|TPOT error| of the recalibrated model "
                                      "against the slowed group after the change"),
    "failed_during_replan": Target("<=", 0, "", "failed requests (not counting 429s) that "
                                   "arrived while the replan job ran (submitted to 5 s after "
                                   "it returned)"),
    "router_detect_s": Target("<=", 90.0, "s", "slow-down to the router's drift flag"),
}


def _plan(work: Path) -> tuple[Any, Path]:
    from boute.cli import main
    from tuning import Plan

    out, db = work / "plan.json", work / "db.parquet"
    code = main(["plan", "--scenario", str(DATA / "scenario.yaml"), "--gpu-catalog",
                 str(DATA / "gpus.yaml"), "--db", str(db), "--objective", "min-cost",
                 "--quality", "84.5", "--p95", str(P95_TARGET_S), "--solver", "exact",
                 "--plot", "",
                 "--out", str(out)])
    assert code == 0, "planning failed"
    return Plan.load(out), db


def _note(text: str) -> None:
    print(f"drift bench {time.strftime('%H:%M:%S')}: {text}", file=sys.stderr, flush=True)


def _health(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"{url}/health", timeout=10) as resp:
        return json.loads(resp.read())  # type: ignore[no-any-return]


def _load(url: str, rate_rps: float, stop: threading.Event, out: list[Any]) -> None:
    """Open-loop GSM8K-shaped load at `rate_rps` until `stop` (requests sent lazily)."""
    from boute.bench import run_bench, trace_requests
    from profiling import generate_trace

    trace = generate_trace("gsm8k", rate_rps=rate_rps, num_requests=int(rate_rps * 3600),
                           seed=1)

    def until_stopped() -> Iterator[Any]:
        for r in trace_requests(trace):
            if stop.is_set():
                return
            yield r

    out.append(run_bench(url, until_stopped()))


def _window_error(table: Any, log: Any, group: str, t0: float, t1: float, replicas: int
                  ) -> dict[str, Any]:
    """A table's errors against what `group` served in [t0, t1] (the request log)."""
    from tuning import detect_drift, interpolate_prediction, observe_groups

    cols = {c: log.column(c).to_numpy(zero_copy_only=False) for c in
            ("arrival_s", "latency_s", "ttft_s", "output_tokens", "stream", "outcome",
             "group")}
    ok = ((cols["outcome"] == "ok") & (cols["group"] == group) & (cols["arrival_s"] >= t0)
          & (cols["arrival_s"] <= t1))
    c = {k: v[ok] for k, v in cols.items()}
    obs = observe_groups(c["group"], np.asarray(c["arrival_s"], float),
                         np.asarray(c["latency_s"], float), np.asarray(c["ttft_s"], float),
                         c["output_tokens"], np.asarray(c["stream"], bool), window=(t0, t1))
    if group not in obs:
        return {"requests": 0}
    o = obs[group]
    pred = interpolate_prediction(table, o.rate_rps / replicas)
    out: dict[str, Any] = {"requests": o.requests, "rate_per_replica_rps": o.rate_rps / replicas,
                           "observed_p95_s": o.p95_s, "observed_tpot_s": o.tpot_p50_s}
    if pred is None:
        return {**out, "predicted": "saturated"}
    (d,) = detect_drift({group: pred}, obs).groups
    return {**out, "predicted_p95_s": d.predicted_p95_s, "predicted_tpot_s": d.predicted_tpot_s,
            "error_p95": d.error_p95, "error_tpot": d.error_tpot}


def _slow(api: Any, gpu: str, speed_factor: float, done: set[str]) -> list[str]:
    """Every group application on GPU type `gpu` not in `done` runs at `speed_factor`.

    The slow-down is the GPU type's (its engines are slower than profiled), so a group the
    replan creates on it is slowed too, as soon as it exists.
    """
    from app.deploy import set_engine_speed

    slowed = []
    for name, a in (api.details().get("applications") or {}).items():
        cfg = (a or {}).get("deployed_app_config") or {}
        g = (cfg.get("args") or {}).get("group") or {}
        if g.get("gpu") == gpu and name not in done:
            set_engine_speed(api, name, speed_factor)
            done.add(name)
            slowed.append(name)
    return slowed


def run(work: Path, *, rate_rps: float, slowdown: float, window_s: float, baseline_s: float,
        after_s: float) -> dict[str, Any]:
    """The whole dry run; returns the measurements."""
    import ray
    from ray import serve

    from app.deploy import deploy_plan
    from app.request_log import read_log
    from app.router_config import GroupPrediction
    from app.serve_api import ServeApi, dashboard_url
    from boute.replan_cli import format_report, submit_replan_job
    from placement import free_port, local_cluster
    from profiling import PerfDB
    from tuning import Plan, prediction_table

    plan, db_path = _plan(work)
    (group,) = [g.name for g in plan.groups]
    (gpu,) = {g.gpu for g in plan.groups}
    db = PerfDB.load(db_path)
    tables = prediction_table(db, plan.groups, plan.catalog_gpu)
    log_dir = work / "log"
    t0 = time.time()
    cluster = local_cluster({"H100": 4, gpu: 8}, {"H100": 4, gpu: 4},
                            temp_dir=REPO / "build" / "tmp", dashboard_port=free_port())
    out: dict[str, Any] = {"cluster_up_s": time.time() - t0, "group": group, "gpu": gpu,
                           "deploy_table": GroupPrediction.of(tables[group]).wire()}
    stop = threading.Event()
    bench: list[Any] = []
    load = None
    slowed: set[str] = set()
    try:
        t = time.time()
        url = deploy_plan(plan, backend="emulated", gpu_catalog=[str(DATA / "gpus.yaml")],
                          port=free_port(), proxy_location="HeadOnly", log_dir=str(log_dir),
                          log_rotate_s=3.0, predictions=tables, drift_window_s=window_s)
        out["deploy_s"] = time.time() - t
        _note(f"deployed in {out['deploy_s']:.0f} s at {url}; baseline {baseline_s:g} s")
        api = ServeApi(dashboard_url())
        load = threading.Thread(target=_load, args=(url, rate_rps, stop, bench))
        load.start()
        start = time.time()
        false_flags = 0
        while time.time() - start < baseline_s:                      # 1. baseline
            time.sleep(2.0)
            pred = _health(url)["groups"][group]["prediction"]
            false_flags += bool(pred and pred["drifted"])
        out["baseline"] = {"seconds": time.time() - start, "false_flags": false_flags,
                           "prediction": _health(url)["groups"][group]["prediction"]}
        _note(f"baseline: {false_flags} false flags; {gpu} engines now x{slowdown} slower")
        t_slow = time.time()                                         # 2. slow-down
        _slow(api, gpu, 1.0 / slowdown, slowed)
        out["slowdown"] = {"factor": slowdown, "speed_factor": 1.0 / slowdown,
                           "applied_s": time.time() - t_slow}
        out["router_flag"] = {"seconds_after_slowdown": None}
        while time.time() - t_slow < window_s + 90.0:
            time.sleep(2.0)
            pred = _health(url)["groups"][group]["prediction"]
            out["router_flag"]["prediction"] = pred
            if pred and pred["drifted"]:
                out["router_flag"]["seconds_after_slowdown"] = time.time() - t_slow
                break
        time.sleep(max(0.0, t_slow + window_s + 2.0 - time.time()))  # 3. replan
        _note(f"router flag: {out['router_flag']['seconds_after_slowdown']} s; replan job")
        args = ["--window-s", str(window_s), "--min-requests", str(int(rate_rps * window_s / 3)),
                "--cooldown-s", "0", "--recalibrate-on-drift"]
        t_job = time.time()
        job = submit_replan_job(dashboard_url(), args)
        t_done = time.time()
        new_groups = _slow(api, gpu, 1.0 / slowdown, slowed)        # the replan's new ones
        t_after0 = time.time() + 5.0
        out["replan_job"] = {
            "args": args, "submitted_s_after_slowdown": t_job - t_slow,
            "seconds": t_done - t_job, "flagged": job["drift"]["drifted"],
            "flagged_s_after_slowdown": t_done - t_slow, "drift": job["drift"]["groups"],
            "recalibrated": job.get("recalibrated"), "decision": job["decision"],
            "applied": job["applied"], "steps": job.get("steps"), "changes": job["changes"],
            "model": job.get("model"), "report": format_report(job),
            "new_groups_slowed_s_after_job": {g: time.time() - t_done for g in new_groups}}
        cal = job.get("recalibrated")
        if cal and Path(cal).is_file():
            out["calibration"] = json.loads(Path(cal).read_text())
            out["replan_job"]["fit_in_window"] = {
                g["gpu"]: {"scale": out["calibration"]["gpus"][g["gpu"]]["scale"],
                           "p95_error_before": g["fidelity"]["latency_p95_s"]["before_err"],
                           "p95_error_after": g["fidelity"]["latency_p95_s"]["after_err"]}
                for g in out["calibration"]["groups"]}
        _note(f"replan job: {t_done - t_job:.0f} s, drift {job['drift']['drifted']}, "
              f"applied {job['applied']}, new groups {new_groups}; {after_s:g} s after")
        time.sleep(after_s)                                          # 4. after
        t_end = time.time()
        health = _health(url)
        uc = api.details()["applications"]["boute"]["deployed_app_config"]["deployments"][0][
            "user_config"]
        new_plan = Plan.from_dict(uc["plan"])
        out["after"] = {"seconds": t_end - t_after0, "window": [t_after0, t_end],
                        "groups": {}}
        for g in new_plan.groups:
            h = health["groups"][g.name]
            out["after"]["groups"][g.name] = {
                "gpu": g.gpu, "replicas": int(h["replicas_running"] or g.replicas),
                "router_prediction": h["prediction"],
                "router_table": (uc.get("predictions") or {}).get(g.name),
                "deploy_table": GroupPrediction.of(t).wire() if (t := prediction_table(
                    db, [g], new_plan.catalog_gpu).get(g.name)) else None}
    finally:
        stop.set()
        if load is not None:
            load.join(timeout=120)
        serve.shutdown()
        ray.shutdown()
        cluster.shutdown()
    log = read_log(log_dir)
    for name, a in out["after"]["groups"].items():
        for key, model in (("router_table", "recalibrated_model"),
                           ("deploy_table", "deploy_model")):
            if a[key] is not None:
                a[model] = _window_error(GroupPrediction.parse(a[key]).table(), log, name,
                                         t_after0, t_end, a["replicas"])
    out["bench"] = bench[0].summary() if bench else None
    out["log_records"] = log.num_rows
    # Every request not answered 200, when (seconds after the replan job was submitted and
    # after it returned), what and where (the request log), and the clients' error texts.
    cols = {c: log.column(c).to_pylist() for c in ("arrival_s", "status", "outcome", "group",
                                                   "latency_s")}
    out["not_200"] = [{"after_job_submitted_s": a - t_job, "after_job_done_s": a - t_done,
                       "status": st, "outcome": o, "group": g, "latency_s": lat}
                      for a, st, o, g, lat in zip(*cols.values(), strict=True) if st != 200]
    out["client_errors"] = sorted({r.error[:200] for r in (bench[0].records if bench else [])
                                   if r.error})[:10]
    return out


def main() -> int:
    """Run, print the table, write JSON; 1 when a target is missed."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="a few minutes: 40 s baseline, a "
                    "45 s window, 60 s after the change")
    ap.add_argument("--rate", type=float, default=5.0, help="req/s of the steady load")
    ap.add_argument("--slowdown", type=float, default=1.6, help="the group's engines run this "
                    "many times slower mid-run")
    ap.add_argument("--window-s", type=float, default=None, help="the router's drift window "
                    "and the replan job's (default 60, quick 45)")
    ap.add_argument("--baseline-s", type=float, default=None)
    ap.add_argument("--after-s", type=float, default=None)
    ap.add_argument("--json", default="build/drift_bench.json")
    ap.add_argument("--no-copy", action="store_true", help="do not copy the JSON to "
                    "benchmarks/data/drift.json")
    add_target_argument(ap, TARGETS)
    args = ap.parse_args()
    window = args.window_s or (45.0 if args.quick else 60.0)
    baseline = args.baseline_s or (40.0 if args.quick else 90.0)
    after = args.after_s or (60.0 if args.quick else 120.0)
    # Ray's workers and the replan job import this checkout's packages.
    os.environ["PYTHONPATH"] = os.pathsep.join(
        [str(REPO), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))])
    (REPO / "build").mkdir(exist_ok=True)
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(dir=REPO / "build") as tmp:
        out = run(Path(tmp), rate_rps=args.rate, slowdown=args.slowdown, window_s=window,
                  baseline_s=baseline, after_s=after)
    out["load_average_before"] = load_before
    out["load_average_after"] = os.getloadavg()
    b = out["bench"] or {"requests": 0, "ok": 0, "errors": {}}
    refused = int(b["errors"].get("429", 0))
    failed = b["requests"] - b["ok"] - refused
    served = [a for a in out["after"]["groups"].values() if a["gpu"] == out["gpu"]
              and (a.get("recalibrated_model") or {}).get("requests")]
    # the group of the slowed GPU type that served most after the change
    rec = max((a["recalibrated_model"] for a in served), key=lambda m: m["requests"],
              default={})
    dep = max((a.get("deploy_model") or {} for a in served),
              key=lambda m: m.get("requests", 0), default={})
    job = out["replan_job"]
    job_s = out["replan_job"]["seconds"]
    during = [r for r in out["not_200"] if r["status"] != 429
              and 0 <= r["after_job_submitted_s"] <= job_s + 5.0]
    out["failed_during_replan"] = len(during)
    measured = {"recalibrated_p95_error": abs(rec.get("error_p95", math.nan)),
                "recalibrated_tpot_error": abs(rec.get("error_tpot", math.nan)),
                "failed_during_replan": float(len(during)),
                "router_detect_s": out["router_flag"]["seconds_after_slowdown"]}
    flags = {"baseline: no drift flag": out["baseline"]["false_flags"] == 0,
             "router flags drift after the slow-down":
                 out["router_flag"]["seconds_after_slowdown"] is not None,
             "replan job flags drift": bool(job["flagged"]),
             "replan job recalibrates and applies": bool(job["recalibrated"])
             and bool(job["applied"])}
    rows = check(resolve(TARGETS, args.target), measured, flags)

    def pct(x: Any) -> str:
        return "-" if x is None or not math.isfinite(x) else f"{x:+.1%}"

    base = out["baseline"]["prediction"] or {}
    table = [
        ("baseline error P95 / TPOT", f"{pct(base.get('error_p95'))} / "
         f"{pct(base.get('error_tpot'))}", f"router /health, {base.get('requests')} requests"),
        ("router flags drift", f"{measured['router_detect_s']} s", f"after x{args.slowdown} "
         f"slow-down, window {window:g} s"),
        ("replan job flags drift",
         f"{job['flagged']} at {job['flagged_s_after_slowdown']:.0f} s",
         f"job {job['seconds']:.0f} s, submitted at "
         f"{job['submitted_s_after_slowdown']:.0f} s"),
        ("replan decision", job["decision"]["action"], job["decision"]["reason"][:70]),
        ("after: deploy-time model",
         f"{pct(dep.get('error_p95'))} / {pct(dep.get('error_tpot'))}",
         "P95 / TPOT error against the slowed group"),
        ("after: recalibrated model", f"{pct(rec.get('error_p95'))} / "
         f"{pct(rec.get('error_tpot'))}", f"{rec.get('requests')} requests, "
         f"{rec.get('rate_per_replica_rps', math.nan):.2f} req/s per replica"),
        ("requests sent / failed / 429", f"{b['requests']} / {failed} / {refused}",
         f"{out['log_records']} logged; {len(during)} failed during the replan"),
    ]
    for name, value, note in table:
        print(f"{name:<30}{value:<30}{note}")
    print_checks(rows)
    out["targets"] = rows
    out["measured"] = measured
    out["command"] = " ".join(["python", *sys.argv])
    path = write_results(out, args.json, None if args.no_copy else "drift.json")
    print(job["report"])
    print(f"wrote {path}")
    return 0 if passed(rows) else 1


if __name__ == "__main__":
    sys.exit(main())
