"""SLOs over time: "P95 <= L in at least X% of W-minute windows", as production SLOs read.

For a window length W the windows are ``[k W, (k + 1) W)`` of a trace's clock (full windows
only). A window *meets* the SLO when the P95 of the latencies of the requests that *arrived*
in it is at most L (a window with no request meets it). *Attainment* is the share of windows
that meet it. The P95 of a window is the order statistic numpy's ``quantile`` gives (linear
interpolation between the two nearest ranks).

`window_quantile` is the latency the SLO would need to hold at a given attainment: the
X-quantile over windows of the per-window P95 (empty windows count as 0). Attainment >= X
exactly when ``window_quantile(X) <= L`` up to that interpolation; the headroom check derates
a config by ``window_quantile(X) / L`` as it does by ``P95 / L`` without a window SLO.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

__all__ = ["WindowSLO", "attainment", "window_p95s", "window_quantile"]

FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True)
class WindowSLO:
    """P95 at most the goal's P95 in at least `attainment` of the `window_s` windows.

    Raises:
        ValueError: `attainment` outside (0, 1] or `window_s` not > 0 (named).

    """

    attainment: float
    window_s: float = 300.0

    def __post_init__(self) -> None:
        if not 0 < self.attainment <= 1:
            raise ValueError(f"attainment={self.attainment!r} must be a share in (0, 1] "
                             "(0.99: 99% of windows)")
        if not self.window_s > 0:
            raise ValueError(f"window_s={self.window_s!r} must be > 0 seconds")


def window_p95s(arrival_s: FloatArray, latency_s: FloatArray, window_s: float) -> FloatArray:
    """P95 latency of each full window (0 for an empty one); empty when none is full."""
    arrival = np.asarray(arrival_s, dtype=np.float64)
    if arrival.size == 0:
        return np.zeros(0)
    start = float(arrival.min())
    full = int((float(arrival.max()) - start) // window_s)
    k = ((arrival - start) // window_s).astype(np.int64)
    inside = k < full
    k, lat = k[inside], np.asarray(latency_s, dtype=np.float64)[inside]
    order = np.argsort(k, kind="stable")
    bounds = np.searchsorted(k[order], np.arange(full + 1))
    out = np.zeros(full)
    for j in range(full):
        chunk = lat[order[bounds[j]:bounds[j + 1]]]
        if chunk.size:
            out[j] = float(np.quantile(chunk, 0.95))
    return out


def attainment(arrival_s: FloatArray, latency_s: FloatArray, target_s: float,
               window_s: float) -> tuple[float, int]:
    """Share of full windows whose P95 is at most `target_s`, and the window count.

    ``(1.0, 0)`` when the trace is shorter than one window.
    """
    p95s = window_p95s(arrival_s, latency_s, window_s)
    if p95s.size == 0:
        return 1.0, 0
    return float(np.mean(p95s <= target_s)), int(p95s.size)


def window_quantile(arrival_s: FloatArray, latency_s: FloatArray, slo: WindowSLO) -> float:
    """The `slo.attainment`-quantile of the per-window P95s (the overall P95 if no window)."""
    p95s = window_p95s(arrival_s, latency_s, slo.window_s)
    if p95s.size == 0:
        lat = np.asarray(latency_s, dtype=np.float64)
        return float(np.quantile(lat, 0.95)) if lat.size else 0.0
    return float(np.quantile(p95s, slo.attainment))
