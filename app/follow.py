"""Serving a schedule: each window's plan applied ahead of its rise, reactive on a surprise.

    boute replan --schedule build/schedule.json [--watch]      (CLI, `boute.replan_cli`)
    from app.follow import FollowOptions, follow_step           (Python)

A schedule (`boute schedule`'s JSON: one plan per window of the day) is followed by
`follow_step`, run every few seconds (`follow`) or as a Ray job:

1. **Where in the day.** ``t = ((now - day_start) x time_scale) mod day``: the window ``w``
   and the wall seconds until the next one (``time_scale`` > 1 compresses a day for dry runs).
2. **Predictive.** The target is window ``w``'s plan, or already the next window's when that
   one raises capacity (a rise) and begins within the lead: the slowest cold start of the
   replicas it starts (`profiling.cold_start_s`, written into each window by `boute
   schedule`; in wall seconds), at least ``min_lead_s``. A fall is applied at its boundary,
   never ahead.
3. **Reactive fallback.** When the request log's last ``window_s`` seconds show a rate above
   the forecast (the window's planned rate) by more than ``depart_tolerance``, the schedule
   is not trusted: one reactive round (`app.replan.replan`, with its hysteresis) decides.
   The follower stays reactive until the observed rate is back under the forecast by half
   the tolerance (a hysteresis band, so that a rate on the edge does not flip between modes).
4. **Apply** the target when it differs from the running plan (replicas or routing): the
   replanner's up / switch / down (`app.replan.apply_plan`), after checking that running and
   target groups fit the cluster together. A schedule changes at most once per window
   boundary (plus once ahead of a rise), so it cannot oscillate faster than its windows, and
   it never asks for more GPUs than the stock it was planned for.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from tuning import Plan

from .replan import (
    ReplanError,
    ReplanOptions,
    RunningState,
    apply_plan,
    peak_plan,
    replan,
    running_state,
    window_trace,
)
from .serve_api import ServeApi, dashboard_url

__all__ = ["FollowOptions", "FollowState", "LoadedSchedule", "follow", "follow_step",
           "load_schedule", "scheduled_target"]

DAY_S = 86_400.0


@dataclass(frozen=True)
class LoadedSchedule:
    """A `boute schedule` JSON: the windows and their plans."""

    window_s: float
    rates: tuple[float, ...]
    choice: tuple[int, ...]
    plans: tuple[Plan, ...]
    started: tuple[int, ...]          # replicas the change into window t starts
    cold_start_s: tuple[float, ...]   # slowest cold start of those (0 when none)
    levels: tuple[float, ...] = ()    # the rate each plan was sized for (empty: unknown)

    def rises(self, w: int) -> bool:
        """Whether the change into window `w` raises capacity.

        A plan sized for a higher rate (levels unknown: one that starts replicas).
        """
        prev = self.choice[w - 1]
        if self.choice[w] == prev or not self.started[w]:
            return False
        if self.levels:
            return self.levels[self.choice[w]] > self.levels[prev]
        return True

    @property
    def period_s(self) -> float:
        """The schedule's length (a day for a daily profile)."""
        return self.window_s * len(self.choice)


def load_schedule(path: str | Path) -> LoadedSchedule:
    """Read `boute schedule`'s JSON (each window carries its change's slowest cold start).

    Raises:
        ReplanError: unreadable or malformed (named).

    """
    try:
        data = json.loads(Path(path).read_text())
        window_s = float(data["window_s"])
        windows = data["windows"]
        plans = tuple(Plan.from_dict(p["plan"], f"{path}: plans[{i}]")
                      for i, p in enumerate(data["plans"]))
        choice = tuple(int(w["plan"]) for w in windows)
        rates = tuple(float(w["rate_rps"]) for w in windows)
        started = tuple(int(w["started"]) for w in windows)
        colds = tuple(float(w["cold_start_s"]) for w in windows)
        levels = tuple(float(p["level_rps"]) for p in data["plans"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ReplanError(f"schedule {str(path)!r} is not a `boute schedule` JSON ({exc}); "
                          "write one with `boute schedule --out FILE`") from None
    if not choice or not window_s > 0 or any(not 0 <= j < len(plans) for j in choice):
        raise ReplanError(f"schedule {str(path)!r}: windows name plans outside 0.."
                          f"{len(plans) - 1} or the window is not > 0 s")
    return LoadedSchedule(window_s, rates, choice, plans, started, colds, levels)


@dataclass(frozen=True)
class FollowOptions:
    """How to follow a schedule (module docstring)."""

    schedule: str
    day_start_unix_s: float | None = None
    """When the schedule's t = 0 is (default: the last UTC midnight)."""
    time_scale: float = 1.0
    """Schedule seconds per wall second (> 1: a compressed day for dry runs)."""
    min_lead_s: float = 30.0
    """Apply a rise at least this many wall seconds ahead (deploy steps besides the engine's
    cold start: placement, health checks)."""
    depart_tolerance: float = 0.25
    """Observed rate above the forecast by more than this share: reactive fallback."""
    replan: ReplanOptions = field(default_factory=ReplanOptions)
    """The reactive fallback's options (window, hysteresis, ...)."""

    def __post_init__(self) -> None:
        for name in ("time_scale", "depart_tolerance"):
            value = getattr(self, name)
            if not (value > 0 and math.isfinite(value)):
                raise ReplanError(f"{name}={value!r} must be a positive number")
        if not (self.min_lead_s >= 0 and math.isfinite(self.min_lead_s)):
            raise ReplanError(f"min_lead_s={self.min_lead_s!r} must be >= 0 seconds")


@dataclass
class FollowState:
    """What the follower remembers between steps: whether it fell back to reactive."""

    reactive: bool = False
    changes: list[dict[str, Any]] = field(default_factory=list)


def scheduled_target(sched: LoadedSchedule, opts: FollowOptions, now_s: float
                     ) -> tuple[int, Plan, str]:
    """The window in effect, the plan to run now and why (module docstring, steps 1-2)."""
    start = opts.day_start_unix_s
    if start is None:
        start = math.floor(now_s / DAY_S) * DAY_S
    t = ((now_s - start) * opts.time_scale) % sched.period_s
    n = len(sched.choice)
    w = int(t // sched.window_s) % n
    nxt = (w + 1) % n
    until_wall = (sched.window_s - t % sched.window_s) / opts.time_scale
    lead = max(opts.min_lead_s, sched.cold_start_s[nxt] / opts.time_scale)
    if sched.rises(nxt) and until_wall <= lead:
        return w, sched.plans[sched.choice[nxt]], (
            f"ahead of window {nxt}'s rise ({until_wall:.0f} s to go, lead {lead:.0f} s)")
    return w, sched.plans[sched.choice[w]], f"window {w}"


def same_deployment(a: Plan, b: Plan) -> bool:
    """Same groups with the same replicas and the same routing."""
    def key(p: Plan) -> tuple[Any, ...]:
        return (sorted((g.name, g.replicas) for g in p.groups), p.routing.to_dict())
    return key(a) == key(b)


def follow_step(opts: FollowOptions, state: FollowState | None = None, *,
                api: ServeApi | None = None, now_s: float | None = None,
                sched: LoadedSchedule | None = None) -> dict[str, Any]:
    """One step of following the schedule (module docstring); returns its report.

    Raises:
        ReplanError: a malformed schedule, or a target that does not fit the cluster next to
            the running plan (nothing changed).

    """
    state = state or FollowState()
    api = api or ServeApi(opts.replan.dashboard or dashboard_url())
    sched = sched or load_schedule(opts.schedule)
    now = time.time() if now_s is None else now_s
    w, target, why = scheduled_target(sched, opts, now)
    # Ahead of a rise the next window's plan (and rate) already apply.
    ahead = target is not sched.plans[sched.choice[w]]
    forecast = max(sched.rates[w], sched.rates[(w + 1) % len(sched.rates)] if ahead else 0.0)
    running = running_state(api, opts.replan.app)
    observed = _observed_rate(running, opts, now)
    report: dict[str, Any] = {"window": w, "reason": why, "forecast_rps": forecast,
                              "observed_rps": observed, "applied": False}
    if observed is not None:
        over = observed > forecast * (1 + opts.depart_tolerance)
        back = observed <= forecast * (1 + opts.depart_tolerance / 2)
        state.reactive = over or (state.reactive and not back)
    if state.reactive:
        report["mode"] = "reactive"
        report["replan"] = replan(replace(opts.replan, now_s=now))
        report["applied"] = bool(report["replan"].get("applied"))
    elif same_deployment(running.plan, target):
        report["mode"] = "scheduled"
    else:
        report["mode"] = "scheduled"
        report["steps"] = _apply_target(api, running, target, opts)
        report["applied"] = True
    if report["applied"]:
        state.changes.append({"at_s": now, "window": w, "mode": report["mode"]})
    return report


def _observed_rate(running: RunningState, opts: FollowOptions, now_s: float) -> float | None:
    """The request log's rate over the reactive window (None: too few requests yet)."""
    if not running.stack.log_dir:
        return None
    try:
        trace = window_trace(running.stack.log_dir, window_s=opts.replan.window_s,
                             now_s=now_s, min_requests=opts.replan.min_requests)
    except ReplanError:
        return None
    return trace.rate_rps if math.isfinite(trace.rate_rps) else None


def _apply_target(api: ServeApi, running: RunningState, target: Plan, opts: FollowOptions
                  ) -> dict[str, float]:
    """Apply `target` (up, switch, down) after checking both plans fit the cluster together."""
    from .deploy import DeployError, check_plan_fits

    try:
        stack = check_plan_fits(peak_plan(running.plan, target), running.stack)
    except DeployError as exc:
        raise ReplanError(f"the scheduled plan cannot be applied next to the running one: "
                          f"{exc}; the running plan is unchanged") from None
    groups_same = sorted((g.name, g.replicas) for g in running.plan.groups) == sorted(
        (g.name, g.replicas) for g in target.groups)
    return apply_plan(api, replace(running, stack=stack), target, routing_only=groups_same,
                      timeout_s=opts.replan.timeout_s)


def follow(opts: FollowOptions, *, poll_s: float = 5.0, until_s: float | None = None,
           on_report: Callable[[dict[str, Any]], None] | None = None) -> FollowState:
    """Follow the schedule: a step, then one every `poll_s` seconds until `until_s`.

    `until_s` is wall-clock time (None: forever; already past: that one step). A step that
    fails (a change that does not fit, the dashboard unreachable) is reported (``error``)
    and the next step tries again; the running plan is never left half-changed by the
    follower (`app.replan.apply_plan` moves up, switches, then goes down).
    """
    state = FollowState()
    sched = load_schedule(opts.schedule)
    api = ServeApi(opts.replan.dashboard or dashboard_url())
    while True:
        try:
            report = follow_step(opts, state, api=api, sched=sched)
        except ReplanError as exc:
            report = {"error": str(exc), "applied": False}
        if on_report is not None:
            on_report(report)
        if until_s is not None and time.time() >= until_s:
            return state
        time.sleep(poll_s)
