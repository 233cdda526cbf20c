"""Calibration from served traffic: fit the stage-1 model's free parameters on a logged window.

Input: per replica group (model, GPU type, TP, PP, replicas) the requests it served in the
window, each with its arrival time, prompt and output tokens, observed TTFT (streamed requests
only: a non-streamed one's TTFT is its latency) and end-to-end latency. The replay
(`replay_group`) serves exactly those arrivals and lengths on the group's replica model, the
group's requests dealt round-robin over its replicas in arrival order (Serve balances replicas
by queue length; round-robin is the stationary picture of that), and returns each request's
predicted TTFT and latency, paired with its observation.

Free parameters, with g a GPU type and k a group:

* ``s_g``: GPU type g's efficiency scale (`profiling._served.scale_efficiency`: compute, memory
  and attention efficiency times s_g), shared by every group on g (fitted jointly);
* ``o_g``: the engine's CPU overhead per step (``step_overhead_s``) on GPU type g, shared by
  g's groups like s_g (it is the host's and the engine version's, not the model's);
* ``d_k``: group k's front-end latency (``frontend_latency_s``: serving stack, once per request).

Why o is shared: in a memory-bound decode step (most steps of a served window) the step time
is ``W_k / (B e_m s_g) + o`` (W_k the weight bytes per GPU of group k's config), so one group
alone determines only that sum: s and o trade along a ridge unless the window holds
compute-bound steps (long prompts, large batches). Groups of one GPU type with different
W_k (two models, or two TP degrees) fix both. A GPU type served by one config at low load
therefore gets an s and an o whose sum is right and whose split is uncertain: the bootstrap
spread and the fidelity table at other loads say how much.

* ``q_g`` (``per_seq=True`` only; `boute calibrate --per-seq`): the per-sequence overhead of
  a step (``step_overhead_per_seq_s``) on GPU type g, shared like o_g. A step of B sequences
  costs ``o + q B`` on top of its kernels; in-process q is the scheduler's and sampler's
  (microseconds), served it also holds what the stack spends per streamed token (the OpenAI
  layer, the router and the proxy, on the same host CPUs). q is told from o by how the step
  time grows with the batch, so a window needs batches of several sizes (a Poisson window
  has them) and a load of its own: contention from other work that comes and goes raises
  the latency and with it the batch, and reads as q. Without ``per_seq`` q stays the
  engine's.

The fit minimizes, per GPU type,

    sum_k 1/n_k sum_i w_i [rho(log ttftp_(i) / ttfto_(i)) + rho(log latp_i / lato_i)]

over (s_g, o_g, d_k): latency request by request; TTFT as distributions, the i-th smallest
predicted against the i-th smallest observed, streamed requests only (`_Problem.group_cost`
says why); rho is scipy's ``soft_l1`` at f_scale 0.05 (a relative error up to ~5% counts
squared, larger ones linearly: robust to a few outliers such as a request that hit a GC
pause); each group weighs the same. d_k is profiled out (a 1-D minimization per group on the
replay's arrays); (log s_g, o_g[, q_g]) is searched by a coarse grid, then Nelder-Mead (the replay
is piecewise smooth: finite-difference gradients mislead). w_i = 1 for the fit; the
uncertainty is the spread of the refits over `bootstrap` block-bootstrap windows: the window
is cut into `blocks` equal time blocks, a replicate draws that many blocks with replacement
and w_i = how often request i's block was drawn (the replay stays the whole window: a queue's
state depends on what came before, so requests are reweighted, never removed). Reported: p05
and p95 of each parameter. That spread is sampling noise only, a lower bound: it does not see
the s-o ridge above nor what the model leaves out; the fidelity at other loads does.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np
import numpy.typing as npt

from common.errors import ProfilerError

from .._catalog import Catalog, GpuType, ModelArch
from .._replica import Efficiency, EngineConfig, ReplicaModel
from .._served import ServedCalibration, ServedGroupFit, max_scale, scale_efficiency
from .._simulator import simulate
from .._workload import Trace

__all__ = ["ServedGroup", "fidelity_table", "fit_served", "replay_group", "served_groups",
           "synthetic_group"]

FloatArray = npt.NDArray[np.float64]
_MS = 1e-3
_F_SCALE = 0.05


@dataclass(frozen=True)
class ServedGroup:
    """What one replica group served in the window (arrays of equal length, arrival order)."""

    model: ModelArch
    gpu: GpuType
    tp: int
    pp: int
    replicas: int
    arrival_s: FloatArray
    input_tokens: npt.NDArray[np.int64]
    output_tokens: npt.NDArray[np.int64]
    ttft_s: FloatArray
    latency_s: FloatArray
    stream: npt.NDArray[np.bool_]

    def __post_init__(self) -> None:
        n = len(self.arrival_s)
        if n < 1:
            raise ProfilerError(f"served group {self.name}: no requests in the window; widen "
                                "the window (--since)")
        for col in ("input_tokens", "output_tokens", "ttft_s", "latency_s", "stream"):
            if len(getattr(self, col)) != n:
                raise ProfilerError(f"served group {self.name}: column {col} has "
                                    f"{len(getattr(self, col))} rows, arrival_s {n}")
        if self.replicas < 1:
            raise ProfilerError(f"served group {self.name}: replicas={self.replicas} must be "
                                ">= 1")
        if np.any(np.diff(self.arrival_s) < 0):
            raise ProfilerError(f"served group {self.name}: arrivals must be sorted")
        if not np.all(self.latency_s > 0):
            raise ProfilerError(f"served group {self.name}: every latency must be > 0 s")

    @property
    def name(self) -> str:
        """``model-gpu-tpXppY`` (as a plan names its groups)."""
        return f"{self.model.name}-{self.gpu.name}-tp{self.tp}pp{self.pp}"

    @property
    def rate_rps(self) -> float:
        """Arrivals per second over the group's span (its count when they share one instant)."""
        span = float(self.arrival_s[-1] - self.arrival_s[0])
        n = len(self.arrival_s)
        return (n - 1) / span if span > 0 else float(n)


def replay_group(replica: ReplicaModel, group: ServedGroup) -> tuple[FloatArray, FloatArray]:
    """Predicted (TTFT, latency) of each of `group`'s requests, in its order (module docstring).

    Raises:
        ProfilerError: the replica model left a request unfinished (cannot happen for an open
            loop without ``stop_when_saturated``; an internal check).

    """
    n = len(group.arrival_s)
    ttft = np.empty(n)
    lat = np.empty(n)
    for j in range(min(group.replicas, n)):
        idx = np.arange(j, n, group.replicas)
        arr = group.arrival_s[idx]
        trace = Trace(arr - arr[0], group.input_tokens[idx], group.output_tokens[idx], None,
                      f"{group.name}-replica{j}")
        res = simulate(replica, trace, capacity=math.inf)
        if res.completed != len(idx):
            raise ProfilerError(f"replay of {group.name}: {res.completed} of {len(idx)} "
                                "requests finished")
        ttft[idx] = res.ttft_s
        lat[idx] = res.latency_s
    return ttft, lat


def synthetic_group(replica: ReplicaModel, trace: Trace, *, replicas: int = 1,
                    noise_cv: float = 0.03, seed: int = 0, start_unix_s: float = 0.0
                    ) -> ServedGroup:
    """What a group of `replicas` replicas of `replica` would log serving `trace`.

    The "truth" of tests and benchmarks: `replay_group` on `replica`, each latency times an
    independent lognormal factor of log-sd `noise_cv` (measurement jitter); every request
    streamed. Arrivals are shifted to start at `start_unix_s`.
    """
    n = len(trace)
    clean = ServedGroup(replica.model, replica.gpu, replica.tp, replica.pp, replicas,
                        trace.arrival_s + start_unix_s, trace.input_tokens,
                        trace.output_tokens, np.ones(n), np.ones(n), np.ones(n, dtype=bool))
    ttft, lat = replay_group(replica, clean)
    rng = np.random.default_rng(seed)
    ttft = ttft * np.exp(rng.normal(0.0, noise_cv, n))
    lat = np.maximum(lat * np.exp(rng.normal(0.0, noise_cv, n)), ttft)
    return replace(clean, ttft_s=ttft, latency_s=lat)


_NAME = re.compile(r"^(?P<mg>.+)-tp(?P<tp>\d+)pp(?P<pp>\d+)(?:-(?:short|long))?$")


def served_groups(cols: Mapping[str, Any], catalog: Catalog, replicas: Mapping[str, int],
                  min_requests: int) -> tuple[list[ServedGroup], list[str]]:
    """A request log's successful requests as one `ServedGroup` per replica group.

    Args:
        cols: the log's columns (`app.request_log.SCHEMA` names) as arrays: arrival_s,
            prompt_tokens, output_tokens, ttft_s, latency_s, stream, outcome, group.
        catalog: resolves group names ``<model>-<gpu>-tp<T>pp<P>[-short|-long]``.
        replicas: group name -> replicas (the plan's; default 1).
        min_requests: groups with fewer successful requests are skipped (named in the notes).

    Returns:
        The groups and one note per skipped group.

    Raises:
        ProfilerError: a group name that names no catalog model and GPU type.

    """
    outcome = np.asarray(cols["outcome"], dtype=object)
    group = np.asarray(cols["group"], dtype=object)
    lat = np.asarray(cols["latency_s"], dtype=float)
    ok = (outcome == "ok") & (group != "") & np.isfinite(lat) & (lat > 0)
    ok &= np.asarray(cols["output_tokens"]) >= 1
    ok &= np.asarray(cols["prompt_tokens"]) >= 1
    out, notes = [], []
    for name in sorted(set(group[ok].tolist())):
        sel = np.flatnonzero(ok & (group == name))
        if len(sel) < min_requests:
            notes.append(f"group {name}: {len(sel)} successful requests in the window, fewer "
                         f"than --min-requests={min_requests}; skipped")
            continue
        model, gpu, tp, pp = _parse_group(name, catalog)
        sel = sel[np.argsort(np.asarray(cols["arrival_s"], float)[sel], kind="stable")]
        ttft = np.asarray(cols["ttft_s"], float)[sel]
        stream = np.asarray(cols["stream"], bool)[sel] & np.isfinite(ttft) & (ttft > 0)
        out.append(ServedGroup(
            model, gpu, tp, pp, replicas.get(name, 1),
            np.asarray(cols["arrival_s"], float)[sel],
            np.asarray(cols["prompt_tokens"], np.int64)[sel],
            np.asarray(cols["output_tokens"], np.int64)[sel],
            np.where(stream, ttft, np.nan), lat[sel], stream))
    return out, notes


def _parse_group(name: str, catalog: Catalog) -> tuple[ModelArch, GpuType, int, int]:
    """``<model>-<gpu>-tp<T>pp<P>[-short|-long]`` -> (ModelArch, GpuType, tp, pp)."""
    m = _NAME.match(name)
    if m:
        for gpu in sorted(catalog.gpus, key=len, reverse=True):
            if m["mg"].endswith(f"-{gpu}"):
                model = m["mg"][: -len(gpu) - 1]
                if model in catalog.models:
                    return catalog.model(model), catalog.gpu(gpu), int(m["tp"]), int(m["pp"])
    raise ProfilerError(f"request log group {name!r} is not <model>-<gpu>-tp<T>pp<P> with a "
                     "catalog model and GPU type; pass --gpu-catalog / --model-catalog with "
                     "the deployment's catalogs")


def _quantiles(values: FloatArray) -> dict[str, float]:
    if values.size == 0:
        return {"p50": math.nan, "p95": math.nan, "mean": math.nan}
    return {"p50": float(np.quantile(values, 0.5)), "p95": float(np.quantile(values, 0.95)),
            "mean": float(np.mean(values))}


def fidelity_table(group: ServedGroup, before: ReplicaModel, after: ReplicaModel
                   ) -> dict[str, Any]:
    """Observed versus predicted P50, P95 and mean of latency and TTFT, before and after.

    Each metric: ``observed``, ``before``, ``after`` and ``before_err``, ``after_err``
    (``predicted / observed - 1``). TTFT over streamed requests only (NaN when none).
    """
    out: dict[str, Any] = {}
    preds = {"before": replay_group(before, group), "after": replay_group(after, group)}
    s = group.stream
    for metric, obs, pick in (("latency", group.latency_s, 1), ("ttft", group.ttft_s[s], 0)):
        o = _quantiles(obs)
        rows = {k: _quantiles(p[pick] if pick else p[pick][s]) for k, p in preds.items()}
        for q in ("p50", "p95", "mean"):
            row: dict[str, float] = {"observed": o[q]}
            for k in ("before", "after"):
                row[k] = rows[k][q]
                row[f"{k}_err"] = rows[k][q] / o[q] - 1 if o[q] > 0 else math.nan
            out[f"{metric}_{q}_s"] = row
    return out


def _rho(r: FloatArray) -> FloatArray:
    """Scipy's soft_l1 at scale `_F_SCALE`: ~r^2 / f^2 for |r| << f, ~2|r| / f beyond."""
    return 2.0 * (np.sqrt(1.0 + (r / _F_SCALE) ** 2) - 1.0)


class _Problem:
    """The objective of one GPU type: its scale s, its step overhead o, its groups' d_k.

    d_k adds to every predicted TTFT and latency of group k, so for given (s, o) the
    replay runs once with d = 0 and the best d_k is a 1-D minimization over arrays
    (`_best_d`); the search runs over (log s, o) only. Replays are cached by (k, s, o): the
    bootstrap refits revisit the points of the main fit.
    """

    def __init__(self, groups: Sequence[ServedGroup], engine: EngineConfig,
                 base: Efficiency) -> None:
        self.groups = list(groups)
        self.engine = engine
        self.base = base
        self.s_max = max_scale(base)
        self._cache: dict[tuple[int, float, float, float | None],
                          tuple[FloatArray, FloatArray]] = {}
        self.replays = 0

    def replica(self, k: int, scale: float, o_s: float, d_s: float,
                q_s: float | None = None) -> ReplicaModel:
        """Group k's replica model at (s, o, d) and q (None: the engine's per-sequence one)."""
        g = self.groups[k]
        engine = replace(self.engine, step_overhead_s=o_s, frontend_latency_s=d_s)
        if q_s is not None:
            engine = replace(engine, step_overhead_per_seq_s=q_s)
        return ReplicaModel(g.model, g.gpu, g.tp, g.pp, engine,
                            scale_efficiency(self.base, scale))

    def _replay(self, k: int, scale: float, o_ms: float, q_ms: float | None
                ) -> tuple[FloatArray, FloatArray]:
        key = (k, round(scale, 9), round(o_ms, 9), None if q_ms is None else round(q_ms, 9))
        if key not in self._cache:
            self.replays += 1
            q_s = None if q_ms is None else q_ms * _MS
            self._cache[key] = replay_group(self.replica(k, scale, o_ms * _MS, 0.0, q_s),
                                            self.groups[k])
        return self._cache[key]

    def group_cost(self, k: int, scale: float, o_ms: float, w: FloatArray,
                   q_ms: float | None = None) -> tuple[float, float]:
        """(loss, best d_k in seconds) of group k at (s, o, q), weights `w`."""
        g = self.groups[k]
        ttft, lat = self._replay(k, scale, o_ms, q_ms)
        st = g.stream
        # TTFT as distributions (sorted against sorted: every quantile level), not request by
        # request: which engine step an arrival lands in moves one request's TTFT by a whole
        # step (~20% of a short TTFT) at the smallest change of a parameter, which would make
        # the loss jump; latency (many steps long) is matched request by request.
        obs_order = np.argsort(g.ttft_s[st], kind="stable")
        return _best_d(np.sort(ttft[st]), g.ttft_s[st][obs_order], w[st][obs_order],
                       lat, g.latency_s, w)

    def cost(self, x: FloatArray, weights: Sequence[FloatArray]) -> float:
        """Sum over groups of their loss (each group's weights normalized to 1 in all).

        `x` = (log s, o ms) or (log s, o ms, q ms): with a third coordinate the per-sequence
        overhead q is a parameter too.
        """
        scale, o_ms = float(np.exp(x[0])), float(x[1])
        q_ms = float(x[2]) if len(x) > 2 else None
        if not (0.05 <= scale <= self.s_max and 0.0 <= o_ms <= 1000.0):
            return math.inf
        if q_ms is not None and not 0.0 <= q_ms <= 100.0:
            return math.inf
        return sum(self.group_cost(k, scale, o_ms, w, q_ms)[0] / len(w)
                   for k, w in enumerate(weights))


def _best_d(ttft: FloatArray, ttft_obs: FloatArray, w_ttft: FloatArray, lat: FloatArray,
            lat_obs: FloatArray, w_lat: FloatArray) -> tuple[float, float]:
    """Min over d >= 0 of the weighted robust loss of log((pred + d) / obs); (loss, d)."""
    from scipy.optimize import minimize_scalar

    def loss(d: float) -> float:
        return float(np.dot(w_ttft, _rho(np.log((ttft + d) / ttft_obs)))
                     + np.dot(w_lat, _rho(np.log((lat + d) / lat_obs))))

    hi = float(np.max(lat_obs))
    res = minimize_scalar(loss, bounds=(0.0, hi), method="bounded",
                          options={"xatol": 1e-6 * max(hi, 1e-3)})
    d = float(res.x)
    at0 = loss(0.0)
    return (at0, 0.0) if at0 <= res.fun else (float(res.fun), d)


_S_GRID = (0.3, 0.45, 0.6, 0.75, 0.9, 1.05)
_O_GRID_MS = (0.0, 1.0, 2.0, 4.0, 8.0, 16.0)
_Q_GRID_MS = (0.0, 0.1, 0.4, 1.6)


def _solve(problem: _Problem, weights: Sequence[FloatArray], x0: FloatArray | None,
           max_evals: int, per_seq: bool = False) -> FloatArray:
    """Minimize `problem.cost`: a coarse grid (when no `x0`), then Nelder-Mead from the best.

    The replay is piecewise smooth in the parameters (which step a request joins is
    discrete), so gradients by finite differences mislead; the grid finds the basin,
    Nelder-Mead its bottom. `per_seq`: over (log s, o, q) instead of (log s, o).
    """
    from scipy.optimize import minimize

    if x0 is None:
        qs: tuple[float, ...] = _Q_GRID_MS if per_seq else (math.nan,)
        grid = [(problem.cost(np.asarray([math.log(v), o, q][: 3 if per_seq else 2]),
                              weights), v, o, q)
                for v in _S_GRID if v <= problem.s_max for o in _O_GRID_MS for q in qs]
        _, s0, o0, q0 = min(grid)
        x0 = np.asarray([math.log(s0), o0, q0][: 3 if per_seq else 2])
    steps = np.asarray([0.1, max(0.5, 0.25 * float(x0[1])),
                        max(0.05, 0.25 * float(x0[-1]))][: len(x0)])
    simplex = np.vstack([x0] + [x0 + np.eye(len(x0))[i] * steps[i] for i in range(len(x0))])
    res = minimize(problem.cost, x0, args=(weights,), method="Nelder-Mead",
                   options={"initial_simplex": simplex, "xatol": 2e-3, "fatol": 1e-4,
                            "maxfev": max_evals})
    return np.asarray(res.x, dtype=float)


def fit_served(
    groups: Sequence[ServedGroup],
    *,
    engine: EngineConfig | None = None,
    base_efficiency: Mapping[str, Efficiency] | None = None,
    bootstrap: int = 8,
    blocks: int = 8,
    seed: int = 0,
    window: tuple[float, float] | None = None,
    per_seq: bool = False,
) -> ServedCalibration:
    """Fit s_g, o_g and d_k on `groups` (module docstring); the calibration with fidelity.

    Args:
        groups: what each replica group served (at least one request each).
        engine: the engine settings the groups ran with (scheduler limits; the starting
            overheads; default current vLLM).
        base_efficiency: GPU type -> the efficiency the scale multiplies (default
            `Efficiency()`: the spec-sheet roofline; pass a hardware profile's fit).
        bootstrap: block-bootstrap refits for the spread (0: none).
        blocks: time blocks of the window for the bootstrap.
        seed: the bootstrap's random seed.
        window: (start, end) unix seconds of the log window (default: the arrivals' span).
        per_seq: also fit q_g, the per-sequence overhead of a step on GPU type g (module
            docstring); False: q stays the engine's.

    Raises:
        ProfilerError: no groups, or an argument out of range.

    """
    if not groups:
        raise ProfilerError("served calibration: no replica group served a request in the "
                            "window; widen it (--since) or check the log folder")
    if bootstrap < 0 or blocks < 1:
        raise ProfilerError(f"served calibration: bootstrap={bootstrap} must be >= 0 and "
                            f"blocks={blocks} >= 1")
    engine = engine or EngineConfig()
    base_efficiency = base_efficiency or {}
    t0 = min(float(g.arrival_s[0]) for g in groups)
    t1 = max(float(g.arrival_s[-1]) for g in groups)
    window = window or (t0, t1)
    weights = _bootstrap_weights(groups, bootstrap, blocks, seed, t0, t1)
    start = time.perf_counter()
    gpus: dict[str, dict[str, Any]] = {}
    fitted: dict[int, tuple[float, float, float, float, dict[str, list[float]]]] = {}
    replays = 0
    boot_s = 0.0
    for gpu in sorted({g.gpu.name for g in groups}):
        ks = [k for k, g in enumerate(groups) if g.gpu.name == gpu]
        problem = _Problem([groups[k] for k in ks], engine,
                           base_efficiency.get(gpu) or Efficiency())
        ones = [np.ones(len(groups[k].arrival_s)) for k in ks]
        x = _solve(problem, ones, None, max_evals=180 if per_seq else 120, per_seq=per_seq)
        t_boot = time.perf_counter()
        reps = np.asarray([_solve(problem, [w[k] for k in ks], x, max_evals=40,
                                  per_seq=per_seq)
                           for w in weights]).reshape(-1, len(x))
        boot_s += time.perf_counter() - t_boot
        scale = float(np.exp(x[0]))
        col = np.exp(reps[:, 0]) if len(reps) else np.asarray([scale])
        gpus[gpu] = {"scale": scale, "scale_p05": float(np.quantile(col, 0.05)),
                     "scale_p95": float(np.quantile(col, 0.95)),
                     "base_efficiency": asdict(problem.base)}
        q_ms = float(x[2]) if per_seq else None
        for i, k in enumerate(ks):
            o_ms = float(x[1])
            d_s = problem.group_cost(i, scale, o_ms, ones[i], q_ms)[1]
            d_col = [problem.group_cost(i, float(np.exp(r[0])), float(r[1]), ones[i],
                                        float(r[2]) if per_seq else None)[1]
                     for r in reps] or [d_s]
            spread = {"step_overhead_s": _p05_p95(reps[:, 1] * _MS if len(reps) else
                                                  np.asarray([o_ms * _MS])),
                      "frontend_latency_s": _p05_p95(np.asarray(d_col))}
            q_s = engine.step_overhead_per_seq_s
            if q_ms is not None:
                q_s = q_ms * _MS
                spread["step_overhead_per_seq_s"] = _p05_p95(
                    reps[:, 2] * _MS if len(reps) else np.asarray([q_s]))
            fitted[k] = (scale, o_ms * _MS, d_s, q_s, spread)
        replays += problem.replays
    fit_s = time.perf_counter() - start - boot_s
    fits = []
    for k, g in enumerate(groups):
        scale, o_s, d_s, q_s, spread = fitted[k]
        base = base_efficiency.get(g.gpu.name) or Efficiency()
        before = ReplicaModel(g.model, g.gpu, g.tp, g.pp, engine, base)
        after = ReplicaModel(g.model, g.gpu, g.tp, g.pp,
                             replace(engine, step_overhead_s=o_s, frontend_latency_s=d_s,
                                     step_overhead_per_seq_s=q_s),
                             scale_efficiency(base, scale))
        fits.append(ServedGroupFit(
            g.model.name, g.gpu.name, g.tp, g.pp, g.replicas, len(g.arrival_s), g.rate_rps,
            o_s, d_s, q_s, spread, fidelity_table(g, before, after)))
    over = "(log s, o, q)" if per_seq else "(log s, o)"
    info = {"solver": f"grid + Nelder-Mead over {over}, d profiled; soft_l1, f_scale 0.05",
            "replays": replays, "fit_seconds": fit_s, "bootstrap": bootstrap,
            "blocks": blocks, "bootstrap_seconds": boot_s, "engine": engine.name}
    return ServedCalibration(window[0], window[1], sum(len(g.arrival_s) for g in groups),
                             time.time(), gpus, tuple(fits), info)


def _p05_p95(values: FloatArray) -> list[float]:
    """[p05, p95] of `values`."""
    return [float(np.quantile(values, 0.05)), float(np.quantile(values, 0.95))]


def _bootstrap_weights(groups: Sequence[ServedGroup], reps: int, blocks: int, seed: int,
                       t0: float, t1: float) -> list[list[FloatArray]]:
    """Per replicate, per group: how often each request's time block was drawn."""
    width = (t1 - t0) / blocks if t1 > t0 else 1.0
    block_of = [np.minimum(((g.arrival_s - t0) / width).astype(int), blocks - 1)
                for g in groups]
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(reps):
        counts = np.bincount(rng.integers(0, blocks, size=blocks), minlength=blocks)
        out.append([counts[b].astype(float) for b in block_of])
    return out
