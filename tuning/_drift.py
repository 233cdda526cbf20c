"""Drift: how far each replica group's served latency is from the plan's prediction (pure).

For group k with the window's observed P95 latency ``P_obs`` and median TPOT ``T_obs`` and
the perf DB's prediction at the group's observed per-replica rate (``P_pred``, ``T_pred``):

    error_p95 = P_pred / P_obs - 1        error_tpot = T_pred / T_obs - 1

(negative: the model is optimistic; the sign convention of every fidelity table here). The
window is cut into ``splits`` equal sub-windows. Group k has *drifted* when

* |error_p95| > tolerance over the whole window and in every sub-window that holds at least
  ``min_requests / splits`` of its requests, all with the same sign (a lasting gap, not one
  burst); or
* |error_tpot| > tolerance over the whole window (TPOT hardly depends on bursts).

A group with fewer than ``min_requests`` requests in the window gets no verdict (``None``).
The report is plain data for the replan job's report, `/health` and a metric
(``boute_prediction_error{group, quantity}``: error_p95 and error_tpot).

**Prediction tables** (`prediction_table`, `interpolate_prediction`): the router has no perf
DB and runs no simulator, so a deploy ships it, per group, the DB's unsaturated rows of the
group's config: per-replica rates ``r_1 < ... < r_n`` with their P95 ``P_i`` and median TPOT
``T_i``. At a per-replica rate ``r`` the prediction is `PerfDB.lookup`'s (linear in rate):

    r <= r_1: (P_1, T_1)
    r_i < r <= r_{i+1}: w = (r - r_i) / (r_{i+1} - r_i), P = (1 - w) P_i + w P_{i+1} (T alike)
    r > r_n: none (the config is saturated there; `PerfDB.lookup` gives +inf)
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = ["DriftReport", "GroupDrift", "GroupObserved", "GroupPredicted", "PredictionTable",
           "detect_drift", "interpolate_prediction", "observe_groups", "predict_groups",
           "prediction_table"]

FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True)
class GroupObserved:
    """What one group served in the window."""

    requests: int
    rate_rps: float
    """The group's arrivals per second over the window (all its replicas)."""
    p95_s: float
    tpot_p50_s: float
    """Median of (latency - TTFT) / (output tokens - 1) over streamed requests (NaN: none)."""
    split_p95_s: tuple[float, ...]
    """P95 per sub-window (NaN where it holds too few requests)."""


@dataclass(frozen=True)
class GroupPredicted:
    """The plan's perf DB at the group's observed per-replica rate."""

    p95_s: float
    tpot_p50_s: float


@dataclass(frozen=True)
class GroupDrift:
    """One group's prediction errors and verdict (module docstring)."""

    group: str
    requests: int
    observed_p95_s: float
    predicted_p95_s: float
    error_p95: float
    split_error_p95: tuple[float, ...]
    observed_tpot_s: float
    predicted_tpot_s: float
    error_tpot: float
    drifted: bool | None


@dataclass(frozen=True)
class DriftReport:
    """Every group's `GroupDrift`, and whether any drifted."""

    groups: tuple[GroupDrift, ...]
    tolerance: float
    splits: int

    @property
    def drifted(self) -> bool:
        """Whether some group drifted."""
        return any(g.drifted for g in self.groups)

    def to_dict(self) -> dict[str, Any]:
        """JSON (NaN stays NaN; the CLI's `json_safe` makes it null)."""
        return {"drifted": self.drifted, "tolerance": self.tolerance, "splits": self.splits,
                "groups": [asdict(g) for g in self.groups]}

    def metric(self) -> dict[str, float]:
        """``boute_prediction_error{group, quantity="p95"}``: group -> error_p95."""
        return {g.group: g.error_p95 for g in self.groups}


@dataclass(frozen=True)
class PredictionTable:
    """One group's prediction points (module docstring): per-replica rate -> P95, TPOT.

    ``rate_rps`` strictly increasing, all finite; ``tpot_p50_s`` NaN where the DB has none.
    """

    rate_rps: tuple[float, ...]
    p95_s: tuple[float, ...]
    tpot_p50_s: tuple[float, ...]

    def __post_init__(self) -> None:
        n = len(self.rate_rps)
        if n == 0 or len(self.p95_s) != n or len(self.tpot_p50_s) != n:
            raise ValueError(f"PredictionTable: {len(self.rate_rps)} rates, "
                             f"{len(self.p95_s)} P95s, {len(self.tpot_p50_s)} TPOTs; give "
                             "one of each per point, at least one point")
        if any(b <= a for a, b in itertools.pairwise(self.rate_rps)):
            raise ValueError(f"PredictionTable: rate_rps={list(self.rate_rps)} must be "
                             "strictly increasing")
        if not all(math.isfinite(v) and v >= 0 for v in (*self.rate_rps, *self.p95_s)):
            raise ValueError("PredictionTable: rates and P95s must be finite and >= 0 "
                             "(saturated points are left out)")


def interpolate_prediction(table: PredictionTable, rate_rps: float) -> GroupPredicted | None:
    """The table's P95 and TPOT at per-replica rate `rate_rps` (None: past its last point).

    Linear in rate between points, the first point's below them (module docstring; as
    `PerfDB.lookup`). Past the last (unsaturated) point the config is saturated: no finite
    prediction.
    """
    r = table.rate_rps
    if not rate_rps <= r[-1]:                   # (NaN too)
        return None
    p95 = float(np.interp(rate_rps, r, table.p95_s))
    tp = np.asarray(table.tpot_p50_s, float)
    ok = np.isfinite(tp)
    tpot = float(np.interp(rate_rps, np.asarray(r)[ok], tp[ok])) if ok.any() else math.nan
    return GroupPredicted(p95, tpot)


def _db_columns(db: Any) -> tuple[int, FloatArray, FloatArray, list[tuple[Any, ...]]]:
    """The perf DB columns the predictions read.

    The index of its 0.95 quantile, each row's rate and median TPOT, and each row's config key
    (model, gpu, tp, pp).
    """
    i95 = list(db.quantile_levels).index(0.95)
    rate = np.asarray(db.table.column("rate_rps").to_numpy(zero_copy_only=False), float)
    tpot = np.asarray(db.table.column("tpot_p50_s").to_numpy(zero_copy_only=False), float)
    keys = list(zip(db.table.column("model").to_pylist(), db.table.column("gpu").to_pylist(),
                    db.table.column("tp").to_pylist(), db.table.column("pp").to_pylist(),
                    strict=True))
    return i95, rate, tpot, keys


def prediction_table(db: Any, groups: Sequence[Any], gpu_of: Callable[[str], str] = str
                     ) -> dict[str, PredictionTable]:
    """Each plan group's `PredictionTable` from `db`'s unsaturated rows of its config.

    Args:
        db: the perf DB the plan was made on (`profiling.PerfDB`).
        groups: the plan's groups (`tuning.Group`: name, model, gpu, tp, pp).
        gpu_of: scenario GPU key -> catalog GPU type (the DB's key).

    Returns:
        group name -> its table. A group whose config is missing from `db`, or saturated
        at every rate, is left out. P95 is the DB's 0.95 quantile (`PerfDB.quantiles`),
        TPOT its ``tpot_p50_s`` column.

    """
    i95, rate, tpot, keys = _db_columns(db)
    out = {}
    for g in groups:
        key = (g.model, gpu_of(g.gpu), g.tp, g.pp)
        if key not in db.index:
            continue
        ci = db.index[key]
        grid = np.asarray(db.rates[ci], float)
        p95 = np.asarray(db.quantiles[ci, :, i95], float)
        ok = np.isfinite(grid) & ~np.asarray(db.saturated[ci], bool) & np.isfinite(p95)
        if not ok.any():
            continue
        rows = np.asarray([k == key for k in keys])
        by_rate = dict(zip(rate[rows].tolist(), tpot[rows].tolist(), strict=True))
        t = [by_rate.get(float(x), math.nan) for x in grid[ok]]
        out[g.name] = PredictionTable(tuple(float(x) for x in grid[ok]),
                                      tuple(float(x) for x in p95[ok]),
                                      tuple(float(x) if math.isfinite(x) else math.nan
                                            for x in t))
    return out


def observe_groups(group: npt.NDArray[Any], arrival_s: FloatArray, latency_s: FloatArray,
                   ttft_s: FloatArray, output_tokens: npt.NDArray[Any],
                   stream: npt.NDArray[np.bool_], *, window: tuple[float, float],
                   splits: int = 3, min_requests: int = 30) -> dict[str, GroupObserved]:
    """Each group's `GroupObserved` from the window's successful requests (arrays, one per row).

    Raises:
        ValueError: `splits` < 1 or an empty window span.

    """
    if splits < 1:
        raise ValueError(f"splits={splits!r} must be >= 1")
    t0, t1 = window
    if not t1 > t0:
        raise ValueError(f"window={window!r} must end after it starts")
    edges = np.linspace(t0, t1, splits + 1)
    out = {}
    for name in sorted(set(group.tolist())):
        sel = group == name
        lat = latency_s[sel]
        arr = arrival_s[sel]
        out_tok = output_tokens[sel].astype(float)
        st = stream[sel] & (out_tok > 1) & np.isfinite(ttft_s[sel])
        tpot = (lat[st] - ttft_s[sel][st]) / (out_tok[st] - 1)
        per_split = []
        for a, b in itertools.pairwise(edges):
            part = lat[(arr >= a) & (arr <= b)]
            enough = len(part) >= max(1, min_requests // splits)
            per_split.append(float(np.quantile(part, 0.95)) if enough else math.nan)
        out[name] = GroupObserved(int(sel.sum()), float(sel.sum()) / (t1 - t0),
                                  float(np.quantile(lat, 0.95)),
                                  float(np.median(tpot)) if tpot.size else math.nan,
                                  tuple(per_split))
    return out


def _err(pred: float, obs: float) -> float:
    return pred / obs - 1.0 if obs > 0 and math.isfinite(obs) else math.nan


def detect_drift(predicted: Mapping[str, GroupPredicted], observed: Mapping[str, GroupObserved],
                 *, tolerance: float = 0.25, min_requests: int = 30) -> DriftReport:
    """Per-group errors and verdicts (module docstring); groups without a prediction skipped.

    Raises:
        ValueError: `tolerance` not > 0.

    """
    if not (tolerance > 0 and math.isfinite(tolerance)):
        raise ValueError(f"tolerance={tolerance!r} must be a positive fraction, e.g. 0.25")
    out = []
    splits = 1
    for name in sorted(set(predicted) & set(observed)):
        p, o = predicted[name], observed[name]
        splits = len(o.split_p95_s)
        e95 = _err(p.p95_s, o.p95_s)
        split = tuple(_err(p.p95_s, v) for v in o.split_p95_s)
        etpot = _err(p.tpot_p50_s, o.tpot_p50_s)
        verdict: bool | None = None
        if o.requests >= min_requests:
            counted = [e for e in split if not math.isnan(e)]
            lasting = (abs(e95) > tolerance and bool(counted)
                       and all(abs(e) > tolerance and e * e95 > 0 for e in counted))
            verdict = lasting or (not math.isnan(etpot) and abs(etpot) > tolerance)
        out.append(GroupDrift(name, o.requests, o.p95_s, p.p95_s, e95, split, o.tpot_p50_s,
                              p.tpot_p50_s, etpot, verdict))
    return DriftReport(tuple(out), tolerance, splits)


def predict_groups(db: Any, groups: Sequence[Any], observed: Mapping[str, GroupObserved],
                   gpu_of: Callable[[str], str] = str) -> dict[str, GroupPredicted]:
    """Each plan group's P95 and median TPOT in `db` at its observed per-replica rate.

    Args:
        db: the perf DB the plan is judged on (`profiling.PerfDB`; built on the window's
            lengths, so the prediction is at the observed rate and length mix).
        groups: the plan's groups (`tuning.Group`: name, model, gpu, tp, pp, replicas).
        observed: `observe_groups` of the window (groups without traffic are skipped).
        gpu_of: scenario GPU key -> catalog GPU type (the DB's key).

    A config missing from `db` is skipped. TPOT is interpolated linearly in rate between the
    DB's rows (``tpot_p50_s``); P95 by `PerfDB.lookup` (+inf past saturation).

    """
    i95, rate, tpot, keys = _db_columns(db)
    out = {}
    for g in groups:
        o = observed.get(g.name)
        key = (g.model, gpu_of(g.gpu), g.tp, g.pp)
        if o is None or key not in db.index:
            continue
        per_replica = o.rate_rps / max(1, g.replicas)
        quant, _, _ = db.lookup(np.asarray([db.index[key]]), np.asarray([per_replica]))
        rows = np.asarray([k == key for k in keys])
        order = np.argsort(rate[rows])
        t = float(np.interp(per_replica, rate[rows][order], tpot[rows][order]))
        out[g.name] = GroupPredicted(float(quant[0, i95]), t)
    return out
