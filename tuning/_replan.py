"""Replanning decisions (pure): is a proposed plan worth replacing the running one, and how.

Given the running plan *re-evaluated on the traffic just observed* and a plan re-optimized for
that traffic, under the same goal:

* the running plan **must** change when it no longer meets the goal on that traffic (a
  constraint violated: saturation, a P95 target missed, quality below the floor);
* otherwise it changes only when the proposal's predicted **gain** on the goal's objective is
  at least ``min_gain``:

  - ``pareto`` (minimize P95, quality floor, budget): ``gain = 1 - p95_new / p95_running``;
  - ``min-cost`` (cheapest meeting quality and P95): ``gain = 1 - cost_new / cost_running``;
  - ``max-throughput``: ``gain = capacity_new / capacity_running - 1``;

* and never within ``cooldown_s`` seconds of the last applied change (both together are the
  hysteresis that keeps plans from oscillating on noise), unless forced.

The kind of change: ``routing`` when the replica groups (model, GPU, TP, PP, replicas) are
the same and only the strong share or the load shares move (the router is reconfigured, no
engine restarts), ``deployment`` otherwise (groups added, removed or resized).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from ._plan import Group, Plan

__all__ = ["Decision", "GroupChange", "Hysteresis", "decide", "diff_groups", "objective_gain"]

Action = Literal["none", "routing", "deployment"]
SHARE_TOL = 1e-3
"""Shares closer than this are the same routing."""


@dataclass(frozen=True)
class Hysteresis:
    """When a better plan is worth a change."""

    min_gain: float = 0.10
    """Smallest predicted relative gain on the goal's objective that justifies a change."""
    cooldown_s: float = 600.0
    """No change within this many seconds of the last applied one."""

    def __post_init__(self) -> None:
        if not (self.min_gain >= 0 and math.isfinite(self.min_gain)):
            raise ValueError(f"min_gain={self.min_gain!r} must be a finite number >= 0")
        if not (self.cooldown_s >= 0 and math.isfinite(self.cooldown_s)):
            raise ValueError(f"cooldown_s={self.cooldown_s!r} must be a finite number of "
                             "seconds >= 0")


@dataclass(frozen=True)
class GroupChange:
    """One replica group before and after (0 replicas: absent)."""

    name: str
    replicas_before: int
    replicas_after: int
    share_before: float
    share_after: float

    @property
    def kind(self) -> str:
        """``add``, ``remove``, ``scale-up``, ``scale-down``, ``reshare`` or ``same``."""
        if self.replicas_before == 0:
            return "add"
        if self.replicas_after == 0:
            return "remove"
        if self.replicas_after > self.replicas_before:
            return "scale-up"
        if self.replicas_after < self.replicas_before:
            return "scale-down"
        if abs(self.share_after - self.share_before) > SHARE_TOL:
            return "reshare"
        return "same"


def diff_groups(running: Plan, proposed: Plan) -> list[GroupChange]:
    """Per replica group (by name), replicas and share before and after; sorted by name."""
    before = {g.name: g for g in running.groups}
    after = {g.name: g for g in proposed.groups}
    empty = Group("", "", 1, 1, 0, 0.0)
    return [GroupChange(n, before.get(n, empty).replicas, after.get(n, empty).replicas,
                        before.get(n, empty).share, after.get(n, empty).share)
            for n in sorted(set(before) | set(after))]


def _routing_distance(running: Plan, proposed: Plan) -> float:
    """The largest change of a routed share (the strong share; a ladder's every share)."""
    a, b = running.routing, proposed.routing
    gap = abs(a.strong_share - b.strong_share)
    if a.is_ladder or b.is_ladder:
        if a.models != b.models or [w.name for w in a.workloads] != [w.name for w in
                                                                      b.workloads]:
            return math.inf
        gap = max([gap] + [abs(x - y) for wa, wb in zip(a.workloads, b.workloads, strict=True)
                           for x, y in zip(wa.shares, wb.shares, strict=True)])
    return gap


def objective_gain(mode: str, running: Plan, proposed: Plan) -> float:
    """The proposal's relative gain on the goal's objective (see the module docstring).

    Both plans carry predictions for the same traffic.
    """
    assert running.predicted is not None and proposed.predicted is not None
    r, p = running.predicted, proposed.predicted
    if mode == "min-cost":
        return 1.0 - p.cost_per_hour / r.cost_per_hour
    if mode == "max-throughput":
        return p.capacity_rps / r.capacity_rps - 1.0 if r.capacity_rps > 0 else math.inf
    return 1.0 - p.p95_s / r.p95_s if math.isfinite(r.p95_s) else math.inf


@dataclass(frozen=True)
class Decision:
    """What replanning does, and why."""

    action: Action
    reason: str
    changes: tuple[GroupChange, ...]
    gain: float | None
    must: bool

    @property
    def applies(self) -> bool:
        """Whether a change is applied."""
        return self.action != "none"


def decide(mode: str, running: Plan, proposed: Plan, *, violation: str | None,
           hysteresis: Hysteresis, seconds_since_change: float | None,
           force: bool = False) -> Decision:
    """Decide between the running plan and a proposal (see the module docstring).

    Args:
        mode: the goal's mode (``pareto``, ``min-cost``, ``max-throughput``).
        running: the running plan, with predictions on the observed traffic when it still
            meets the goal there (``violation`` is None), else as it was.
        proposed: the re-optimized plan, with predictions on the observed traffic.
        violation: why the running plan no longer meets the goal (None: it does).
        hysteresis: the minimum gain and the cool-down.
        seconds_since_change: time since the last applied change (None: unknown, no
            cool-down).
        force: ignore the hysteresis.

    """
    changes = tuple(diff_groups(running, proposed))
    same_groups = all(c.replicas_before == c.replicas_after for c in changes)
    same_share = _routing_distance(running, proposed) <= SHARE_TOL
    if same_groups and same_share and all(c.kind == "same" for c in changes):
        return Decision("none", "the proposed plan is the running plan", changes, 0.0,
                        violation is not None)
    action: Action = "routing" if same_groups else "deployment"
    must = violation is not None
    gain = math.inf if must else objective_gain(mode, running, proposed)
    if force:
        return Decision(action, "forced", changes, gain, must)
    if (seconds_since_change is not None and seconds_since_change < hysteresis.cooldown_s):
        left = hysteresis.cooldown_s - seconds_since_change
        return Decision("none", f"cool-down: the last change was {seconds_since_change:.0f} s "
                        f"ago, {left:.0f} s left" + (f" (the running plan {violation})"
                                                     if must else ""), changes, gain, must)
    if must:
        return Decision(action, f"the running plan {violation}", changes, gain, must)
    if gain < hysteresis.min_gain:
        return Decision("none", f"predicted gain {gain:+.1%} < the minimum "
                        f"{hysteresis.min_gain:.0%}", changes, gain, must)
    return Decision(action, f"predicted gain {gain:+.1%} >= the minimum "
                    f"{hysteresis.min_gain:.0%}", changes, gain, must)
