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
    # Connected already: nothing to start, the start-up clock is (near) zero.
    assert res.startup_s is not None and res.startup_s < 0.5
    lo, _hi = exact_front(small_problem).hv_bounds(small_problem)
    assert res.hypervolume(small_problem) >= 0.99 * lo
    assert (tmp_path / "build" / "ray_results").is_dir()


class _FakeRay:
    """`ray`'s is_initialized / init, for `tuning.tune._connect` without a cluster."""

    def __init__(self, initialized: bool, refuse: bool = False) -> None:
        self.initialized, self.refuse = initialized, refuse
        self.calls: list[dict[str, object]] = []

    def is_initialized(self) -> bool:
        return self.initialized

    def init(self, **kwargs: object) -> None:
        self.calls.append(kwargs)
        if self.refuse:
            raise ConnectionError("Could not find any running Ray instance")


def test_connect_uses_the_address_and_names_the_fix() -> None:
    pytest.importorskip("ray")
    from tuning import SearchError
    from tuning.tune import _connect

    ray = _FakeRay(initialized=False)
    assert _connect(ray, "10.0.0.1:6379", None) is True      # ours to disconnect
    assert ray.calls[0]["address"] == "10.0.0.1:6379"
    already = _FakeRay(initialized=True)
    assert _connect(already, None, None) is False and already.calls == []  # not ours
    with pytest.raises(SearchError, match="connected to Ray already; drop --address"):
        _connect(already, "10.0.0.1:6379", None)
    with pytest.raises(SearchError, match=r"no Ray cluster answers there .*ray start --head"):
        _connect(_FakeRay(initialized=False, refuse=True), "10.0.0.1:6379", None)


def test_address_without_tune_is_refused(small_problem: Problem) -> None:
    from common.errors import BouteError
    from tuning import PlanOptions, choose_plan

    with pytest.raises(BouteError, match="--address=auto is the Ray cluster of --tune"):
        choose_plan(small_problem, Goal(), PlanOptions(tune_address="auto", check_seeds=()))


@pytest.mark.heavy
def test_plan_tune_reuses_a_running_cluster_and_reports_its_startup(
        small_problem: Problem, tmp_path: Path) -> None:
    """`boute plan --tune --address` connects to a cluster another process started, leaves it
    running, and reports the connection seconds apart from the search's."""
    import json
    import os
    import subprocess
    import sys
    import time

    pytest.importorskip("ray")
    from placement import ray_temp_dir
    from tests.tuning.conftest import SMALL

    scenario = tmp_path / "small.yaml"
    scenario.write_text(SMALL)
    db = small_problem.db.save(tmp_path / "db.parquet")
    # A throw-away local Ray held by a process of this test (tests may turn its token auth
    # off); it ends when that process does.
    # PYTHONPATH: the command runs this checkout's code, whatever is installed.
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "PYTHONPATH": str(REPO)}
    temp = ray_temp_dir(REPO / "build" / "ray-tmp-address")
    holder = subprocess.Popen(
        [sys.executable, "-c", "import ray, sys; ray.init(num_cpus=2, include_dashboard=False,"
         f" _temp_dir={str(temp)!r}); print(ray.get_runtime_context().gcs_address, "
         "flush=True); sys.stdin.read()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env, cwd=tmp_path)
    try:
        assert holder.stdout is not None
        address = holder.stdout.readline().strip()
        assert ":" in address, address
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "boute.cli", "--json", "plan",
                               "--scenario", str(scenario), "--db", str(db), "--tune",
                               "--address", address, "--evals", "264", "--resim-seeds", "0",
                               "--out", str(tmp_path / "plan.json"), "--plot", ""],
                              cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=600)
        wall_s = time.perf_counter() - t0
        assert proc.returncode == 0, proc.stderr[-3000:]
        out = json.loads(proc.stdout)
        search = out["search"]
        assert search["solver"] == "mobo-tune" and search["evaluations"] == 264
        assert search["reason"] == f"mobo through Ray Tune trials (--tune on the cluster at " \
                                   f"{address})"
        # Both clocks are reported, they do not overlap, and both fit in the command's wall.
        assert search["ray_startup_s"] > 0 and search["seconds"] > 0
        assert search["ray_startup_s"] + search["seconds"] < wall_s
        assert out["plan"]["search"]["ray_startup_s"] == search["ray_startup_s"]
        assert out["plan"]["search"]["search_s"] == search["seconds"]
        print(f"connect {search['ray_startup_s']:.2f} s, search {search['seconds']:.2f} s, "
              f"command wall {wall_s:.2f} s")
        # The cluster is still up: its holder runs and a new driver connects to it.
        assert holder.poll() is None
        check = subprocess.run([sys.executable, "-c", "import ray; ray.init(address="
                                f"{address!r}); print(ray.cluster_resources()['CPU'])"],
                               env=env, capture_output=True, text=True, timeout=120)
        assert check.returncode == 0 and check.stdout.strip().endswith("2.0"), check.stderr
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        try:
            holder.wait(timeout=60)
        except subprocess.TimeoutExpired:
            holder.kill()
            holder.wait()
