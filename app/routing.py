"""Query routing: RouteLLM-compatible scorers, threshold calibration, replica-group choice.

A *router* scores a prompt with ``calculate_strong_win_rate(prompt) -> [0, 1]`` (RouteLLM's
interface); a query goes to the strong model when its score is >= the threshold. The threshold
that sends a share ``s`` of queries to the strong model is RouteLLM's calibration

    threshold = quantile(scores, 1 - s)

over a sample of scores. `LiveThreshold` keeps it calibrated on the scores of recent traffic
(a sliding window), so the planned share holds on the user's own prompts. Within a model,
`SmoothWeightedRoundRobin` spreads queries over its replica groups exactly in the plan's
shares (nginx's smooth weighted round robin: deterministic, no bursts to one group).

Routers:

* ``builtin``: an offline difficulty score (no weights, no network): a logistic function of
  the prompt's length, its math/code content and reasoning cues. A heuristic, declared as
  such; its calibration makes the share exact whatever its accuracy.
* ``random``: RouteLLM's random router (a uniform score per query).
* any other name: RouteLLM's router of that name (``mf``, ``bert``, ``causal_llm``,
  ``sw_ranking``), from the optional ``routellm`` package; those need their weights from the
  Hugging Face hub (and ``mf``/``sw_ranking`` OpenAI embeddings).
"""

from __future__ import annotations

import math
import random
import re
import zlib
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np

from common.errors import BouteError

__all__ = [
    "BuiltinRouter",
    "LiveThreshold",
    "RandomRouter",
    "RouterError",
    "SmoothWeightedRoundRobin",
    "StrongWinRateRouter",
    "calibrate_threshold",
    "make_router",
]


class RouterError(BouteError, ValueError):
    """A router cannot be built as asked."""


class StrongWinRateRouter(Protocol):
    """RouteLLM's router interface."""

    def calculate_strong_win_rate(self, prompt: str) -> float:
        """Probability-like score in [0, 1] that the strong model's answer is better."""
        ...


_MATH = re.compile(r"[0-9]+|[+\-*/=^%]|\\frac|\bsqrt\b")
# (Word alternatives share one \b test; cues are matched on the lower-cased prompt.)
_CODE = re.compile(r"```|[{};]|\b(?:def|class|return|SELECT|import)\b")
_REASON = re.compile(r"\b(?:why|explain|prove|derive|step|reason|analy[sz]e|compare|design|"
                     r"optimi[sz]e|calculate|how many|how much)\b")


class BuiltinRouter:
    """Offline heuristic difficulty score (see the module docstring).

    ``score = sigmoid(0.8 * log1p(words / 20) + 0.08 * min(math, 30) + 0.1 * min(code, 20)
    + 0.5 * min(cues, 4) - 1.5 + 0.3 * jitter)``, jitter in [-1, 1) from a hash of the prompt
    (deterministic, breaks ties between similar prompts so a threshold can split them).
    """

    name = "builtin"

    def calculate_strong_win_rate(self, prompt: str) -> float:
        """Score of one prompt."""
        words = len(prompt.split())
        x = (0.8 * math.log1p(words / 20) + 0.08 * min(len(_MATH.findall(prompt)), 30)
             + 0.1 * min(len(_CODE.findall(prompt)), 20)
             + 0.5 * min(len(_REASON.findall(prompt.lower())), 4) - 1.5
             + 0.3 * (zlib.crc32(prompt.encode()) / 2**31 - 1.0))
        return 1.0 / (1.0 + math.exp(-x))


class RandomRouter:
    """RouteLLM's random router: a uniform score per query (seeded)."""

    name = "random"

    def __init__(self, seed: int = 0) -> None:
        self._rng = random.Random(seed)

    def calculate_strong_win_rate(self, prompt: str) -> float:
        """A uniform draw, whatever the prompt."""
        return self._rng.uniform(0.0, 1.0)


def make_router(name: str, seed: int = 0) -> StrongWinRateRouter:
    """The router called `name` (see the module docstring).

    Raises:
        RouterError: unknown name, ``routellm`` missing, or its router failing to load.

    """
    if name == "builtin":
        return BuiltinRouter()
    if name == "random":
        return RandomRouter(seed)
    try:
        from routellm.routers.routers import ROUTER_CLS
    except ImportError as exc:
        raise RouterError(f"router={name!r} needs RouteLLM: pip install 'boute[routellm]' "
                          f"(or use router=builtin or random) ({exc})") from None
    if name not in ROUTER_CLS:
        raise RouterError(f"router={name!r} is unknown; use builtin, random or one of "
                          f"RouteLLM's: {', '.join(sorted(ROUTER_CLS))}")
    try:
        router: Any = ROUTER_CLS[name]()
    except Exception as exc:      # hub weights or embeddings unavailable
        raise RouterError(f"RouteLLM router {name!r} failed to load ({exc}); it needs its "
                          "weights from the Hugging Face hub; use router=builtin offline"
                          ) from None
    return router  # type: ignore[no-any-return]


def calibrate_threshold(scores: Sequence[float] | np.ndarray[Any, Any],
                        strong_share: float) -> float:
    """RouteLLM's calibration: the threshold sending `strong_share` of `scores` to strong.

    ``strong_share = 0`` gives +inf (nothing reaches it), 1 gives -inf (everything does).
    """
    if not 0.0 <= strong_share <= 1.0:
        raise RouterError(f"strong_share={strong_share} must be in [0, 1]")
    if strong_share <= 0.0:
        return math.inf
    if strong_share >= 1.0:
        return -math.inf
    if len(scores) == 0:
        raise RouterError("cannot calibrate a threshold on an empty score sample")
    return float(np.quantile(np.asarray(scores, dtype=np.float64), 1.0 - strong_share))


class LiveThreshold:
    """A threshold recalibrated on a sliding window of recent scores, holding the share.

    Every `every` queries (once `min_samples` scores are in the window) the threshold becomes
    the window's ``1 - s_eff`` quantile, where ``s_eff = s + (s * n - n_strong) / every``
    corrects the deficit of the queries routed so far (n in total, n_strong to the strong
    model): the cumulative share converges to s on the live traffic, not only in expectation.
    Before that, the `initial` threshold is used (from the plan or a score sample); when it is
    unknown (NaN), queries go to the strong model with probability s (seeded).
    """

    def __init__(self, strong_share: float, initial: float = math.nan, *, window: int = 2000,
                 min_samples: int = 200, every: int = 50, seed: int = 0) -> None:
        self.strong_share = strong_share
        self.threshold = initial
        self._ring = np.empty(window, dtype=np.float64)    # the last `window` scores
        self._filled = self._next = 0
        self.min_samples, self.every = min_samples, every
        self.n = self.n_strong = 0
        self._since = 0
        self._rng = random.Random(seed)

    def route_strong(self, score: float) -> bool:
        """Record `score` and decide: True sends the query to the strong model."""
        self._ring[self._next] = score
        self._next = (self._next + 1) % len(self._ring)
        self._filled = min(self._filled + 1, len(self._ring))
        self._since += 1
        if self._filled >= self.min_samples and (self._since >= self.every
                                                 or math.isnan(self.threshold)):
            s = self.strong_share
            s_eff = min(1.0, max(0.0, s + (s * self.n - self.n_strong) / self.every))
            self.threshold = calibrate_threshold(self.window, s_eff)
            self._since = 0
        if math.isnan(self.threshold):
            strong = self._rng.random() < self.strong_share
        else:
            strong = score >= self.threshold
        self.n += 1
        self.n_strong += strong
        return strong

    def set_share(self, strong_share: float, threshold: float = math.nan) -> None:
        """Change the target share live (recalibrates at once when the window allows)."""
        self.strong_share = strong_share
        self.threshold = threshold
        self.n = self.n_strong = 0
        if self._filled >= self.min_samples:
            self.threshold = calibrate_threshold(self.window, strong_share)

    @property
    def window(self) -> np.ndarray[Any, Any]:
        """The scores in the window (order irrelevant to a quantile; no copy)."""
        return self._ring[:self._filled]


class SmoothWeightedRoundRobin:
    """Pick among names in proportion to weights, evenly interleaved (nginx's algorithm).

    Each pick adds every weight to its current value, takes the largest, and subtracts the
    total from it; over any ``k * sum(w)`` picks each name is chosen exactly ``k * w`` times
    (for integer weights), and in between within one pick of its share.
    """

    def __init__(self, weights: dict[str, float]) -> None:
        total = sum(weights.values())
        if not weights or total <= 0 or any(w < 0 for w in weights.values()):
            raise RouterError(f"group shares {weights} must be >= 0 with a positive sum")
        self.weights = {k: w / total for k, w in weights.items()}
        self.current = dict.fromkeys(weights, 0.0)

    def pick(self, allowed: Sequence[str] | None = None) -> str:
        """The next name (among `allowed` when given: the others are skipped this round).

        Restricted to a subset, the subset's weights are renormalized: each pick adds them
        and subtracts their total, so the skipped names' share is spread over the allowed
        ones in proportion, and the full set's exact shares resume when all are allowed.
        """
        names = list(self.weights) if allowed is None else [
            k for k in allowed if k in self.weights]
        if not names:
            raise RouterError(f"no group to pick among {allowed!r}")
        total = sum(self.weights[k] for k in names)
        if total <= 0:                    # only zero-weight names are left: spread evenly
            weights = {k: 1.0 / len(names) for k in names}
        else:
            weights = {k: self.weights[k] / total for k in names}
        for k, w in weights.items():
            self.current[k] += w
        best = max(names, key=lambda k: self.current[k])
        self.current[best] -= 1.0
        return best
