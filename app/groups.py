"""The router's view of its replica groups: health, in-flight work and the choice of a group.

Pure (no Ray): the router (`app.dispatch.Dispatcher`) feeds it the outcome of every engine
call and what Serve reports about each group's replicas, and asks it where the next request
of a model goes.

**Choice.** A model's groups receive its requests in the plan's shares by smooth weighted
round robin (`app.routing.SmoothWeightedRoundRobin`) restricted to the groups that are
*available*: up (a running replica), not ejected, and below their in-flight bound. A group
that drops out has its share spread over the others in proportion to theirs; when all are
back the plan's shares hold again exactly.

**Admission.** Each group has a bound on in-flight requests, from the plan's capacity by
Little's law (`inflight_limits`): ``m_g = C_g * L`` with ``C_g`` the rate the group sustains
(``capacity_rps * model share * group share``) at the latency level ``L`` the plan's capacity
is computed at (its P95 target; else its predicted P95). While ``m_g`` requests are in
flight, a group sustaining ``C_g`` completes them in ``m_g / C_g = L`` seconds on average. The
number in flight under Poisson arrivals fluctuates around its mean like a Poisson count, so
the bound is ``N_g = ceil(m_g + 3 sqrt(m_g))``: three standard deviations above it (at the
plan's own rate about 0.1% of the time; without the margin a group with ``m_g`` ~ 24, a slow
replica at a fraction of a request per second, refused 3% of its planned traffic). An admitted
request waits about what the plan allows, and the excess is refused at once (429) instead of
queueing without bound. In-flight work is counted in sequences: a request asking for ``n``
completions of each of its prompts holds ``prompts x n`` units (`app.sampling.request_units`;
each is a sequence the engine decodes), and fits a group with ``inflight + units <= N_g``, or
an idle group.

**Circuit breaker.** ``fail_threshold`` consecutive failed calls (errors or deadlines) eject a
group for ``cooldown_s``, doubled on each ejection in a row up to ``max_cooldown_s``. After
the cool-down the group takes traffic again (half-open): a success closes the breaker, the
next failure ejects it again for twice as long.

**Liveness.** Two sources, whichever sees a loss first:

- Serve's count of running replicas per group (`GroupPool.set_replicas`, polled by the
  ingress every second): a group with none is *down* until one runs again, whatever its
  breaker says. Serve learns of a lost node late: its replica health checks (emulated engines:
  every 2 s, 5 s timeout) and Ray's node failure detection (the GCS marks a node dead after
  5 missed 3 s health checks, about 15 s) bound it.
- The router's own liveness probes (`GroupPool.probe_result`, fed by
  `app.dispatch.Dispatcher.probe` every ``PROBE_PERIOD_S``): ``probe_threshold`` probes in a
  row without an answer within the probe deadline make the group *unresponsive*, which
  counts as down; an answered probe or a successful call makes it responsive again.

**Health** (what ``/health`` reports; `GroupState.health`): a group is

- ``serving``: takes traffic with every replica it should have (or a count not yet seen);
- ``degraded``: takes traffic, but Serve runs fewer replicas than the plan wants;
- ``down``: takes none: no running replica, unresponsive to probes, or its breaker is open.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from .routing import SmoothWeightedRoundRobin

__all__ = ["HEALTH_STATES", "GroupPool", "GroupState", "inflight_limits"]

State = Literal["healthy", "ejected", "down"]
Health = Literal["serving", "degraded", "down"]
HEALTH_STATES: tuple[Health, ...] = ("serving", "degraded", "down")
"""A group's (and a model's) health on ``/health``, best first."""


def inflight_limits(groups: Iterable[tuple[str, str, int, float]],
                    model_share: Mapping[str, float], capacity_rps: float | None,
                    p95_s: float | None, *, scale: float = 1.0,
                    per_replica_fallback: int = 256) -> dict[str, int]:
    """The in-flight bound of every group (see the module docstring).

    Args:
        groups: (name, model, replicas, share of its model's load) per group.
        model_share: share of all traffic each model receives.
        capacity_rps: the plan's total capacity at its P95 (None or non-finite: unknown).
        p95_s: the plan's P95 latency, seconds (None: unknown).
        scale: multiplies every bound (1: the plan's; larger admits more queueing).
        per_replica_fallback: requests in flight per replica when the plan has no capacity
            (vLLM's default ``max_num_seqs``: what one engine runs at once).

    Returns:
        group name -> bound, at least one request per replica.

    """
    known = (capacity_rps is not None and p95_s is not None and math.isfinite(capacity_rps)
             and math.isfinite(p95_s) and capacity_rps > 0 and p95_s > 0)
    out = {}
    for name, model, replicas, share in groups:
        if known:
            assert capacity_rps is not None and p95_s is not None
            m = capacity_rps * model_share.get(model, 0.0) * share * p95_s
            n = math.ceil(scale * (m + 3.0 * math.sqrt(m)))
        else:
            n = math.ceil(scale * per_replica_fallback * replicas)
        out[name] = max(replicas, n)
    return out


@dataclass
class GroupState:
    """One group's live state (see the module docstring)."""

    name: str
    model: str
    limit: int | None = None
    inflight: int = 0
    failures: int = 0
    ejections: int = 0
    ejected_until: float = 0.0
    running: int | None = None
    wanted: int | None = None
    served: int = 0
    failed: int = 0
    probe_failures: int = 0
    unresponsive: bool = False

    def state(self, now: float) -> State:
        """How routing sees it: ``down``, ``ejected`` (breaker open) or ``healthy``.

        ``down``: no running replica, or unresponsive to the liveness probes.
        """
        if self.running == 0 or self.unresponsive:
            return "down"
        if now < self.ejected_until:
            return "ejected"
        return "healthy"

    def health(self, now: float) -> tuple[Health, str | None]:
        """``serving`` / ``degraded`` / ``down`` (module docstring) and why, when not serving."""
        if self.running == 0:
            return "down", f"no running replica (Serve runs 0 of {self.wanted})"
        if self.unresponsive:
            return "down", (f"no answer to the last {self.probe_failures} liveness probes "
                            "(a lost node or a hung replica)")
        if now < self.ejected_until:
            return "down", (f"circuit breaker open for {self.ejected_until - now:.1f} s more "
                            "after consecutive failed calls")
        if self.running is not None and self.wanted is not None and self.running < self.wanted:
            return "degraded", f"{self.running} of {self.wanted} replicas running"
        return "serving", None

    def has_room(self, units: int = 1) -> bool:
        """Room for `units` more in flight: within the bound, or the group is idle.

        (An idle group takes a request larger than its bound alone: it could never pass
        otherwise.)
        """
        return self.limit is None or self.inflight == 0 or self.inflight + units <= self.limit

    def to_dict(self, now: float) -> dict[str, Any]:
        """The state as ``/health`` reports it."""
        health, reason = self.health(now)
        return {"model": self.model, "state": health, "reason": reason,
                "routing": self.state(now),
                "replicas_running": self.running, "replicas_wanted": self.wanted,
                "inflight": self.inflight, "inflight_limit": self.limit,
                "consecutive_failures": self.failures,
                "ejected_for_s": round(max(0.0, self.ejected_until - now), 3),
                "probe_failures": self.probe_failures,
                "served": self.served, "failed": self.failed}


class GroupPool:
    """Every group of the running plan (module docstring)."""

    def __init__(self, shares: Mapping[str, Mapping[str, float]],
                 limits: Mapping[str, int | None] | None = None,
                 wanted: Mapping[str, int] | None = None, *, fail_threshold: int = 3,
                 cooldown_s: float = 5.0, max_cooldown_s: float = 60.0,
                 probe_threshold: int = 2) -> None:
        if fail_threshold < 1 or not cooldown_s > 0 or max_cooldown_s < cooldown_s:
            raise ValueError(f"fail_threshold={fail_threshold} must be >= 1 and 0 < "
                             f"cooldown_s={cooldown_s} <= max_cooldown_s={max_cooldown_s}")
        if probe_threshold < 1:
            raise ValueError(f"probe_threshold={probe_threshold} must be >= 1")
        self.fail_threshold, self.probe_threshold = fail_threshold, probe_threshold
        self.cooldown_s, self.max_cooldown_s = cooldown_s, max_cooldown_s
        self.groups: dict[str, GroupState] = {}
        self.pickers: dict[str, SmoothWeightedRoundRobin] = {}
        self.update(shares, limits, wanted)

    def update(self, shares: Mapping[str, Mapping[str, float]],
               limits: Mapping[str, int | None] | None = None,
               wanted: Mapping[str, int] | None = None) -> None:
        """Take a new plan's groups; groups that stay keep their live state."""
        old = self.groups
        self.groups = {}
        for model, groups in shares.items():
            for name in groups:
                st = old.get(name) or GroupState(name, model)
                st.model = model
                st.limit = (limits or {}).get(name)
                st.wanted = (wanted or {}).get(name, st.wanted)
                self.groups[name] = st
        self.pickers = {m: SmoothWeightedRoundRobin(dict(g)) for m, g in shares.items()}

    @property
    def models(self) -> list[str]:
        """Models with at least one group."""
        return list(self.pickers)

    def pick(self, model: str, now: float, exclude: Iterable[str] = (),
             units: int = 1) -> str | None:
        """The group for the next request of `model`, of `units` sequences (None: none fits)."""
        if model not in self.pickers:       # the running plan has no group of it
            return None
        skip = set(exclude)
        allowed = [g for g in self.pickers[model].weights
                   if g not in skip and self.groups[g].state(now) == "healthy"
                   and self.groups[g].has_room(units)]
        return self.pickers[model].pick(allowed) if allowed else None

    def reachable(self, model: str, now: float, exclude: Iterable[str] = ()) -> bool:
        """Some group of `model` is healthy (possibly full)."""
        skip = set(exclude)
        picker = self.pickers.get(model)
        return picker is not None and any(
            self.groups[g].state(now) == "healthy" for g in picker.weights if g not in skip)

    def acquire(self, group: str, units: int = 1) -> None:
        """A request of `units` sequences to `group` starts."""
        self.groups[group].inflight += units

    def release(self, group: str, units: int = 1) -> None:
        """A request of `units` sequences to `group` ended (whatever its outcome)."""
        st = self.groups.get(group)
        if st is not None:
            st.inflight = max(0, st.inflight - units)

    def success(self, group: str) -> None:
        """A call to `group` succeeded: the breaker closes."""
        st = self.groups.get(group)
        if st is not None:
            st.failures, st.ejections = 0, 0
            st.probe_failures, st.unresponsive = 0, False     # an answer: it is alive
            st.served += 1

    def failure(self, group: str, now: float) -> bool:
        """A call to `group` failed; True when this ejects it."""
        st = self.groups.get(group)
        if st is None:
            return False
        st.failed += 1
        st.failures += 1
        if now < st.ejected_until:
            return False                # a call sent before the ejection, failing late
        half_open = st.ejections > 0    # ejected before, no success since: one trial call
        if st.failures < self.fail_threshold and not half_open:
            return False
        st.ejections += 1
        st.failures = 0
        st.ejected_until = now + min(self.max_cooldown_s,
                                     self.cooldown_s * 2 ** (st.ejections - 1))
        return True

    def set_replicas(self, group: str, running: int) -> int:
        """Serve's count of running replicas; returns how many were lost since the last."""
        st = self.groups.get(group)
        if st is None:
            return 0
        lost = 0 if st.running is None else max(0, st.running - running)
        st.running = running
        return lost

    def probe_result(self, group: str, answered: bool) -> bool | None:
        """A liveness probe of `group` was answered (or not, within its deadline).

        Returns:
            True when this probe made the group unresponsive (``probe_threshold`` misses in
            a row), False when it made an unresponsive group responsive again, else None.

        """
        st = self.groups.get(group)
        if st is None:
            return None
        if answered:
            st.probe_failures = 0
            if st.unresponsive:
                st.unresponsive = False
                return False
            return None
        st.probe_failures += 1
        if not st.unresponsive and st.probe_failures >= self.probe_threshold:
            st.unresponsive = True
            return True
        return None

    def health(self, now: float) -> dict[str, Any]:
        """Every group's ``/health`` entry and whether each lane has a group taking traffic.

        Returns:
            ``{"groups": {name: GroupState.to_dict}, "lanes": {lane: reachable}}`` (a lane is
            reachable when one of its groups is healthy, possibly full).

        """
        return {"groups": {name: st.to_dict(now) for name, st in self.groups.items()},
                "lanes": {lane: self.reachable(lane, now) for lane in self.pickers}}
