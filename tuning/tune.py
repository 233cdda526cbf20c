"""Ray Tune adapter: the MOBO searcher as a `ray.tune.search.Searcher`.

`BouteSearcher` hands out *batches* of points of the unit cube — Sobol chunks first, then
qLogNEHVI batches from the shared `MoboState` — one batch per Tune trial, and learns from every
finished trial. A trial decodes its batch into plans and evaluates them with the vectorized
evaluator, so Tune runs several batches in parallel across the cluster while the per-trial
overhead of Tune (an actor, a result round-trip: about a second on 2 cores) is paid per batch,
not per plan. Tune's own metric/mode are single-objective; the searcher reads the outcomes
(two objectives to maximize and the constraint slack per point, `tuning._run._outcomes`)
from the trial's ``outcomes_json`` itself, and ``best_o0`` is reported for Tune's tables. The
only module of `tuning` that imports Ray.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from ray import tune
from ray.tune.search import Searcher

from ._evaluator import evaluate_arrays
from ._mobo import MoboSettings, MoboState
from ._problem import Problem
from ._run import (
    Callback,
    Goal,
    SearchError,
    SearchResult,
    StopRule,
    _outcomes,
    _Run,
    make_encoding,
    plan_keys,
)

__all__ = ["BouteSearcher", "search_with_tune"]


class BouteSearcher(Searcher):
    """MOBO proposals for Ray Tune, `batch` points per trial; see the module docstring."""

    def __init__(self, dim: int, seed: int = 0, settings: MoboSettings | None = None,
                 batch: int = 64,
                 on_batch: Callable[[np.ndarray[Any, Any], float | None], bool] | None = None,
                 plan_keys: Callable[[np.ndarray[Any, Any]], list[bytes]] | None = None
                 ) -> None:
        super().__init__(metric="best_o0", mode="max")
        self.state = MoboState(dim, seed, settings or MoboSettings(), plan_keys=plan_keys)
        self.batch = batch
        self.handed_out = 0
        self.live: dict[str, tuple[np.ndarray[Any, Any], float | None]] = {}
        # Called with each finished batch and its expected hypervolume improvement (None for
        # Sobol chunks); True -> stop.
        self.on_batch = on_batch
        self.finished = False

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        """The next batch, as ``{"z": [[z0, z1, ...], ...]}`` (FINISHED once told to stop)."""
        if self.finished:
            return Searcher.FINISHED  # type: ignore[return-value]  # Tune's end marker
        ehvi: float | None = None
        if self.handed_out < self.state.settings.n_init:
            n = min(self.batch, self.state.settings.n_init - self.handed_out)
            z = self.state.sobol(n)
        elif self.state.num_observed == 0:
            return None          # wait for the Sobol start before modelling
        else:
            z = self.state.propose()
            ehvi = self.state.ehvi[-1] if self.state.ehvi else None
        self.handed_out += len(z)
        self.live[trial_id] = (z, ehvi)
        return {"z": z.tolist()}

    def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None,
                          error: bool = False) -> None:
        """Record the trial's outcomes (failed trials are dropped)."""
        live = self.live.pop(trial_id, None)
        if live is not None and result is not None and not error:
            z, ehvi = live
            self.state.observe(z, np.asarray(json.loads(result["outcomes_json"])))
            if self.on_batch is not None and self.on_batch(z, ehvi):
                self.finished = True


def _trial(config: dict[str, Any], problem: Problem, goal: Goal, encoding: str) -> None:
    enc = make_encoding(problem, goal, encoding)
    y = _outcomes(problem, goal, evaluate_arrays(problem, enc.decode(np.asarray(config["z"])),
                                                 goal.p95_s))
    feasible = y[:, 2] >= 0
    tune.report({"outcomes_json": json.dumps(y.tolist()),
                 "best_o0": float(y[feasible, 0].max()) if feasible.any() else -1.0})


@contextlib.contextmanager
def _stdout_to_stderr() -> Iterator[None]:
    """Send this process's stdout (Python's and file descriptor 1) to stderr in the block.

    Tune prints its experiment tables and Ray its start-up lines on stdout; a caller printing
    one JSON object there (`boute plan --tune --json`) must get stdout to itself. Processes
    started in the block (Ray's workers) inherit the redirected descriptor.
    """
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        os.dup2(2, 1)
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def search_with_tune(problem: Problem, goal: Goal, *, seed: int = 0,
                     max_evals: int | None = None, stop: StopRule | None = None,
                     batch: int = 64, concurrency: int = 2, encoding: str = "structured",
                     callback: Callback | None = None, temp_dir: str | None = None,
                     address: str | None = None) -> SearchResult:
    """Run the MOBO searcher through Ray Tune.

    Ray: with `address`, connect to that running cluster (``ray.init(address=...)``; it is
    neither started nor stopped here, only this driver's connection is closed at the end);
    without it, use the Ray this process is already connected to, or start a local one and
    shut it down at the end. The seconds spent starting or connecting are
    `SearchResult.startup_s`; the search's clock (`SearchResult.seconds`, the trace, the
    stop rule's time limit) starts after them.

    Plans in trials of ``batch`` (Sobol chunks) or ``settings.q`` points (BO steps),
    ``concurrency`` trials at a time, until `stop` (default `StopRule()`, or exactly
    `max_evals` plans); results under ``build/ray_results``. The driver keeps the evaluated
    plans as trials finish; ``callback(evaluations, seconds, value)`` returning True ends the
    search (no new trials). Tune's and Ray's output goes to stderr, never stdout.

    Raises:
        SearchError: no cluster answers at `address`, `address` given while this process is
            connected to Ray already, or no trial finished.

    """
    import time

    import ray

    problem = problem.for_goal(goal)          # the goal's TTFT / TPOT rate caps
    rule = StopRule.fixed(max_evals) if max_evals is not None else (stop or StopRule())
    with _stdout_to_stderr():
        t0 = time.perf_counter()
        started = _connect(ray, address, temp_dir)
        startup_s = time.perf_counter() - t0
        enc = make_encoding(problem, goal, encoding)
        settings = MoboSettings(n_init=min(MoboSettings().n_init, rule.max_evals))
        run = _Run(problem, goal, "mobo-tune", callback, rule, warmup_evals=settings.n_init)

        def on_batch(z: np.ndarray[Any, Any], ehvi: float | None) -> bool:
            run.add(enc.decode(z), ehvi)
            return run.stop

        searcher = BouteSearcher(enc.dim, seed, settings, batch, on_batch,
                                 plan_keys=lambda z: plan_keys(enc.decode(z)))
        n_sobol = math.ceil(settings.n_init / batch)
        n_bo = math.ceil(max(0, rule.max_evals - settings.n_init) / settings.q)
        try:
            tuner = tune.Tuner(
                tune.with_parameters(_trial, problem=problem, goal=goal, encoding=encoding),
                tune_config=tune.TuneConfig(search_alg=searcher, num_samples=n_sobol + n_bo,
                                            max_concurrent_trials=concurrency,
                                            reuse_actors=True),
                run_config=tune.RunConfig(storage_path=str(Path("build/ray_results").resolve()),
                                          verbose=0),
            )
            tuner.fit()
        finally:
            if started:
                ray.shutdown()
    if run.result is None:
        raise SearchError("no Ray Tune trial finished; see the trial logs under "
                          "build/ray_results")
    result = run.done()
    result.step_seconds = [dict(t) for t in searcher.state.step_seconds]
    result.startup_s = startup_s
    return result


def _connect(ray: Any, address: str | None, temp_dir: str | None) -> bool:
    """Connect to the cluster at `address`, or start a local Ray; True when we must disconnect.

    Raises:
        SearchError: `address` while already connected, or nothing answers there.

    """
    if address is not None:
        if ray.is_initialized():
            raise SearchError(f"address={address!r}: this process is connected to Ray "
                              "already; drop --address to use that connection")
        try:
            ray.init(address=address, log_to_driver=False, configure_logging=False)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise SearchError(f"address={address!r}: no Ray cluster answers there ({exc}); "
                              "start one with `ray start --head` (or `ray up cluster.yaml`) "
                              "and pass its address, or drop --address to start a local "
                              "Ray") from exc
        return True
    if ray.is_initialized():
        return False
    # A local Ray started here runs with token authentication, Ray's default for `ray.init()`
    # (it generates ~/.ray/auth_token if there is none); RAY_AUTH_MODE set by the caller wins.
    ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False,
             _temp_dir=temp_dir)
    return True
