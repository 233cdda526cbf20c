"""Deadlines in CPU seconds of this process, capped in wall seconds.

A deadline of ``b`` seconds passes when this process has spent ``b`` more CPU seconds
(`time.process_time`: every thread of the process, HiGHS's included) or when
``WALL_CAP_FACTOR * b`` wall seconds (`time.perf_counter`) have gone by, whichever comes
first.

CPU time is what the work costs; wall time also counts whatever else the machine runs, so a
wall deadline cuts the same work short on a loaded machine (on the shared 2-core box the
level program ran at 2.5-5 wall seconds per CPU second under a load average of 10). The wall
cap keeps a starved process bounded: with one core of two busy a run gets about a core, and
its CPU deadline passes first.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

__all__ = ["WALL_CAP_FACTOR", "CpuDeadline"]

WALL_CAP_FACTOR = 3.0
"""Wall seconds allowed per CPU second of a deadline, at most (the outer cap)."""


@dataclass(frozen=True)
class CpuDeadline:
    """A point in CPU time of this process, and a wall-clock cap.

    Attributes:
        cpu_at: the `time.process_time` value at which the deadline passes.
        wall_at: the `time.perf_counter` value at which it passes whatever the CPU time.

    """

    cpu_at: float
    wall_at: float

    @classmethod
    def after(cls, budget_s: float, wall_cap_factor: float = WALL_CAP_FACTOR) -> CpuDeadline:
        """``budget_s`` CPU seconds from now, at most ``wall_cap_factor * budget_s`` wall."""
        return cls(time.process_time() + budget_s,
                   time.perf_counter() + wall_cap_factor * budget_s)

    def passed(self) -> bool:
        """The CPU budget is spent or the wall cap is reached."""
        return time.process_time() > self.cpu_at or time.perf_counter() > self.wall_at

    def wall_left_s(self) -> float:
        """Wall seconds until the cap (>= 0): a limit for solvers that only know wall time."""
        return max(0.0, self.wall_at - time.perf_counter())
