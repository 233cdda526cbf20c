"""Replay: a plan on a whole trace with its real arrivals, and SLO attainment over time.

The check a user makes before trusting a plan: take the traffic of the workload as it came
(a whole trace file, or a long stream of its arrival model drawn with a held-out seed), send
every request where the plan sends it, and simulate every replica. Routing follows the plan's
shares as a router applies them to independent requests: request i of workload w goes to
model m with probability ``s_{w,m}``, to the groups of (m, its length class) in proportion to
their ``share``, and to one of the group's replicas uniformly; each replica's stream is
simulated with the same replica model and simulator the perf DB was built with. Nothing is
re-planned.

SLO attainment (`tuning._slo`: the share of W-second windows whose P95 is at most L) is
reported per group and for the whole system (all requests).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from profiling import Catalog, EngineConfig, ReplicaModel, Trace, simulate

from ._headroom import model_shares
from ._plan import Plan, length_spans
from ._problem import Problem
from ._slo import attainment

__all__ = ["GroupReplay", "Replay", "replay"]

FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True)
class GroupReplay:
    """One replica group of a plan on the replayed trace (all its replicas pooled)."""

    group: str
    requests: int
    rate_rps: float            # per replica, measured on the trace
    p95_s: float
    target_s: float
    saturated: bool
    attainment: float
    windows: int

    @property
    def holds(self) -> bool:
        """P95 over the whole trace at or below the target.

        (``saturated`` is the simulator's trend flag, shown but not judged: over a whole
        bursty trace a queue that is still draining a late burst looks like a growing one,
        and a queue that really grows shows in the P95.)
        """
        return self.p95_s <= self.target_s

    @property
    def ratio(self) -> float:
        """P95 over the target (1.05: 5% over)."""
        return self.p95_s / self.target_s


@dataclass(frozen=True)
class Replay:
    """A plan replayed on whole traces: per group, and the system's windows."""

    groups: tuple[GroupReplay, ...]
    system_p95_s: float
    system_attainment: float
    windows: int
    window_s: float
    target_s: float

    @property
    def holds(self) -> bool:
        """Every group within its target."""
        return all(g.holds for g in self.groups)

    def to_dict(self) -> dict[str, object]:
        """JSON view."""
        return {"holds": self.holds, "system_p95_s": self.system_p95_s,
                "system_attainment": self.system_attainment, "windows": self.windows,
                "window_s": self.window_s, "target_s": self.target_s,
                "groups": [{"group": g.group, "requests": g.requests,
                            "rate_rps": g.rate_rps, "p95_s": g.p95_s,
                            "target_s": g.target_s, "saturated": g.saturated,
                            "attainment": g.attainment, "windows": g.windows}
                           for g in self.groups]}


def replay(problem: Problem, plan: Plan, catalog: Catalog, traces: Sequence[Trace], *,
           target_s: float, window_s: float = 300.0, seed: int = 0,
           hardware_profiles: str | None = None) -> Replay:
    """Replay `plan` on `traces` (one per workload of `problem`, at the workload's rate).

    Args:
        problem: the planning problem the plan was made for.
        plan: the plan.
        catalog: the merged catalog.
        traces: each workload's whole trace with its real arrivals (seconds).
        target_s: the P95 every group (and every window) must meet.
        window_s: the attainment window.
        seed: the routing draws.
        hardware_profiles: as for the perf DB.

    Raises:
        ValueError: not one trace per workload (an internal caller's error).

    """
    from profiling import spec_calibration

    if len(traces) != len(problem.workloads):
        raise ValueError(f"{len(traces)} traces for {len(problem.workloads)} workloads")
    sc = problem.scenario
    calibration = spec_calibration(sc.for_workload(sc.workload_names[0]).profile_spec(),
                                   catalog, hardware_profiles=hardware_profiles)
    rng = np.random.default_rng(seed)
    shares = model_shares(problem, plan)
    spans = None if problem.threshold_tokens is None else length_spans(problem.threshold_tokens)
    # Every request's destination: (workload, index) -> group and replica.
    arrival = np.concatenate([t.arrival_s for t in traces])
    latency = np.full(len(arrival), np.inf)
    offsets = np.cumsum([0] + [len(t) for t in traces])
    dest_group = np.full(len(arrival), -1)
    dest_replica = np.zeros(len(arrival), dtype=np.int64)
    groups = list(plan.groups)
    for w, t in enumerate(traces):
        model = rng.choice(len(problem.models), size=len(t), p=shares[w] / shares[w].sum())
        u, r = rng.random(len(t)), rng.random(len(t))
        for m, name in enumerate(problem.models):
            for cls in ([None] if spans is None else list(spans)):
                mask = model == m
                if cls is not None and spans is not None:
                    mask &= t.in_length_span(*spans[cls])
                mine = [i for i, g in enumerate(groups)
                        if g.model == name and g.length_class == cls and g.share > 0]
                if not mine or not mask.any():
                    continue
                cum = np.cumsum([groups[i].share for i in mine])
                pick = np.minimum(np.searchsorted(cum / cum[-1], u[mask], side="right"),
                                  len(mine) - 1)
                gid = np.asarray(mine)[pick]
                dest_group[offsets[w] + np.flatnonzero(mask)] = gid
                reps = np.array([groups[i].replicas for i in gid])
                dest_replica[offsets[w] + np.flatnonzero(mask)] = (r[mask] * reps).astype(
                    np.int64)
    lengths_in = np.concatenate([t.input_tokens for t in traces])
    lengths_out = np.concatenate([t.output_tokens for t in traces])
    out = []
    duration = float(arrival.max()) if len(arrival) else 0.0
    for gi, g in enumerate(groups):
        gpu = catalog.gpu(sc.catalog_gpu(g.gpu))
        replica = ReplicaModel(catalog.model(g.model), gpu, g.tp, g.pp,
                               calibration.engine_for(g.model, gpu.name, g.tp, g.pp,
                                                      EngineConfig()),
                               calibration.for_gpu(gpu.name))
        saturated = False
        served = np.flatnonzero(dest_group == gi)
        for k in range(g.replicas):
            idx = served[dest_replica[served] == k]
            if len(idx) < 2:
                continue
            idx = idx[np.argsort(arrival[idx], kind="stable")]
            res = simulate(replica, Trace(arrival[idx] - arrival[idx[0]], lengths_in[idx],
                                          lengths_out[idx], name=g.name))
            saturated |= res.saturated
            latency[idx[:len(res.latency_s)]] = res.latency_s
        lat = latency[served]
        p95 = float(np.quantile(lat, 0.95)) if lat.size else 0.0
        share, windows = attainment(arrival[served], lat, target_s, window_s)
        rate = len(served) / duration / g.replicas if duration > 0 else 0.0
        out.append(GroupReplay(g.name, len(served), rate, p95, target_s, saturated, share,
                               windows))
    routed = dest_group >= 0
    system_p95 = float(np.quantile(latency[routed], 0.95)) if routed.any() else 0.0
    share, windows = attainment(arrival[routed], latency[routed], target_s, window_s)
    return Replay(tuple(out), system_p95, share, windows, window_s, target_s)
