import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from placement import free_port, ray_temp_dir

__all__ = ["SharedServe", "free_port", "plan_replan_scenario", "throwaway_serve"]

REPO = Path(__file__).resolve().parents[2]

# A small pair scenario (8B / 70B on 4 H100 + 4 RTX 4090, gsm8k at 8 req/s) that plans in
# seconds: the deploy tests' plan.
SERVE_SMALL_SCENARIO = """
name: serve-small
gpus:
  H100: {count: 4}
  RTX-4090: {count: 4}
models: {weak: llama-3.1-8b, strong: llama-3.1-70b}
task: gsm8k
workload: {shape: gsm8k, rate_rps: 8}
budget_per_hour: 14
profile: {num_rates: 8, num_requests: 300}
"""


@contextlib.contextmanager
def throwaway_serve(name: str) -> Iterator[int]:
    """A local Ray instance (2 CPUs) with Serve on a free loopback port; yields the port.

    A throw-away test instance: Ray's token authentication is off for it alone (product code
    never does this), its files under build/ray-tmp-<name>; everything is shut down after.
    """
    import ray
    from ray import serve

    old = os.environ.get("RAY_AUTH_MODE")
    os.environ["RAY_AUTH_MODE"] = "disabled"
    try:            # a start that fails (Serve's proxy killed on a loaded machine) is undone
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
                 _temp_dir=str(ray_temp_dir(REPO / "build" / f"ray-tmp-{name}")))
        port = free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        yield port
    finally:        # too: the next test finds no Ray left initialized, auth mode restored
        if ray.is_initialized():
            serve.shutdown()
        ray.shutdown()
        if old is None:
            os.environ.pop("RAY_AUTH_MODE", None)
        else:
            os.environ["RAY_AUTH_MODE"] = old


class SharedServe:
    """One `throwaway_serve` instance for consecutive test modules (the ``shared_serve``
    fixture, tests/app/conftest.py): started by the first, kept up while the next test asks
    for it too, shut down before one that does not (it may start a Ray cluster of its own).

    A module gets it empty (`fresh`): the apps an earlier module deployed are deleted first.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.port: int | None = None
        self._stack = contextlib.ExitStack()

    def fresh(self) -> int:
        """The HTTP port of the instance, with no app: started when it is down, else emptied."""
        from ray import serve

        if self.port is None:
            self.port = self._stack.enter_context(throwaway_serve(self.name))
        for app in serve.status().applications:
            serve.delete(app)
        return self.port

    def stop(self) -> None:
        """Shut the instance down (no-op when it is down)."""
        self.port = None
        self._stack.close()


def plan_replan_scenario(folder: Path) -> Path:
    """``boute plan`` of benchmarks/data/replan's scenario (min cost, quality 84.5, P95 4 s).

    The plan is one 2-GPU replica of the 8B model on the slow EDU-GPU type; returns its file.
    """
    from boute.cli import main

    data = REPO / "benchmarks" / "data" / "replan"
    plan_path = folder / "plan.json"
    assert main(["plan", "--scenario", str(data / "scenario.yaml"), "--gpu-catalog",
                 str(data / "gpus.yaml"), "--db", str(folder / "db.parquet"), "--objective",
                 "min-cost", "--quality", "84.5", "--p95", "4.0", "--solver", "exact",
                 "--plot", "", "--out", str(plan_path)]) == 0
    return plan_path
