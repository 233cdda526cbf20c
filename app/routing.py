"""Query routing: RouteLLM-compatible scorers, threshold calibration, replica-group choice.

A *router* scores a prompt with ``calculate_strong_win_rate(prompt) -> [0, 1]`` (RouteLLM's
interface); a query goes to the strong model when its score is >= the threshold. The threshold
that sends a share ``s`` of queries to the strong model is RouteLLM's calibration

    threshold = quantile(scores, 1 - s)

over a sample of scores. The live policies keep it calibrated on the scores of recent traffic
(a sliding window, `ScoreWindow`), so the planned share holds on the user's own prompts:
`LiveThreshold` for the pair, `LiveCascade` (K - 1 thresholds) for a ladder of K models, both
`LivePolicy` (a score in, a model's index out). Within a model,
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
from itertools import pairwise
from typing import Any, Protocol

import numpy as np

from common.errors import BouteError

from .isolation import (
    ANONYMOUS,
    GuardState,
    Isolation,
    ScoreWindow,
    TenantWindow,
    clamp_move,
    tenant_corrected_share,
)

__all__ = [
    "BuiltinRouter",
    "Isolation",
    "LiveCascade",
    "LivePolicy",
    "LiveThreshold",
    "RandomRouter",
    "RouterError",
    "ScoreWindow",
    "SmoothWeightedRoundRobin",
    "StrongWinRateRouter",
    "calibrate_threshold",
    "corrected_share",
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


class LivePolicy(Protocol):
    """A live routing policy: which model of the ladder a scored query goes to.

    The router asks it once per routed query, in arrival order; the policy records the score
    (its calibration window) and answers the model's index, 0 = the smallest (a pair: 0 weak,
    1 strong). `LiveThreshold` (the pair) and `LiveCascade` (a ladder of K models) implement it.
    `guard` counts its recalibrations and the fast or clamped moves (`app.isolation`).
    """

    guard: GuardState

    def route(self, score: float, tenant: str | None = None, now: float | None = None) -> int:
        """Record `score` of `tenant`'s query and decide: the model's index.

        `tenant`: an API key id (None: anonymous); `now`: seconds on any monotonic clock
        (None: no per-second bound on threshold moves).
        """
        ...


def corrected_share(share: float, n: int, n_routed: int, every: int) -> float:
    """The share to calibrate on so that the cumulative share converges to `share`.

    ``s_eff = clip(s + (s n - n_routed) / every, 0, 1)``: the deficit of the `n` queries
    routed so far (`n_routed` of them to the model or above) is made up over the next
    `every` queries.
    """
    return min(1.0, max(0.0, share + (share * n - n_routed) / every))


class LiveThreshold:
    """The pair's policy: a threshold recalibrated on a window of recent scores.

    Every `every` queries (once `min_samples` scores are in the window) the threshold becomes
    the window's ``1 - s_eff`` quantile (`corrected_share`: n queries routed so far, n_strong
    to the strong model), so the cumulative share converges to s on the live traffic, not
    only in expectation. Before that, the `initial` threshold is used (from the plan or a
    score sample); when it is unknown (NaN), queries go to the strong model with probability
    s (seeded). A share change (`set_share`) recalibrates at once when the window allows and
    keeps the every-`every` count running.

    Tenants (API key ids; None: anonymous): while the window holds one tenant's scores the
    decisions are exactly the above; with two or more, `app.isolation`'s rules apply (slot
    quota, per-tenant deficit cap, move bound), and one tenant moves the others' strong share
    by at most `Isolation.bound` per recalibration (the guarantee is stated there).

    Not `LiveCascade` with K = 2 (that routes an unknown threshold by deficit, and restarts
    its count on a change): the pair's decisions stay what they were
    (tests/app/test_routing.py records them and where the two part).
    """

    def __init__(self, strong_share: float, initial: float = math.nan, *, window: int = 2000,
                 min_samples: int = 200, every: int = 50, seed: int = 0,
                 isolation: Isolation | None = None) -> None:
        self.strong_share = strong_share
        self.threshold = initial
        self.isolation = isolation or Isolation()
        self.window = TenantWindow(window, min_samples, every, self.isolation.quota(window))
        self.n = self.n_strong = 0
        self.tenants: dict[str, list[int]] = {}     # tenant -> [queries, to strong]
        self.guard = GuardState()
        self._base = math.nan                       # the move bound's reference
        self._rng = random.Random(seed)

    def set_isolation(self, isolation: Isolation) -> None:
        """Take new isolation settings live (the window keeps its scores)."""
        self.isolation = isolation
        self.window.quota = isolation.quota(self.window.size)

    def route_strong(self, score: float, tenant: str | None = None,
                     now: float | None = None) -> bool:
        """Record `score` of `tenant` (None: anonymous) and decide: True sends it strong.

        With one tenant in the window, exactly the decisions of the policy without isolation;
        with two or more, the rules of `app.isolation` (quota, deficit cap, move bound).
        """
        w = self.window
        w.add(score, tenant)
        if w.due(math.isnan(self.threshold)):
            if w.multi:
                s_eff = tenant_corrected_share(self.strong_share, self.tenants, w.every,
                                               self.isolation.deficit_cap)
            else:
                s_eff = corrected_share(self.strong_share, self.n, self.n_strong, w.every)
            self.threshold, self._base = clamp_move(w.scores, self.strong_share, s_eff,
                                                    self._base, self.isolation, self.guard,
                                                    now, w.multi)
            w.restart()
        if math.isnan(self.threshold):
            strong = self._rng.random() < self.strong_share
        else:
            strong = score >= self.threshold
        self.n += 1
        self.n_strong += strong
        counts = self.tenants.setdefault(ANONYMOUS if tenant is None else tenant, [0, 0])
        counts[0] += 1
        counts[1] += strong
        return strong

    def route(self, score: float, tenant: str | None = None, now: float | None = None) -> int:
        """`LivePolicy`: 1 (strong) or 0 (weak)."""
        return int(self.route_strong(score, tenant, now))

    def set_share(self, strong_share: float, threshold: float = math.nan) -> None:
        """Change the target share live (recalibrates at once when the window allows)."""
        self.strong_share = strong_share
        self.threshold = threshold
        self.n = self.n_strong = 0
        self.tenants = {}
        self._base = math.nan
        if self.window.ready:
            self.threshold = calibrate_threshold(self.window.scores, strong_share)


class LiveCascade:
    """A ladder's policy: K - 1 thresholds on one score, each live like `LiveThreshold`'s.

    Routing is given as tail shares ``S_k`` (k = 2..K, decreasing: the share sent to model k or
    a larger one); a query with score >= ``t_k`` goes to model k or above, so it goes to the
    largest k whose threshold it reaches (model 1 when none). Every threshold is recalibrated
    as `LiveThreshold`'s, ``t_k = quantile(window, 1 - S_k_eff)`` with the same deficit
    correction per tail, ``S_k_eff = S_k + (S_k n - n_k) / every`` (n_k: queries routed to
    model k or above), the corrected tails kept decreasing. Until the window holds
    `min_samples` scores, unknown thresholds (NaN) route by deficit: the query goes to the
    model furthest below its target count, so the shares hold from the first query (a
    workload with little traffic never waits for a full window to be routed as planned).
    The defaults recalibrate more often than `LiveThreshold`'s (from 100 scores, every 5
    queries): several workloads split the traffic, each with its own window. Simulated on
    uniform scores with tails (0.6, 0.2), 50 seeds: the worst share error is 0 at 90 queries
    (by deficit), 1.3 points at 150, 0.3 at 600.
    """

    def __init__(self, tails: Sequence[float], initial: Sequence[float] | None = None, *,
                 window: int = 2000, min_samples: int = 100, every: int = 5,
                 isolation: Isolation | None = None) -> None:
        self.isolation = isolation or Isolation()
        self.window = TenantWindow(window, min_samples, every, self.isolation.quota(window))
        self.tails: tuple[float, ...] = ()
        self.thresholds: list[float] = []
        self.counts: list[int] = []
        self.tenants: dict[str, list[int]] = {}     # tenant -> [queries, counts...]
        self.guard = GuardState()
        self.n = 0
        self.set_tails(tails, initial)

    def set_isolation(self, isolation: Isolation) -> None:
        """Take new isolation settings live (the window keeps its scores)."""
        self.isolation = isolation
        self.window.quota = isolation.quota(self.window.size)

    def set_tails(self, tails: Sequence[float], thresholds: Sequence[float] | None = None
                  ) -> None:
        """Change the target tails live (recalibrates at once when the window allows).

        Raises:
            RouterError: tails outside [0, 1] or increasing.

        """
        t = tuple(float(v) for v in tails)
        if any(not 0.0 <= v <= 1.0 for v in t) or any(b > a + 1e-12 for a, b in pairwise(t)):
            raise RouterError(f"tail shares {list(t)} must lie in [0, 1] and decrease")
        self.tails = t
        self.thresholds = [math.nan if thresholds is None else float(thresholds[k])
                           for k in range(len(t))]
        self.n = 0
        self.counts = [0] * len(t)
        self.tenants = {}
        self._bases = [math.nan] * len(t)
        self.window.restart()
        if self.window.ready:
            self.thresholds = [calibrate_threshold(self.window.scores, v) for v in t]

    def route(self, score: float, tenant: str | None = None, now: float | None = None) -> int:
        """Record `score` of `tenant` (None: anonymous) and decide: the model's index.

        One tenant in the window: exactly the decisions without isolation; two or more:
        `app.isolation`'s rules per threshold (quota, deficit cap per tail, move bound).
        """
        w = self.window
        w.add(score, tenant)
        if w.due(any(math.isnan(t) for t in self.thresholds)):
            eff, prev = [], 1.0
            for k, s in enumerate(self.tails):
                if w.multi:
                    tail = {u: [c[0], c[k + 1]] for u, c in self.tenants.items()}
                    v = min(prev, tenant_corrected_share(s, tail, w.every,
                                                         self.isolation.deficit_cap))
                else:
                    v = min(prev, corrected_share(s, self.n, self.counts[k], w.every))
                eff.append(v)
                prev = v
            scores, last = w.scores, self.guard.last_s
            new = []
            for k, (s, v) in enumerate(zip(self.tails, eff, strict=True)):
                self.guard.last_s = last            # each threshold against the same clock
                t, self._bases[k] = clamp_move(scores, s, v, self._bases[k], self.isolation,
                                               self.guard, now, w.multi)
                new.append(t)
            if w.multi:                             # clamped one by one: keep them ordered
                new = [float(v) for v in np.maximum.accumulate(new)] if new else []
            self.thresholds = new
            w.restart()
        if any(math.isnan(t) for t in self.thresholds):
            ext = (1.0, *self.tails, 0.0)
            routed = [self.n - (self.counts[0] if self.counts else 0)] + [
                self.counts[k] - (self.counts[k + 1] if k + 1 < len(self.counts) else 0)
                for k in range(len(self.counts))]
            model = max(range(len(ext) - 1),
                        key=lambda k: (ext[k] - ext[k + 1]) * (self.n + 1) - routed[k])
        else:
            model = sum(1 for t in self.thresholds if score >= t)
        self.n += 1
        for k in range(model):
            self.counts[k] += 1
        mine = self.tenants.setdefault(ANONYMOUS if tenant is None else tenant,
                                       [0] * (len(self.tails) + 1))
        mine[0] += 1
        for k in range(model):
            mine[k + 1] += 1
        return model


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
