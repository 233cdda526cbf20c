"""`boute replan`: refit the workload on the request log, re-optimize, apply (see `app.replan`).

Runs anywhere that reaches the cluster, in particular as a Ray job:

    ray job submit --address http://HEAD:8265 -- boute replan --window-s 600
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys
from typing import Any

from common.errors import BouteError

from ._planning import add_solver_args, stop_rule_from

__all__ = ["add_replan", "format_report", "submit_replan_job"]


def add_replan(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `boute replan`."""
    p = sub.add_parser("replan", help="refit the workload on the request log, re-optimize "
                       "and apply the new plan to the running stack (a Ray job)")
    p.add_argument("--address", default="auto", help="Ray cluster address (default: auto, "
                   "which is the cluster itself inside a Ray job)")
    p.add_argument("--dashboard", default="", help="dashboard address, http://HEAD:8265 "
                   "(default: the connected cluster's)")
    p.add_argument("--app", default="boute", help="the router application's name")
    p.add_argument("--window-s", type=float, default=300.0,
                   help="seconds of request log to refit on (default 300)")
    p.add_argument("--min-requests", type=int, default=100,
                   help="fewest successful requests in the window (default 100)")
    p.add_argument("--objective", default=None, choices=["pareto", "min-cost",
                                                         "max-throughput"],
                   help="goal mode (default: the running plan's)")
    p.add_argument("--quality", type=float, default=None, help="quality floor (default: "
                   "the running plan's goal)")
    p.add_argument("--p95", type=float, default=None, help="P95 target, seconds (default: "
                   "the running plan's goal)")
    add_solver_args(p)
    p.add_argument("--resim-seeds", type=int, default=3, help="re-simulate the proposed plan "
                   "on this many fresh traces per group, as `boute plan` does (default 3; "
                   "0: no check)")
    p.add_argument("--min-gain", type=float, default=0.10, help="smallest predicted relative "
                   "gain worth a change (default 0.10)")
    p.add_argument("--cooldown-s", type=float, default=600.0, help="no change within this "
                   "many seconds of the last one (default 600)")
    p.add_argument("--force", action="store_true", help="ignore the gain and the cool-down")
    p.add_argument("--drift-tolerance", type=float, default=0.25, help="a group has drifted "
                   "when its predicted P95 (or TPOT) stays off the observed by more than this "
                   "share for the window (default 0.25)")
    p.add_argument("--recalibrate-on-drift", action="store_true", help="opt-in: when a group "
                   "drifted, fit a served calibration on the window and plan on it (the "
                   "change still needs the gain and the cool-down)")
    p.add_argument("--dry-run", action="store_true", help="print the decision and the diff "
                   "between the running and the proposed plan; change nothing")
    p.add_argument("--scenario", default=None, help="scenario preset or YAML (default: the "
                   "one saved in the running plan)")
    p.add_argument("--work-dir", default=None, help="folder for the window's trace and perf "
                   "DB (default: next to the request log)")
    p.add_argument("--timeout-s", type=float, default=900.0,
                   help="longest wait for each step of a change")
    p.add_argument("--watchdog", action="store_true", help="keep running: replan whenever a "
                   "replica group stays short of replicas for --loss-s (a lost node); one "
                   "JSON report per line")
    p.add_argument("--loss-s", type=float, default=60.0, help="watchdog: seconds a group must "
                   "stay short before replanning (default 60)")
    p.add_argument("--poll-s", type=float, default=5.0, help="watchdog: seconds between looks "
                   "(default 5)")
    p.add_argument("--schedule", default=None, metavar="FILE", help="follow a `boute "
                   "schedule` JSON: each window's plan, applied ahead of its rises; reactive "
                   "replanning (the options above) when traffic departs from the forecast; "
                   "with --follow-s, every --poll-s seconds for that long")
    p.add_argument("--follow-s", type=float, default=None, help="with --schedule: keep "
                   "following for this many seconds (default: one step)")
    p.add_argument("--day-start-unix-s", type=float, default=None, help="with --schedule: "
                   "the Unix time of the schedule's t = 0 (default: the last UTC midnight)")
    p.add_argument("--time-scale", type=float, default=1.0, help="with --schedule: schedule "
                   "seconds per wall second (> 1 compresses the day for a dry run)")
    p.add_argument("--min-lead-s", type=float, default=30.0, help="with --schedule: apply "
                   "a rise at least this many seconds ahead (default 30)")
    p.add_argument("--depart-tolerance", type=float, default=0.25, help="with --schedule: "
                   "observed rate above the forecast by more than this share falls back to "
                   "reactive replanning (default 0.25)")
    p.set_defaults(run=_run_replan)


def _options(args: argparse.Namespace) -> Any:
    from app.replan import ReplanOptions
    from tuning import Goal, Hysteresis

    if args.resim_seeds < 0:
        raise BouteError(f"--resim-seeds={args.resim_seeds} must be >= 0 (0: no check)")
    goal = None
    if args.objective or args.quality is not None or args.p95 is not None:
        if args.p95 is not None and not args.p95 > 0:
            raise BouteError(f"--p95={args.p95} must be > 0 seconds")
        goal = Goal(args.objective or "pareto", args.quality, args.p95)
    try:
        hysteresis = Hysteresis(args.min_gain, args.cooldown_s)
    except ValueError as exc:
        raise BouteError(str(exc).replace("min_gain", "--min-gain")
                         .replace("cooldown_s", "--cooldown-s")) from None
    return ReplanOptions(app=args.app, dashboard=args.dashboard or None,
                         window_s=args.window_s, min_requests=args.min_requests, goal=goal,
                         solver=args.solver, stop=stop_rule_from(args), seed=args.seed,
                         resim_seeds=args.resim_seeds,
                         hysteresis=hysteresis, force=args.force, dry_run=args.dry_run,
                         scenario=args.scenario, work_dir=args.work_dir,
                         timeout_s=args.timeout_s, drift_tolerance=args.drift_tolerance,
                         recalibrate_on_drift=args.recalibrate_on_drift)


def _run_replan(args: argparse.Namespace) -> int:
    import ray

    from app.replan import replan
    from boute._shared import emit

    options = _options(args)        # bad flags fail before touching the cluster
    if args.schedule:
        from app.follow import load_schedule
        from app.replan import ReplanError

        try:
            load_schedule(args.schedule)    # a bad file fails before touching the cluster
        except ReplanError as exc:
            raise BouteError(str(exc)) from None
    # Ray prints notices on stdout; keep stdout for the one JSON object.
    with contextlib.redirect_stdout(sys.stderr):
        if not ray.is_initialized():
            _connect(args.address)
        if args.schedule:
            return _follow(args, options)
        if args.watchdog:
            from app.replan import watch

            def on_report(report: dict[str, Any]) -> None:
                with contextlib.redirect_stdout(sys.__stdout__):
                    emit(args, report, lambda: format_report(report))

            watch(options, loss_s=args.loss_s, poll_s=args.poll_s, on_report=on_report)
            return 0
        report = replan(options)
    emit(args, report, lambda: format_report(report))
    return 0


def _follow(args: argparse.Namespace, options: Any) -> int:
    """``--schedule``: one follower step, or steps every --poll-s for --follow-s seconds.

    One JSON report per step; exit 1 when a step failed (its report names why).
    """
    import time

    from app.follow import FollowOptions, follow
    from app.replan import ReplanError
    from boute._shared import emit

    try:
        opts = FollowOptions(args.schedule, args.day_start_unix_s, args.time_scale,
                             args.min_lead_s, args.depart_tolerance, options)
    except ReplanError as exc:
        raise BouteError(str(exc).replace("time_scale", "--time-scale")
                         .replace("min_lead_s", "--min-lead-s")
                         .replace("depart_tolerance", "--depart-tolerance")) from None
    failed = []

    def on_report(report: dict[str, Any]) -> None:
        failed.extend([report["error"]] if "error" in report else [])
        text = json.dumps(report, default=str)
        with contextlib.redirect_stdout(sys.__stdout__):
            emit(args, report, text.__str__)

    follow(opts, poll_s=args.poll_s, on_report=on_report,
           until_s=time.time() + (args.follow_s or 0.0))
    return 1 if failed else 0


def _connect(address: str) -> None:
    """Connect to the cluster with its Ray token (inside a Ray job: the node's mode and token).

    Ray token authentication stays on: this process talks in token mode when it finds a token
    (`placement.use_token_if_available`) or ``RAY_AUTH_MODE=token`` is set, and a refusal
    names the fix.
    """
    from placement import connect

    connect(address, "run this on the cluster (`ray job submit -- boute replan`) or pass "
            "--address")


# -- report and job submission ------------------------------------------------------------
def format_report(report: dict[str, Any]) -> str:
    """The replanning report as a readable table (stderr / human output)."""
    w, d = report["window"], report["decision"]
    run, new = report["running"], report["proposed"]
    lines = [f"window: {int(w['requests'])} requests over {w['duration_s']:.0f} s, "
             f"{w['rate_rps']:.2f} req/s, inter-arrival CV {w.get('interarrival_cv', 1.0):.2f}, "
             f"tokens in/out mean {w['input_tokens_mean']:.0f}/{w['output_tokens_mean']:.0f}",
             f"goal: {report['goal']['mode']}, quality >= {report['goal']['quality']}, "
             f"P95 <= {report['goal']['p95_s']}"]
    head = f"{'':<10}{'strong':>8}{'P95 s':>8}{'sys P95':>9}{'$/h':>8}{'quality':>9}"
    lines.append(head)
    for label, p in (("running", run), ("proposed", new)):
        pr = p.get("predicted") or {}
        lines.append(f"{label:<10}{p['routing']['strong_share']:>8.3f}"
                     f"{pr.get('p95_s', math.nan):>8.2f}{pr.get('system_p95_s', math.nan):>9.2f}"
                     f"{pr.get('cost_per_hour', math.nan):>8.2f}"
                     f"{pr.get('quality', math.nan):>9.3f}")
    if run.get("violation"):
        lines.append(f"running plan {run['violation']}")
    lines.append(f"{'group':<34}{'change':>11}{'replicas':>10}{'share':>14}")
    for c in report["changes"]:
        lines.append(f"{c['group']:<34}{c['kind']:>11}{c['replicas'][0]:>5}->{c['replicas'][1]:<3}"
                     f"{c['share'][0]:>7.2f}->{c['share'][1]:<5.2f}")
    verb = ("applied" if report["applied"] else
            "dry run, not applied" if report["dry_run"] and d["action"] != "none" else
            "no change")
    if report.get("model"):
        from profiling import model_source_line

        lines.append(model_source_line(report["model"]))
    drift = report.get("drift")
    if drift:
        lines.append(f"{'group':<34}{'obs P95':>9}{'pred P95':>9}{'err':>7}{'TPOT err':>9}"
                     f"  drifted (tolerance {drift['tolerance']:.0%})")
        for g in drift["groups"]:
            def pct(x: Any) -> str:
                return "-" if x is None or x != x else f"{x:+.0%}"

            def sec(x: Any) -> str:
                return "-" if x is None else f"{x:.2f}"
            lines.append(f"{g['group']:<34}{sec(g['observed_p95_s']):>9}"
                         f"{sec(g['predicted_p95_s']):>9}{pct(g['error_p95']):>7}"
                         f"{pct(g['error_tpot']):>9}  {g['drifted']}")
    if report.get("recalibrated"):
        lines.append(f"recalibrated on the window: {report['recalibrated']}")
    lines.append(f"decision: {d['action']} ({d['reason']}) - {verb}")
    if report["steps"]:
        lines.append("steps: " + ", ".join(f"{k[:-2]} {v:.1f} s"
                                           for k, v in report["steps"].items()))
    return "\n".join(lines)


def submit_replan_job(dashboard: str, args: list[str] | tuple[str, ...] = (), *,
                      timeout_s: float = 900.0, env: dict[str, str] | None = None
                      ) -> dict[str, Any]:
    """Run ``boute --json replan ARGS`` as a Ray job through the job API; returns its report.

    The equivalent of ``ray job submit --address DASHBOARD -- boute replan ARGS``, waiting
    for the job and parsing the JSON it prints. The job API calls carry the cluster's Ray
    token (`placement.cluster_auth_token`); the job itself runs on the cluster, whose nodes
    hand their authentication mode and token to it, so `env` (extra environment variables
    of the job) is only for the job's own settings. A job API with no agent yet (a cluster
    that just started) is asked again for up to 60 s.

    Raises:
        ReplanError: the job failed or timed out (its log's last lines are in the message),
            or the job API refused this process's Ray token (missing or not the cluster's).

    """
    import shlex
    import time
    from pathlib import Path

    from ray.exceptions import AuthenticationError
    from ray.job_submission import JobStatus, JobSubmissionClient

    from app.replan import ReplanError
    from placement import TOKEN_FIX, RayAuthError, auth_headers, cluster_auth_token

    boute = Path(sys.executable).parent / "boute"      # job entrypoints need absolute paths
    entrypoint = shlex.join([str(boute), "--json", "replan", *args])
    runtime_env = {"env_vars": dict(env)} if env else None
    agent_deadline = time.monotonic() + min(timeout_s, 60.0)
    try:
        client = JobSubmissionClient(dashboard, headers=auth_headers(cluster_auth_token()))
        while True:
            try:
                job = client.submit_job(entrypoint=entrypoint, runtime_env=runtime_env)
                break
            except RuntimeError as exc:     # a cluster that just started: its job agents
                if ("No available agent" not in str(exc)         # register a few seconds
                        or time.monotonic() > agent_deadline):   # after the dashboard
                    raise
            time.sleep(1.0)
    except RayAuthError as exc:
        raise ReplanError(str(exc)) from None
    except AuthenticationError as exc:
        reason = str(exc).strip().splitlines()[0]
        raise ReplanError(f"the Ray job API at {dashboard} refused the replan job ({reason}); "
                          f"{TOKEN_FIX}") from None
    deadline = time.monotonic() + timeout_s
    done = (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED)
    while (status := client.get_job_status(job)) not in done:
        if time.monotonic() > deadline:
            client.stop_job(job)
            status = JobStatus.STOPPED
            break
        time.sleep(1.0)
    logs = client.get_job_logs(job)
    reports = [line for line in logs.splitlines() if line.startswith("{")]
    if status != JobStatus.SUCCEEDED or not reports:
        tail = "\n".join(logs.strip().splitlines()[-5:])
        raise ReplanError(f"replan job {job} ended {status}:\n{tail}")
    return json.loads(reports[-1])  # type: ignore[no-any-return]
