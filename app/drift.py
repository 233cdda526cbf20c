"""The router's live prediction error per replica group: read-only observability (pure).

Every request a group answered with outcome ``ok`` is kept in the group's sliding window
(its arrival, end-to-end latency, TTFT, output tokens, streamed or not; at most
`MAX_SAMPLES` per group, the newest). On demand (`LiveDrift.report`: ``/health``, and the
ingress's timer every `EXPORT_S` for the metric), per group k, with ``now`` the wall clock:

* **Window**: ``[t0, now]``, ``t0 = max(now - window_s, since_k, dropped_k)``: ``since_k``
  is when the group joined the router's config (a window not yet full is not counted as
  idle time), ``dropped_k`` the latest arrival the group's window let go of (past
  `MAX_SAMPLES`, or older than a window: what is left is all of what arrived after it).
* **Observed** (`tuning.observe_groups`, the replan job's math): ``n_k`` requests,
  ``rate_k = n_k / (now - t0)``, their P95 latency ``P_obs`` (and per third of the window),
  the median TPOT ``T_obs = median((latency - TTFT) / (output tokens - 1))`` of streamed
  requests (NaN when none: then only P95 is judged).
* **Predicted**: the group's prediction table (`app.router_config.GroupPrediction`, the perf
  DB's curve shipped by the deploy) at the per-replica rate ``rate_k / R_k``, ``R_k`` the
  group's running replicas (Serve's count; the plan's until seen), interpolated linearly
  (`tuning.interpolate_prediction`, as `PerfDB.lookup`).
* **Error and verdict** (`tuning.detect_drift`): ``error = predicted / observed - 1`` of P95
  and of TPOT (negative: the model is optimistic, the engines are slower than predicted);
  ``drifted`` true when the P95 error stays past the tolerance over the window and in each
  third with enough requests (same sign), or the TPOT error is past it; None (no verdict)
  below ``min_requests``.

A group's ``state``: ``drifted``, ``ok``, ``few_requests`` (errors shown, no verdict),
``no_prediction`` (no table for it in the config), ``saturated`` (its per-replica rate is past
the table's last unsaturated point: the model predicts no finite P95 there) or ``idle`` (no
request in the window). Nothing here is on a request's path but `LiveDrift.record` (an append);
the ingress calls everything inside ``try`` so a failure here never fails a request. The
prediction table is made on the plan's workload (its length mix): a served mix far from it
shows as error too (the replan job's drift uses the window's own mix).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping
from typing import Any, NamedTuple

import numpy as np

from tuning import (
    GroupPredicted,
    PredictionTable,
    detect_drift,
    interpolate_prediction,
    observe_groups,
)

__all__ = ["EXPORT_S", "MAX_SAMPLES", "QUANTITIES", "LiveDrift", "Sample"]

MAX_SAMPLES = 20_000
"""Requests kept per group (the newest): ~40 bytes each as a tuple, < 1 MiB per group."""
EXPORT_S = 5.0
"""Seconds between two updates of ``boute_prediction_error`` (the ingress's timer)."""
QUANTITIES = ("p95", "tpot")
"""The ``quantity`` tag of ``boute_prediction_error``."""
_SPLITS = 3       # thirds of the window, as the replan job's drift (tuning.detect_drift)


class Sample(NamedTuple):
    """One successful request as the window keeps it."""

    arrival_s: float            # wall clock
    latency_s: float
    ttft_s: float
    output_tokens: int
    stream: bool


def _num(x: float) -> float | None:
    """JSON-safe: NaN and infinities as None."""
    return float(x) if math.isfinite(x) else None


class LiveDrift:
    """Per-group sliding windows of served requests, and their prediction errors."""

    def __init__(self, max_samples: int = MAX_SAMPLES) -> None:
        self.max_samples = max_samples
        self.windows: dict[str, deque[Sample]] = {}
        self.since: dict[str, float] = {}
        self.dropped: dict[str, float] = {}     # the latest arrival let go of, per group

    def track(self, groups: Mapping[str, Any], now_s: float) -> None:
        """The config's groups: new ones start their window at `now_s`; gone ones are dropped."""
        for g in list(self.windows):
            if g not in groups:
                del self.windows[g], self.since[g], self.dropped[g]
        for g in groups:
            if g not in self.windows:
                self.windows[g] = deque(maxlen=self.max_samples)
                self.since[g] = now_s
                self.dropped[g] = -math.inf

    def record(self, group: str, sample: Sample) -> None:
        """Keep one successful request of `group` (a group not tracked is ignored)."""
        window = self.windows.get(group)
        if window is None:
            return
        if len(window) == window.maxlen:
            self.dropped[group] = max(self.dropped[group], window[0].arrival_s)
        window.append(sample)

    def prune(self, before_s: float) -> None:
        """Drop the samples that arrived before `before_s` (oldest first; bounds the work)."""
        for group, window in self.windows.items():
            while window and window[0].arrival_s < before_s:
                self.dropped[group] = max(self.dropped[group], window.popleft().arrival_s)

    def report(self, now_s: float, tables: Mapping[str, PredictionTable],
               replicas: Mapping[str, int], *, window_s: float, min_requests: int,
               tolerance: float) -> dict[str, dict[str, Any]]:
        """Each tracked group's prediction (module docstring), JSON-safe (NaN: None).

        Args:
            now_s: wall-clock seconds (the window's end).
            tables: group -> prediction table (groups without one: ``no_prediction``).
            replicas: group -> replicas serving it (at least 1 is assumed).
            window_s: the sliding window, seconds.
            min_requests: fewest requests for a verdict.
            tolerance: `tuning.detect_drift`'s.

        Returns:
            group -> ``{state, requests, window_s, rate_rps, replicas, rate_per_replica_rps,
            observed_p95_s, predicted_p95_s, error_p95, split_error_p95, observed_tpot_s,
            predicted_tpot_s, error_tpot, drifted}``.

        """
        self.prune(now_s - window_s)
        out: dict[str, dict[str, Any]] = {}
        for group, window in self.windows.items():
            t0 = max(now_s - window_s, self.since[group], self.dropped[group])
            kept = [s for s in window if t0 <= s.arrival_s <= now_s]
            entry: dict[str, Any] = {"state": "idle", "requests": len(kept),
                                     "window_s": max(0.0, now_s - t0), "drifted": None}
            out[group] = entry
            if not kept or not now_s > t0:
                continue
            a = np.asarray([tuple(s) for s in kept], dtype=float)
            obs = observe_groups(np.full(len(kept), group, dtype=object), a[:, 0], a[:, 1],
                                 a[:, 2], a[:, 3], a[:, 4] > 0, window=(t0, now_s),
                                 splits=_SPLITS, min_requests=min_requests)[group]
            r = max(1, int(replicas.get(group, 1)))
            entry.update(rate_rps=obs.rate_rps, replicas=r,
                         rate_per_replica_rps=obs.rate_rps / r,
                         observed_p95_s=obs.p95_s, observed_tpot_s=_num(obs.tpot_p50_s))
            table = tables.get(group)
            if table is None:
                entry["state"] = "no_prediction"
                continue
            pred: GroupPredicted | None = interpolate_prediction(table, obs.rate_rps / r)
            if pred is None:
                entry["state"] = "saturated"
                continue
            (d,) = detect_drift({group: pred}, {group: obs}, tolerance=tolerance,
                                min_requests=min_requests).groups
            entry.update(predicted_p95_s=d.predicted_p95_s, error_p95=_num(d.error_p95),
                         split_error_p95=[_num(e) for e in d.split_error_p95],
                         predicted_tpot_s=_num(d.predicted_tpot_s),
                         error_tpot=_num(d.error_tpot), drifted=d.drifted,
                         state=("few_requests" if d.drifted is None
                                else "drifted" if d.drifted else "ok"))
        return out

    @staticmethod
    def metric(report: Mapping[str, Mapping[str, Any]]) -> dict[tuple[str, str], float]:
        """``boute_prediction_error{group, quantity}`` of a `report` (no value: NaN)."""
        out = {}
        for group, entry in report.items():
            for q in QUANTITIES:
                v = entry.get(f"error_{q}")
                out[(group, q)] = math.nan if v is None else float(v)
        return out
