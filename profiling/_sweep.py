"""The perf DB's unit of work: one replica config swept over its rate grid, and how to map it.

`build_perfdb` lists the feasible configs as `SweepJob`s and hands them, with the scenario's
traffic (`profiling._arrivals`: how requests arrive at each rate), to a `ConfigMapper`: a
callable that runs `sweep_config` on every job and yields each job's rows as it finishes, in
any order (the DB sorts its rows, so the order of completion never shows). Two mappers ship
here: `map_serial` (this process) and `process_mapper` (a local process pool);
``placement.ray_config_mapper`` runs the jobs as Ray tasks on a cluster. Every mapper runs
the same `sweep_config` on the same inputs, so the DB's rows are identical whichever one
built it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from ._arrivals import ScaledTraffic, Traffic
from ._catalog import GpuType, ModelArch
from ._replica import Efficiency, EngineConfig, ReplicaModel
from ._simulator import QUANTILES, capacity_rps, simulate
from ._workload import Trace

__all__ = ["ConfigMapper", "SweepJob", "map_serial", "process_mapper", "sweep_config"]

Row = dict[str, Any]
ConfigMapper = Callable[[Sequence["SweepJob"], Traffic], Iterable[list[Row]]]
"""``mapper(jobs, traffic)`` runs ``sweep_config(job, traffic)`` for every job and yields each
result (one list of rows per job, in any order) as it finishes."""


@dataclass(frozen=True)
class SweepJob:
    """One feasible replica config of a scenario, with what its sweep needs but the trace.

    Args:
        model, gpu, tp, pp: the replica config.
        engine: engine settings.
        efficiency: achieved-efficiency factors of `gpu` (its calibration).
        num_rates: rates in the grid (`rate_grid`).

    """

    model: ModelArch
    gpu: GpuType
    tp: int
    pp: int
    engine: EngineConfig
    efficiency: Efficiency
    num_rates: int


def rate_grid(capacity: float, num_rates: int) -> npt.NDArray[np.float64]:
    """`num_rates - 2` log-spaced rates from 1% to 97% of capacity, then two saturated ones."""
    below = np.geomspace(0.01 * capacity, 0.97 * capacity, num_rates - 2)
    return np.concatenate([below, [1.05 * capacity, 1.25 * capacity]])


def sweep_config(job: SweepJob, traffic: Traffic | Trace) -> list[Row]:
    """Simulate one config under `traffic` at each rate of its grid; one row per rate.

    A `Trace` is taken as renewal traffic (`ScaledTraffic`: scaled to each rate). A pure
    function of its inputs: the same job and traffic give the same rows in any process.
    """
    if isinstance(traffic, Trace):
        traffic = ScaledTraffic(traffic)
    model, gpu, tp, pp = job.model, job.gpu, job.tp, job.pp
    replica = ReplicaModel(model, gpu, tp, pp, job.engine, job.efficiency)
    base = traffic.lengths()
    cap = capacity_rps(replica, base)
    rows = []
    nq = len(QUANTILES)
    for rate in rate_grid(cap, job.num_rates):
        row: Row = {
            "model": model.name, "gpu": gpu.name, "tp": tp, "pp": pp, "num_gpus": tp * pp,
            "price_per_hour": replica.price_per_hour, "rate_rps": float(rate),
            "capacity_rps": cap, "kv_capacity_tokens": replica.memory.kv_capacity_tokens,
        }
        if rate >= 0.98 * cap:
            res = None
        else:
            res = simulate(replica, traffic.at_rate(float(rate)), stop_when_saturated=True,
                           capacity=cap)
        if res is None or res.saturated:
            inf = math.inf
            row.update(saturated=True, latency_mean_s=inf, latency_quantiles_s=[inf] * nq,
                       latency_p50_s=inf, latency_p95_s=inf, latency_p99_s=inf, ttft_p50_s=inf,
                       ttft_p95_s=inf, tpot_p50_s=inf, tpot_p95_s=inf, throughput_rps=cap,
                       throughput_tok_s=cap * float(base.output_tokens.mean()))
        else:
            lat_q = res.latency_quantiles()
            tpot = res.tpot_s[~np.isnan(res.tpot_s)]
            row.update(
                saturated=False, latency_mean_s=float(res.latency_s.mean()),
                latency_quantiles_s=lat_q.tolist(),
                latency_p50_s=float(np.quantile(res.latency_s, 0.5)),
                latency_p95_s=float(np.quantile(res.latency_s, 0.95)),
                latency_p99_s=float(np.quantile(res.latency_s, 0.99)),
                ttft_p50_s=float(np.quantile(res.ttft_s, 0.5)),
                ttft_p95_s=float(np.quantile(res.ttft_s, 0.95)),
                tpot_p50_s=float(np.quantile(tpot, 0.5)) if tpot.size else math.nan,
                tpot_p95_s=float(np.quantile(tpot, 0.95)) if tpot.size else math.nan,
                throughput_rps=float(rate),  # stable queue: everything offered is served
                throughput_tok_s=float(rate * base.output_tokens.mean()),
            )
            if "prefix_hit_rate" in res.extra:       # not a DB column: the DB's metadata
                row["prefix_hit_rate"] = res.extra["prefix_hit_rate"]
        rows.append(row)
    return rows


def map_serial(jobs: Sequence[SweepJob], traffic: Traffic) -> Iterator[list[Row]]:
    """Sweep the jobs one after the other in this process."""
    for job in jobs:
        yield sweep_config(job, traffic)


def process_mapper(workers: int) -> ConfigMapper:
    """A mapper that sweeps the jobs in a pool of `workers` local processes.

    One worker, or one job, sweeps in this process (`map_serial`): no pool to start.
    The jobs and the traffic travel to the workers by pickle.
    """

    def run(jobs: Sequence[SweepJob], traffic: Traffic) -> Iterator[list[Row]]:
        if workers <= 1 or len(jobs) <= 1:
            yield from map_serial(jobs, traffic)
            return
        pool = ProcessPoolExecutor(max_workers=workers)
        try:
            futures = [pool.submit(sweep_config, job, traffic) for job in jobs]
            for fut in as_completed(futures):
                yield fut.result()
        finally:    # a failed job or a consumer that stops early: drop the queued ones
            pool.shutdown(wait=True, cancel_futures=True)

    return run
