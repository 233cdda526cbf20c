"""`boute plan --disaggregate`: a scenario's min-cost plan with prefill/decode pool pairs.

`tuning.PdPlanner` on the scenario's one workload and offers, checked on fresh traffic and
re-planned with derated rates until the plan holds (`hold`), the P/D analogue of
`tuning._headroom.hold` for co-located plans.

Check: each model's groups (co-located groups one replica at a time, a pool pair with
`profiling.simulate_pd`) on fresh traces of the workload (`tuning.check_pd_plan` per model,
one trace per seed); a model *misses* when its worst TTFT P95 over T or TPOT P95 over U (or a
saturated run) on any seed.

Derate: every config a missing model uses, in its role, has its planned per-replica rate
(``R^co``, ``R^p`` or ``R^d``, `tuning._disagg`) scaled by ``clip(1 / over, 0.5, DERATE)``,
``over = max(TTFT P95 / T, TPOT P95 / U)`` (saturated: 0.5), and the exact combination is
solved again; at most `MAX_ROUNDS` re-plans. Factors multiply over rounds.

Evaluate (`evaluate_pd`): the same per-model simulation on the planning trace's seed, which
for a pool pair is `profiling.simulate_pd`'s result.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from common.errors import BouteError
from profiling import Catalog, KvLink, Trace

from ._disagg import PdChoice, PdOffer, PdPlanner, _Cfg, check_pd_plan
from ._goal import Goal
from ._headroom import DERATE, FRESH_SEEDS, MAX_ROUNDS, _fresh
from ._plan import Group, Plan, Predicted, Routing
from ._problem import Problem

__all__ = ["DerateKey", "PdHeld", "check_models", "evaluate_pd", "hold_pd", "pd_planner",
           "pd_problem_rates", "plan_disaggregated", "refuse_disaggregate"]

DerateKey = tuple[str, _Cfg]
"""(role, config): ``("co" | "prefill" | "decode", config)``."""
MIN_FACTOR = 0.5
"""Lowest derate factor per round (a saturated run)."""


class _DeratedPlanner(PdPlanner):
    """A `PdPlanner` whose per-replica rates are scaled by a factor per (role, config)."""

    factors: dict[DerateKey, float]

    def colocated_rate(self, cfg: _Cfg) -> float:
        return super().colocated_rate(cfg) * self.factors.get(("co", cfg), 1.0)

    def decode_rate(self, cfg: _Cfg, fraction: float) -> float:
        return super().decode_rate(cfg, fraction) * self.factors.get(("decode", cfg), 1.0)

    def prefill_rate(self, cfg: _Cfg, fraction: float, link: KvLink) -> float:
        return (super().prefill_rate(cfg, fraction, link)
                * self.factors.get(("prefill", cfg), 1.0))


@dataclass(frozen=True)
class PdHeld:
    """The plan `hold_pd` settled on.

    Attributes:
        choice: the last plan (it holds unless `holds` is False after `MAX_ROUNDS` re-plans).
        rounds: plans made (1: the first held).
        checks: per round, model -> its worst ``ttft_p95_s``, ``tpot_p95_s``, ``holds``.
        factors: the derate factors in force for the last plan, ``"role model gpu tpN"``.
        costs: $/hour of each round's plan.

    """

    choice: PdChoice
    rounds: int
    checks: tuple[dict[str, dict[str, Any]], ...]
    factors: dict[str, float] = field(default_factory=dict)
    costs: tuple[float, ...] = ()

    @property
    def holds(self) -> bool:
        """Every model of the last plan held on every fresh trace (True without a check)."""
        return not self.checks or all(c["holds"] for c in self.checks[-1].values())

    def summary(self) -> dict[str, Any]:
        """The JSON block: rounds, holds, derate factors and the last check per model."""
        return {"rounds": self.rounds, "holds": self.holds, "derated": self.factors,
                "checks": self.checks[-1] if self.checks else {},
                "cost_per_round": list(self.costs), "checks_per_round": list(self.checks)}


def check_models(planner: PdPlanner, choice: PdChoice,
                 fresh: Sequence[Callable[[float], Trace]]) -> dict[str, dict[str, Any]]:
    """Per model of `choice`: the worst TTFT / TPOT P95 over the traces of `fresh`."""
    out: dict[str, dict[str, Any]] = {}
    for m in dict.fromkeys(g.model for g in choice.groups):
        sub = PdChoice(0.0, tuple(g for g in choice.groups if g.model == m),
                       choice.strong_share, {m: choice.rates_rps[m]})
        t = u = 0.0
        for draw in fresh:
            r = check_pd_plan(planner, sub, draw)
            t, u = max(t, float(r["worst_ttft_p95_s"])), max(u, float(r["worst_tpot_p95_s"]))
        out[m] = {"ttft_p95_s": t, "tpot_p95_s": u,
                  "holds": t <= planner.ttft_p95_s and u <= planner.tpot_p95_s}
    return out


def hold_pd(planner: PdPlanner, rates_rps: Mapping[str, float], *, budget_per_hour: float,
            strong_share: float, check: Callable[[PdPlanner, PdChoice],
                                                 dict[str, dict[str, Any]]] | None,
            max_rounds: int = MAX_ROUNDS) -> PdHeld:
    """Plan, check, derate the missing models' configs and re-plan (module docstring).

    Args:
        planner: the planner (its rates are scaled in a copy; the planner is not changed).
        rates_rps: model -> its rate.
        budget_per_hour: C2.
        strong_share: recorded in the plan.
        check: ``(planner, choice) -> check_models(...)``-shaped verdicts; None: no check.
        max_rounds: re-plans after the first.

    Raises:
        BouteError: no plan within the stock and budget (first or a derated round).

    """
    derated = _DeratedPlanner.__new__(_DeratedPlanner)
    derated.__dict__.update(planner.__dict__)      # shares the rate cache: rates before factors
    derated.factors = {}
    checks: list[dict[str, dict[str, Any]]] = []
    costs: list[float] = []
    for rounds in range(1, max_rounds + 2):
        choice = derated.plan(rates_rps, budget_per_hour=budget_per_hour, disaggregate=True,
                              strong_share=strong_share)
        if check is None:
            return PdHeld(choice, rounds, (), costs=(choice.cost_per_hour,))
        verdict = check(derated, choice)
        checks.append(verdict)
        costs.append(choice.cost_per_hour)
        if all(v["holds"] for v in verdict.values()) or rounds > max_rounds:
            return PdHeld(choice, rounds, tuple(checks), _names(derated.factors), tuple(costs))
        for g in choice.groups:
            v = verdict[g.model]
            if v["holds"]:
                continue
            over = max(v["ttft_p95_s"] / planner.ttft_p95_s, v["tpot_p95_s"] / planner.tpot_p95_s)
            factor = MIN_FACTOR if not math.isfinite(over) else max(
                MIN_FACTOR, min(DERATE, 1.0 / over))
            key: DerateKey = (g.role or "co", _Cfg(g.model, g.gpu, g.tp, g.pp))
            derated.factors[key] = derated.factors.get(key, 1.0) * factor
    raise AssertionError("unreachable")


def _names(factors: Mapping[DerateKey, float]) -> dict[str, float]:
    return {f"{role} {c.model} {c.gpu} tp{c.tp}": round(f, 4) for (role, c), f in factors.items()}


# -- the scenario's problem ----------------------------------------------------------------------
def refuse_disaggregate(problem: Problem, goal: Goal) -> None:
    """Raise unless `problem` and `goal` are what ``--disaggregate`` plans.

    Raises:
        BouteError: a ladder, several workloads, length classes, no TTFT/TPOT target, no
            quality, an end-to-end P95 or window SLO (each named with why and the fix).

    """
    why = ("--disaggregate plans one pool pair per model for one workload's lengths with "
           "tuning.PdPlanner")
    if len(problem.workloads) > 1:
        raise BouteError(f"{why}; the scenario has {len(problem.workloads)} workloads "
                         f"({', '.join(problem.workloads)}): plan one workload's scenario, "
                         "or drop --disaggregate")
    if not problem.is_pair:
        raise BouteError(f"{why} and a weak/strong pair; the scenario is a ladder of "
                         f"{len(problem.models)} models: use a two-model scenario, or drop "
                         "--disaggregate")
    if problem.threshold_tokens is not None or problem.scenario.length_classes is not None:
        raise BouteError(f"{why}; length classes split the workload by length: remove the "
                         "scenario's length_classes, or drop --disaggregate")
    if goal.ttft_p95_s is None or goal.tpot_p95_s is None:
        raise BouteError("--disaggregate sizes prefill and decode pools for a TTFT and a TPOT "
                         "target: pass both --ttft-p95 and --tpot-p95")
    if goal.quality is None:
        raise BouteError("--disaggregate needs --quality: it fixes the strong model's share "
                         "of the traffic")
    if goal.p95_s is not None or goal.slo is not None:
        raise BouteError("--disaggregate plans for --ttft-p95 / --tpot-p95 only; drop --p95 "
                         "and --slo-attainment")


def pd_problem_rates(problem: Problem, quality: float) -> tuple[float, dict[str, float]]:
    """The strong share meeting `quality` and each model's rate (summed if weak is strong)."""
    s = float(problem.quality.min_share_for(quality))
    return s, _rates(problem, s)


def _rates(problem: Problem, strong_share: float) -> dict[str, float]:
    weak, strong = problem.models[0], problem.models[-1]
    rate = problem.rate_rps
    out = {weak: (1.0 - strong_share) * rate}
    out[strong] = out.get(strong, 0.0) + strong_share * rate
    return out


def pd_planner(problem: Problem, catalog: Catalog, goal: Goal, *, num_requests: int | None = None
               ) -> PdPlanner:
    """A `PdPlanner` on the scenario's offers (catalog GPUs) and its workload's base trace.

    Raises:
        BouteError: two offers rent the same catalog GPU (a P/D plan names catalog types).

    """
    sc = problem.scenario
    offers: dict[str, PdOffer] = {}
    for i, name in enumerate(problem.gpu_types):
        gpu = sc.catalog_gpu(name)
        if gpu in offers:
            raise BouteError(f"--disaggregate: offers rent {gpu} twice (one is {name!r}); "
                             "keep one offer per GPU type")
        offers[gpu] = PdOffer(gpu, int(problem.stock[i]), float(problem.gpu_price[i]))
    wl = sc.named_workloads[0]
    n = num_requests or sc.profile.num_requests
    base = _fresh(wl, 1.0, n, sc.profile.seed, scenario=sc)
    assert goal.ttft_p95_s is not None and goal.tpot_p95_s is not None
    return PdPlanner(catalog, list(offers.values()), base, ttft_p95_s=goal.ttft_p95_s,
                     tpot_p95_s=goal.tpot_p95_s, models=tuple(dict.fromkeys(problem.models)))


def plan_disaggregated(problem: Problem, goal: Goal, catalog: Catalog, *,
                       seeds: Sequence[int] = FRESH_SEEDS, num_requests: int | None = None,
                       check_requests: int = 2000) -> tuple[Plan, PdHeld]:
    """The min-cost plan with pool pairs for `goal`, held on fresh traffic, as a `Plan`."""
    refuse_disaggregate(problem, goal)
    assert goal.quality is not None
    planner = pd_planner(problem, catalog, goal, num_requests=num_requests)
    s, rates = pd_problem_rates(problem, goal.quality)
    wl = problem.scenario.named_workloads[0]
    draws = [(lambda r, seed=seed: _fresh(wl, r, check_requests, seed,
                                          scenario=problem.scenario)) for seed in seeds]
    held = hold_pd(planner, rates, budget_per_hour=problem.budget, strong_share=s,
                   check=(lambda p, c: check_models(p, c, draws)) if draws else None)
    return to_plan(problem, goal, held.choice, held), held


def to_plan(problem: Problem, goal: Goal, choice: PdChoice, held: PdHeld | None) -> Plan:
    """`choice` as a `Plan` (offer names for GPU types; predicted TTFT/TPOT from the check)."""
    from ._evaluator import scenario_summary

    sc = problem.scenario
    back = {sc.catalog_gpu(n): n for n in problem.gpu_types}
    groups = tuple(Group(g.model, back.get(g.gpu, g.gpu), g.tp, g.pp, g.replicas, g.share,
                         role=g.role) for g in choice.groups)
    s = choice.strong_share
    last = held.checks[-1] if held is not None and held.checks else {}
    ttft = max((v["ttft_p95_s"] for v in last.values()), default=None)
    tpot = max((v["tpot_p95_s"] for v in last.values()), default=None)
    rate = problem.rate_rps
    predicted = Predicted(math.nan, math.nan, math.nan, float(problem.quality(s)),
                          choice.cost_per_hour, rate, math.nan, ttft, tpot)
    extra: dict[str, Any] = {"disaggregation": {
        "models": list(choice.disaggregated), "decode_fraction": choice.decode_fraction,
        **({} if held is None else held.summary())}}
    return Plan(Routing(s, problem.quality.threshold_for(s)), groups, predicted,
                scenario_summary(problem), extra, goal)


def evaluate_pd(problem: Problem, plan: Plan, catalog: Catalog, *,
                num_requests: int | None = None) -> dict[str, dict[str, Any]]:
    """Per model: its groups' TTFT / TPOT P95 with the P/D simulator (module docstring).

    Raises:
        BouteError: a malformed pool pair: a prefill pool without a decode pool of the same
            model (or the reverse), or more than one of either for a model.

    """
    roles: dict[str, dict[str, int]] = {}
    for g in plan.groups:
        if g.role is not None:
            roles.setdefault(g.model, {"prefill": 0, "decode": 0})[g.role] += 1
    for m, n in roles.items():
        if n["prefill"] != 1 or n["decode"] != 1:
            raise BouteError(f"plan: model {m} has {n['prefill']} prefill and {n['decode']} "
                             "decode groups; a pool pair is exactly one prefill group and one "
                             "decode group of the same model: add the missing pool or drop "
                             "the groups' role")
    goal = plan.goal or Goal("min-cost")
    if goal.ttft_p95_s is None or goal.tpot_p95_s is None:
        goal = Goal("min-cost", ttft_p95_s=goal.ttft_p95_s or 1e9,
                    tpot_p95_s=goal.tpot_p95_s or 1e9)
    planner = pd_planner(problem, catalog, goal, num_requests=num_requests)
    sc = problem.scenario
    groups = tuple(Group(g.model, sc.catalog_gpu(g.gpu), g.tp, g.pp, g.replicas, g.share,
                         role=g.role) for g in plan.groups)
    s = plan.routing.strong_share
    rates = _rates(problem, s)
    for cfg in {_Cfg(g.model, g.gpu, g.tp, g.pp) for g in groups}:
        if cfg not in planner._replicas:
            from profiling import ReplicaModel

            planner._replicas[cfg] = ReplicaModel(catalog.model(cfg.model),
                                                  catalog.gpu(cfg.gpu), cfg.tp, cfg.pp)
    choice = PdChoice(plan.predicted.cost_per_hour if plan.predicted else math.nan, groups, s,
                      rates)
    base = planner.base
    return check_models(planner, choice, [base.scaled_to])
