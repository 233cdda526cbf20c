"""The perf DB's sweeps as Ray tasks on a cluster (`boute profile --address`).

`ray_config_mapper` is a `profiling.ConfigMapper`: `profiling.build_perfdb` hands it the
scenario's configs and it runs `profiling.sweep_config` on each as a Ray task (one logical CPU
each), so a build spreads over every node of the cluster. The base trace goes to the object
store once; each task gets a reference to it. Results are yielded as tasks finish (the
build's progress bar); the DB sorts its rows, so it is identical to a local build's.

The nodes import `profiling` from their own BOute install (``make setup`` on every node of
cluster.yaml): they must run the same BOute as the driver. The caller connects first
(`placement.connect`, with the cluster's Ray token).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from profiling import ConfigMapper, SweepJob, Traffic, sweep_config

from ._specs import PlacementError

__all__ = ["ray_config_mapper"]

_POLL_S = 0.5
"""Longest wait for a finished task before the next look (progress granularity)."""


def ray_config_mapper(*, num_cpus: float = 1.0, max_retries: int = 3) -> ConfigMapper:
    """A mapper that sweeps each config as a Ray task on the connected cluster.

    Args:
        num_cpus: logical CPUs each task holds (one simulation runs on one core).
        max_retries: reruns of a task whose worker or node died (a sweep is a pure function,
            so a rerun gives the same rows).

    Returns:
        ``mapper(jobs, traffic)``; calling it raises `PlacementError` when this process is not
        connected to Ray. A sweep that raises fails the build with that error; the tasks not
        yet finished are then cancelled.

    """

    def run(jobs: Sequence[SweepJob], base: Traffic) -> Iterator[list[dict[str, Any]]]:
        import ray

        if not ray.is_initialized():
            raise PlacementError("building the perf DB as Ray tasks needs a Ray connection: "
                                 "call placement.connect(address, ...) first")
        task = ray.remote(num_cpus=num_cpus, max_retries=max_retries)(sweep_config)
        base_ref = ray.put(base)
        pending = [task.remote(job, base_ref) for job in jobs]  # type: ignore[arg-type]
        try:
            while pending:
                done, pending = ray.wait(pending, num_returns=len(pending), timeout=_POLL_S)
                yield from ray.get(done)
        finally:        # a failed sweep or a consumer that stopped early: stop the rest
            for ref in pending:
                ray.cancel(ref)

    return run
