"""Ray Tune adapter: the MOBO searcher as a `ray.tune.search.Searcher`.

`BouteSearcher` hands out points of the unit cube (Sobol first, then qLogNEHVI batches from the
shared `MoboState`) and learns from every finished trial; each trial decodes its point into a
plan and evaluates it, so Tune runs proposals in parallel across the cluster. Tune's own
metric/mode are single-objective; the searcher reads the three outcomes (``o0``, ``o1``: the
objectives to maximize, ``o2``: the constraint slack) itself. The only module of `tuning` that
imports Ray.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np
from ray import tune
from ray.tune.search import Searcher

from ._evaluator import evaluate_arrays
from ._mobo import MoboSettings, MoboState
from ._problem import Problem
from ._search import Goal, SearchResult, _outcomes, _Run, make_encoding

__all__ = ["BouteSearcher", "search_with_tune"]


class BouteSearcher(Searcher):
    """MOBO proposals for Ray Tune; see the module docstring."""

    def __init__(self, dim: int, seed: int = 0, settings: MoboSettings | None = None) -> None:
        super().__init__(metric="o0", mode="max")
        self.state = MoboState(dim, seed, settings or MoboSettings())
        self.queue: list[np.ndarray[Any, Any]] = []
        self.live: dict[str, np.ndarray[Any, Any]] = {}

    def suggest(self, trial_id: str) -> dict[str, float] | None:
        """The next point, as ``{"z0": ..., "z1": ...}``."""
        if not self.queue:
            self.queue = list(self.state.propose())
        z = self.queue.pop(0)
        self.live[trial_id] = z
        return {f"z{i}": float(v) for i, v in enumerate(z)}

    def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None,
                          error: bool = False) -> None:
        """Record the trial's outcomes (failed trials are dropped)."""
        z = self.live.pop(trial_id, None)
        if z is not None and result is not None and not error:
            self.state.observe(z[None], np.array([[result["o0"], result["o1"], result["o2"]]]))


def _trial(config: dict[str, float], problem: Problem, goal: Goal, encoding: str) -> None:
    enc = make_encoding(problem, goal, encoding)
    z = np.array([[config[f"z{i}"] for i in range(enc.dim)]])
    y = _outcomes(problem, goal, evaluate_arrays(problem, enc.decode(z), goal.p95_s))[0]
    tune.report({"o0": float(y[0]), "o1": float(y[1]), "o2": float(y[2])})


def search_with_tune(problem: Problem, goal: Goal, *, seed: int = 0, max_evals: int = 288,
                     concurrency: int = 8, encoding: str = "structured") -> SearchResult:
    """Run the MOBO searcher through Ray Tune (starting a local Ray if none is running)."""
    import ray

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    started = False
    if not ray.is_initialized():
        ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False)
        started = True
    enc = make_encoding(problem, goal, encoding)
    settings = MoboSettings(n_init=min(MoboSettings().n_init, max_evals))
    searcher = BouteSearcher(enc.dim, seed, settings)
    run = _Run(problem, goal, "mobo", None)
    start = time.perf_counter()
    try:
        tuner = tune.Tuner(
            tune.with_parameters(_trial, problem=problem, goal=goal, encoding=encoding),
            tune_config=tune.TuneConfig(search_alg=searcher, num_samples=max_evals,
                                        max_concurrent_trials=concurrency),
            run_config=tune.RunConfig(storage_path=str(Path("build/ray_results").resolve()),
                                      verbose=0),
        )
        grid = tuner.fit()
        z = np.array([[r.config[f"z{i}"] for i in range(enc.dim)] for r in list(grid)  # type: ignore[call-overload]
                      if r.config])
    finally:
        if started:
            ray.shutdown()
    run.add(enc.decode(z))
    result = run.done()
    result.seconds = time.perf_counter() - start
    return result
