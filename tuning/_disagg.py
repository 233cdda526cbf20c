"""Min-cost planning with prefill/decode disaggregation: co-located, disaggregated or both.

Notation: model m receives ``lambda_m`` req/s (``lambda_strong = s lambda``, s the smallest
strong share meeting the quality target; the weak model gets the rest); targets T (TTFT P95)
and U (TPOT P95); offers t with stock ``S_t`` and price ``pi_t``; a config c = (model, GPU
type, TP, PP) with ``g_c`` GPUs and price ``pi_c = g_c pi_{t(c)}``.

Per-replica rates at the targets, from the simulator (`profiling.simulate`,
`profiling.simulate_pd`'s stages) on the workload's lengths, by bisection on the rate of
one base trace (common random numbers):

* ``R^co_c``: a co-located replica keeps TTFT P95 <= T and TPOT P95 <= U (unsaturated);
* ``R^d_{c,f}``: a decode-only replica (its requests' KV present, Poisson arrivals) keeps
  TPOT P95 <= U and its admission delay (KV ready to first token) P95 <= f T;
* ``R^p_{c,f,beta}``: a prefill-only replica keeps its prompt latency P95 <= ``(1 - f) T -
  t_kv``, ``t_kv = ell + B_95 / beta`` (the P95 prompt's KV over link beta, `profiling.kv_link`),
  and its link stays at most ``RHO_LINK`` busy: ``R^p <= RHO_LINK beta / E[B]``.

The TTFT of a disaggregated request is the sum of the three stages; each stage's P95 within its
budget bounds the sum's P95 in practice (the stages are nearly independent; the fresh-traffic
re-simulation of `check_pd_plan` measures the real one). f is chosen per pool pair from
`DECODE_TTFT_FRACTIONS`.

Options of model m (its *candidates*), each a GPU-usage vector and a cost:

* (a) co-located: one or two configs, ``sum_g n_g R^co_g >= lambda_m`` (``n`` minimal);
* (b) disaggregated: a pool pair (P, D, f) with ``n_p = ceil(lambda_m / R^p)``,
  ``n_d = ceil(lambda_m / R^d)``;
* (c) both: a co-located group of ``n`` replicas (fewer than it alone would need) and a pool
  pair for the rest ``lambda_m - n R^co``.

Objective: ``min sum_m cost_m`` over one candidate per model, subject to
(C1) ``sum_m usage_{m,t} <= S_t`` for every offer t and (C2) ``sum_m cost_m <= budget``.
Candidates are deduplicated by usage vector (the cheapest kept); with ``disaggregate=False``
only (a) is listed, so the disaggregated optimum is never dearer than the co-located one (a
superset of options), and it splits a model only where that is strictly cheaper.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from common.errors import BouteError
from profiling import (
    Catalog,
    KvLink,
    ReplicaModel,
    Trace,
    capacity_rps,
    decode_capacity_rps,
    decode_only,
    kv_link,
    kv_ready_s,
    kv_transfer_bytes,
    prefill_capacity_rps,
    prefill_only,
    simulate,
    simulate_pd,
)

from ._plan import Group

__all__ = ["DECODE_TTFT_FRACTIONS", "RHO_LINK", "TARGET_MARGIN", "PdChoice", "PdOffer", "PdPlanner",
           "check_pd_plan"]

DECODE_TTFT_FRACTIONS: tuple[float, ...] = (0.1, 0.25)
"""f: the share of the TTFT target left to the decode pool's admission delay."""
RHO_LINK = 0.7
"""Highest planned utilization of a prefill replica's KV link (a queue at 70% waits ~2.3x its
service time on average, M/D/1)."""
TARGET_MARGIN = 0.9
"""Rates are planned at this fraction of each target (T and U): the P95 of one planning trace
at a rate found by bisection sits on the target, and a fresh trace at that rate misses it about
half the time; 10% keeps the fresh-traffic check (`check_pd_plan`) on the safe side."""
_BISECT_STEPS = 8
_MIN_FRACTION = 0.01

Role = Literal["co", "prefill", "decode"]


@dataclass(frozen=True)
class PdOffer:
    """GPUs on offer of one type: `count` GPUs at `price_per_hour` each."""

    gpu: str
    count: int
    price_per_hour: float


@dataclass(frozen=True)
class _Cfg:
    model: str
    gpu: str
    tp: int
    pp: int = 1

    @property
    def gpus(self) -> int:
        return self.tp * self.pp


@dataclass(frozen=True)
class _Part:
    """One replica group of a candidate."""

    cfg: _Cfg
    replicas: int
    role: Role
    share: float


@dataclass(frozen=True)
class _Candidate:
    cost_per_hour: float
    usage: tuple[int, ...]
    parts: tuple[_Part, ...]
    decode_fraction: float | None = None


@dataclass(frozen=True)
class PdChoice:
    """The cheapest plan found (`PdPlanner.plan`).

    Attributes:
        cost_per_hour: $/hour of all groups.
        groups: the plan's groups (`tuning.Group`, ``role`` set on pool pairs).
        strong_share: share of requests on the strong model.
        rates_rps: model -> its request rate.
        disaggregated: models served (partly) by a pool pair.
        decode_fraction: model -> f of its pool pair.

    """

    cost_per_hour: float
    groups: tuple[Group, ...]
    strong_share: float
    rates_rps: dict[str, float]
    disaggregated: tuple[str, ...] = ()
    decode_fraction: dict[str, float] = field(default_factory=dict)

    def gpus_by_type(self) -> dict[str, int]:
        """GPUs used per type."""
        out: dict[str, int] = {}
        for g in self.groups:
            out[g.gpu] = out.get(g.gpu, 0) + g.num_gpus
        return out


def _bisect(ok: Callable[[float], bool], hi: float) -> float:
    """Highest rate in (0, hi] with ``ok(rate)`` (monotone), to ``hi / 2^steps``; 0 if none."""
    if not hi > 0 or not math.isfinite(hi):
        return 0.0
    if ok(hi):
        return hi
    lo = _MIN_FRACTION * hi
    if not ok(lo):
        return 0.0
    for _ in range(_BISECT_STEPS):
        mid = 0.5 * (lo + hi)
        if ok(mid):
            lo = mid
        else:
            hi = mid
    return lo


def _p95(values: Sequence[float] | np.ndarray) -> float:
    arr = np.asarray(values, dtype=np.float64)
    arr = arr[~np.isnan(arr)]
    return float(np.quantile(arr, 0.95)) if arr.size else 0.0


class PdPlanner:
    """Per-replica rates at the targets, candidates per model, the exact combination.

    Args:
        catalog: GPU and model catalogs.
        offers: the GPUs on offer.
        base: the workload's lengths and arrival pattern at any rate (rescaled per probe).
        ttft_p95_s, tpot_p95_s: the targets T and U.
        models: model names; the first is the weak one, the last the strong one.
        max_tp_factor: TP degrees from a model's smallest fitting one up to this many times it.

    Raises:
        BouteError: no offer, a non-positive target.

    """

    def __init__(self, catalog: Catalog, offers: Sequence[PdOffer], base: Trace, *,
                 ttft_p95_s: float, tpot_p95_s: float,
                 models: Sequence[str] = ("llama-3.1-8b", "llama-3.1-70b"),
                 max_tp_factor: int = 4) -> None:
        if not offers:
            raise BouteError("PdPlanner: no GPUs on offer; pass at least one PdOffer")
        if not (ttft_p95_s > 0 and tpot_p95_s > 0):
            raise BouteError(f"targets {ttft_p95_s=} and {tpot_p95_s=} must be > 0 seconds")
        self.catalog = catalog
        self.offers = tuple(offers)
        self.base = base
        self.ttft_p95_s = ttft_p95_s
        self.tpot_p95_s = tpot_p95_s
        self._ttft_plan_s = TARGET_MARGIN * ttft_p95_s
        self._tpot_plan_s = TARGET_MARGIN * tpot_p95_s
        self.models = tuple(models)
        self._type_index = {o.gpu: i for i, o in enumerate(self.offers)}
        self._replicas: dict[_Cfg, ReplicaModel] = {}
        self._rates: dict[tuple[Role, _Cfg, float, float], float] = {}
        self.configs: dict[str, list[_Cfg]] = {m: self._configs(m, max_tp_factor)
                                               for m in self.models}
        prompts = np.asarray(base.input_tokens, dtype=np.float64)
        self._prompt_p95 = float(np.quantile(prompts, 0.95))
        self._prompt_mean = float(prompts.mean())

    # -- configs and their rates -----------------------------------------------------------
    def _configs(self, model: str, max_tp_factor: int) -> list[_Cfg]:
        arch = self.catalog.model(model)
        out = []
        for o in self.offers:
            gpu = self.catalog.gpu(o.gpu)
            smallest = None
            tp = 1
            while tp <= min(gpu.gpus_per_node, o.count):
                try:
                    rep = ReplicaModel(arch, gpu, tp)
                except Exception:      # does not fit (or TP invalid): try a larger TP
                    tp *= 2
                    continue
                smallest = smallest or tp
                if tp > smallest * max_tp_factor:
                    break
                cfg = _Cfg(model, o.gpu, tp)
                self._replicas[cfg] = rep
                out.append(cfg)
                tp *= 2
        return out

    def replica(self, cfg: _Cfg) -> ReplicaModel:
        """The replica model of a config."""
        return self._replicas[cfg]

    def _price(self, cfg: _Cfg) -> float:
        return cfg.gpus * self.offers[self._type_index[cfg.gpu]].price_per_hour

    def colocated_rate(self, cfg: _Cfg) -> float:
        """``R^co_c``: highest rate per replica meeting T and U, req/s."""
        key: tuple[Role, _Cfg, float, float] = ("co", cfg, 0.0, 0.0)
        if key not in self._rates:
            rep = self.replica(cfg)
            cap = capacity_rps(rep, self.base)

            def ok(rate: float) -> bool:
                res = simulate(rep, self.base.scaled_to(rate), capacity=cap)
                return (not res.saturated and _p95(res.ttft_s) <= self._ttft_plan_s
                        and _p95(res.tpot_s) <= self._tpot_plan_s)

            self._rates[key] = _bisect(ok, 0.97 * cap)
        return self._rates[key]

    def decode_rate(self, cfg: _Cfg, fraction: float) -> float:
        """``R^d_{c,f}``: decode-only replica, TPOT P95 <= U and admission delay P95 <= f T."""
        key: tuple[Role, _Cfg, float, float] = ("decode", cfg, fraction, 0.0)
        if key not in self._rates:
            rep = self.replica(cfg)
            cap = decode_capacity_rps(rep, self.base)

            def ok(rate: float) -> bool:
                delay, tpot, saturated = decode_only(rep, self.base.scaled_to(rate))
                return (not saturated and _p95(delay) <= fraction * self._ttft_plan_s
                        and _p95(tpot) <= self._tpot_plan_s)

            self._rates[key] = _bisect(ok, 0.97 * cap)
        return self._rates[key]

    def prefill_rate(self, cfg: _Cfg, fraction: float, link: KvLink) -> float:
        """``R^p_{c,f,beta}``: prompt done + KV on the decode side within ``(1 - f) T``.

        A prefill-only replica and its link's FIFO of transfers (`profiling.kv_ready_s`),
        simulated together; and the link at most `RHO_LINK` busy on average.
        """
        key: tuple[Role, _Cfg, float, float] = (
            "prefill", cfg, fraction, link.bandwidth_bytes_per_s)
        arch = self.catalog.model(cfg.model)
        if key not in self._rates:
            rep = self.replica(cfg)
            cap = prefill_capacity_rps(rep, self.base)
            budget = (1.0 - fraction) * self._ttft_plan_s
            nbytes = [kv_transfer_bytes(arch, p) for p in self.base.input_tokens.tolist()]

            def ok(rate: float) -> bool:
                trace = self.base.scaled_to(rate)
                lat, saturated = prefill_only(rep, trace)
                if saturated:
                    return False
                arr = trace.arrival_s
                ready = np.asarray(kv_ready_s((arr + lat).tolist(), nbytes, link))
                return _p95(ready - arr) <= budget

            self._rates[key] = _bisect(ok, 0.97 * cap)
        wire = link.wire_s(kv_transfer_bytes(arch, self._prompt_mean))
        link_cap = math.inf if wire == 0 else RHO_LINK / wire
        return min(self._rates[key], link_cap)

    # -- candidates ------------------------------------------------------------------------
    def _usage(self, parts: Sequence[_Part]) -> tuple[int, ...]:
        u = [0] * len(self.offers)
        for p in parts:
            u[self._type_index[p.cfg.gpu]] += p.cfg.gpus * p.replicas
        return tuple(u)

    def _cost(self, parts: Sequence[_Part]) -> float:
        return sum(self._price(p.cfg) * p.replicas for p in parts)

    def _fits(self, usage: Sequence[int]) -> bool:
        return all(u <= o.count for u, o in zip(usage, self.offers, strict=True))

    def pool_pair(self, p: _Cfg, d: _Cfg, fraction: float, rate: float
                  ) -> tuple[int, int, float] | None:
        """``(n_p, n_d, capacity)`` of a pool pair carrying `rate` req/s, or None if it cannot.

        ``capacity = min(n_p R^p, n_d R^d)``, req/s, at the targets.

        The link is the network's unless both pools (same GPU type) fit one node.
        """
        rd = self.decode_rate(d, fraction)
        if rd <= 0:
            return None
        n_d = math.ceil(rate / rd - 1e-12)
        pr, dr = self.replica(p), self.replica(d)
        link = kv_link(pr, dr, same_node=False)
        rp = self.prefill_rate(p, fraction, link)
        if rp <= 0:
            return None
        n_p = math.ceil(rate / rp - 1e-12)
        gpu = pr.gpu
        if p.gpu == d.gpu and n_p * p.gpus + n_d * d.gpus <= gpu.gpus_per_node:
            near = self.prefill_rate(p, fraction, kv_link(pr, dr, same_node=True))
            if near > rp:
                rp = near
                n_p = math.ceil(rate / rp - 1e-12)
        return n_p, n_d, min(n_p * rp, n_d * rd)

    def candidates(self, model: str, rate: float, *, disaggregate: bool,
                   max_colocated: int = 2) -> list[_Candidate]:
        """Model `model`'s options at `rate` req/s (module docstring), cheapest per usage."""
        cfgs = self.configs[model]
        best: dict[tuple[int, ...], _Candidate] = {}

        def add(parts: Sequence[_Part], fraction: float | None = None) -> None:
            usage = self._usage(parts)
            if not self._fits(usage):
                return
            cost = self._cost(parts)
            old = best.get(usage)
            if old is None or cost < old.cost_per_hour - 1e-9:
                best[usage] = _Candidate(cost, usage, tuple(parts), fraction)

        co = [(c, self.colocated_rate(c)) for c in cfgs]
        co = [(c, r) for c, r in co if r > 0]
        for c, r in co:
            need = math.ceil(rate / r - 1e-12)
            add([_Part(c, need, "co", 1.0)])
            if max_colocated < 2:
                continue
            for n1 in range(1, need):
                rest = rate - n1 * r
                for c2, r2 in co:
                    if c2 == c:
                        continue
                    n2 = math.ceil(rest / r2 - 1e-12)
                    s1 = n1 * r / (n1 * r + n2 * r2)        # equal utilization
                    add([_Part(c, n1, "co", s1), _Part(c2, n2, "co", 1.0 - s1)])
        if not disaggregate:
            return sorted(best.values(), key=lambda k: k.cost_per_hour)
        splits: list[tuple[_Cfg | None, int, float]] = [(None, 0, 0.0)]
        for c, r in co:
            need = math.ceil(rate / r - 1e-12)
            splits += [(c, n, n * r) for n in range(1, need)]
        for p, d, f in itertools.product(cfgs, cfgs, DECODE_TTFT_FRACTIONS):
            for c_co, n, served in splits:
                rest = rate - served
                pair = self.pool_pair(p, d, f, rest)
                if pair is None:
                    break
                share = pair[2] / (pair[2] + served)       # equal utilization
                parts = [_Part(p, pair[0], "prefill", share), _Part(d, pair[1], "decode", share)]
                if c_co is not None:
                    parts.insert(0, _Part(c_co, n, "co", 1.0 - share))
                add(parts, f)
        return sorted(best.values(), key=lambda k: k.cost_per_hour)

    # -- the combination -------------------------------------------------------------------
    def plan(self, rates_rps: Mapping[str, float], *, budget_per_hour: float = math.inf,
             disaggregate: bool = True, strong_share: float = math.nan,
             keep: int = 3000) -> PdChoice:
        """The cheapest combination of one candidate per model (C1 stock, C2 budget).

        Args:
            rates_rps: model -> its rate (models with rate 0 get no group).
            budget_per_hour: C2.
            disaggregate: list pool pairs (b, c); False: co-located only (a).
            strong_share: recorded in the result.
            keep: the cheapest `keep` candidates of each model enter the combination.

        Raises:
            BouteError: no combination meets the stock and the budget (the message says
                which model has no candidate, or the cheapest cost found).

        """
        names = [m for m in self.models if rates_rps.get(m, 0.0) > 0]
        lists = []
        for m in names:
            cands = self.candidates(m, rates_rps[m], disaggregate=disaggregate)[:keep]
            if not cands:
                raise BouteError(f"{m} at {rates_rps[m]:.3g} req/s: no config meets TTFT P95 "
                                 f"<= {self.ttft_p95_s} s and TPOT P95 <= {self.tpot_p95_s} s "
                                 "within the stock; relax the targets or offer more GPUs")
            lists.append(cands)
        stock = np.array([o.count for o in self.offers])
        best_cost = math.inf
        best_pick: tuple[_Candidate, ...] | None = None
        if len(lists) == 1:
            best_cost, best_pick = lists[0][0].cost_per_hour, (lists[0][0],)
        else:
            a, b = lists[0], lists[1:]
            ua = np.array([c.usage for c in a])
            ca = np.array([c.cost_per_hour for c in a])
            for rest in itertools.product(*b):
                ur = np.sum([c.usage for c in rest], axis=0)
                cr = sum(c.cost_per_hour for c in rest)
                ok = np.all(ua + ur <= stock, axis=1)
                if not ok.any():
                    continue
                i = int(np.argmin(np.where(ok, ca, np.inf)))
                if ca[i] + cr < best_cost - 1e-9:
                    best_cost, best_pick = float(ca[i] + cr), (a[i], *rest)
        if best_pick is None:
            raise BouteError("no combination of the models' options fits the stock; offer "
                             "more GPUs or lower the rate")
        if best_cost > budget_per_hour + 1e-9:
            raise BouteError(f"the cheapest plan costs ${best_cost:.2f}/h, over the budget "
                             f"${budget_per_hour:.2f}/h; raise the budget or relax the targets")
        groups: list[Group] = []
        split: list[str] = []
        fractions: dict[str, float] = {}
        for m, cand in zip(names, best_pick, strict=True):
            for part in cand.parts:
                groups.append(Group(part.cfg.model, part.cfg.gpu, part.cfg.tp, part.cfg.pp,
                                    part.replicas, round(part.share, 6),
                                    role=None if part.role == "co" else part.role))
            if any(part.role != "co" for part in cand.parts):
                split.append(m)
                if cand.decode_fraction is not None:
                    fractions[m] = cand.decode_fraction
        return PdChoice(best_cost, tuple(groups), strong_share, dict(rates_rps), tuple(split),
                        fractions)


def check_pd_plan(planner: PdPlanner, choice: PdChoice, fresh: Callable[[float], Trace]
                  ) -> dict[str, float | bool]:
    """Re-simulate every group of a plan on fresh traffic; the worst P95s and whether it holds.

    Co-located groups: one replica at its share of the model's rate over its replicas;
    pool pairs: `profiling.simulate_pd` with both pools at the pair's share of the rate.

    Args:
        planner: the planner (its replica models and targets).
        choice: the plan.
        fresh: rate -> a fresh trace at that rate (another seed than the planning trace).

    Returns:
        ``worst_ttft_p95_s``, ``worst_tpot_p95_s``, ``holds`` (both within the targets).

    """
    worst_ttft = worst_tpot = 0.0
    by_model: dict[str, list[Group]] = {}
    for g in choice.groups:
        by_model.setdefault(g.model, []).append(g)
    for m, groups in by_model.items():
        rate = choice.rates_rps[m]
        pre = [g for g in groups if g.role == "prefill"]
        dec = [g for g in groups if g.role == "decode"]
        for g in groups:
            if g.role is not None:
                continue
            rep = planner.replica(_Cfg(g.model, g.gpu, g.tp, g.pp))
            res = simulate(rep, fresh(rate * g.share / g.replicas))
            t, u = (math.inf, math.inf) if res.saturated else (_p95(res.ttft_s), _p95(res.tpot_s))
            worst_ttft, worst_tpot = max(worst_ttft, t), max(worst_tpot, u)
        if pre and dec:
            p, d = pre[0], dec[0]
            pr = planner.replica(_Cfg(p.model, p.gpu, p.tp, p.pp))
            dr = planner.replica(_Cfg(d.model, d.gpu, d.tp, d.pp))
            near = (p.gpu == d.gpu
                    and p.num_gpus + d.num_gpus <= pr.gpu.gpus_per_node)
            pd = simulate_pd(pr, dr, fresh(rate * p.share), n_prefill=p.replicas,
                             n_decode=d.replicas, link=kv_link(pr, dr, same_node=near))
            worst_ttft = max(worst_ttft, pd.p95("ttft"))
            worst_tpot = max(worst_tpot, pd.p95("tpot"))
    holds = worst_ttft <= planner.ttft_p95_s and worst_tpot <= planner.tpot_p95_s
    return {"worst_ttft_p95_s": worst_ttft, "worst_tpot_p95_s": worst_tpot, "holds": holds}
