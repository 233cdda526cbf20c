"""The planning problem: a scenario, its perf DB and its quality curve, as arrays.

Everything the evaluator and the searchers need is precomputed here once:

* the candidate replica configs ``c`` (model, GPU type, TP, PP) of the scenario that the DB
  holds and that fit the type's stock, with their GPUs per replica ``g_c`` and price
  ``price_c`` (scenario prices win over the catalog's). A GPU type is a scenario *offer*: an
  alias offer (``H100-spot: {gpu: H100, ...}``) gets its catalog GPU's DB rows, at its own
  price and stock (`profiling.Scenario.offered_gpus`);
* the **capacity table** ``cap[c, k]``: the highest per-replica request rate at which config c
  keeps its P95 latency at or below the latency level ``x_k``. Levels are log-spaced from
  ``X_MIN_S`` to the scenario's ``p95_ceiling_s``. From the DB, P95(rate) is made monotone
  (running max over the rate grid) and inverted by linear interpolation; rates at which the DB
  flags saturation are never used. Between levels, ``cap_c(x)`` is linear in ``log x``: this
  piecewise-linear function *is* the model the evaluator and the exact solver share.

Planning latency semantics (used by every searcher): a plan sends ``lambda_m`` req/s to model m
(``lambda_strong = s * lambda``, ``lambda_weak = (1 - s) * lambda``). Its groups g (config c_g,
r_g replicas) serve that load with P95 <= x iff ``C_m(x) = sum_g r_g cap_{c_g}(x) >= lambda_m``
(water-filling: each group gets load up to its capacity at level x). The plan's planning P95 is
``max_m x_m*`` with ``x_m* = min {x : C_m(x) >= lambda_m}``: the P95 that *every* replica group
meets. It bounds the P95 of all requests (a mixture of distributions whose P95s are all <= x has
P95 <= x), which the evaluator also reports (`system_p95_s`).

**Ladders and several workloads.** With K models and W workloads (`profiling.Scenario`), model m
gets ``lambda_{w,m} = s_{w,m} lambda_w`` from workload w (each workload has its own shares) and
its groups serve the mix. Each workload has its own perf DB (its lengths), so its own capacity
table ``cap_w[c, k]``; a replica serving a mix with fractions ``f_w`` keeps P95 <= x up to the
rate ``cap_mix,c(x) = 1 / sum_w (f_w / cap_w,c(x))`` (each request takes ``1 / cap_w`` of the
replica's time at that level: the capacities combine harmonically, as per-request service
times add). With one workload this is ``cap`` itself, and two models and one workload are
exactly the paper's problem above.

**Length classes** (`profiling.LengthClasses`, a threshold n of prompt + max_tokens). Each
workload w is split into a short and a long *stream* (shares ``p_{w,short}``,
``p_{w,long}``), each with its own perf DB (the workload's requests of that class). Every
config exists once per class: a replica serves one class of one model, a *lane* ``l = (m,
class)``. Lane l gets ``lambda_{w,l} = s_{w,m} p_{w,class} lambda_w`` (routing by difficulty
does not look at length), and everything above holds with lanes in place of models: each
lane's groups meet ``x_l*`` on what they serve, the planning P95 is ``max_l x_l*``. Without
classes there is one lane per model and nothing changes.

**Token targets** (`Problem.with_token_targets`: a TTFT P95 target ``T`` and/or a TPOT P95
target ``U``). Each stream's DB also holds every row's TTFT and TPOT P95; made monotone in
rate (running max) and inverted like the P95, they give ``R^ttft_{w,c}(T)``, the highest
per-replica rate at which config c keeps its TTFT P95 <= T on workload w (0 when even its
lowest rate misses, its last unsaturated rate when every row meets it), and likewise
``R^tpot_{w,c}(U)``. A replica meets the token targets up to ``R_{w,c} = min(R^ttft, R^tpot)``
whatever latency level it runs at, so the capacity table becomes ``cap_w[c, k] <- min(cap_w[c,
k], R_{w,c})``: one clip, here, and every searcher (the exact DP, MOBO's encodings, the ladder,
the baselines, the level program) and the evaluator plan with it. A model whose clipped
capacity cannot carry its load is saturated (infeasible); water-filling never gives a group
more than ``R`` per replica, so every group the planner uses meets the targets at its load.
Mixes combine the clipped tables harmonically, as above.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path

import numpy as np
import numpy.typing as npt

from common.errors import BouteError, PerfDBError, ScenarioError, StaleDBError
from profiling import (
    CascadeQuality,
    Catalog,
    PerfDB,
    QualityCurve,
    Scenario,
    default_quality_curve,
    request_tokens,
)

from ._goal import Goal
from ._plan import LENGTH_CLASSES, length_spans

__all__ = [
    "NUM_LEVELS", "X_MIN_S", "Problem", "class_db_path", "default_db_path", "load_problem",
    "planning_problem", "scenario_problem",
]

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

X_MIN_S = 0.02
NUM_LEVELS = 192
WEAK, STRONG = 0, 1


def default_db_path(scenario: Scenario) -> Path:
    """Where `boute profile` writes, and `boute plan` looks for, a scenario's perf DB.

    A scenario with several workloads has one DB per workload (`db_paths`); this is the
    path of a one-workload scenario (e.g. `profiling.Scenario.for_workload`'s).
    """
    return Path("build") / f"perfdb-{scenario.name}.parquet"


def db_paths(scenario: Scenario, db: str | Path | None = None) -> list[Path]:
    """One perf DB path per workload: `db` (one workload) or ``<db stem>-<workload>``."""
    if scenario.workloads is None:
        return [Path(db) if db else default_db_path(scenario)]
    out = []
    for name in scenario.workload_names:
        if db:
            base = Path(db)
            out.append(base.with_name(f"{base.stem}-{name}{base.suffix or '.parquet'}"))
        else:
            out.append(default_db_path(scenario.for_workload(name)))
    return out


@dataclass(frozen=True)
class Problem:
    """Arrays of one planning problem (see the module docstring for the math).

    Attributes:
        scenario: the scenario (rate, budget, targets, ...).
        models: model names, smallest first (``(weak, strong)`` for a pair).
        gpu_types: GPU types on offer, in scenario order; ``t`` indexes them.
        stock: ``(T,)`` GPUs of each type on offer.
        gpu_price: ``(T,)`` $/GPU-hour.
        gpus_per_node: ``(T,)``.
        cfg_model, cfg_type, cfg_tp, cfg_pp, cfg_gpus: ``(C,)`` per candidate config.
        cfg_price: ``(C,)`` $/hour of one replica.
        levels_s: ``(K,)`` latency levels.
        workloads: workload names (``("default",)`` for one `workload`).
        workload_rates: ``(W,)`` req/s of each.
        cascades: ``(W,)`` quality of each workload as a function of its shares.
        caps: ``(W, C, K)`` capacity table of each workload.
        dbs, cfg_dbs: each workload's DB and ``(W, C)`` rows of the configs in it; with
            length classes one DB per (workload, class), workload-major, and config c's row
            in the DB of its class (`stream_db`).
        classes: ``("short", "long")`` with length classes, else empty.
        threshold_tokens: the classes' threshold (prompt + max_tokens), or None.
        class_share: ``(W, 2)`` share of each workload's requests in each class.
        cfg_class: ``(C,)`` class of each config.
        pair_fast_path: plan two models and one workload with the pair's fast paths (the
            default); off: as the general ladder.
        ttft_p95_s, tpot_p95_s: the token targets ``caps`` is clipped for
            (`with_token_targets`); None: none.

    The data model is workload-indexed (a pair is the ladder with K = 2 and one workload);
    ``db``, ``cfg_db``, ``cap`` and ``pair_quality`` are views of it.

    """

    scenario: Scenario
    models: tuple[str, ...]
    gpu_types: tuple[str, ...]
    stock: IntArray
    gpu_price: FloatArray
    gpus_per_node: IntArray
    cfg_model: IntArray
    cfg_type: IntArray
    cfg_tp: IntArray
    cfg_pp: IntArray
    cfg_gpus: IntArray
    cfg_price: FloatArray
    levels_s: FloatArray
    workloads: tuple[str, ...]
    workload_rates: FloatArray
    cascades: tuple[CascadeQuality, ...]
    caps: FloatArray
    dbs: tuple[PerfDB, ...]
    cfg_dbs: IntArray
    _by_key: dict[tuple[int, int, int, int, int], int] = field(default_factory=dict,
                                                               repr=False)
    classes: tuple[str, ...] = ()
    threshold_tokens: int | None = None
    class_share: FloatArray | None = None
    cfg_class: IntArray | None = None
    pair_fast_path: bool = True
    ttft_p95_s: float | None = None
    tpot_p95_s: float | None = None

    # -- views of the workload-indexed data -----------------------------------------------
    @property
    def db(self) -> PerfDB:
        """The first workload's perf DB (``dbs[0]``)."""
        return self.dbs[0]

    @property
    def cfg_db(self) -> IntArray:
        """``(C,)`` rows of the configs in the first workload's DB (``cfg_dbs[0]``)."""
        return np.asarray(self.cfg_dbs[0])

    @cached_property
    def cap(self) -> FloatArray:
        """``(C, K)`` capacity of the scenario's workload mix at its rates (`mix_cap`).

        One workload: ``caps[0]``; several: ``1 / sum_w (f_w / cap_w)`` with ``f_w`` the
        workloads' shares of the total rate.
        """
        if len(self.workloads) == 1:
            return np.asarray(self.caps[0])
        return self.mix_cap(self.workload_rates / self.workload_rates.sum())

    @property
    def pair_quality(self) -> QualityCurve | None:
        """The pair's quality curve (two models, one workload, no length classes), else None.

        The pair is the ladder with K = 2 and one workload; this view (``cascades[0].pair``)
        selects its fast paths (the structured encoding, the pair DP). None as well when
        ``pair_fast_path`` is off (the general ladder path on a pair, for comparisons).
        """
        if (not self.pair_fast_path or len(self.workloads) != 1 or self.num_models != 2
                or self.classes):
            return None
        return self.cascades[0].pair

    def token_caps(self, ttft_p95_s: float | None, tpot_p95_s: float | None) -> FloatArray:
        """``(W, C)`` highest per-replica rate meeting both token targets (module docstring).

        +inf where no target is set.
        """
        out = np.full(self.caps.shape[:2], np.inf)
        for w in range(len(self.workloads)):
            for c in range(self.num_configs):
                db, row = self.stream_db(w, c), int(self.cfg_dbs[w, c])
                for target, table in ((ttft_p95_s, db.ttft_p95), (tpot_p95_s, db.tpot_p95)):
                    if target is not None:
                        out[w, c] = min(out[w, c], _max_rate_under(db, row, table, target))
        return out

    def with_token_targets(self, ttft_p95_s: float | None, tpot_p95_s: float | None
                           ) -> Problem:
        """The problem with its capacity tables clipped to the token targets.

        ``cap_w[c, k] <- min(cap_w[c, k], R_{w,c})`` (module docstring). Itself when both are
        None (a clipped problem stays clipped; unclipped, the paper's presets plan exactly as
        before) or already applied.

        Raises:
            BouteError: the problem is already clipped to other targets (clip the unclipped
                problem instead).

        """
        if (ttft_p95_s is None and tpot_p95_s is None) or (
                (ttft_p95_s, tpot_p95_s) == (self.ttft_p95_s, self.tpot_p95_s)):
            return self
        if self.ttft_p95_s is not None or self.tpot_p95_s is not None:
            raise BouteError(f"this problem's capacities are already clipped to TTFT P95 <= "
                             f"{self.ttft_p95_s} s, TPOT P95 <= {self.tpot_p95_s} s; apply "
                             "other token targets to the problem as loaded")
        caps = np.minimum(self.caps, self.token_caps(ttft_p95_s, tpot_p95_s)[..., None])
        return replace(self, caps=caps, ttft_p95_s=ttft_p95_s, tpot_p95_s=tpot_p95_s)

    def for_goal(self, goal: Goal) -> Problem:
        """`with_token_targets` of the goal's ``ttft_p95_s`` / ``tpot_p95_s``."""
        return self.with_token_targets(goal.ttft_p95_s, goal.tpot_p95_s)

    # -- derived quantities ----------------------------------------------------------------
    @property
    def rate_rps(self) -> float:
        """Total request rate of the scenario."""
        return self.scenario.total_rate_rps

    @property
    def num_models(self) -> int:
        """Models of the ladder."""
        return len(self.models)

    @property
    def is_pair(self) -> bool:
        """Two models and one workload: the paper's problem (its encoding and exact DP)."""
        return self.pair_quality is not None

    @property
    def quality(self) -> QualityCurve:
        """Quality as a function of the strong share (two models, one workload).

        Raises:
            BouteError: a ladder or several workloads (use `cascades`).

        """
        if self.pair_quality is None:
            raise BouteError(f"scenario {self.scenario.name!r} has {self.num_models} models "
                             f"and {len(self.workloads)} workload(s): its quality is per "
                             "workload and model share (Problem.cascades)")
        return self.pair_quality

    @property
    def num_lanes(self) -> int:
        """Lanes: one per model, or per (model, length class)."""
        return self.num_models * max(1, len(self.classes))

    @property
    def cfg_lane(self) -> IntArray:
        """``(C,)`` lane of each config: its model, or ``model * 2 + class``."""
        if self.cfg_class is None:
            return self.cfg_model
        return np.asarray(self.cfg_model * len(self.classes) + self.cfg_class)

    def lane_name(self, lane: int) -> str:
        """``model`` or ``model (short)``."""
        if not self.classes:
            return self.models[lane]
        n = len(self.classes)
        return f"{self.models[lane // n]} ({self.classes[lane % n]})"

    def lane_model(self, lane: int) -> int:
        """The model of a lane."""
        return lane // max(1, len(self.classes))

    def lane_loads(self, shares: FloatArray) -> FloatArray:
        """``(B, W, L)`` request rates of each lane from each workload, for shares ``(B, W, K)``.

        ``s_{w,m} p_{w,class} lambda_w``; without classes `workload_loads`.
        """
        wl = self.workload_loads(shares)
        if self.class_share is None:
            return wl
        return np.asarray((wl[..., :, None] * self.class_share[None, :, None, :]).reshape(
            *wl.shape[:-1], self.num_lanes))

    def stream_db(self, w: int, c: int) -> PerfDB:
        """The DB holding config c's rows of workload w (`cfg_dbs`)."""
        if self.cfg_class is None:
            return self.dbs[w]
        return self.dbs[w * len(self.classes) + int(self.cfg_class[c])]

    @property
    def num_slots(self) -> int:
        """Group slots of a plan: one per (lane, GPU type), lane-major."""
        return self.num_lanes * len(self.gpu_types)

    def quality_range(self) -> tuple[float, float]:
        """Quality with every query on the smallest / the largest model (first workload)."""
        if self.pair_quality is not None:
            return float(self.pair_quality(0.0)), float(self.pair_quality(1.0))
        if len(self.workloads) > 1:
            return 0.0, 1.0           # several workloads: quality is normalized
        return self.cascades[0].lowest, self.cascades[0].highest

    @property
    def budget(self) -> float:
        """Budget, $/hour."""
        return float(self.scenario.budget_per_hour)

    @property
    def ceiling_s(self) -> float:
        """Slowest admissible P95 (top latency level)."""
        return float(self.levels_s[-1])

    @property
    def num_configs(self) -> int:
        """Number of candidate configs."""
        return len(self.cfg_model)

    def loads(self, strong_share: FloatArray) -> FloatArray:
        """``(..., 2)`` request rates of (weak, strong) for strong shares ``s``."""
        s = np.asarray(strong_share, dtype=np.float64)
        return np.stack([(1.0 - s) * self.rate_rps, s * self.rate_rps], axis=-1)

    def workload_loads(self, shares: FloatArray) -> FloatArray:
        """``(B, W, K)`` request rates ``s_{w,m} lambda_w`` for shares ``(B, W, K)``."""
        return np.asarray(shares, dtype=np.float64) * self.workload_rates[None, :, None]

    def mix_cap(self, fractions: FloatArray) -> FloatArray:
        """``(..., C, K)`` capacity table of workload mixes ``(..., W)`` (fractions sum to 1).

        ``1 / sum_w (f_w / cap_w)``; 0 where a workload with a share has no capacity.
        """
        f = np.asarray(fractions, dtype=np.float64)
        if len(self.workloads) == 1:
            return np.broadcast_to(self.caps[0], f.shape[:-1] + self.caps.shape[1:])
        inv = np.zeros(f.shape[:-1] + self.caps.shape[1:])
        with np.errstate(divide="ignore", invalid="ignore"):
            for w in range(len(self.workloads)):
                fw = f[..., w][..., None, None]
                inv = inv + np.where(fw > 0, fw / self.caps[w], 0.0)
            out = np.where(np.isfinite(inv) & (inv > 0), 1.0 / inv, 0.0)
        return np.asarray(out, dtype=np.float64)

    def config(self, model: int, gpu_type: int, tp: int, pp: int, length_class: int = 0
               ) -> int:
        """Index of a candidate config (of a length class), or -1."""
        return self._by_key.get((model, gpu_type, tp, pp, length_class), -1)

    def configs_of(self, lane: int, gpu_type: int) -> IntArray:
        """Candidate configs of one lane (a model, without length classes) on one GPU type."""
        return np.flatnonzero((self.cfg_lane == lane) & (self.cfg_type == gpu_type))

    def cap_at(self, x_s: float | FloatArray) -> FloatArray:
        """``cap_c(x)`` for every config at latency level(s) `x_s`: ``(C,)`` or ``(C, N)``.

        Linear in ``log x`` between levels; 0 below the first level, flat above the last.
        """
        x = np.atleast_1d(np.asarray(x_s, dtype=np.float64))
        pos = np.interp(np.log(np.maximum(x, 1e-12)), np.log(self.levels_s),
                        np.arange(len(self.levels_s), dtype=np.float64), left=-1.0)
        lo = np.clip(np.floor(pos).astype(np.int64), 0, len(self.levels_s) - 1)
        hi = np.minimum(lo + 1, len(self.levels_s) - 1)
        w = np.clip(pos - lo, 0.0, 1.0)
        out = (1 - w) * self.cap[:, lo] + w * self.cap[:, hi]
        out[:, pos < 0] = 0.0
        return np.asarray(out[:, 0] if np.ndim(x_s) == 0 else out, dtype=np.float64)


def _max_rate_under(db: PerfDB, row: int, table: FloatArray, target_s: float) -> float:
    """Highest rate of DB config `row` whose `table` value (TTFT or TPOT P95) is <= `target_s`.

    Unsaturated rows only; the column made monotone in rate (running max) and inverted by
    linear interpolation, as `_capacity_table` does the P95: 0 when the lowest rate misses,
    the last unsaturated rate when every row meets it. NaN values (no decode step) meet it.
    """
    ok = ~db.saturated[row] & np.isfinite(db.rates[row])
    rates = db.rates[row][ok]
    if len(rates) == 0:
        return 0.0
    vals = table[row][ok]
    vals = np.where(np.isnan(vals), 0.0, vals)
    vals = np.maximum.accumulate(vals) + np.arange(len(vals)) * 1e-12
    if target_s < vals[0]:
        return 0.0
    return float(np.interp(target_s, vals, rates, right=float(rates[-1])))


def _capacity_table(db: PerfDB, rows: IntArray, levels: FloatArray) -> FloatArray:
    p_idx = int(np.argmin(np.abs(db.quantile_levels - 0.95)))
    cap = np.zeros((len(rows), len(levels)))
    for i, row in enumerate(rows):
        ok = ~db.saturated[row] & np.isfinite(db.rates[row])
        rates = db.rates[row][ok]
        p95 = db.quantiles[row, ok, p_idx]
        if len(rates) == 0:
            continue
        p95 = np.maximum.accumulate(p95)
        # Strictly increasing abscissae for the inverse (flat stretches get a tiny ramp).
        p95 = p95 + np.arange(len(p95)) * 1e-12
        inv = np.interp(levels, p95, rates, left=0.0, right=float(rates[-1]))
        inv[levels < p95[0]] = 0.0
        cap[i] = inv
    return cap


def _cascade(scenario: Scenario, w: int, quality: QualityCurve | CascadeQuality | None
             ) -> CascadeQuality:
    """Quality of workload w: `quality` if given, its eval records, else published scores."""
    models = scenario.model_names
    wl = scenario.named_workloads[w]
    try:
        if isinstance(quality, CascadeQuality):
            return quality
        if len(models) == 2 and (quality is not None or (wl.quality_records is None
                                                          and not wl.scores)):
            curve = quality or default_quality_curve(wl.task)
            return CascadeQuality.of_pair(curve, (models[0], models[1]))
        if wl.quality_records is not None:
            return CascadeQuality.from_file(wl.quality_records, models)
        return CascadeQuality.published(wl.task, models, wl.scores)
    except ValueError as exc:
        where = "" if scenario.workloads is None else f"workloads[{w}] ({wl.name}): "
        raise ScenarioError(f"{where}task={wl.task!r}: {exc}") from None


def load_problem(
    scenario: Scenario,
    db: PerfDB | Sequence[PerfDB],
    catalog: Catalog,
    quality: QualityCurve | CascadeQuality | None = None,
    threshold_tokens: int | None = None,
) -> Problem:
    """Assemble the arrays of a planning problem.

    Args:
        scenario: the scenario.
        db: its perf DB, or one per workload (`db_paths` order); with `threshold_tokens`
            one per (workload, class): short then long of each workload.
        catalog: the merged catalog.
        quality: the (first) workload's quality instead of its published one.
        threshold_tokens: plan with length classes split at this many tokens (module
            docstring); None: without.

    Raises:
        PerfDBError: the DB lacks a GPU type or model of the scenario (rebuild it).
        ScenarioError: the quality curve of the scenario's task is unknown, or an offer names
            no catalog GPU (`profiling.Scenario.offered_gpus`).

    """
    dbs = (db,) if isinstance(db, PerfDB) else tuple(db)
    names = scenario.workload_names
    n_cls = 1 if threshold_tokens is None else len(LENGTH_CLASSES)
    if len(dbs) != len(names) * n_cls:
        raise PerfDBError(f"{len(dbs)} perf DB(s) for {len(names)} workloads {list(names)}"
                          + ("" if n_cls == 1 else f" x {n_cls} length classes"))
    models = scenario.model_names
    gpu_types = tuple(scenario.gpus)
    offered = scenario.offered_gpus(catalog)
    rents = [scenario.catalog_gpu(g) for g in gpu_types]     # offer -> catalog GPU (DB rows)
    stock = np.array([o.count for o in scenario.gpus.values()], dtype=np.int64)
    for one in dbs:
        db_gpus = {k[1] for k in one.keys}
        db_models = {k[0] for k in one.keys}
        missing = [g for g in dict.fromkeys(rents) if g not in db_gpus] + [
            m for m in models if m not in db_models]
        if missing:
            raise PerfDBError(f"perf DB (scenario {one.meta.get('scenario')!r}) has no rows "
                              f"for {missing}; build one for scenario {scenario.name!r} with "
                              f"`boute profile --scenario {scenario.name}`")
    cascades = tuple(_cascade(scenario, w, quality if w == 0 else None)
                     for w in range(len(names)))
    gpu_price = np.array([offered[g].price_per_hour for g in gpu_types])
    rows: list[list[int]] = [[] for _ in names]
    cm, ct, ctp, cpp, ccl = [], [], [], [], []
    for key in dbs[0].keys:
        m, g, tp, pp = key
        if m not in models or any(key not in other.index for other in dbs[1:]):
            continue
        # Each offer renting GPU g whose stock holds one replica; weak and strong may be the
        # same model (a degenerate pair): list it for both. One config per length class.
        for t in (t for t, r in enumerate(rents) if r == g and tp * pp <= stock[t]):
            for mi, name in enumerate(models):
                if name != m:
                    continue
                for k in range(n_cls):
                    for w in range(len(names)):
                        rows[w].append(dbs[w * n_cls + k].index[key])
                    cm.append(mi)
                    ct.append(t)
                    ctp.append(tp)
                    cpp.append(pp)
                    ccl.append(k)
    row_arr = np.asarray(rows, dtype=np.int64).reshape(len(names), len(cm))
    cfg_class = np.asarray(ccl, dtype=np.int64)
    cfg_type = np.asarray(ct, dtype=np.int64)
    cfg_gpus = np.asarray(ctp, dtype=np.int64) * np.asarray(cpp, dtype=np.int64)
    levels = np.geomspace(X_MIN_S, scenario.p95_ceiling_s, NUM_LEVELS)
    by_key = {key: i for i, key in enumerate(zip(cm, ct, ctp, cpp, ccl, strict=True))}
    caps = np.zeros((len(names), len(cm), len(levels)))
    for w in range(len(names)):
        for k in range(n_cls):
            mine = np.flatnonzero(cfg_class == k)
            caps[w, mine] = _capacity_table(dbs[w * n_cls + k], row_arr[w, mine], levels)
    rates = np.array([w.rate_rps for w in scenario.named_workloads], dtype=np.float64)
    problem = Problem(
        scenario=scenario, models=models, gpu_types=gpu_types,
        stock=stock, gpu_price=gpu_price,
        gpus_per_node=np.array([offered[g].gpus_per_node for g in gpu_types], dtype=np.int64),
        cfg_model=np.asarray(cm, dtype=np.int64), cfg_type=cfg_type,
        cfg_tp=np.asarray(ctp, dtype=np.int64), cfg_pp=np.asarray(cpp, dtype=np.int64),
        cfg_gpus=cfg_gpus, cfg_price=cfg_gpus * gpu_price[cfg_type],
        levels_s=levels, workloads=names, workload_rates=rates,
        cascades=cascades, caps=caps, dbs=dbs, cfg_dbs=row_arr, _by_key=by_key)
    if threshold_tokens is not None:
        problem = replace(problem, classes=LENGTH_CLASSES, threshold_tokens=int(threshold_tokens),
                          class_share=_class_shares(scenario, threshold_tokens),
                          cfg_class=cfg_class)
    return problem


def _class_shares(scenario: Scenario, threshold_tokens: int) -> FloatArray:
    """``(W, 2)`` share of each workload's profiled requests at or below / above the threshold."""
    tokens = request_tokens(scenario)
    short = np.array([float(np.mean(tokens[w] <= threshold_tokens))
                      for w in scenario.workload_names])
    return np.stack([short, 1.0 - short], axis=1)


def planning_problem(scenario_ref: str | None, *, db: str | None = None,
                     budget: float | None = None, rate_rps: float | None = None,
                     gpu_catalog: Sequence[str] = (), model_catalog: Sequence[str] = (),
                     hardware_profiles: str | None = None,
                     quality_records: str | None = None,
                     note: Callable[[str], None] | None = None,
                     progress: bool = True, threshold_tokens: int | None = None,
                     served_calibration: str | None = None) -> Problem:
    """Scenario (a preset name or a YAML path) + its perf DB -> `Problem`.

    The DB at `db` (default `default_db_path`) is built, or rebuilt, when it is missing or
    stale: it must have been built with the efficiency each GPU type gets now (a hardware
    profile under `hardware_profiles`, else the scenario's ``profile.hardware_profiles``, else
    the spec-sheet roofline). `note` receives one line saying why a DB is (re)built.
    `budget` / `rate_rps` override the scenario's (the DB is rate-free: a 1 req/s base trace
    and a rate grid). `quality_records` (per-query eval records,
    `profiling.QualityCurve.from_parquet`) replaces the task's published quality curve.
    `threshold_tokens`: plan with length classes split there (`load_problem`); each
    (workload, class) has its own DB (`class_db_path`), built when missing or stale.
    `served_calibration` (a `boute calibrate` file) replaces the scenario's
    ``profile.served_calibration``: the DB must have been built with it (else rebuilt).

    Raises:
        BouteError: a non-positive or non-finite `budget` / `rate_rps` (named, with the fix),
            or unreadable / invalid eval records.
        PerfDBError: `db` names a file that is not a readable perf DB.
        CatalogError, ScenarioError: from loading the catalog and the scenario.

    """
    from profiling import load_catalog, load_scenario

    catalog = load_catalog(gpu_catalog, model_catalog)
    scenario = load_scenario(scenario_ref)
    scenario.check_catalog(catalog, scenario_ref)
    quality: QualityCurve | CascadeQuality | None = None
    if quality_records:
        quality = (QualityCurve.from_parquet(quality_records) if scenario.is_pair else
                   CascadeQuality.from_file(quality_records, scenario.model_names))
    if served_calibration is not None:
        profile = scenario.profile.model_copy(update={"served_calibration": served_calibration})
        scenario = scenario.model_copy(update={"profile": profile})
    if budget is not None:
        if not (budget > 0 and math.isfinite(budget)):
            raise BouteError(f"--budget={budget} must be a positive number of $/hour")
        scenario = scenario.model_copy(update={"budget_per_hour": budget})
    if rate_rps is not None:
        if not (rate_rps > 0 and math.isfinite(rate_rps)):
            raise BouteError(f"--rate={rate_rps} must be a positive number of requests/s")
        if scenario.workloads is None:
            workload = scenario.workload.model_copy(update={"rate_rps": rate_rps})
            scenario = scenario.model_copy(update={"workload": workload})
        else:      # the same total, in the same proportions
            f = rate_rps / scenario.total_rate_rps
            scenario = scenario.with_rates({w.name: w.rate_rps * f
                                            for w in scenario.named_workloads})
    return scenario_problem(scenario, catalog, db=db, quality=quality,
                            hardware_profiles=hardware_profiles, note=note, progress=progress,
                            threshold_tokens=threshold_tokens)


def scenario_problem(scenario: Scenario, catalog: Catalog, *, db: str | Path | None = None,
                     quality: QualityCurve | CascadeQuality | None = None,
                     hardware_profiles: str | None = None,
                     note: Callable[[str], None] | None = None, progress: bool = True,
                     threshold_tokens: int | None = None) -> Problem:
    """`planning_problem` of a loaded scenario: its perf DBs (built when missing or stale).

    Raises:
        BouteError: a `threshold_tokens` that is not a positive whole number.

    """
    if threshold_tokens is None:
        dbs = [_load_or_build(scenario.for_workload(name), path, catalog, hardware_profiles,
                              note, progress)
               for name, path in zip(scenario.workload_names, db_paths(scenario, db),
                                     strict=True)]
        return load_problem(scenario, dbs, catalog, quality)
    if not (isinstance(threshold_tokens, int) and threshold_tokens >= 1):
        raise BouteError(f"threshold_tokens={threshold_tokens!r} must be a positive whole "
                         "number of tokens")
    dbs = [_load_or_build(scenario.for_workload(name), class_db_path(path, threshold_tokens, k),
                          catalog, hardware_profiles, note, progress, span)
           for name, path in zip(scenario.workload_names, db_paths(scenario, db), strict=True)
           for k, span in length_spans(threshold_tokens).items()]
    return load_problem(scenario, dbs, catalog, quality, threshold_tokens)


def class_db_path(path: Path, threshold_tokens: int, length_class: str) -> Path:
    """The DB of one length class next to the workload's: ``<stem>-len<n>-<class>``."""
    return path.with_name(f"{path.stem}-len{threshold_tokens}-{length_class}"
                          f"{path.suffix or '.parquet'}")


def _load_or_build(scenario: Scenario, path: Path, catalog: Catalog,
                   hardware_profiles: str | None, note: Callable[[str], None] | None,
                   progress: bool, length_tokens: tuple[int, int] | None = None) -> PerfDB:
    """The perf DB of a one-workload scenario (one length class's) at `path`, built if need be."""
    from profiling import build_perfdb, spec_calibration

    spec = scenario.profile_spec(length_tokens)
    calibration = spec_calibration(spec, catalog, hardware_profiles=hardware_profiles)
    try:
        return PerfDB.load(path, catalog=catalog, trace=spec.base_trace(),
                           arrival=spec.traffic().describe(),
                           calibration=calibration)
    except StaleDBError as exc:
        why = f"{exc}; rebuilding"
    except PerfDBError as exc:
        if path.is_file():
            raise
        why = f"no perf DB at {path} ({exc.__class__.__name__}); building it"
    if note is not None:
        note(why)
    perfdb = build_perfdb(spec, catalog, calibration=calibration, progress=progress)
    perfdb.save(path)
    return perfdb
