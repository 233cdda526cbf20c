"""Table 2 of the paper: how long planning takes, for BOute's search and its ablations.

For one problem (a scalability preset: 3-6 GPU types, 8 of each) and the Pareto goal (quality
vs planning P95 under the budget), every searcher is judged by **one convergence rule**: the
wall seconds until the hypervolume of its front (normalized objectives, `tuning._front`)
first reaches ``TARGET_HV_RATIO`` = 99% of the reference, checked after each batch it
evaluates, with a cap of ``cap_s`` seconds per run (a run that has not converged by then is
reported as "> cap" with the ratio it reached). The structured MOBO run is not stopped at the
target: it runs under ``boute plan --solver mobo``'s own rule (front stable for `patience` BO
steps, the paper's criterion, or `mobo_limit_s`), so the row also says when a user's run
stops; its time to the target is read off its trace (the run is the same up to there).
The reference is the exact front (the DP's certified answer); when the DP runs past
``exact_limit_s`` the reference is the best front any run found (stated in the row).

Columns:

* ``exact``: ``search(solver="exact")``: the DP's wall seconds (certified, so converged);
* ``auto``: ``search(Goal())``, what ``boute plan`` runs with no flags (probe + chosen solver);
* ``mobo``: BoTorch MOBO in the structured encoding (BOute's searcher);
* ``raw``: the same MOBO loop in the raw encoding (no structural information);
* ``no DB``: MOBO with the stage-2 simulator in the loop instead of the offline perf DB. Each
  evaluation simulates every config its plan uses over the DB's rate grid (`sweep_config`:
  exactly the rows the DB would hold, so the metrics are the DB's, which is checked), *without
  a cache across evaluations*. Running the whole search that way takes tens of minutes, so
  `no_db_evals` of the n plans MOBO evaluated until it converged (drawn at random, seeded)
  are timed that way, giving ``t_cfg``, the seconds per simulated config, and the run is
  projected: ``T_no_db = T_mobo + t_cfg * sum_b k_b - n * t_db``, where ``T_mobo`` is the
  DB-backed run's time to converge, ``k_b`` the configs plan b uses and ``t_db`` the seconds of
  one DB-backed evaluation. The same search with a cache for the run (each config simulated
  once) is bounded by ``T_mobo + t_cfg * k``, k the distinct configs among the n plans.

Timings exclude torch's and BoTorch's one-time imports (a tiny MOBO run first).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pyarrow as pa

from profiling import Catalog, EngineConfig, PerfDB, SweepJob, spec_calibration, sweep_config

from ._auto import ExactBudgetExceeded
from ._deadline import CpuDeadline
from ._evaluator import BatchMetrics, PlanArrays, evaluate_arrays
from ._mobo import MoboSettings, run_mobo
from ._problem import Problem, _capacity_table
from ._run import Goal, SearchResult, StopRule
from ._search import exact_search, search

__all__ = ["TARGET_HV_RATIO", "ArmResult", "NoDbResult", "SchedulingRow",
           "SimulatedEvaluator", "scheduling_time"]

TARGET_HV_RATIO = 0.99
UNBOUNDED_EVALS = 10**7
"""`StopRule.max_evals` of the timed runs: only the cap and the convergence rule stop them."""

Tick = Callable[[str], None]


class SimulatedEvaluator:
    """The evaluator without the offline DB: capacities simulated when a plan needs them.

    `evaluate` simulates each config of the plan over the DB's rate grid with the DB's engine,
    trace and calibration (`profiling.sweep_config`), turns those rows into the capacity table
    rows (`tuning._problem._capacity_table`) and evaluates the plan on them. Nothing is cached
    between calls.
    """

    def __init__(self, problem: Problem, catalog: Catalog,
                 hardware_profiles: str | None = None) -> None:
        spec = problem.scenario.profile_spec()
        self.problem = problem
        self.catalog = catalog
        self.calibration = spec_calibration(spec, catalog, hardware_profiles=hardware_profiles)
        self.traffic = spec.traffic()
        self.num_rates = spec.num_rates
        self.engine = EngineConfig(**problem.db.meta["engine"])

    def _rows(self, c: int) -> list[dict[str, Any]]:
        p = self.problem
        gpu = self.catalog.gpu(p.scenario.catalog_gpu(p.gpu_types[p.cfg_type[c]]))
        model, tp, pp = p.models[p.cfg_model[c]], int(p.cfg_tp[c]), int(p.cfg_pp[c])
        job = SweepJob(self.catalog.model(model), gpu, tp, pp,
                       self.calibration.engine_for(model, gpu.name, tp, pp, self.engine),
                       self.calibration.for_gpu(gpu.name), self.num_rates)
        return sweep_config(job, self.traffic)

    def evaluate(self, plans: PlanArrays, b: int) -> tuple[BatchMetrics, int]:
        """Metrics of plan `b` from fresh simulations, and the configs simulated."""
        p = self.problem
        one = PlanArrays(plans.strong_share[b:b + 1], plans.config[b:b + 1],
                         plans.replicas[b:b + 1])
        used = sorted({int(c) for c, r in zip(one.config[0], one.replicas[0], strict=True)
                       if c >= 0 and r > 0})
        caps = np.zeros_like(p.caps)            # the pair's one workload (Table 2's presets)
        if used:
            rows = [row for c in used for row in self._rows(c)]
            mini = PerfDB(pa.Table.from_pylist(rows, schema=p.db.table.schema))
            keys = [(p.models[p.cfg_model[c]], p.scenario.catalog_gpu(p.gpu_types[p.cfg_type[c]]),
                     int(p.cfg_tp[c]), int(p.cfg_pp[c])) for c in used]
            at = np.array([mini.index[k] for k in keys], dtype=np.int64)
            caps[0, used] = _capacity_table(mini, at, p.levels_s)
        return evaluate_arrays(replace(p, caps=caps), one), len(used)


@dataclass(frozen=True)
class ArmResult:
    """One timed search run.

    Attributes:
        seconds_to_target, evaluations_to_target: when the rule was first met (None: never).
        seconds_run, evaluations_run: the whole run.
        hv_ratio: its final hypervolume over the reference.
        stopped: why it stopped.

    """

    seconds_to_target: float | None
    evaluations_to_target: int | None
    seconds_run: float
    evaluations_run: int
    hv_ratio: float
    stopped: str


@dataclass(frozen=True)
class NoDbResult:
    """The MOBO run's projected wall time with the simulator in the loop (module docstring).

    Attributes:
        evaluations_timed: plans evaluated with the simulator (drawn at random, seeded,
            from the run's first ``evaluations`` plans).
        sim_seconds_per_eval, db_seconds_per_eval: mean seconds of one of those evaluations
            with the simulator / with the DB.
        seconds_per_config: simulator seconds per config simulated (``t_cfg``).
        evaluations: n, the evaluations the projection covers (to convergence, or the run).
        configs_simulated: ``sum_b k_b`` over those n plans (``k_b``: configs of plan b).
        distinct_configs: distinct configs among them (what a cache would simulate).
        projected_s: ``T_mobo + t_cfg * sum_b k_b - n * t_db`` (no cache).
        cached_bound_s: ``T_mobo + t_cfg * distinct_configs`` (a cache for the run).
        converged: the DB-backed run met the rule (else the projection is a lower bound).
        matches_db: the simulated evaluations gave the DB's metrics (P95, capacity).

    """

    evaluations_timed: int
    sim_seconds_per_eval: float
    db_seconds_per_eval: float
    seconds_per_config: float
    evaluations: int
    configs_simulated: int
    distinct_configs: int
    projected_s: float
    cached_bound_s: float
    converged: bool
    matches_db: bool


@dataclass(frozen=True)
class SchedulingRow:
    """Table 2's row for one preset.

    ``mobo`` is the structured run under ``boute plan``'s stopping rule (`patience`,
    `mobo_limit_s`): its ``seconds_to_target`` is the time to the convergence rule,
    ``seconds_run`` when the stopping rule ended it. ``raw`` stops at the target or `cap_s`.
    """

    scenario: str
    gpu_types: int
    gpus: int
    reference: str
    reference_hv: float
    exact_s: float | None
    exact_limit_s: float
    auto_s: float
    auto_solver: str
    mobo: ArmResult
    raw: ArmResult
    no_db: NoDbResult
    cap_s: float
    patience: int
    mobo_limit_s: float


def _arm(res: SearchResult, ref_hv: float) -> ArmResult:
    hit = next(((e, s) for e, s, v in res.trace if v >= TARGET_HV_RATIO * ref_hv), None)
    return ArmResult(None if hit is None else hit[1], None if hit is None else hit[0],
                     res.seconds, res.evaluations, res.trace[-1][2] / ref_hv if ref_hv > 0
                     else 0.0, res.stopped)


def _mobo(problem: Problem, encoding: str, ref_hv: float | None, cap_s: float, seed: int,
          patience: int | None = None) -> SearchResult:
    """A MOBO run stopped at the target (when `ref_hv` is known), by `patience`, or at `cap_s`."""
    rule = StopRule(max_evals=UNBOUNDED_EVALS, patience=patience, time_limit_s=cap_s,
                    ehvi_fraction=None)
    if ref_hv is None or patience is not None:
        return search(problem, Goal(), solver="mobo", encoding=encoding, seed=seed, stop=rule)
    target = TARGET_HV_RATIO * ref_hv
    return search(problem, Goal(), solver="mobo", encoding=encoding, seed=seed, stop=rule,
                  callback=lambda _e, _s, v: v >= target)


def _configs_used(plans: PlanArrays, b: int) -> int:
    """Distinct configs plan `b` puts replicas on."""
    return len({int(c) for c, r in zip(plans.config[b], plans.replicas[b], strict=True)
                if c >= 0 and r > 0})


def _no_db(problem: Problem, run: SearchResult, arm: ArmResult, evaluator: SimulatedEvaluator,
           n_timed: int, seed: int) -> NoDbResult:
    """Time `n_timed` of the run's first n evaluations with the simulator; project the run."""
    n = arm.evaluations_to_target or arm.evaluations_run
    t_mobo = arm.seconds_to_target if arm.seconds_to_target is not None else arm.seconds_run
    rng = np.random.default_rng(seed)
    picks = np.sort(rng.choice(n, size=max(1, min(n_timed, n)), replace=False))
    sim_s, db_s, simulated, same = [], [], 0, True
    for b in picks.tolist():
        t0 = time.perf_counter()
        m, k = evaluator.evaluate(run.plans, b)
        sim_s.append(time.perf_counter() - t0)
        simulated += k
        one = PlanArrays(run.plans.strong_share[b:b + 1], run.plans.config[b:b + 1],
                         run.plans.replicas[b:b + 1])
        t0 = time.perf_counter()
        ref = evaluate_arrays(problem, one)
        db_s.append(time.perf_counter() - t0)
        same &= bool(np.allclose(m.p95_s, ref.p95_s, rtol=1e-9)
                     and np.allclose(m.capacity_rps, ref.capacity_rps, rtol=1e-9))
    total = sum(_configs_used(run.plans, b) for b in range(n))
    cfg, reps = run.plans.config[:n].ravel(), run.plans.replicas[:n].ravel()
    distinct = len({int(c) for c, r in zip(cfg, reps, strict=True) if c >= 0 and r > 0})
    per_config = float(np.sum(sim_s)) / max(simulated, 1)
    t_db = float(np.mean(db_s))
    return NoDbResult(len(picks), float(np.mean(sim_s)), t_db, per_config, n, total, distinct,
                      t_mobo + per_config * total - n * t_db, t_mobo + per_config * distinct,
                      arm.seconds_to_target is not None, same)


def _warm_up(problem: Problem) -> None:
    """One tiny MOBO run, so that no timed run pays torch's and BoTorch's first imports."""
    run_mobo(problem, Goal(), stop=StopRule.fixed(8), settings=MoboSettings(n_init=4))


def scheduling_time(problem: Problem, catalog: Catalog, *, cap_s: float = 20.0,
                    patience: int = 20, mobo_limit_s: float = 60.0,
                    exact_limit_s: float = 120.0, no_db_evals: int = 3, seed: int = 0,
                    hardware_profiles: str | None = None, tick: Tick | None = None
                    ) -> SchedulingRow:
    """Table 2's row of `problem` (see the module docstring).

    Args:
        problem: the planning problem (Pareto goal under its budget).
        catalog: the catalogs its DB was built from (for the simulated evaluations).
        cap_s: wall-seconds cap of the raw MOBO run.
        patience: the structured MOBO run's `StopRule.patience` (``boute plan``'s: 20).
        mobo_limit_s: its `StopRule.time_limit_s` (``boute plan``'s: 60 s).
        exact_limit_s: the exact DP's deadline, CPU seconds (`CpuDeadline`).
        no_db_evals: evaluations timed with the simulator in the loop.
        seed: of the MOBO runs.
        hardware_profiles: as for `tuning.planning_problem`.
        tick: called after each column (progress).

    """
    name = problem.scenario.name

    def step(what: str) -> None:
        if tick is not None:
            tick(f"{name} {what}")

    _warm_up(problem)
    t0 = time.perf_counter()
    exact_s: float | None
    try:
        ex = exact_search(problem, Goal(), deadline=CpuDeadline.after(exact_limit_s))
        exact_s, ref_hv = time.perf_counter() - t0, ex.hypervolume(problem)
        reference = "exact DP front"
    except ExactBudgetExceeded:
        exact_s, ref_hv = None, None
        reference = f"best front found (the exact DP ran past {exact_limit_s:g} s)"
    step("exact")
    t0 = time.perf_counter()
    auto = search(problem, Goal())
    auto_s = time.perf_counter() - t0
    step("auto")
    mobo_run = _mobo(problem, "structured", ref_hv, mobo_limit_s, seed, patience)
    step("mobo")
    raw_run = _mobo(problem, "raw", ref_hv, cap_s, seed)
    step("raw")
    if ref_hv is None:
        ref_hv = max(r.hypervolume(problem) for r in (auto, mobo_run, raw_run))
    mobo = _arm(mobo_run, ref_hv)
    evaluator = SimulatedEvaluator(problem, catalog, hardware_profiles)
    no_db = _no_db(problem, mobo_run, mobo, evaluator, no_db_evals, seed)
    step("no DB")
    return SchedulingRow(name, len(problem.gpu_types), int(problem.stock.sum()), reference,
                         ref_hv, exact_s, exact_limit_s, auto_s, auto.solver, mobo,
                         _arm(raw_run, ref_hv), no_db, cap_s, patience, mobo_limit_s)


def table2_steps(presets: Sequence[str]) -> int:
    """Progress ticks `scheduling_time` makes for these presets (5 each)."""
    return 5 * len(presets)
