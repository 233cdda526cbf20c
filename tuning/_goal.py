"""What a search optimizes: `Goal` (a mode, quality and latency targets) and its JSON form.

Its own module, below `tuning._plan` (a plan keeps the goal it was made for) and
`tuning._run` (the searchers), so that both can import it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from common.errors import BouteError

from ._slo import WindowSLO

__all__ = ["MODES", "Goal", "Mode", "SearchError"]

Mode = Literal["pareto", "min-cost", "max-throughput"]
MODES = ("pareto", "min-cost", "max-throughput")


class SearchError(BouteError, ValueError):
    """A search request cannot be satisfied as asked."""


@dataclass(frozen=True)
class Goal:
    """What to optimize: a mode with optional quality and P95 targets.

    ``qualities``: with several workloads, the minimum quality of each (`Problem.workloads`
    order); ``quality`` then bounds the summary quality (the lowest normalized one).
    ``slo``: the P95 target holds in at least a share of time windows (`tuning._slo`) rather
    than over all requests; the search plans on the overall P95 and the headroom check
    judges (and derates) every group by its window attainment on fresh traffic.
    ``ttft_p95_s`` / ``tpot_p95_s``: targets on the P95 time to first token and time per
    output token, as users write them (alone or with ``p95_s``). Each caps every config's
    per-replica rate at the highest one whose DB TTFT (TPOT) P95 stays at or below the target
    (`tuning.Problem.with_token_targets`): every group the planner uses meets them at its
    load. Goodput, the share of requests meeting every target, is reported from the headroom
    check's fresh traces (`tuning._headroom`).

    Raises:
        SearchError: a token target that is not a positive finite number of seconds.

    """

    mode: Mode = "pareto"
    quality: float | None = None
    p95_s: float | None = None
    qualities: tuple[float, ...] | None = None
    slo: WindowSLO | None = None
    ttft_p95_s: float | None = None
    tpot_p95_s: float | None = None

    def __post_init__(self) -> None:
        for name in ("ttft_p95_s", "tpot_p95_s"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int | float)
                                  or not (math.isfinite(v) and v > 0)):
                raise SearchError(f"goal {name}={v!r} must be a positive finite number of "
                                  "seconds, or None (no target)")

    @property
    def has_token_targets(self) -> bool:
        """A TTFT or TPOT target is set."""
        return self.ttft_p95_s is not None or self.tpot_p95_s is not None

    def to_dict(self, workloads: tuple[str, ...]) -> dict[str, Any]:
        """The JSON form a plan file keeps (``search.goal``, `Plan.goal`): `from_dict` reads it.

        ``qualities`` is written by workload name (`workloads`, `Problem.workloads` order),
        ``slo`` as ``{attainment, window_s}``; absent fields (``qualities``, ``slo``,
        ``ttft_p95_s``, ``tpot_p95_s``) are left out.
        """
        out: dict[str, Any] = {"mode": self.mode, "quality": self.quality, "p95_s": self.p95_s}
        if self.qualities is not None:
            out["qualities"] = dict(zip(workloads, self.qualities, strict=True))
        if self.slo is not None:
            out["slo"] = {"attainment": self.slo.attainment, "window_s": self.slo.window_s}
        for name in ("ttft_p95_s", "tpot_p95_s"):
            if getattr(self, name) is not None:
                out[name] = getattr(self, name)
        return out

    @classmethod
    def from_dict(cls, data: Any, workloads: tuple[str, ...],
                  where: str = "goal") -> Goal:
        """`to_dict`'s inverse; `workloads` orders ``qualities``.

        Raises:
            SearchError: not an object, a field of the wrong type, an unknown mode, or
                ``qualities`` that do not name exactly `workloads` (named by `where`, with
                the fix).

        """
        if not isinstance(data, Mapping):
            raise SearchError(f"{where}={data!r} must be an object {{mode, quality, p95_s}}")
        mode = data.get("mode", "pareto")
        if mode not in MODES:
            raise SearchError(f"{where}.mode={mode!r} is unknown; use one of {', '.join(MODES)}")

        def number(v: Any, at: str, null: str = "") -> float:
            if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
                raise SearchError(f"{where}.{at}={v!r} must be a number{null}")
            return float(v)

        qualities = None
        per = data.get("qualities")
        if per is not None:
            if not isinstance(per, Mapping) or sorted(per) != sorted(workloads):
                raise SearchError(f"{where}.qualities={per!r} must map each workload "
                                  f"{list(workloads)} to its quality floor")
            qualities = tuple(number(per[w], f"qualities.{w}") for w in workloads)
        slo = None
        raw = data.get("slo")
        if raw is not None:
            if not isinstance(raw, Mapping) or "attainment" not in raw:
                raise SearchError(f"{where}.slo={raw!r} must be {{attainment, window_s}}")
            share = number(raw["attainment"], "slo.attainment")
            window_s = number(raw.get("window_s", 300.0), "slo.window_s")
            try:
                slo = WindowSLO(share, window_s)
            except ValueError as exc:
                raise SearchError(f"{where}.slo: {exc}") from None
        tokens: list[float | None] = []
        for name in ("ttft_p95_s", "tpot_p95_s"):
            v = data.get(name)
            if v is not None and not number(v, name, " or null") > 0:
                raise SearchError(f"{where}.{name}={v!r} must be > 0 seconds, or null")
            tokens.append(None if v is None else float(v))
        quality, p95_s = data.get("quality"), data.get("p95_s")
        return cls(mode, None if quality is None else number(quality, "quality", " or null"),
                   None if p95_s is None else number(p95_s, "p95_s", " or null"), qualities, slo,
                   tokens[0], tokens[1])
