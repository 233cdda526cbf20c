"""The search encoding of ladders: K models, W workloads, one point of the unit cube -> a plan.

``z = (z_{w,j} for each workload w and j = 1..K-1, u)``, dimension ``W (K - 1) + 1``:

* each workload's routing, as *tail shares* (`profiling.CascadeQuality`) built from the top:
  ``S_K = z_{w,1}`` and ``S_k = S_{k+1} + z_{w,K-k+1} (1 - S_{k+1})``, so every point is a valid
  cascade (``1 >= S_2 >= ... >= S_K >= 0``) and with two models ``S_2`` is the pair encoding's
  ``s``. 3% of each axis at each end maps onto the end (`tuning._encoding.AXIS_END`).
* a workload with a quality floor q_w (the goal's) whose point falls short is moved up the
  ladder, one step at a time (``S_2`` toward 1, then ``S_3``, ...), by the least amount
  reaching q_w (bisection; quality is monotone along that path): every decoded plan meets its
  floors.
* ``u``: the latency level x, on a log scale, as in the pair encoding (for min-cost the band
  ``[0.7 L, L]`` below the target L; for max-throughput x = L and u is a load scale).

Decoding at level x: each model's load is ``sum_w s_{w,m} lambda_w`` with its workload mix;
its replicas' capacity at x for that mix is ``cap_mix`` (`tuning._problem`). Models are
covered from the largest down, greedily (the replica with the most capacity per dollar for the
load still uncovered, one config per (model, GPU type), within the stock left; with length
classes each (model, class) lane is covered on its own, short first), and the slack
of a model's last replica is given the hardest queries of the model below it (raising the
shares of the larger model — quality cannot fall — and lowering the load below; the amount is
found by bisection on the larger model's capacity for the new mix). A plan that does not fit
the stock or the budget is repaired as the pair's is: its routing is pulled toward the
smallest models, ``S(a) = floor(a S)``, with the largest a in [0, 1] whose plan fits
(bisection); if even a = 0 does not fit the point's own plan is kept.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
import numpy.typing as npt

from ._encoding import AXIS_END, REPAIR_HALVINGS, cover, lowest_level_s
from ._evaluator import BUDGET_TOL, PlanArrays, ladder_arrays
from ._problem import Problem

__all__ = ["LadderEncoding"]

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

# Bisection steps of the quality floor (tau to 2**-20) and of the slack hand-over.
FLOOR_HALVINGS = 20
SLACK_HALVINGS = 12


@dataclass(frozen=True)
class _Fill:
    config: IntArray
    replicas: IntArray
    shares: FloatArray        # (W, K)
    fits: bool


@dataclass(frozen=True)
class LadderEncoding:
    """The encoding of a ladder problem (see the module docstring).

    Attributes:
        problem: the planning problem.
        floors: minimum quality of each workload (None: no floor).
        x_hi_s: top latency level; None: the ceiling.
        scale_range: ``(lo, hi)`` load scale of max-throughput; None: u is the latency level.
        x_band: search only ``[x_band * x_hi_s, x_hi_s]`` (min-cost).
        budget_per_hour: plans above it do not fit; None: no budget.
        fixed_tails: ``(W, K - 1)`` routing to keep (a baseline's); None: searched.

    """

    problem: Problem
    floors: tuple[float | None, ...] = ()
    x_hi_s: float | None = None
    scale_range: tuple[float, float] | None = None
    x_band: float | None = None
    budget_per_hour: float | None = None
    fixed_tails: FloatArray | None = None

    @property
    def _k(self) -> int:
        return self.problem.num_models - 1

    @property
    def dim(self) -> int:
        """Dimension of z."""
        return 1 + (0 if self.fixed_tails is not None else len(self.problem.workloads) * self._k)

    @property
    def x_lo_s(self) -> float:
        """Lowest level searched (`tuning._encoding.lowest_level_s`)."""
        return lowest_level_s(self.problem, self.x_band, self.x_hi_s)

    @cached_property
    def _options(self) -> list[list[IntArray]]:
        """Candidate configs per lane (model, or (model, length class)) and GPU type."""
        pr = self.problem
        return [[pr.configs_of(lane, t) for t in range(len(pr.gpu_types))]
                for lane in range(pr.num_lanes)]

    # -- routing -------------------------------------------------------------------------------
    def tails(self, z: FloatArray) -> FloatArray:
        """``(N, W, K - 1)`` tail shares of points z (floors applied)."""
        pr = self.problem
        n_w = len(pr.workloads)
        if self.fixed_tails is not None:
            return np.broadcast_to(self.fixed_tails, (len(z), n_w, self._k)).copy()
        v = np.clip((1 + 2 * AXIS_END) * z[:, :n_w * self._k] - AXIS_END, 0.0, 1.0)
        v = v.reshape(len(z), n_w, self._k)
        tails = np.zeros_like(v)
        acc = np.zeros(v.shape[:2])
        for j in range(self._k):               # from the largest model down
            acc = acc + v[:, :, j] * (1.0 - acc)
            tails[:, :, self._k - 1 - j] = acc
        return self.floored(tails)

    def floored(self, tails: FloatArray) -> FloatArray:
        """Tails moved up the ladder until each workload meets its floor.

        The path raises ``S_2`` to 1 first (queries go one model up), then ``S_3``, and so
        on: ``tau`` in ``[j - 1, j]`` moves ``S_{j+1}`` toward 1. Quality is monotone along
        it, and with two models it is the pair's lowest share ``s_lo``.
        """
        out = np.array(tails, dtype=np.float64)
        for w, floor in enumerate(self.floors):
            if floor is None:
                continue
            q = self.problem.cascades[w]
            short = q(out[:, w, :]) < floor - 1e-12
            if not short.any():
                continue
            base = out[short, w, :]
            lo, hi = np.zeros(len(base)), np.full(len(base), float(self._k))
            for _ in range(FLOOR_HALVINGS + 2 * self._k):
                mid = 0.5 * (lo + hi)
                ok = q(self._up(base, mid)) >= floor - 1e-12
                hi, lo = np.where(ok, mid, hi), np.where(ok, lo, mid)
            out[short, w, :] = self._up(base, hi)
        return out

    def _up(self, base: FloatArray, tau: FloatArray) -> FloatArray:
        """``(N, K - 1)`` tails `base` moved ``tau`` along the floor path (`floored`)."""
        j = np.arange(self._k)[None, :]
        step = np.clip(tau[:, None] - j, 0.0, 1.0)
        moved = base + step * (1.0 - base)
        # A tail never exceeds the one below it (S_2 >= S_3 >= ...): raising S_2 first keeps
        # the order; a larger tail keeps its value.
        return np.asarray(np.maximum(moved, base))

    @staticmethod
    def shares_of(tails: FloatArray) -> FloatArray:
        """``(..., K)`` shares from ``(..., K - 1)`` tails."""
        ext = np.concatenate([np.ones((*tails.shape[:-1], 1)), tails,
                              np.zeros((*tails.shape[:-1], 1))], axis=-1)
        return np.asarray(np.maximum(ext[..., :-1] - ext[..., 1:], 0.0))

    # -- decoding ------------------------------------------------------------------------------
    def decode(self, z: FloatArray) -> PlanArrays:
        """Decode ``(N, dim)`` points into plans with K T slots (model-major, then type)."""
        pr = self.problem
        z = np.atleast_2d(np.asarray(z, dtype=np.float64))
        tails = self.tails(z)
        x_hi = pr.ceiling_s if self.x_hi_s is None else self.x_hi_s
        if self.scale_range is None:
            u = np.minimum((1 + AXIS_END) * z[:, -1], 1.0)
            lx = np.log(self.x_lo_s) + u * (np.log(x_hi) - np.log(self.x_lo_s))
            scale = np.ones(len(z))
        else:
            lx = np.full(len(z), np.log(x_hi))
            lo, hi = self.scale_range
            scale = lo * (hi / lo) ** z[:, -1]
        caps_w = np.stack([self._caps_at(float(np.exp(v))) for v in lx])      # (N, W, C)
        fills = self._repaired(tails, caps_w, scale)
        return ladder_arrays(pr, np.stack([f.shares for f in fills]),
                             np.stack([f.config for f in fills]),
                             np.stack([f.replicas for f in fills]))

    def _caps_at(self, x_s: float) -> FloatArray:
        """``(W, C)`` per-replica capacity of every config for each workload at level x."""
        pr = self.problem
        pos = float(np.interp(np.log(x_s), np.log(pr.levels_s),
                              np.arange(len(pr.levels_s), dtype=np.float64), left=-1.0))
        if pos < 0:
            return np.zeros(pr.caps.shape[:2])
        lo = min(int(pos), len(pr.levels_s) - 1)
        hi = min(lo + 1, len(pr.levels_s) - 1)
        w = pos - lo
        return np.asarray((1 - w) * pr.caps[:, :, lo] + w * pr.caps[:, :, hi])

    def _repaired(self, tails: FloatArray, caps_w: FloatArray, scale: FloatArray
                  ) -> list[_Fill]:
        """Each point's fill, repaired where it does not fit.

        A point that does not fit has its tails S scaled by the largest ``m`` in [0, 1]
        (bisection, `REPAIR_HALVINGS` steps) whose floored tails ``floored(m S)`` fit, if the
        floors alone (m = 0) fit.

        The bisections of all points run in lockstep, so each step floors every point still
        repairing in one vectorized call (`floored` treats rows independently: the same
        result as one point at a time).
        """
        fills = [self._fill(tails[b], caps_w[b], float(scale[b])) for b in range(len(tails))]
        if self.fixed_tails is not None:
            return fills
        todo = [b for b, f in enumerate(fills) if not f.fits]
        if not todo:
            return fills
        floor_only = self.floored(np.zeros((1, *tails.shape[1:])))[0]
        bests = {b: self._fill(floor_only, caps_w[b], float(scale[b])) for b in todo}
        todo = [b for b in todo if bests[b].fits]
        lo, hi = np.zeros(len(todo)), np.ones(len(todo))
        for _ in range(REPAIR_HALVINGS if todo else 0):
            mid = 0.5 * (lo + hi)
            moved = self.floored(mid[:, None, None] * tails[todo])
            for i, b in enumerate(todo):
                g = self._fill(moved[i], caps_w[b], float(scale[b]))
                if g.fits:
                    lo[i], bests[b] = mid[i], g
                else:
                    hi[i] = mid[i]
        for b in todo:
            fills[b] = bests[b]
        return fills

    def _fill(self, tails: FloatArray, caps_w: FloatArray, scale: float) -> _Fill:
        """Cover every model's load from the largest down (see the module docstring)."""
        pr = self.problem
        n_t, n_m = len(pr.gpu_types), pr.num_models
        cfg = np.full(pr.num_lanes * n_t, -1, dtype=np.int64)
        reps = np.zeros(pr.num_lanes * n_t, dtype=np.int64)
        free = pr.stock.copy()
        load = self.shares_of(tails) * (pr.workload_rates * scale)[:, None]     # (W, K)
        # Each model's lanes: the model itself, or one per length class (its share of the load).
        split = (np.ones((len(pr.workloads), 1)) if pr.class_share is None
                 else pr.class_share)
        n_c = split.shape[1]
        short = 0.0
        for m in range(n_m - 1, -1, -1):
            spare = False
            for k in range(n_c):
                lane_load = load[:, m] * split[:, k]
                need = lane_load.sum()
                if need <= 1e-12:
                    continue
                cap = self._mix_caps(caps_w, lane_load / need)
                covered = cover(pr, m * n_c + k, need, cap, self._options, cfg, reps, free)
                short += max(0.0, need - covered)
                spare = covered > need
            # (With length classes the spare capacity is per class, and moving queries up
            # moves both classes at once: no hand-over.)
            if n_c == 1 and spare and m > 0 and load[:, m - 1].sum() > 1e-12:
                moved = self._slack(m, load, caps_w, cfg, reps)
                load[:, m] += moved
                load[:, m - 1] -= moved
        shares = load / (pr.workload_rates * scale)[:, None]
        cost = float((reps * pr.cfg_price[np.maximum(cfg, 0)]).sum())
        fits = (short <= 1e-9 and (self.budget_per_hour is None
                                    or cost <= self.budget_per_hour + BUDGET_TOL))
        return _Fill(cfg, reps, shares, fits)

    @staticmethod
    def _mix_caps(caps_w: FloatArray, mix: FloatArray) -> FloatArray:
        """``(C,)`` capacity of each config for a workload mix (harmonic, `Problem.mix_cap`)."""
        with np.errstate(divide="ignore", invalid="ignore"):
            inv = sum(np.where(mix[w] > 0, mix[w] / caps_w[w], 0.0) for w in range(len(mix)))
            return np.asarray(np.where(np.isfinite(inv) & (inv > 0), 1.0 / inv, 0.0))

    def _slack(self, m: int, load: FloatArray, caps_w: FloatArray, cfg: IntArray,
               reps: IntArray) -> FloatArray:
        """``(W,)`` load of model m - 1 that model m's replicas can also serve at the level."""
        pr = self.problem
        n_t = len(pr.gpu_types)
        slots = [i for i in range(m * n_t, (m + 1) * n_t) if cfg[i] >= 0]
        below = load[:, m - 1]
        # Only the slots' configs matter: their columns alone (the same elementwise
        # arithmetic as on every config, so the same capacities, at a fraction of the cost).
        used = caps_w[:, [int(cfg[i]) for i in slots]]
        counts = [reps[i] for i in slots]

        def fits(a: float) -> bool:
            total = load[:, m] + a * below
            mix = total / total.sum()
            cap = self._mix_caps(used, mix)
            return bool(sum(counts[j] * cap[j] for j in range(len(slots)))
                        >= total.sum() - 1e-9)

        lo, hi = 0.0, 1.0
        if fits(1.0):
            return np.asarray(below.copy())
        for _ in range(SLACK_HALVINGS):
            mid = 0.5 * (lo + hi)
            lo, hi = (mid, hi) if fits(mid) else (lo, mid)
        return np.asarray(lo * below)
