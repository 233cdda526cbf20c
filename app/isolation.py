"""Tenant isolation of the live threshold: one API key cannot move another key's routing.

The live policies (`app.routing.LiveThreshold`, `app.routing.LiveCascade`) calibrate their
thresholds on a window of recent scores. Without isolation, one key that sends a burst of
high-scoring queries fills that window and drives the deficit correction, and every other
key's queries go to the weak model (measured: threshold 0.554 -> 0.992, another key's strong
share 51% -> 10% for ~8 min). Three rules, active once the window holds scores of two or
more tenants (a tenant: an API key id; requests without a key are one ``anonymous`` tenant):

1. **Slot quota** (`TenantWindow`). The window keeps at most ``q = max(1, floor(a W))``
   scores of one tenant while another tenant has a score in it (``a``: `Isolation.
   max_fraction`, ``W``: the window size): an arrival of a tenant at its quota replaces that
   tenant's own oldest score; any other arrival to a full window replaces the oldest score
   overall. A burst cannot push other tenants' scores out beyond ``q`` slots, and its tenant
   holds a fraction ``alpha <= q / |window|`` of the window (``<= a`` once it is full).
2. **Deficit cap** (`tenant_corrected_share`). The deficit correction that keeps the
   cumulative share exact is counted per tenant, and each tenant moves the calibrated share by
   at most ``kappa`` (`Isolation.deficit_cap`): ``s_eff = clip(s + sum_k clip((s n_k - r_k)
   / every, -kappa, kappa), 0, 1)``.
3. **Move bound** (`clamp_move`). A recalibration may move the threshold's base (the
   deficit-free ``quantile(window, 1 - s)``) by at most ``m = min(max_move, max_move_per_s
   * dt)`` in share terms: the share of the window's scores at or above it changes by at most
   ``m`` (``dt``: seconds since the previous recalibration, when the caller gives a clock). A
   move that wanted more is clamped and counted (`GuardState`: the ``boute_threshold_fast``
   metric and ``/health``'s ``threshold_guard``). With one tenant nothing is clamped (the
   decisions are exactly those of the policy without isolation), but such a move is counted.

**Guarantee** (one recalibration; the pair, share ``s``). Let tenant A hold a fraction
``alpha`` of the window (``alpha <= a`` in a full window) and G be the other tenants' scores.
The threshold t solves ``(1 - alpha)(1 - G(t)) + alpha (1 - H_A(t)) = s_eff`` with ``s_eff
= s' + d_A``: ``s'`` is s plus the other tenants' deficit terms (what they are calibrated to
without A) and ``|d_A| <= kappa`` is A's. Whatever A sends, ``0 <= 1 - H_A(t) <= 1``, so the
others' strong share ``1 - G(t)`` lies in ``[(s_eff - alpha)/(1 - alpha), s_eff/(1 - alpha)]``
while without A it is ``s'``: A moves it by at most ``(alpha max(s', 1 - s') + kappa) / (1 -
alpha)``. With ``|s' - s| <= kappa`` (B the only other tenant) that is at most

    y(a, s, kappa) = (a * max(s, 1 - s) + 2 kappa) / (1 - a)        (`Isolation.bound`)

(defaults a = 0.1, kappa = 0.01; s = 0.51: 7.9 points, where 41 were measured without
isolation), plus the quantile's discreteness (1 / |window|). This bounds the others' share
taken together; a key B that is the only other tenant (or whose scores are distributed as the
others') moves by at most y, one that holds a fraction beta of the others' window by at most
y / beta. B's share measured against s (not s') moves by up to kappa more: its own deficit
term, which it has without A as well. On top of that, the move bound caps any change of the
base at ``m`` per recalibration and ``max_move_per_s`` per second (tests/app/test_isolation.py
replays the attack). Limits: the quota is a slot count, not a traffic share, so a tenant that
joins after the window filled stays at ``q`` slots while the incumbents keep theirs (until
they are the oldest scores when an under-quota tenant arrives); the total strong share then
follows the window's composition, not the traffic's, and the deficit cap lets it deviate from
``s`` by up to ``kappa`` per tenant. That is the price of isolation; a lasting change of the
traffic mix is for replanning. The isolation state is per router replica, as the window is.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["ANONYMOUS", "GuardState", "Isolation", "ScoreWindow", "TenantWindow", "clamp_move",
           "tenant_corrected_share"]

ANONYMOUS = "anonymous"          # the tenant of requests without an API key


@dataclass(frozen=True)
class Isolation:
    """The isolation rules' parameters (module docstring; `RouterSettings` carries them)."""

    enabled: bool = True
    max_fraction: float = 0.1       # a: a tenant's slots while others are in the window
    deficit_cap: float = 0.01       # kappa: one tenant's term in the deficit correction
    max_move: float = 0.05          # share of the window per recalibration
    max_move_per_s: float = 0.02    # share of the window per second (when a clock is given)

    def quota(self, size: int) -> int:
        """``q = max(1, floor(a W))``: one tenant's slots while others are in the window."""
        return max(1, math.floor(self.max_fraction * size)) if self.enabled else size

    def bound(self, share: float) -> float:
        """The most one tenant moves the others' strong share (module docstring).

        ``y(a, s, kappa) = (a max(s, 1 - s) + 2 kappa) / (1 - a)``, at most 1.
        """
        a = self.max_fraction
        if a >= 1.0:
            return 1.0
        return min(1.0, (a * max(share, 1.0 - share) + 2.0 * self.deficit_cap) / (1.0 - a))


class ScoreWindow:
    """The last `size` scores (a ring buffer) and the queries since the last calibration.

    A policy recalibrates when `due`: the window holds at least `min_samples` scores, and
    `every` queries went by since the last calibration (`restart`) or a threshold is unknown.
    """

    def __init__(self, size: int, min_samples: int, every: int) -> None:
        self._ring = np.empty(size, dtype=np.float64)
        self._filled = self._next = 0
        self.min_samples, self.every = min_samples, every
        self.since = 0

    def add(self, score: float) -> None:
        """Record one query's score (the oldest leaves a full window)."""
        self._ring[self._next] = score
        self._next = (self._next + 1) % len(self._ring)
        self._filled = min(self._filled + 1, len(self._ring))
        self.since += 1

    @property
    def ready(self) -> bool:
        """The window holds enough scores (`min_samples`) to calibrate on."""
        return self._filled >= self.min_samples

    def due(self, unknown: bool) -> bool:
        """Time to recalibrate (`unknown`: some threshold is NaN)."""
        return self.ready and (self.since >= self.every or unknown)

    def restart(self) -> None:
        """Count the next `every` queries from now."""
        self.since = 0

    @property
    def scores(self) -> np.ndarray[Any, Any]:
        """The scores in the window (order irrelevant to a quantile; no copy)."""
        return self._ring[:self._filled]


class TenantWindow(ScoreWindow):
    """A `ScoreWindow` whose scores carry their tenant, with the slot quota (rule 1).

    While every score came from one tenant it is exactly the ring buffer (same scores, same
    order); the second tenant's first score switches it to per-tenant queues (oldest first),
    where the quota applies. `multi` says which.
    """

    def __init__(self, size: int, min_samples: int, every: int, quota: int) -> None:
        super().__init__(size, min_samples, every)
        self.size, self.quota = size, quota
        self.tenant: str | None = None           # the only tenant so far (single mode)
        self.multi = False
        self._by: dict[str, deque[tuple[int, float]]] = {}
        self._count = self._seq = 0

    def add(self, score: float, tenant: str | None = None) -> None:
        """Record one query's score from `tenant` (None: anonymous)."""
        key = ANONYMOUS if tenant is None else tenant
        if not self.multi:
            if self.tenant is None or key == self.tenant or self.quota >= self.size:
                self.tenant = self.tenant or key
                super().add(score)
                return
            self._split()
        q = self._by.setdefault(key, deque())
        if len(q) >= self.quota and len(self._by) > 1:
            q.popleft()                           # at its quota: replace its own oldest
        elif self._count >= self.size:
            oldest = min(self._by, key=lambda k: self._by[k][0][0] if self._by[k] else 1 << 62)
            self._by[oldest].popleft()
            if not self._by[oldest] and oldest != key:
                del self._by[oldest]
        else:
            self._count += 1
        q.append((self._seq, score))
        self._seq += 1
        self.since += 1

    def _split(self) -> None:
        """Single mode -> per-tenant queues: the ring's scores, oldest first, to its tenant."""
        ring = np.concatenate([self._ring[self._next:self._filled], self._ring[:self._next]]
                              ) if self._filled == len(self._ring) else self._ring[:self._filled]
        assert self.tenant is not None
        self._by = {self.tenant: deque((i, float(v)) for i, v in enumerate(ring))}
        self._count = self._seq = len(ring)
        self.multi = True

    @property
    def ready(self) -> bool:
        """The window holds enough scores (`min_samples`) to calibrate on."""
        return (self._count if self.multi else self._filled) >= self.min_samples

    @property
    def scores(self) -> np.ndarray[Any, Any]:
        """The scores in the window (order irrelevant to a quantile)."""
        if not self.multi:
            return super().scores
        return np.fromiter((v for q in self._by.values() for _, v in q), dtype=np.float64,
                           count=self._count)

    def tenant_scores(self, tenant: str | None) -> np.ndarray[Any, Any]:
        """The scores of `tenant` (None: anonymous) in the window."""
        key = ANONYMOUS if tenant is None else tenant
        if not self.multi:
            return self.scores if key == self.tenant else np.empty(0)
        return np.array([v for _, v in self._by.get(key, ())], dtype=np.float64)

    def fractions(self) -> dict[str, float]:
        """Each tenant's fraction of the window (single mode: its one tenant, 1.0)."""
        if not self.multi:
            return {} if self.tenant is None else {self.tenant: 1.0}
        return {k: len(q) / self._count for k, q in self._by.items() if self._count}


def tenant_corrected_share(share: float, counts: dict[str, list[int]], every: int,
                           cap: float) -> float:
    """Rule 2: ``clip(s + sum_k clip((s n_k - r_k) / every, -cap, cap), 0, 1)``.

    `counts`: tenant -> [n_k queries, r_k of them routed to the model or above].
    """
    d = sum(min(cap, max(-cap, (share * n - r) / every)) for n, r in counts.values())
    return min(1.0, max(0.0, share + d))


@dataclass
class GuardState:
    """What the move bound saw (``/health``'s ``threshold_guard`` and the metrics)."""

    recalibrations: int = 0
    fast: int = 0              # moves that wanted more than the bound (clamped or not)
    clamped: int = 0           # of which clamped (two or more tenants in the window)
    last_move: float = 0.0     # the last recalibration's move, share of the window (+: up)
    last_wanted: float = 0.0   # what it wanted before the clamp
    last_s: float | None = None  # its clock (the caller's seconds), when given

    def report(self) -> dict[str, Any]:
        """The ``/health`` field."""
        return {"recalibrations": self.recalibrations, "fast": self.fast,
                "clamped": self.clamped, "last_move": self.last_move,
                "last_wanted": self.last_wanted}


def _quantile_share(scores: np.ndarray[Any, Any], p: float) -> float:
    """The threshold sending a share `p` of `scores` up (RouteLLM's ``quantile(1 - p)``)."""
    if p <= 0.0:
        return math.inf
    if p >= 1.0:
        return -math.inf
    return float(np.quantile(scores, 1.0 - p))


def clamp_move(scores: np.ndarray[Any, Any], share: float, eff: float, base: float,
               iso: Isolation, guard: GuardState, now: float | None, clamp: bool
               ) -> tuple[float, float]:
    """Rule 3: the threshold for share `eff` of `scores`, its base moved by the bound at most.

    The *base* is the deficit-free threshold, ``quantile(scores, 1 - share)``: what moves it
    is the window's scores, not the deficit correction (whose jitter of a few queries per
    `every` is no alarm). Its move is the change of ``mean(scores >= base)`` from the previous
    base (`base`; NaN: none, moves freely) to the new one. Allowed: ``max_move``, and
    ``max_move_per_s * dt`` when `now` and the previous recalibration's clock are known. A
    wider move is counted fast; with `clamp` the base share moves by the allowed amount
    toward the new one, ``p``, and the threshold sends ``clip(p + eff - share, 0, 1)`` up.
    Without `clamp` the threshold is exactly ``quantile(scores, 1 - eff)``.

    Returns:
        (threshold, new base).

    """
    allowed = iso.max_move
    if now is not None and guard.last_s is not None:
        allowed = min(allowed, iso.max_move_per_s * max(0.0, now - guard.last_s))
    guard.recalibrations += 1
    guard.last_s = now if now is not None else guard.last_s
    new_base = _quantile_share(scores, share)
    exact = _quantile_share(scores, eff)
    if math.isnan(base) or not 0.0 < share < 1.0:
        guard.last_move = guard.last_wanted = 0.0
        return exact, new_base
    p_old, p_new = float(np.mean(scores >= base)), float(np.mean(scores >= new_base))
    wanted = p_new - p_old
    guard.last_wanted = guard.last_move = wanted
    if abs(wanted) <= allowed + 1e-12:
        return exact, new_base
    guard.fast += 1
    if not clamp:
        return exact, new_base
    guard.clamped += 1
    p = min(1.0, max(0.0, p_old + math.copysign(allowed, wanted)))
    guard.last_move = p - p_old
    return _quantile_share(scores, min(1.0, max(0.0, p + eff - share))), \
        _quantile_share(scores, p)
