"""A certificate: how far from optimal an answer can be (the data; `tuning._certify` makes it).

Apart from `tuning._certify` so that `tuning._run.SearchResult` can carry one without importing
the certifier, which builds on `tuning._run`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["EXACT_GAP", "Certificate"]

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
