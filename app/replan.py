"""Replanning a running stack: read the request log, refit the workload, re-optimize, apply.

    boute replan [--dry-run] ...                         (CLI, `boute.replan_cli`)
    ray job submit --address http://HEAD:8265 -- boute replan ...
    from app.replan import ReplanOptions, replan          (Python)

Steps (`replan`):

1. **State.** The running plan, its serving settings (`app.main.Stack`) and the time of the
   last change come from the router application's deployed config, read through Serve's REST
   API (`app.serve_api`); an app started with ``serve run app.main:app`` (one application) is
   refused: only the stack layout can change in place.
2. **Workload.** The last ``window_s`` seconds of the request log (`app.request_log`):
   successful requests' arrival times and prompt/output token counts become the planning
   trace as they are (its empirical length distributions and inter-arrival burstiness); its
   rate is ``(n - 1) / (t_last - t_first)``.
3. **Re-optimize.** The plan's own scenario (saved in the plan) with that trace and rate, and
   the GPU stock capped by what the cluster has, gets a fresh performance DB and the same goal
   (the plan's, unless overridden); the running plan is re-evaluated on the same traffic.
   **Drift** (`window_drift`, report key ``drift``): each running group's observed P95 and
   TPOT in the window against that DB's prediction at the group's observed rate
   (`tuning.detect_drift`); with ``recalibrate_on_drift`` (opt-in, off by default) a drifted
   window is also fitted (`profiling.measure.fit_served`, ``replan/served-calibration.json``)
   and the plans of this step are made on the corrected model (report key ``recalibrated``).
   Report key ``model``: the DB's efficiency source per GPU type and its served calibration
   (hash, age, stale or not).
4. **Decide** with hysteresis (`tuning.decide`: must-change on a violated goal, else a minimum
   predicted gain, and a cool-down).
5. **Apply** (unless ``dry_run``), after checking that the running and the proposed groups fit
   the cluster *together* (the peak of the change): a routing-only change reconfigures the
   router (``user_config``); a deployment change goes **up** (new groups created, growing ones
   grown, routing unchanged), **switch** (the router routes by the new plan; ``/health``
   confirms its ``config_id``), **down** (groups no longer routed to are drained and deleted,
   shrinking ones shrunk). Each step is one declarative config and waits until Serve runs it,
   so no request is sent to a replica that is going away and the router never restarts.

Any error before step 5 leaves the service untouched.
"""

from __future__ import annotations

import json
import math
import sys
import time
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from common.errors import BouteError
from profiling import model_source
from tuning import (
    Decision,
    DriftReport,
    Goal,
    Group,
    Hysteresis,
    Plan,
    Problem,
    StopRule,
    decide,
)

from .main import APP_NAME, Stack, stack_config
from .serve_api import ServeApi, ServeApiError, dashboard_url, local_url

if TYPE_CHECKING:
    from profiling import Trace
    from tuning import PredictionTable

__all__ = ["ReplanError", "ReplanOptions", "apply_plan", "peak_plan", "replan", "running_state"]


MIN_WORKLOAD_REQUESTS = 10
"""Fewest successful requests of each workload a window must hold (their rate's estimate)."""


class ReplanError(BouteError, RuntimeError):
    """Replanning cannot proceed; the running service was not touched."""


@dataclass(frozen=True)
class ReplanOptions:
    """What `replan` reads, how it re-optimizes, and when it changes the plan."""

    app: str = APP_NAME
    dashboard: str | None = None
    """Dashboard address (default: the connected cluster's)."""
    window_s: float = 300.0
    """Seconds of request log to fit the workload on (ending now)."""
    min_requests: int = 100
    """Fewest successful requests in the window to refit on."""
    goal: Goal | None = None
    """Default: the goal the running plan was made for, else its quality as a floor."""
    solver: str = "auto"
    """``auto`` (the exact DP when it certifies within seconds: deterministic, unchanged
    traffic proposes the same plan; else ``mobo``), ``exact``, ``mobo`` or ``random``."""
    stop: StopRule | None = None
    """When mobo / random stop (default `tuning.StopRule()`; `StopRule.fixed(n)`: n plans)."""
    seed: int = 0
    resim_seeds: int = 3
    """Fresh traces per replica group of the headroom check (``boute plan --resim-seeds``)."""
    hysteresis: Hysteresis = field(default_factory=Hysteresis)
    force: bool = False
    dry_run: bool = False
    scenario: str | None = None
    """Scenario preset or YAML (default: the one saved in the running plan)."""
    work_dir: str | None = None
    """Where the window's trace and its perf DB go (default: next to the request log)."""
    timeout_s: float = 900.0
    """Longest wait for each step of a change."""
    now_s: float | None = None
    """Wall-clock time the window ends at (default: now; for replaying a log)."""
    drift_tolerance: float = 0.25
    """A group has drifted when its prediction error stays past this share for the window
    (`tuning.detect_drift`); reported in ``drift``."""
    recalibrate_on_drift: bool = False
    """Opt-in: when a group drifted, fit a served calibration on the window
    (`profiling.measure.fit_served`, written to the work folder) and plan on it; the change
    still goes through the usual decision (gain, cool-down, dry run)."""

    def __post_init__(self) -> None:
        if not (self.window_s > 0 and math.isfinite(self.window_s)):
            raise ReplanError(f"window_s={self.window_s!r} must be a positive number of "
                              "seconds")
        if self.min_requests < 2:
            raise ReplanError(f"min_requests={self.min_requests!r} must be >= 2")
        if self.solver not in ("auto", "exact", "mobo", "random"):
            raise ReplanError(f"solver={self.solver!r} must be auto, exact, mobo or random")
        if self.resim_seeds < 0:
            raise ReplanError(f"resim_seeds={self.resim_seeds!r} must be >= 0 (0: no check)")
        if not (self.drift_tolerance > 0 and math.isfinite(self.drift_tolerance)):
            raise ReplanError(f"drift_tolerance={self.drift_tolerance!r} must be a positive "
                              "fraction, e.g. 0.25")


@dataclass(frozen=True)
class RunningState:
    """What the cluster serves now."""

    plan: Plan
    stack: Stack
    applied_unix_s: float | None
    host: str
    port: int
    proxy_location: str


def running_state(api: ServeApi, app: str = APP_NAME) -> RunningState:
    """The running plan and settings of the stack whose router is application `app`.

    Raises:
        ReplanError: no such application, or one not deployed as a stack.

    """
    details = api.details()
    apps = details.get("applications") or {}
    if app not in apps:
        raise ReplanError(f"no application {app!r} runs on the cluster at {api.base} (running: "
                          f"{sorted(apps) or 'none'}); deploy a plan first with `boute deploy "
                          "PLAN.json`")
    cfg = apps[app].get("deployed_app_config") or {}
    if cfg.get("import_path") != "app.main:router_app":
        raise ReplanError(f"application {app!r} was not deployed as a BOute stack (import path "
                          f"{cfg.get('import_path')!r}); replanning needs `boute deploy` or "
                          "`serve deploy` of `boute deploy --serve-config FILE`, not "
                          "`serve run app.main:app`")
    (router,) = [d for d in cfg.get("deployments", []) if d.get("name") == "RouterIngress"]
    uc = router["user_config"]
    http = details.get("http_options") or {}
    return RunningState(Plan.from_dict(uc["plan"], "the running plan"),
                        Stack.from_args({**cfg["args"], **(uc.get("stack_live") or {})}),
                        uc.get("applied_unix_s"),
                        str(http.get("host", "127.0.0.1")), int(http.get("port", 8000)),
                        str(details.get("proxy_location") or "EveryNode"))


def window_trace(log_dir: str, *, window_s: float, now_s: float, min_requests: int,
                 workload: str | None = None) -> Trace:
    """The successful requests of the last `window_s` seconds of the log, as a `Trace`.

    `workload`: only the requests routed for that workload (the log's ``workload`` column).
    The log holds a request once it ends, so the last seconds of the window miss the requests
    still in flight: a workload of long requests looks lighter than it is. The rate is
    therefore measured on the *settled* part of the window, the arrivals at least ``settle``
    before `now_s` (``settle``: the 99th percentile of the window's latencies), counting the
    requests refused by admission control (429, outcome ``shed``: demand the plan did not
    serve), as ``(n - 1) / (t_last - t_first)``; the trace (the successful requests' lengths
    and arrival pattern) is scaled to that rate. The settled part is used whenever it holds
    at least ``max(10, min_requests // 2)`` arrivals, however short: it is unbiased, only
    noisier (an overloaded plan, whose P99 approaches the window, is when a replan matters
    most: a 95 s window with a 65 s P99 leaves 30 s, ~240 arrivals at 8 req/s). With fewer,
    the rate is that of every served or shed arrival of the window, a lower bound (requests
    still in flight are missing), never the served ones' alone (which would hide the shed
    demand: 1.4 req/s measured for 3 req/s of chat that a saturated group refused in part).

    Raises:
        ReplanError: no readable log, or fewer than `min_requests` requests in the window.

    """
    from profiling import Trace

    from .request_log import read_log

    try:
        table = read_log(log_dir, since_s=now_s - window_s)
    except FileNotFoundError as exc:
        raise ReplanError(f"{exc}: the request log is empty or unreadable; serve traffic "
                          "first (or check --log-dir of the deployment)") from None
    cols = {c: table.column(c).to_numpy(zero_copy_only=False) for c in
            ("arrival_s", "prompt_tokens", "output_tokens", "status")}
    ok = ((cols["status"] == 200) & (cols["prompt_tokens"] >= 1) &
          (cols["output_tokens"] >= 1) & (cols["arrival_s"] <= now_s))
    shed = ((table.column("outcome").to_numpy(zero_copy_only=False) == "shed")
            & (cols["arrival_s"] <= now_s))
    if workload is not None:
        names = table.column("workload").to_numpy(zero_copy_only=False)
        ok &= names == workload
        shed &= names == workload
    n = int(ok.sum())
    if n < min_requests:
        which = "" if workload is None else f" of workload {workload!r}"
        raise ReplanError(f"the last {window_s:g} s of the request log at {log_dir} hold {n} "
                          f"successful request(s){which} ({table.num_rows} rows in all), "
                          f"fewer than min_requests={min_requests}; widen the window or wait "
                          "for traffic")
    order = np.argsort(cols["arrival_s"][ok], kind="stable")
    arrivals = cols["arrival_s"][ok][order]
    trace = Trace(arrivals - arrivals[0], cols["prompt_tokens"][ok][order].astype(np.int64),
                  cols["output_tokens"][ok][order].astype(np.int64), name="request-log-window")
    latency = table.column("latency_s").to_numpy(zero_copy_only=False)[ok]
    settle = float(np.quantile(latency, 0.99)) if len(latency) else 0.0
    settled = (ok | shed) & (cols["arrival_s"] <= now_s - settle)
    demand = np.sort(cols["arrival_s"][settled])
    if len(demand) < max(10, min_requests // 2):
        demand = np.sort(cols["arrival_s"][ok | shed])
    if len(demand) >= 2 and demand[-1] > demand[0] and trace.duration_s > 0:
        return trace.scaled_to((len(demand) - 1) / float(demand[-1] - demand[0]))
    return trace


def _goal_of(plan: Plan, options: ReplanOptions) -> Goal:
    """The options' goal, else the one the plan was made for, else its quality as a floor."""
    if options.goal is not None:
        return options.goal
    if plan.goal is not None:
        return plan.goal
    quality = plan.predicted.quality if plan.predicted is not None else None
    return Goal("pareto", quality, None)


def _scenario_file(state: RunningState, options: ReplanOptions,
                   traces: dict[str, tuple[Path, float]], cluster_gpus: dict[str, int],
                   work: Path) -> Path:
    """The running plan's scenario with the window's traces and rates, written as YAML.

    `traces`: workload name -> (trace file, rate); a one-workload scenario's is ``default``.
    The GPU stock is capped by what the cluster has.
    """
    import yaml

    from profiling import load_scenario

    if options.scenario is not None:
        scenario = load_scenario(options.scenario)
    elif isinstance(state.plan.scenario.get("spec"), dict):
        from profiling import Scenario

        scenario = Scenario.model_validate(state.plan.scenario["spec"])
    else:
        name = state.plan.scenario.get("name")
        try:
            scenario = load_scenario(name)
        except BouteError as exc:
            raise ReplanError(f"the running plan does not carry its scenario and {name!r} is "
                              f"not a preset ({exc}); pass --scenario") from None
    spec = scenario.model_dump(mode="json")
    if scenario.workloads is None:
        path, rate = traces["default"]
        spec["workload"] = {"trace": str(path), "rate_rps": rate}
        spec.pop("workloads", None)
    else:
        spec.pop("workload", None)
        spec.pop("task", None)
        for w in spec["workloads"]:
            path, rate = traces[w["name"]]
            w.update(trace=str(path), rate_rps=rate)
    for gpu, offer in spec["gpus"].items():
        offer["count"] = min(int(offer["count"]), cluster_gpus.get(gpu, 0))
    spec["gpus"] = {g: o for g, o in spec["gpus"].items() if o["count"] > 0}
    if not spec["gpus"]:
        raise ReplanError(f"the cluster has none of the scenario's GPU types "
                          f"{sorted(scenario.gpus)}")
    spec["name"] = f"{scenario.name}-replan"
    path = work / "scenario.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def replan(options: ReplanOptions | None = None) -> dict[str, Any]:
    """Run one replanning round (module docstring); returns its report.

    The report: ``window`` (the fitted workload), ``goal``, ``running`` and ``proposed``
    (plans with predictions on the window's traffic; ``running.violation`` when it no longer
    meets the goal), ``decision`` (``action``: none/routing/deployment, ``reason``,
    ``gain``), ``changes`` (per group), ``applied`` and ``steps`` (seconds per step).

    Raises:
        ReplanError, ServeApiError, DeployError: nothing was changed (before step 5), or the
            step that failed is named.

    """
    options = options or ReplanOptions()
    api = ServeApi(options.dashboard or dashboard_url())
    state, log_dir = _logged_state(api, options.app)                   # 1. state
    now = options.now_s if options.now_s is not None else time.time()
    traces = _windows(log_dir, options, now, state.plan)                # 2. workload
    trace = traces["default"] if "default" in traces else _merged(traces)
    window = _window_problems(state, options, traces, log_dir)          # 3. re-optimize
    drift = window_drift(log_dir, options, now, state.plan, window.running())
    recalibrated = None
    if options.recalibrate_on_drift and drift.drifted:
        recalibrated = _recalibrate(log_dir, options, now, state, window.work)
        window.served_calibration = str(recalibrated)
        window.built.clear()
    goal = _goal_of(state.plan, options)
    running, violation = _evaluate_running(window.running(), state.plan, goal)
    proposed = _propose(window, goal, options, trace.rate_rps)
    since = None if state.applied_unix_s is None else now - float(state.applied_unix_s)
    decision = decide(goal.mode, running, proposed, violation=violation,  # 4. decide
                      hysteresis=options.hysteresis, seconds_since_change=since,
                      force=options.force)
    report = _report(trace, options, goal, running, violation, proposed, decision)
    report["drift"] = drift.to_dict()
    report["model"] = model_source(window.running().db.meta)
    report["recalibrated"] = None if recalibrated is None else str(recalibrated)
    if decision.applies and not options.dry_run:                        # 5. apply
        _apply_decision(api, state, proposed, decision, options, report, window)
    return report


def _logged_state(api: ServeApi, app: str) -> tuple[RunningState, str]:
    """Step 1: the running state of `app` and its request log's folder.

    Raises:
        ReplanError: no such stack, or one deployed without a request log.

    """
    state = running_state(api, app)
    if not state.stack.log_dir:
        raise ReplanError(f"application {app!r} keeps no request log (deployed without "
                          "--log-dir); replanning refits the workload on it")
    return state, state.stack.log_dir


def _window(log_dir: str, options: ReplanOptions, now_s: float,
            workload: str | None = None, min_requests: int | None = None) -> Trace:
    """Step 2: the window's trace (`window_trace`), spread over a positive duration.

    Raises:
        ReplanError: too few requests, or all of them at the same instant.

    """
    trace = window_trace(log_dir, window_s=options.window_s, now_s=now_s,
                         min_requests=options.min_requests if min_requests is None
                         else min_requests, workload=workload)
    if not trace.duration_s > 0:
        raise ReplanError("every request of the window arrived at the same instant; widen the "
                          "window")
    return trace


def _windows(log_dir: str, options: ReplanOptions, now_s: float, plan: Plan
             ) -> dict[str, Trace]:
    """Step 2 per workload: one trace each for a plan with several (``default`` otherwise).

    The window needs ``min_requests`` in all and `MIN_WORKLOAD_REQUESTS` of each workload (a
    workload of long requests completes few of them in a short window).

    Raises:
        ReplanError: too few requests in all or of one workload.

    """
    names = [w.name for w in plan.routing.workloads] if plan.routing.is_ladder else []
    if len(names) <= 1:
        return {"default": _window(log_dir, options, now_s)}
    out = {n: _window(log_dir, options, now_s, n, MIN_WORKLOAD_REQUESTS) for n in names}
    total = sum(len(t) for t in out.values())
    if total < options.min_requests:
        raise ReplanError(f"the last {options.window_s:g} s of the request log at {log_dir} "
                          f"hold {total} successful requests of the plan's workloads, fewer "
                          f"than min_requests={options.min_requests}; widen the window or "
                          "wait for traffic")
    return out


def _merged(traces: dict[str, Trace]) -> Trace:
    """The workloads' traces as one (for the report's window summary)."""
    from profiling import Trace

    arrival = np.concatenate([t.arrival_s for t in traces.values()])
    order = np.argsort(arrival, kind="stable")
    return Trace(arrival[order], np.concatenate([t.input_tokens for t in traces.values()])[order],
                 np.concatenate([t.output_tokens for t in traces.values()])[order],
                 name="request-log-window")


@dataclass
class WindowProblems:
    """Step 3's inputs: the planning problems of the plan's scenario on the window's traffic.

    ``at(None)`` is the problem without length classes, ``at(tau)`` split at ``tau`` tokens
    (each built once: a fresh perf DB per workload and class of the window); ``running()``
    the one the running plan is evaluated on (split at its own threshold, if any).
    """

    scenario_path: Path
    work: Path
    state: RunningState
    built: dict[int | None, Problem] = field(default_factory=dict)
    served_calibration: str | None = None
    """A served calibration to plan on (`ReplanOptions.recalibrate_on_drift`)."""

    def at(self, threshold_tokens: int | None) -> Problem:
        """The window's problem split at `threshold_tokens` (None: no length classes)."""
        from tuning import planning_problem

        if threshold_tokens not in self.built:
            self.built[threshold_tokens] = planning_problem(
                str(self.scenario_path), db=str(self.work / "perfdb.parquet"),
                gpu_catalog=self.state.stack.gpu_catalog,
                model_catalog=self.state.stack.model_catalog, note=_stderr_note,
                threshold_tokens=threshold_tokens,
                served_calibration=self.served_calibration)
        return self.built[threshold_tokens]

    def running(self) -> Problem:
        """The problem the running plan is re-evaluated on."""
        lc = self.state.plan.routing.length_classes
        return self.at(None if lc is None else lc.threshold_tokens)


def _window_problems(state: RunningState, options: ReplanOptions, traces: dict[str, Trace],
                     log_dir: str) -> WindowProblems:
    """Step 3's inputs: the window's traces and scenario written, its problems on demand.

    The trace, the scenario (`_scenario_file`, GPU stock capped by the live cluster's) and
    the fresh perf DBs go to ``options.work_dir`` (default: ``replan/`` beside the log).
    """
    from placement import gpu_counts_in, live_nodes

    work = Path(options.work_dir or Path(log_dir).parent / "replan")
    work.mkdir(parents=True, exist_ok=True)
    saved = {name: (t.save(work / ("window.parquet" if name == "default"
                                   else f"window-{name}.parquet")), t.rate_rps)
             for name, t in traces.items()}
    scenario_path = _scenario_file(state, options, saved, gpu_counts_in(live_nodes()), work)
    return WindowProblems(scenario_path, work, state)


def _window_columns(log_dir: str, options: ReplanOptions, now_s: float) -> dict[str, Any]:
    """The window's successful routed requests (outcome ok, a group), as column arrays."""
    from .request_log import read_log

    table = read_log(log_dir, since_s=now_s - options.window_s)
    cols = {c: table.column(c).to_numpy(zero_copy_only=False) for c in
            ("arrival_s", "prompt_tokens", "output_tokens", "ttft_s", "latency_s", "stream",
             "outcome", "group")}
    lat = np.asarray(cols["latency_s"], dtype=float)
    ok = ((cols["outcome"] == "ok") & (cols["group"] != "") & (cols["arrival_s"] <= now_s)
          & np.isfinite(lat) & (lat > 0))
    return {c: v[ok] for c, v in cols.items()}


def window_drift(log_dir: str, options: ReplanOptions, now_s: float, plan: Plan,
                 problem: Problem) -> DriftReport:
    """Each running group's observed P95 / TPOT in the window against `problem`'s DB.

    `tuning.detect_drift`; the DB is the window's (its rate and length mix), built with the
    scenario's served calibration when it names one.
    """
    from tuning import detect_drift, observe_groups, predict_groups

    cols = _window_columns(log_dir, options, now_s)
    observed = observe_groups(cols["group"], np.asarray(cols["arrival_s"], float),
                              np.asarray(cols["latency_s"], float),
                              np.asarray(cols["ttft_s"], float), cols["output_tokens"],
                              np.asarray(cols["stream"], bool),
                              window=(now_s - options.window_s, now_s))
    predicted = predict_groups(problem.db, plan.groups, observed,
                               gpu_of=problem.scenario.catalog_gpu)
    return detect_drift(predicted, observed, tolerance=options.drift_tolerance)


def _recalibrate(log_dir: str, options: ReplanOptions, now_s: float, state: RunningState,
                 work: Path) -> Path:
    """Fit a served calibration on the window (`fit_served`); its file in `work`.

    Raises:
        ReplanError: no group served enough requests to fit on.

    """
    from profiling import load_catalog, resolve_calibration
    from profiling.measure import fit_served, served_groups

    cols = _window_columns(log_dir, options, now_s)
    catalog = load_catalog(state.stack.gpu_catalog, state.stack.model_catalog)
    replicas = {g.name: g.replicas for g in state.plan.groups}
    groups, notes = served_groups(cols, catalog, replicas, min_requests=30)
    for note in notes:
        _stderr_note(note)
    if not groups:
        raise ReplanError("recalibration: no replica group served 30 successful requests in "
                          "the window; widen it (--window-s)")
    base = resolve_calibration(list({g.gpu.name: g.gpu for g in groups}.values()), None)
    cal = fit_served(groups, base_efficiency=base.efficiency, bootstrap=4,
                     window=(now_s - options.window_s, now_s))
    return cal.save(work / "served-calibration.json")


def _evaluate_running(problem: Problem, plan: Plan, goal: Goal) -> tuple[Plan, str | None]:
    """The running plan re-evaluated on the window's traffic, and how it misses `goal`.

    Returns:
        The plan with its new predictions (as it was when it is infeasible now) and the
        violation (the P95 target, the quality floor, or infeasible), None when it meets
        the goal.

    """
    from tuning import InfeasiblePlanError, evaluate_plan

    violation = None
    running = plan
    try:
        running = evaluate_plan(problem, plan, goal.p95_s)
        assert running.predicted is not None
        if goal.p95_s is not None and running.predicted.p95_s > goal.p95_s:
            violation = (f"misses the P95 target: {running.predicted.p95_s:.3f} s > "
                         f"{goal.p95_s:g} s")
        elif goal.quality is not None and running.predicted.quality < goal.quality - 1e-9:
            violation = (f"misses the quality floor: {running.predicted.quality:.3f} < "
                         f"{goal.quality:g}")
        elif goal.qualities is not None:
            for w, q in zip(running.routing.workloads, goal.qualities, strict=True):
                if w.quality < q - 1e-9:
                    violation = (f"misses workload {w.name!r}'s quality floor: "
                                 f"{w.quality:.3f} < {q:g}")
    except InfeasiblePlanError as exc:
        violation = f"is infeasible on the observed traffic: {exc}"
    return running, violation


def _propose(window: WindowProblems, goal: Goal, options: ReplanOptions,
             rate_rps: float) -> Plan:
    """The plan `boute plan` would choose on the window (`tuning.choose_plan`).

    The same pipeline as ``boute plan --scenario <window scenario>``: search with the
    options' solver, the headroom check on ``options.resim_seeds`` fresh traces per group,
    and, when the scenario names length classes, the best threshold of the window.

    Raises:
        ReplanError: no plan meets the goal at `rate_rps` on this cluster.

    """
    from profiling import load_catalog
    from tuning import PlanOptions, choose_plan, fresh_seeds

    chosen = choose_plan(
        window.at(None), goal,
        PlanOptions(solver=options.solver, seed=options.seed, stop=options.stop,
                    check_seeds=fresh_seeds(options.resim_seeds)),
        with_threshold=window.at,
        catalog=load_catalog(window.state.stack.gpu_catalog, window.state.stack.model_catalog))
    if chosen.plan is None:
        raise ReplanError(f"no plan meets the goal ({goal.mode}, quality >= {goal.quality}, "
                          f"P95 <= {goal.p95_s}) at {rate_rps:.2f} req/s on this "
                          "cluster; the running plan is unchanged")
    return chosen.plan


def _report(trace: Trace, options: ReplanOptions, goal: Goal, running: Plan,
            violation: str | None, proposed: Plan, decision: Decision) -> dict[str, Any]:
    """The round's report before any change (`replan`'s docstring; ``applied`` False)."""
    return {
        "window": {**trace.summary(), "window_s": options.window_s},
        "goal": {"mode": goal.mode, "quality": goal.quality, "p95_s": goal.p95_s,
                 "qualities": None if goal.qualities is None else list(goal.qualities)},
        "running": {**running.to_dict(), "violation": violation},
        "proposed": proposed.to_dict(),
        "decision": {"action": decision.action, "reason": decision.reason,
                     "gain": decision.gain, "must": decision.must},
        "changes": [{"group": c.name, "kind": c.kind, "replicas": [c.replicas_before,
                                                                   c.replicas_after],
                     "share": [c.share_before, c.share_after]} for c in decision.changes],
        "applied": False, "dry_run": options.dry_run, "steps": {},
    }


def _predictions(window: WindowProblems, running: Plan, proposed: Plan
                 ) -> dict[str, PredictionTable]:
    """The router's prediction tables after a change (`tuning.prediction_table`).

    From the DB the proposed plan was chosen on (the window's rate and length mix; the
    served calibration when the window was recalibrated), for the groups of both plans.
    """
    from tuning import prediction_table

    lc = proposed.routing.length_classes
    problem = window.at(None if lc is None else lc.threshold_tokens)
    return prediction_table(problem.db, peak_plan(running, proposed).groups,
                            problem.scenario.catalog_gpu)


def _apply_decision(api: ServeApi, state: RunningState, proposed: Plan, decision: Decision,
                    options: ReplanOptions, report: dict[str, Any],
                    window: WindowProblems | None = None) -> None:
    """Step 5: check the change's peak fits the cluster, then apply it; fills `report`.

    Groups on GPU types the live cluster no longer has (a lost node) are dropped from the
    running plan first (``report["lost_gpu_types"]``): they have no replica to keep while
    scaling up.

    Raises:
        ReplanError: the running and the proposed groups do not fit the cluster together
            (nothing changed).

    """
    from .deploy import DeployError, check_plan_fits

    lost = lost_gpu_types(state)
    if lost:
        state = replace(state, plan=replace(state.plan, groups=tuple(
            g for g in state.plan.groups if g.gpu not in lost)))
        report["lost_gpu_types"] = lost
    try:
        stack = check_plan_fits(peak_plan(state.plan, proposed), state.stack)
    except DeployError as exc:
        raise ReplanError(f"the proposed plan cannot be applied (scaling up before scaling "
                          f"down needs the running and the new groups at once): {exc}; "
                          "the running plan is unchanged") from None
    report["steps"] = apply_plan(api, replace(state, stack=stack), proposed,
                                 routing_only=decision.action == "routing",
                                 timeout_s=options.timeout_s,
                                 predictions=None if window is None
                                 else _predictions(window, state.plan, proposed))
    report["applied"] = True


def short_groups(details: dict[str, Any], state: RunningState) -> dict[str, tuple[int, int]]:
    """Groups of the running plan with fewer running replicas than they should have.

    Returns group -> (running, wanted), from Serve's application details.
    """
    apps = details.get("applications") or {}
    out = {}
    for g in state.plan.groups:
        dep = ((apps.get(g.name) or {}).get("deployments") or {}).get(g.name) or {}
        running = sum(1 for r in dep.get("replicas", []) if r.get("state") == "RUNNING")
        if running < g.replicas:
            out[g.name] = (running, g.replicas)
    return out


def watch(options: ReplanOptions, *, loss_s: float = 60.0, poll_s: float = 5.0,
          rounds: int | None = None,
          on_report: Callable[[dict[str, Any]], None] | None = None) -> list[dict[str, Any]]:
    """The opt-in watchdog: replan when a group stays short of replicas for `loss_s` seconds.

    Every `poll_s` seconds it compares each group's running replicas (Serve's view) with the
    plan's. A group short for `loss_s` in a row (a lost node whose replicas Serve cannot
    place again; a brief restart does not count) triggers `replan` with `options`: the GPU
    stock is capped by the surviving cluster, the running plan no longer fits it, and the
    proposed plan is applied. Stops after `rounds` replans (None: never).

    Raises:
        ReplanError: bad arguments.

    """
    if not (loss_s > 0 and poll_s > 0):
        raise ReplanError(f"loss_s={loss_s!r} and poll_s={poll_s!r} must be > 0 seconds")
    api = ServeApi(options.dashboard or dashboard_url())
    reports: list[dict[str, Any]] = []
    since: dict[str, float] = {}
    while rounds is None or len(reports) < rounds:
        details = api.details()
        short = short_groups(details, running_state(api, options.app))
        now = time.monotonic()
        since = {g: since.get(g, now) for g in short}
        if any(now - t >= loss_s for t in since.values()):
            report = replan(options)
            report["trigger"] = {g: {"running": r, "wanted": w} for g, (r, w) in short.items()}
            reports.append(report)
            if on_report is not None:
                on_report(report)
            since = {}
        time.sleep(poll_s)
    return reports


def lost_gpu_types(state: RunningState) -> list[str]:
    """GPU types the running plan uses beyond what the live cluster has (a node was lost)."""
    from placement import check_fit, gpu_types_in, live_nodes

    from .main import stack_specs

    nodes = live_nodes()
    sizes = gpu_types_in(nodes)
    stack = replace(state.stack, gpus_per_node={**sizes, **state.stack.gpus_per_node})
    return sorted({s.gpu for s in check_fit(stack_specs(state.plan, stack), nodes)})


def apply_plan(api: ServeApi, state: RunningState, proposed: Plan, *, routing_only: bool,
               timeout_s: float = 900.0,
               predictions: Mapping[str, PredictionTable] | None = None) -> dict[str, float]:
    """Move the stack from ``state.plan`` to `proposed` (up, switch, down; module docstring).

    `predictions`: the router's prediction tables (`app.drift`) from now on (None: the
    running router's, for the groups that stay). A group deployment's ``user_config`` (an
    emulated engine's ``speed_factor``) is kept for the groups that stay.

    Returns the seconds each step took.
    """
    details = api.details()
    if predictions is None:
        predictions = _router_predictions(details)
    opts: dict[str, Any] = {"host": state.host, "port": state.port,
                            "proxy_location": state.proxy_location, "predictions": predictions}
    engines = _engine_user_configs(details)
    steps: dict[str, float] = {}
    deployed = proposed
    if not routing_only:
        t = time.monotonic()
        deployed = peak_plan(state.plan, proposed)
        _apply(api, _keep(stack_config(deployed, state.stack,
                                       applied_unix_s=state.applied_unix_s,
                                       routed_plan=state.plan, **opts), engines), timeout_s)
        steps["up_s"] = time.monotonic() - t
    t = time.monotonic()
    applied = time.time()
    switch = _keep(stack_config(deployed, state.stack, applied_unix_s=applied,
                                routed_plan=proposed, **opts), engines)
    _apply(api, switch, timeout_s)
    _await_router(state, switch, timeout_s)
    steps["switch_s"] = time.monotonic() - t
    if not routing_only:
        t = time.monotonic()
        _apply(api, _keep(stack_config(proposed, state.stack, applied_unix_s=applied, **opts),
                          engines), timeout_s)
        steps["down_s"] = time.monotonic() - t
    return steps


def _engine_user_configs(details: Mapping[str, Any]) -> dict[str, Any]:
    """Group application -> its deployment's ``user_config``, where one is set (not the router)."""
    out = {}
    for name, app in (details.get("applications") or {}).items():
        cfg = (app or {}).get("deployed_app_config") or {}
        if name == APP_NAME or cfg.get("import_path") != "app.main:group_app":
            continue
        for dep in cfg.get("deployments") or []:
            if dep.get("name") == name and dep.get("user_config") is not None:
                out[name] = dep["user_config"]
    return out


def _router_predictions(details: Mapping[str, Any]) -> dict[str, PredictionTable]:
    """The running router's prediction tables (none: {})."""
    from .router_config import GroupPrediction

    cfg = ((details.get("applications") or {}).get(APP_NAME) or {}).get(
        "deployed_app_config") or {}
    for dep in cfg.get("deployments") or []:
        if dep.get("name") == "RouterIngress":
            tables = (dep.get("user_config") or {}).get("predictions") or {}
            return {g: GroupPrediction.parse(t, f"predictions.{g}").table()
                    for g, t in tables.items()}
    return {}


def _keep(config: dict[str, Any], engines: Mapping[str, Any]) -> dict[str, Any]:
    """`config` with the groups' deployed ``user_config`` kept (`_engine_user_configs`)."""
    for app in config["applications"]:
        if app["name"] in engines:
            app["deployments"][0]["user_config"] = engines[app["name"]]
    return config


def peak_plan(a: Plan, b: Plan) -> Plan:
    """Both plans' groups, each at its larger replica count (routing: `a`'s).

    What runs at the peak of a change from `a` to `b` that scales up before it scales down.
    """
    groups: dict[str, Group] = {g.name: g for g in a.groups}
    for g in b.groups:
        if g.name not in groups or g.replicas > groups[g.name].replicas:
            groups[g.name] = g
    return replace(a, groups=tuple(groups.values()), predicted=None)


def _router_config(config: dict[str, Any]) -> dict[str, Any]:
    return config["applications"][0]["deployments"][0]["user_config"]  # type: ignore[no-any-return]


def _apply(api: ServeApi, config: dict[str, Any], timeout_s: float) -> None:
    api.apply(config)
    api.wait(config, timeout_s=timeout_s)


def _await_router(state: RunningState, config: dict[str, Any], timeout_s: float) -> None:
    """Wait until the router's ``/health`` reports the config's ``config_id``."""
    want = _router_config(config)["config_id"]
    url = f"{local_url(state.host, state.port)}/health"
    deadline = time.monotonic() + min(timeout_s, 120.0)
    seen = None
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=5) as resp:
                seen = json.loads(resp.read()).get("config_id")
            if seen == want:
                return
        except OSError as exc:
            seen = f"unreachable ({exc})"
        time.sleep(0.2)
    raise ServeApiError(f"the router at {url} did not take the new routing (config_id "
                        f"{seen!r}, expected {want!r})")


def _stderr_note(text: str) -> None:
    """A note for the job's log (stderr), as the CLI prints it."""
    print(f"boute replan: {text}", file=sys.stderr)
