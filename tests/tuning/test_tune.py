"""The MOBO searcher driven by Ray Tune on a small local Ray."""

from pathlib import Path

import pytest

from tuning import Goal, Problem, exact_front

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.heavy
def test_tune_searcher_reaches_the_exact_front(small_problem: Problem, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    ray = pytest.importorskip("ray")
    from tuning.tune import search_with_tune

    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    monkeypatch.chdir(tmp_path)                     # build/ray_results lands in tmp_path
    from placement import ray_temp_dir

    temp = ray_temp_dir(REPO / "build" / "ray-tmp")   # inside the repo when the path is short
    ray.init(num_cpus=2, include_dashboard=False, _temp_dir=str(temp))
    try:
        # 256 Sobol points in 4 trials, then 2 qLogNEHVI steps of 4 points.
        res = search_with_tune(small_problem, Goal(), seed=0, max_evals=264)
    finally:
        ray.shutdown()
    assert res.solver == "mobo-tune" and res.evaluations == 264
    lo, _hi = exact_front(small_problem).hv_bounds(small_problem)
    assert res.hypervolume(small_problem) >= 0.99 * lo
    assert (tmp_path / "build" / "ray_results").is_dir()
