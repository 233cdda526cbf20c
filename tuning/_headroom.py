"""Headroom: plans that hold their P95 target on traffic they were not planned on.

The perf DB measures each config on one base trace (seed ``profile.seed``, ``num_requests``
requests) scaled to each rate, so a plan is chosen on that sample. `resimulate` replays every
replica group of a plan on *fresh* traffic: for each seed, a new trace of each workload the group
serves (new lengths, new arrivals), mixed in the group's proportions at the per-replica rate the
plan gives it (`Group.share` of its model's load), through the same replica model and simulator
the DB was built with. A group *holds* when its P95 on that trace is at or below the target
and the run is not saturated; a plan holds when every group does on every seed.

`hold` is the planner's guard against the edge: it searches, re-simulates the chosen plan, and
while a group fails it *derates* that group's config and searches again, up to `MAX_ROUNDS`
rounds. Derating a config by ``(a, r)`` replaces its capacity table (every workload's) by
``a cap(x / r)``: its P95 at every rate is taken ``r`` times higher (``r`` = the worst fresh
P95 over the target, plus 1%; this is what fixes a P95 that is long at any load, such as
MT-Bench's long answers), and its capacity ``a = DERATE`` times lower when a fresh run
saturated or ``r`` was already applied (what fixes a rate too close to saturation). A plan
that holds on the first try is returned as the search found it; one that sat on the edge (a
P95 estimated on one 1,000-request sample, a rate within a few percent of saturation) is
replaced by the cheapest plan the derated capacities allow. The target is the goal's P95,
or for a Pareto goal the plan's own planning P95 plus `PARETO_TOLERANCE`.

Fresh traffic keeps the workload's arrival process (`profiling._arrivals`): renewal
workloads draw new Poisson/gamma traces; a trace file's workload draws new bootstrap
stretches of the whole file, thinned to the group's rate; a ``modulated`` workload draws a
new stream. A plan that holds on Poisson arrivals but not on the workload's bursts is caught
here.

With TTFT / TPOT targets (``Goal.ttft_p95_s``, ``Goal.tpot_p95_s``) the problem is clipped to
them (`Problem.with_token_targets`), every check also measures the group's TTFT and TPOT P95
and its goodput (requests meeting every target), and a group holds only when both P95s meet
their targets as well; one that misses has its config's capacity scaled by ``1 / over``
(between 0.5 and `DERATE`; after the `DERATE` step of a group that misses with its P95 within
target), ``over`` the worst token P95 over its target. `Held.goodput` is
the plan's goodput: each group's over its traces, weighted by the group's load.

With a window SLO (``Goal.slo``: P95 <= L in at least X of the W-second windows,
`tuning._slo`) a group is judged by its window attainment on fresh traces long enough for
`MIN_WINDOWS` windows, pooled over the seeds (`verdicts`); when one misses, every config of
its lane (model, length class) has its capacity scaled by ``over^-1/2`` (``over``: the pooled
``window_quantile(X) / L``; between 0.6 and 0.95 per round), so the search leaves that lane
headroom for its busiest windows on whatever config it picks.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, NamedTuple

import numpy as np

from profiling import (
    MAX_CHECK_REQUESTS,
    Catalog,
    EngineConfig,
    NamedWorkload,
    ReplicaModel,
    Scenario,
    SimResult,
    ThinnedTraffic,
    Trace,
    capacity_rps,
    generate_trace,
    simulate,
)

from ._evaluator import plan_from_arrays
from ._plan import LENGTH_CLASSES, Plan, length_spans
from ._problem import Problem
from ._run import Goal, SearchResult
from ._slo import WindowSLO, window_p95s

__all__ = ["FRESH_SEEDS", "GroupCheck", "Held", "hold", "resimulate"]

FRESH_SEEDS = (101, 202, 303)
MIN_WINDOWS = 40
"""Windows per fresh trace when a window SLO is judged (its attainment in 2.5% steps)."""
DERATE = 0.98
MAX_ROUNDS = 8
PARETO_TOLERANCE = 0.05


@dataclass(frozen=True)
class GroupCheck:
    """One replica group of a plan re-simulated on one fresh trace.

    With a window SLO (`tuning._slo`), ``window_p95s`` holds the P95 of each of the trace's
    windows; a group's windows are judged pooled over its traces (`verdicts`).
    """

    group: str
    seed: int
    rate_rps: float          # per replica
    p95_s: float
    target_s: float
    saturated: bool
    window_p95s: tuple[float, ...] | None = None
    slo: WindowSLO | None = None
    ttft_p95_s: float = math.nan
    tpot_p95_s: float = math.nan
    ttft_target_s: float | None = None
    tpot_target_s: float | None = None
    goodput: float | None = None       # share of the trace's requests meeting every target
    load_rps: float = 0.0              # the group's whole load (all replicas)

    @property
    def holds(self) -> bool:
        """P95 at or below the target, unsaturated, TTFT / TPOT P95 within theirs."""
        return not self.saturated and self.p95_s <= self.target_s and self.token_over <= 1.0

    @property
    def token_over(self) -> float:
        """The worst TTFT / TPOT P95 over its target (0: no token target; a NaN TPOT meets)."""
        out = 0.0
        for value, target in ((self.ttft_p95_s, self.ttft_target_s),
                              (self.tpot_p95_s, self.tpot_target_s)):
            if target is not None and not math.isnan(value):
                out = max(out, value / target)
        return out

    @property
    def over(self) -> float:
        """The judged latency over the target (<= 1: within).

        The P95, or with a window SLO the SLO's quantile of the window P95s.
        """
        if self.slo is not None and self.window_p95s:
            return float(np.quantile(self.window_p95s, self.slo.attainment)) / self.target_s
        return self.p95_s / self.target_s


class Verdict(NamedTuple):
    """A group's verdict over its fresh traces (`verdicts`)."""

    holds: bool
    over: float
    attainment: float | None        # pooled window attainment (None: no window SLO)
    token_over: float = 0.0         # worst TTFT / TPOT P95 over its target (0: none)


def verdicts(checks: Sequence[GroupCheck]) -> dict[str, Verdict]:
    """Each group's verdict over its fresh traces.

    Without a window SLO a group holds when every trace holds, and ``over`` is the worst
    unsaturated trace's. With one, the windows of all its traces are pooled (attainment is a
    long-run share: three traces of 40 windows judge it on 120): the group holds when no trace
    saturated and the pooled attainment reaches the SLO's; ``over`` is the pooled SLO quantile
    of the window P95s over the target.
    """
    out: dict[str, Verdict] = {}
    for name in dict.fromkeys(c.group for c in checks):
        mine = [c for c in checks if c.group == name]
        slo = mine[0].slo
        pooled = [w for c in mine for w in (c.window_p95s or ())]
        token = max((c.token_over for c in mine if not c.saturated), default=0.0)
        if slo is None or not pooled:
            over = max((c.over for c in mine if not c.saturated), default=0.0)
            out[name] = Verdict(all(c.holds for c in mine), over, None, token)
            continue
        target = mine[0].target_s
        share = float(np.mean(np.asarray(pooled) <= target))
        over = float(np.quantile(pooled, slo.attainment)) / target
        out[name] = Verdict(not any(c.saturated for c in mine) and token <= 1.0
                            and share >= slo.attainment - 1e-12, over, share, token)
    return out


def _fresh(wl: NamedWorkload, rate_rps: float, num_requests: int, seed: int,
           span: tuple[int, int] | None = None, class_share: float = 1.0,
           scenario: Scenario | None = None) -> Trace:
    """A new trace of workload `wl` at `rate_rps`, drawn with its own arrival process.

    Renewal arrivals (poisson, gamma): a new draw of its shape, or its file's lengths
    resampled with Poisson arrivals. Modulated arrivals (a trace file's own, ``modulated``):
    the workload's traffic (`profiling.ThinnedTraffic`) at `rate_rps` with another bootstrap
    seed, on a newly generated stream for ``modulated``: never Poisson for a workload that is
    not.

    `span` ``(lo, hi)``: only requests with ``lo < prompt + max_tokens <= hi`` (a length
    class holding `class_share` of the workload): the workload is drawn at ``rate /
    class_share`` and thinned to the class, so the class arrives at about `rate_rps`.
    """
    shared = wl.shared_traffic(num_requests, 0)
    if shared is not None:      # conversations: drawn anew at this rate (perf DB's traffic)
        return replace(shared, max_requests=MAX_CHECK_REQUESTS).at_rate(rate_rps, seed=seed)
    thinned = None if scenario is None else _modulated_traffic(scenario, wl, span, seed)
    if thinned is not None:
        traffic = replace(thinned, num_requests=num_requests, max_requests=MAX_CHECK_REQUESTS)
        return traffic.at_rate(rate_rps, seed=seed)
    draw = (num_requests if span is None else
            int(np.ceil(num_requests / max(class_share, 1e-3) * 1.5)) + 50)
    rate = rate_rps / (1.0 if span is None else max(class_share, 1e-3))
    if wl.trace is None:
        assert wl.shape is not None
        trace = generate_trace(wl.shape, rate_rps=rate, num_requests=draw,
                               arrival="gamma" if wl.arrival_model == "gamma" else "poisson",
                               burstiness_cv=wl.burstiness_cv, seed=seed)
    else:
        base = wl.load()
        rng = np.random.default_rng(seed)
        idx = rng.integers(0, len(base.arrival_s), size=draw)
        arrival = np.cumsum(rng.exponential(1.0 / rate, size=draw))
        trace = Trace(arrival - arrival[0], base.input_tokens[idx], base.output_tokens[idx],
                      name=f"{wl.name}-resampled")
    if span is None:
        return trace
    keep = np.flatnonzero(trace.in_length_span(*span))[:num_requests]
    return Trace(trace.arrival_s[keep] - trace.arrival_s[keep[0]], trace.input_tokens[keep],
                 trace.output_tokens[keep], name=f"{trace.name}-{span[0]}-{span[1]}")


_TRAFFIC: dict[tuple[str, str, tuple[int, int] | None, int], ThinnedTraffic | None] = {}


def _modulated_traffic(scenario: Scenario, wl: NamedWorkload, span: tuple[int, int] | None,
                       seed: int) -> ThinnedTraffic | None:
    """Workload `wl`'s modulated traffic (its length class's), kept for the process.

    A generated stream is drawn anew with `seed`; a trace file's stream is the file (the
    bootstrap seed differs). None: the workload's traffic is renewal (its perf DB scales one
    base trace), including a trace too short to bootstrap.
    """
    if wl.arrival_model not in ("trace", "modulated"):
        return None
    key = (scenario.model_dump_json(), wl.name, span,
           seed if wl.arrival_model == "modulated" else -1)
    if key in _TRAFFIC:
        return _TRAFFIC[key]
    if len(_TRAFFIC) > 64:
        _TRAFFIC.clear()
    sc = scenario.for_workload(wl.name)
    if wl.arrival_model == "modulated":
        sc = sc.model_copy(update={"profile": sc.profile.model_copy(update={"seed": seed})})
    traffic = sc.profile_spec(span).traffic()
    thinned = traffic if isinstance(traffic, ThinnedTraffic) else None
    _TRAFFIC[key] = thinned
    return thinned


def _is_modulated(scenario: Scenario, wl: NamedWorkload, span: tuple[int, int] | None
                  ) -> bool:
    """Whether `wl` arrives modulated (its fresh traffic is thinned, not renewal).

    Generated ``modulated`` arrivals (decided without drawing a stream), or a trace file
    long enough to bootstrap (its traffic, cached).
    """
    if wl.arrival_model == "modulated":
        return True
    return _modulated_traffic(scenario, wl, span, 0) is not None


def _mixed(parts: Sequence[Trace]) -> Trace:
    """Traces merged by arrival time (one trace: itself, its sharing columns kept)."""
    if len(parts) == 1:
        return parts[0]
    arrival = np.concatenate([p.arrival_s for p in parts])
    order = np.argsort(arrival, kind="stable")
    return Trace(arrival[order], np.concatenate([p.input_tokens for p in parts])[order],
                 np.concatenate([p.output_tokens for p in parts])[order], name="mix")


def resimulate(problem: Problem, plan: Plan, catalog: Catalog, *, target_s: float,
               seeds: Sequence[int] = FRESH_SEEDS, num_requests: int = 2000,
               hardware_profiles: str | None = None, slo: WindowSLO | None = None,
               ttft_p95_s: float | None = None, tpot_p95_s: float | None = None,
               goodput_p95_s: float | None = None,
               runs: dict[tuple[Any, ...], tuple[Trace, float, SimResult]] | None = None
               ) -> list[GroupCheck]:
    """Every group of `plan` on fresh traffic, one check per (group, seed).

    Args:
        problem: the planning problem the plan was made for.
        plan: the plan (its groups' ``share`` gives each group's load).
        catalog: the merged catalog (models and GPUs of the replicas).
        target_s: the P95 each group must meet.
        seeds: one fresh trace per seed.
        num_requests: requests per group and seed (with `slo`: enough for `MIN_WINDOWS`
            windows, up to `MAX_CHECK_REQUESTS`).
        hardware_profiles: as for the perf DB (the GPU efficiencies it was built with).
        slo: judge each group by its window attainment (`GroupCheck`).
        ttft_p95_s: a TTFT target each group's TTFT P95 must meet too (None: none).
        tpot_p95_s: a TPOT target each group's TPOT P95 must meet too (None: none).
        goodput_p95_s: with a token target, the end-to-end latency a request must meet to
            count in `GroupCheck.goodput` (None: none; the goal's ``p95_s``).
        runs: fresh runs already made for `problem` (`hold` keeps them across its rounds): a
            group with the same config, class, per-replica loads and seed is not simulated
            again (its trace and run are the same); new runs are added.

    With a token target each check also holds its goodput: the share of the trace's requests
    (unfinished ones fail) with latency <= `goodput_p95_s`, TTFT <= `ttft_p95_s` and TPOT <=
    `tpot_p95_s` (those set; a one-token answer has no TPOT and meets it).

    """
    from profiling import spec_calibration

    sc = problem.scenario
    calibration = spec_calibration(sc.for_workload(sc.workload_names[0]).profile_spec(),
                                   catalog, hardware_profiles=hardware_profiles)
    loads = _model_workload_loads(problem, plan)                 # {(model, class): (W,)}
    tau = problem.threshold_tokens
    out = []
    for g in plan.groups:
        load = loads.get((g.model, g.length_class))
        span = (None if tau is None or g.length_class is None else
                length_spans(tau)[g.length_class])
        k = 0 if g.length_class is None else LENGTH_CLASSES.index(g.length_class)
        if load is None or load.sum() <= 0 or g.share <= 0:
            continue
        gpu = catalog.gpu(sc.catalog_gpu(g.gpu))
        replica = ReplicaModel(catalog.model(g.model), gpu, g.tp, g.pp,
                               calibration.engine_for(g.model, gpu.name, g.tp, g.pp,
                                                      EngineConfig()),
                               calibration.for_gpu(gpu.name))
        per_replica = load * g.share / g.replicas                          # (W,) req/s
        modulated = any(per_replica[w] > 0 and _is_modulated(sc, wl, span)
                        for w, wl in enumerate(sc.named_workloads))
        for seed in seeds:
            key = (g.model, g.gpu, g.tp, g.pp, g.length_class, tuple(per_replica.tolist()),
                   seed, num_requests, None if slo is None else slo.window_s)
            if runs is not None and key in runs:
                trace, cap, res = runs[key]
            else:
                parts = []
                for w, wl in enumerate(sc.named_workloads):
                    if per_replica[w] <= 0:
                        continue
                    want = num_requests if slo is None else max(num_requests, math.ceil(
                        per_replica.sum() * slo.window_s * MIN_WINDOWS))
                    want = min(want, MAX_CHECK_REQUESTS)
                    n = max(50, round(want * per_replica[w] / per_replica.sum()))
                    p = 1.0 if problem.class_share is None else float(problem.class_share[w, k])
                    parts.append(_fresh(wl, float(per_replica[w]), n, seed * 31 + w, span, p,
                                        sc))
                trace = _mixed(parts)
                cap = capacity_rps(replica, trace)
                res = simulate(replica, trace, capacity=cap)
                if runs is not None:
                    runs[key] = (trace, cap, res)
            p95 = float(res.latency_quantiles((0.95,))[0])
            if modulated and res.completed == len(trace):
                p95 = float(np.quantile(res.latency_s, 0.95))
            windows = None
            if slo is not None and res.completed == len(trace):
                windows = tuple(window_p95s(trace.arrival_s, res.latency_s, slo.window_s))
            # Modulated traffic: a queue still draining a late burst looks like a growing
            # one to the simulator's trend test; the whole run's P95 judges it (as
            # `tuning.replay` does), saturated only past capacity on average.
            saturated = (res.saturated if not modulated else
                         trace.rate_rps >= 0.98 * cap or not np.isfinite(p95))
            tokens: dict[str, Any] = {}
            if ttft_p95_s is not None or tpot_p95_s is not None:
                tokens = _token_fields(res, len(trace), ttft_p95_s, tpot_p95_s, goodput_p95_s)
                tokens["load_rps"] = float(per_replica.sum()) * g.replicas
            out.append(GroupCheck(g.name, seed, float(per_replica.sum()), p95, target_s,
                                  saturated, windows, slo, **tokens))
    return out


def _token_fields(res: SimResult, n: int, ttft_s: float | None, tpot_s: float | None,
                  p95_s: float | None) -> dict[str, Any]:
    """A run's TTFT / TPOT P95, the targets and its goodput over `n` requests (`resimulate`)."""
    good = np.ones(res.completed, dtype=bool)
    if p95_s is not None:
        good &= res.latency_s <= p95_s
    if ttft_s is not None:
        good &= res.ttft_s <= ttft_s
    if tpot_s is not None:
        good &= np.isnan(res.tpot_s) | (res.tpot_s <= tpot_s)
    tpot = res.tpot_s[~np.isnan(res.tpot_s)]
    return {"ttft_p95_s": float(np.quantile(res.ttft_s, 0.95)) if res.completed else math.inf,
            "tpot_p95_s": float(np.quantile(tpot, 0.95)) if tpot.size else math.nan,
            "ttft_target_s": ttft_s, "tpot_target_s": tpot_s,
            "goodput": float(good.sum()) / max(n, 1)}


def model_shares(problem: Problem, plan: Plan) -> np.ndarray:
    """``(W, M)``: the share of workload w's requests that `plan` routes to model m."""
    rt = plan.routing
    by_name = {w.name: w for w in rt.per_workload(problem.workloads)}
    order = [(rt.models or problem.models).index(m) for m in problem.models]
    return np.array([[by_name[w].shares[i] for i in order] for w in problem.workloads])


def _model_workload_loads(problem: Problem, plan: Plan
                          ) -> dict[tuple[str, str | None], np.ndarray]:
    """Each (model, length class)'s load from each workload, req/s (class None: no classes)."""
    shares = model_shares(problem, plan)
    out: dict[tuple[str, str | None], np.ndarray] = {}
    for m, name in enumerate(problem.models):
        load = problem.workload_rates * shares[:, m]
        if problem.class_share is None:
            out[(name, None)] = load
        else:
            for k, cls in enumerate(problem.classes):
                out[(name, cls)] = load * problem.class_share[:, k]
    return out


@dataclass
class Held:
    """The outcome of `hold`: the last search, its plan and the checks of that plan.

    ``derated`` maps a config's name to the factors it was planned with: ``capacity`` (a)
    and ``latency`` (r), see the module docstring; ``tightened`` maps a lane (model, and
    ``-class`` with length classes) to the capacity factor all its configs were planned with
    after a window SLO missed.
    """

    result: SearchResult
    plan: Plan | None
    checks: list[GroupCheck]
    rounds: int
    derated: dict[str, dict[str, float]] = field(default_factory=dict)
    tightened: dict[str, float] = field(default_factory=dict)

    @property
    def holds(self) -> bool:
        """A plan, and every group met its target on its fresh traces (`verdicts`)."""
        return self.plan is not None and all(v.holds for v in verdicts(self.checks).values())

    @property
    def goodput(self) -> float | None:
        """Share of requests meeting every target over the fresh traces (None: no token target).

        ``sum_g lambda_g mean_seeds(goodput_g) / sum_g lambda_g``, ``lambda_g`` the group's
        load: each group counts as its share of the plan's requests.
        """
        mine = [c for c in self.checks if c.goodput is not None]
        if not mine:
            return None
        by_group: dict[str, list[GroupCheck]] = {}
        for c in mine:
            by_group.setdefault(c.group, []).append(c)
        load = {g: cs[0].load_rps for g, cs in by_group.items()}
        total = sum(load.values())
        return sum(load[g] * float(np.mean([c.goodput for c in cs]))
                   for g, cs in by_group.items()) / total if total > 0 else None

    def summary(self) -> dict[str, object]:
        """The JSON block of plan outputs."""
        worst = max(self.checks, key=lambda c: c.over, default=None)
        out: dict[str, object] = {
            "seeds": sorted({c.seed for c in self.checks}), "holds": self.holds,
            "rounds": self.rounds, "derated": self.derated,
            "worst": None if worst is None else {
                "group": worst.group, "seed": worst.seed, "p95_s": worst.p95_s,
                "target_s": worst.target_s, "saturated": worst.saturated}}
        tokens = [c for c in self.checks if c.goodput is not None]
        if tokens:
            out["tokens"] = {
                "ttft_target_s": tokens[0].ttft_target_s,
                "tpot_target_s": tokens[0].tpot_target_s,
                "worst_ttft_p95_s": max(c.ttft_p95_s for c in tokens),
                "worst_tpot_p95_s": max((c.tpot_p95_s for c in tokens
                                         if not math.isnan(c.tpot_p95_s)), default=None),
                "goodput": self.goodput}
        slo = next((c.slo for c in self.checks if c.slo is not None), None)
        if slo is not None:
            # Predicted attainment: each group's windows pooled over its fresh traces; the
            # plan's: the worst group's.
            groups = {name: 1.0 if v.attainment is None else v.attainment
                      for name, v in verdicts(self.checks).items()}
            out["slo"] = {"attainment": slo.attainment, "window_s": slo.window_s,
                          "predicted_attainment": min(groups.values(), default=1.0),
                          "groups": groups, "lane_capacity": self.tightened}
        return out


def _derated(problem: Problem, derate: dict[int, tuple[float, float]]) -> Problem:
    """`problem` with config c's capacity tables replaced by ``a cap_w(x / r)``.

    Every workload's table is; the mix's (`Problem.cap`) follows from them.
    """
    caps = problem.caps.copy()
    logx = np.log(problem.levels_s)
    for c, (a, r) in derate.items():
        for w in range(len(problem.workloads)):
            caps[w, c] = a * np.interp(logx - np.log(r), logx, problem.caps[w, c], left=0.0)
    return replace(problem, caps=caps)


def hold(problem: Problem, goal: Goal, run: Callable[[Problem], SearchResult],
         catalog: Catalog, *, seeds: Sequence[int] = FRESH_SEEDS,
         hardware_profiles: str | None = None) -> Held:
    """Search with `run` until the chosen plan holds on fresh traffic (module docstring).

    Args:
        problem: the planning problem.
        goal: the search's goal (its P95 is the target).
        run: ``problem -> SearchResult`` (the searcher, with its settings).
        catalog: the merged catalog.
        seeds: fresh traces per group; empty: no check (the search's plan as it is).
        hardware_profiles: as for the perf DB.

    """
    problem = problem.for_goal(goal)
    derate: dict[int, tuple[float, float]] = {}
    tighten: dict[tuple[int, int], float] = {}      # lane (model, class) -> capacity factor
    current = problem
    runs: dict[tuple[Any, ...], tuple[Trace, float, SimResult]] = {}   # groups unchanged
    for rounds in range(1, MAX_ROUNDS + 2):
        res = run(current)
        b = res.best(current)
        if b is None:
            return Held(res, None, [], rounds, _names(problem, derate),
                        _lane_names(problem, tighten))
        # Predicted with the derated capacities: the shares the groups are checked with.
        plan = plan_from_arrays(current, res.plans, res.metrics, b)
        if not seeds:
            return Held(res, plan, [], rounds)
        assert plan.predicted is not None
        target = (goal.p95_s if goal.p95_s is not None and goal.mode != "pareto"
                  else plan.predicted.p95_s * (1 + PARETO_TOLERANCE))
        checks = resimulate(problem, plan, catalog, target_s=target, seeds=seeds,
                            hardware_profiles=hardware_profiles, slo=goal.slo,
                            ttft_p95_s=goal.ttft_p95_s, tpot_p95_s=goal.tpot_p95_s,
                            goodput_p95_s=goal.p95_s, runs=runs)
        judged = verdicts(checks)
        if all(v.holds for v in judged.values()) or rounds > MAX_ROUNDS:
            return Held(res, plan, checks, rounds, _names(problem, derate),
                        _lane_names(problem, tighten))
        for g in plan.groups:
            mine = [c for c in checks if c.group == g.name]
            if not mine or judged[g.name].holds:
                continue
            lane = (problem.models.index(g.model),
                    0 if g.length_class is None else LENGTH_CLASSES.index(g.length_class))
            c = problem.config(lane[0], problem.gpu_types.index(g.gpu), g.tp, g.pp, lane[1])
            a, r = derate.get(c, (1.0, 1.0))
            saturated = any(k.saturated for k in mine)
            over = judged[g.name].over
            if goal.slo is not None:
                # A window SLO missed: every config of the lane (a burst pattern that breaks
                # one config's windows breaks the config the search would move the lane to
                # as well) carries less load: its capacity times over^-1/2, between 0.6 and
                # 0.95 per round. Latency scaling does not do it: near saturation a config's
                # P95 curve is steep, and its worst windows need headroom for the busiest
                # minutes, not a lower average P95.
                if over > 1.0:
                    tighten[lane] = tighten.get(lane, 1.0) * min(0.95, max(0.6, over**-0.5))
                if saturated or over <= 1.0:
                    a *= DERATE
            else:
                if saturated or over <= 1.0 or r > 1.0:
                    a *= DERATE
                if over > 1.0:
                    r *= over * 1.01
            token = judged[g.name].token_over
            if token > 1.0:
                # A TTFT / TPOT P95 over its target: the config's token rate cap is too high;
                # its capacity times 1 / over (at least halved, at most 0.98).
                a *= max(0.5, min(DERATE, 1.0 / token))
            derate[c] = (a, r)
        factors = dict(derate)
        for c in range(problem.num_configs):
            lane = (int(problem.cfg_model[c]),
                    0 if problem.cfg_class is None else int(problem.cfg_class[c]))
            if lane in tighten:
                a, r = factors.get(c, (1.0, 1.0))
                factors[c] = (a * tighten[lane], r)
        current = _derated(problem, factors)
    raise AssertionError("unreachable")


def _lane_names(problem: Problem, tighten: dict[tuple[int, int], float]) -> dict[str, float]:
    return {problem.models[m] + ("" if problem.cfg_class is None else
                                 f"-{problem.classes[k]}"): round(f, 6)
            for (m, k), f in tighten.items()}


def _names(problem: Problem, derate: dict[int, tuple[float, float]]
           ) -> dict[str, dict[str, float]]:
    out = {}
    for c, (a, r) in derate.items():
        cls = ("" if problem.cfg_class is None else
               f"-{problem.classes[int(problem.cfg_class[c])]}")
        name = (f"{problem.models[problem.cfg_model[c]]}-{problem.gpu_types[problem.cfg_type[c]]}"
                f"-tp{problem.cfg_tp[c]}pp{problem.cfg_pp[c]}{cls}")
        out[name] = {"capacity": round(a, 6), "latency": round(r, 6)}
    return out
