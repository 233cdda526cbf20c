"""Traffic at any rate: what a replica sees when its workload arrives as it really does.

The perf DB measures a replica config at many per-replica rates ``r``. What traffic a replica
at rate ``r`` receives depends on the workload's arrival process:

* **Renewal arrivals** (``poisson``, ``gamma``; the paper's setting): one base trace at
  1 req/s, its arrival times scaled by ``1 / r`` (`ScaledTraffic`). For Poisson arrivals this
  is exact: a Poisson stream thinned to a replica's share is Poisson at the thinned rate.

* **Modulated arrivals** (a trace file's own arrivals, or generated ``modulated`` shapes):
  the rate itself moves (per-minute counts from near zero to several times the mean), and
  those swings last *seconds to minutes of real time* whatever share of the stream a replica
  gets. Time-scaling would stretch a one-minute burst into ten minutes for a replica at a
  tenth of the rate, or squeeze it into seconds for a fast one, so `ThinnedTraffic` instead
  *thins* the workload's stream (at the workload's rate ``lambda``, real seconds): every
  request is kept with probability ``p = r / lambda`` (``k = ceil(r / lambda)`` independent
  streams of ``p = r / (k lambda)`` each above the workload's own rate). A replica that
  receives share p of a modulated stream sees the same minute-scale swings at p times the
  level, as it does in production.

  Which stretch of the stream? Not its head (the first 1,000 requests of an hour-long trace
  are its first few minutes): a *circular block bootstrap* (Politis and Romano, 1992).
  Contiguous stretches of ``block_s`` seconds start at uniform random points of the stream
  (wrapping around its end) and are laid end to end until the run covers its horizon: at
  least the stream's whole duration and at least ``num_requests`` kept requests
  (``max_requests`` at most). Every stretch keeps its real arrivals and the real lengths that
  came with them (a burst of long prompts stays a burst of long prompts), and every point of
  the stream is equally likely to be drawn, so the distribution of per-window counts (their
  CV at every window up to ``block_s``) is the stream's in expectation.

  The draws are *common random numbers* across rates: the same seed gives the same stretches
  and the same uniform ``U_i`` per drawn request, and a request is kept when ``U_i < p``, so a
  lower rate's stream is a subset of a higher one's and the DB's latency grows smoothly
  with rate instead of jumping between samples.

A `Traffic` is picklable (the DB sweeps run in other processes or Ray tasks) and describes
itself (``describe()``) for the DB's metadata: a DB built under another arrival model is
stale.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from ._workload import Trace

__all__ = ["BLOCK_S", "MAX_CHECK_REQUESTS", "MAX_STREAM_REQUESTS", "ScaledTraffic",
           "ThinnedTraffic", "Traffic"]

BLOCK_S = 600.0
"""Length of one bootstrap stretch (at most a quarter of the stream): ten minutes keep
per-minute swings and the slower drifts that build a queue near capacity. Measured on the
Azure conversation trace at 20 req/s (a 968 s stream): 242 s stretches gave a plan within
its target on the whole trace (0.83x), 120 s stretches one that missed it (1.86x): shorter
stretches shuffle busy periods apart and hide the backlog they build."""
MAX_STREAM_REQUESTS = 20_000
"""Most requests one (config, rate) run of the perf DB simulates (~0.3 s of simulator time;
a fast config at 50 req/s then sees 400 s of traffic; the headroom check sees more)."""
MAX_CHECK_REQUESTS = 60_000
"""Most requests one fresh-traffic check simulates (`tuning._headroom`)."""


class Traffic(Protocol):
    """Requests arriving at a replica at a given mean rate."""

    def at_rate(self, rate_rps: float, seed: int = 0) -> Trace:
        """A trace whose mean rate is about `rate_rps`; `seed` draws another sample."""
        ...

    def lengths(self) -> Trace:
        """The requests' lengths (a representative sample; its arrivals are not used)."""
        ...

    def describe(self) -> dict[str, Any]:
        """The arrival model, for the DB's metadata (JSON)."""
        ...


@dataclass(frozen=True)
class ScaledTraffic:
    """Renewal arrivals: `base` (at 1 req/s) with its times scaled to each rate."""

    base: Trace
    model: str = "poisson"

    def at_rate(self, rate_rps: float, seed: int = 0) -> Trace:
        """`base` scaled to `rate_rps` (the same requests for every seed)."""
        return self.base.scaled_to(rate_rps)

    def lengths(self) -> Trace:
        """`base` itself."""
        return self.base

    def describe(self) -> dict[str, Any]:
        """``{"model": "poisson" | "gamma"}``."""
        return {"model": self.model}


@dataclass(frozen=True)
class ThinnedTraffic:
    """Modulated arrivals: `stream` (at the workload's rate) thinned and block-bootstrapped.

    Args:
        stream: the workload's requests at its own rate, real arrival times and lengths.
        model: ``trace`` (a trace file's arrivals) or ``modulated`` (generated).
        num_requests: at least this many requests per run (when the stream allows).
        seed: the bootstrap's seed (`at_rate`'s `seed` is added to it).
        block_s: length of one stretch (default `BLOCK_S`, at most a quarter of the stream).
        max_requests: at most this many requests per run.

    """

    stream: Trace
    model: str
    num_requests: int = 1000
    seed: int = 0
    block_s: float = BLOCK_S
    max_requests: int = MAX_STREAM_REQUESTS

    @property
    def period_s(self) -> float:
        """The stream's length as a loop: its duration plus one mean gap (seamless wrap)."""
        n = len(self.stream)
        return self.stream.duration_s * n / max(n - 1, 1)

    @property
    def stream_rate_rps(self) -> float:
        """The workload's mean rate: requests per second of the loop."""
        return len(self.stream) / self.period_s

    @property
    def block_len_s(self) -> float:
        """The stretch length actually used: `block_s`, at most a quarter of the loop."""
        return min(self.block_s, self.period_s / 4)

    def horizon_s(self, rate_rps: float) -> float:
        """Seconds one run covers at `rate_rps` (module docstring)."""
        want = max(self.period_s, self.num_requests / rate_rps)
        return min(want, self.max_requests / rate_rps)

    def at_rate(self, rate_rps: float, seed: int = 0) -> Trace:
        """A replica's stream at `rate_rps`: stretches of the workload, thinned.

        Raises:
            ValueError: `rate_rps` is not > 0 (an internal caller's error).

        """
        if not rate_rps > 0 or self.period_s <= 0:
            raise ValueError(f"rate_rps={rate_rps!r} must be > 0 on a stream with duration")
        lam = self.stream_rate_rps
        k = max(1, math.ceil(rate_rps / lam - 1e-12))
        p = rate_rps / (k * lam)
        horizon = self.horizon_s(rate_rps)
        parts = [self._thinned(p, horizon, (self.seed + seed, j)) for j in range(k)]
        times = np.concatenate([t for t, _ in parts])
        idx = np.concatenate([i for _, i in parts])
        order = np.argsort(times, kind="stable")
        times, idx = times[order], idx[order]
        if len(idx) == 0:        # nothing kept: the stream's first request, alone
            times, idx = np.zeros(1), np.zeros(1, dtype=np.int64)
        s = self.stream
        return Trace(times - times[0], s.input_tokens[idx], s.output_tokens[idx],
                     name=f"{s.name}-thinned",
                     sharing=None if s.sharing is None else s.sharing.take(idx))

    def _thinned(self, p: float, horizon_s: float, key: tuple[int, int]
                 ) -> tuple[np.ndarray, np.ndarray]:
        """Arrival times and stream indices of one bootstrapped stream thinned by `p`."""
        arr = self.stream.arrival_s - self.stream.arrival_s[0]
        n, period, block = len(arr), self.period_s, self.block_len_s
        looped = np.concatenate([arr, arr + period])
        blocks = math.ceil(horizon_s / block)
        starts = np.random.default_rng([*key, 0]).uniform(0.0, period, size=blocks)
        times, index = [], []
        for b, u in enumerate(starts):
            lo = int(np.searchsorted(looped, u, side="left"))
            hi = int(np.searchsorted(looped, u + block, side="left"))
            keep = np.random.default_rng([*key, b + 1]).random(hi - lo) < p
            pos = np.arange(lo, hi)[keep]
            times.append(looped[pos] - u + b * block)
            index.append(pos % n)
        t = np.concatenate(times)
        i = np.concatenate(index).astype(np.int64)
        inside = t < horizon_s
        return t[inside], i[inside]

    def lengths(self) -> Trace:
        """`num_requests` requests spread evenly over the stream (for capacity runs)."""
        n = len(self.stream)
        idx = np.unique(np.linspace(0, n - 1, min(n, self.num_requests)).astype(np.int64))
        s = self.stream
        return Trace(np.arange(len(idx), dtype=np.float64), s.input_tokens[idx],
                     s.output_tokens[idx], name=f"{s.name}-lengths",
                     sharing=None if s.sharing is None else s.sharing.take(idx))

    def describe(self) -> dict[str, Any]:
        """The model, the workload's rate and the bootstrap's settings."""
        return {"model": self.model, "stream_rate_rps": round(self.stream_rate_rps, 9),
                "block_s": round(self.block_len_s, 6), "seed": self.seed,
                "max_requests": self.max_requests}
