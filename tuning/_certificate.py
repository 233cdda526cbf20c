"""A certificate: how far from optimal an answer can be (the data; `tuning._certify` makes it).

Apart from `tuning._certify` so that `tuning._run.SearchResult` can carry one without importing
the certifier, which builds on `tuning._run`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    from ._evaluator import PlanArrays

__all__ = ["EXACT_GAP", "Certificate", "FrontBound", "SolvedLevel"]

FloatArray = npt.NDArray[np.float64]

EXACT_GAP = 2e-3
"""Relative gap up to which an answer counts as exact (the pair DP's `refine_tol`)."""


@dataclass(frozen=True)
class Certificate:
    """How far from optimal an answer can be (the gaps: `tuning._certify`).

    Attributes:
        objective: ``pareto`` (hypervolume, higher is better) or ``min-cost`` ($/h).
        found: the answer's hypervolume or $/h.
        bound: the bound (hypervolume from above, $/h from below).
        gap: relative gap, >= 0 (0 when the bound meets the answer).
        exact_program: the level program is the plan space itself (one workload), not a
            relaxation.
        levels: level programs solved.
        seconds: wall seconds of the certificate (its deadline counts CPU seconds).
        complete: False when the deadline stopped the refinement (the bound is still valid).

    """

    objective: str
    found: float
    bound: float
    gap: float
    exact_program: bool
    levels: int
    seconds: float
    complete: bool

    @property
    def exact(self) -> bool:
        """The answer is optimal up to `EXACT_GAP`."""
        return self.gap <= EXACT_GAP

    def line(self) -> str:
        """One line for `boute plan`."""
        if not np.isfinite(self.bound):
            return "certified: no plan of the space meets the goal (the bound is infeasible)"
        what = "hypervolume" if self.objective == "pareto" else "$/h"
        how = ("" if self.exact_program else
               "; several workloads: the bound lets each group serve any mix")
        head = ("certified: exact" if self.exact else
                f"certified: within {100 * self.gap:.2f}% of optimal")
        return (f"{head} ({what} {self.found:.4f}, bound {self.bound:.4f}; {self.levels} "
                f"level program(s) in {self.seconds:.2f} s{how})")

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (``search.certificate``)."""
        return {"exact": self.exact, "objective": self.objective, "found": self.found,
                "bound": self.bound, "gap": self.gap, "exact_program": self.exact_program,
                "levels": self.levels, "seconds": self.seconds, "complete": self.complete}


class SolvedLevel(NamedTuple):
    """One level program of a front: its level, dual bound, plan (or None) and exactness."""

    level_s: float
    bound: float
    plan: PlanArrays | None
    exact: bool


@dataclass(frozen=True)
class FrontBound:
    """The staircase bound of a front and the level programs' plans.

    Attributes:
        levels_s, bounds: solved levels (increasing) and the quality bound B at each.
        hv_bound: hypervolume of the staircase (an upper bound of the true front's).
        plans: the incumbents (as plans), or None.
        exact_program, complete, seconds: as `Certificate`.
        solved: each level program (`SolvedLevel`), for a re-plan (`front_bound`'s `warm`).
        reused: levels taken from `warm` without solving them again.

    """

    levels_s: FloatArray
    bounds: FloatArray
    hv_bound: float
    plans: PlanArrays | None
    exact_program: bool
    complete: bool
    seconds: float
    solved: tuple[SolvedLevel, ...] = ()
    reused: int = 0
