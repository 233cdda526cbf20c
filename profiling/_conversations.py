"""Workloads that carry their sharing: applications with system prompts, multi-turn chats.

`generate_shared_trace` draws *conversations*: they start as a Poisson process at rate
``rate_rps / E[T]`` (so requests arrive at ``rate_rps`` in steady state), each belongs to an
application a (popularity Zipf: ``P(a = k) ~ (k + 1)^-zipf``, k = 0..apps-1) whose system
prompt has ``S_a`` tokens (log-normal, drawn once per application), and has T turns
(geometric, mean `PrefixSpec.turns`; T = 1 is a one-shot request). Turn t arrives an
exponential think time (mean `PrefixSpec.think_s`) after turn t - 1 and asks a new question
u_t with answer o_t, both drawn from the trace shape; its prompt is the whole history:

    L_t = S_a + sum_{k < t} (u_k + o_k) + u_t,    output o_t.

A conversation ends early once ``L_t + o_t`` would pass `PrefixSpec.max_context_tokens`.
Conversations start from ``-warmup`` (three mean conversation spans) so that the trace, cut
to arrivals >= 0, is in steady state; turns whose earlier turns fell before 0 keep their
history in the prompt (a replica that just started misses them: slightly pessimistic).

Affinity routing (what the perf DB measures): a group's router sends every turn of a
conversation to one replica, so a replica at rate r sees this process at rate r (its share of
the conversations, each whole; every application's system prompt). `SharedTraffic` with
``routing = "random"`` drops the conversation ids instead: a replica never holds a
conversation's previous turn (exact for a large group; a group of R replicas would find it
with probability 1/R), only system prompts are reused.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np

from common.errors import TraceError

from ._sharing import Sharing
from ._workload import TRACE_SHAPES, LengthDist, Trace

__all__ = ["PrefixSpec", "SharedTraffic", "generate_shared_trace"]

Routing = Literal["affinity", "random"]


@dataclass(frozen=True)
class PrefixSpec:
    """How requests share prefixes (module docstring).

    Attributes:
        apps: applications, each with its own system prompt (>= 1).
        system_tokens: mean system prompt length, tokens (0: no system prompts).
        system_tokens_median: median of the log-normal lengths (<= mean; default: the mean,
            every application the same length).
        zipf: popularity exponent of the applications (0: uniform).
        turns: mean turns per conversation (1: one-shot requests, no sessions).
        think_s: mean time between a conversation's turns, seconds.
        max_context_tokens: a conversation ends before a turn's prompt + answer passes this.

    Raises:
        TraceError: a value outside its range (named).

    """

    apps: int = 10
    system_tokens: float = 1000.0
    system_tokens_median: float | None = None
    zipf: float = 1.0
    turns: float = 1.0
    think_s: float = 30.0
    max_context_tokens: int = 8192

    def __post_init__(self) -> None:
        median = self.median_tokens
        checks = ((self.apps >= 1, f"apps={self.apps} must be >= 1"),
                  (self.system_tokens >= 0, f"system_tokens={self.system_tokens} must be >= 0"),
                  (0 < median <= self.system_tokens or self.system_tokens == 0,
                   f"system_tokens_median={median} must be in (0, system_tokens="
                   f"{self.system_tokens}]"),
                  (self.zipf >= 0, f"zipf={self.zipf} must be >= 0"),
                  (self.turns >= 1, f"turns={self.turns} must be >= 1"),
                  (self.think_s > 0, f"think_s={self.think_s} must be > 0"),
                  (self.max_context_tokens >= 2,
                   f"max_context_tokens={self.max_context_tokens} must be >= 2"))
        for ok, msg in checks:
            if not ok:
                raise TraceError(f"prefix spec: {msg}")

    @property
    def median_tokens(self) -> float:
        """The system prompts' median length (the mean when not given)."""
        return self.system_tokens if self.system_tokens_median is None else \
            self.system_tokens_median


def _segmented_cumsum(values: np.ndarray, first: np.ndarray) -> np.ndarray:
    """Inclusive cumulative sums restarting at each index where `first` is True."""
    cs = np.cumsum(values)
    starts = np.flatnonzero(first)
    base = np.repeat(cs[starts] - values[starts], np.diff(np.append(starts, len(values))))
    return np.asarray(cs - base)


def generate_shared_trace(shape: str, spec: PrefixSpec, *, rate_rps: float,
                          num_requests: int, seed: int = 0) -> Trace:
    """A trace of conversations with system prompts (module docstring), sharing columns set.

    Args:
        shape: the trace shape of each turn's question and answer lengths (`TRACE_SHAPES`).
        spec: applications and conversations.
        rate_rps: mean request rate in steady state, requests/s (> 0, finite).
        num_requests: requests to return (>= 1): the first ones at or after time 0.
        seed: random seed; the same arguments give the same trace.

    Raises:
        TraceError: an unknown shape or a non-positive rate or count.

    """
    if shape not in TRACE_SHAPES:
        raise TraceError(f"trace shape={shape!r} is unknown; choose one of {sorted(TRACE_SHAPES)}")
    if not (rate_rps > 0 and math.isfinite(rate_rps)):
        raise TraceError(f"rate_rps={rate_rps!r} must be a finite number > 0")
    if num_requests < 1:
        raise TraceError(f"num_requests={num_requests!r} must be >= 1")
    rng = np.random.default_rng(seed)
    # Applications: system prompt lengths and popularity.
    if spec.system_tokens > 0:
        dist = LengthDist(spec.system_tokens, spec.median_tokens, spec.max_context_tokens // 2)
        sys_len = dist.sample(rng, spec.apps)
    else:
        sys_len = np.zeros(spec.apps, dtype=np.int64)
    pop = (np.arange(spec.apps) + 1.0) ** -spec.zipf
    pop /= pop.sum()
    # Conversations over [-warmup, horizon].
    conv_rate = rate_rps / spec.turns
    warmup = 3.0 * (spec.turns - 1.0) * spec.think_s
    horizon = num_requests / rate_rps * 1.2 + 10.0 / rate_rps
    n_conv = max(1, int(rng.poisson(conv_rate * (warmup + horizon))) + 1)
    starts = -warmup + np.sort(rng.uniform(0.0, warmup + horizon, size=n_conv))
    turns = rng.geometric(1.0 / spec.turns, size=n_conv) if spec.turns > 1 else \
        np.ones(n_conv, dtype=np.int64)
    app = rng.choice(spec.apps, size=n_conv, p=pop)
    # Turns, flattened: conversation index, turn index, think gaps, lengths.
    conv = np.repeat(np.arange(n_conv), turns)
    first = np.r_[True, conv[1:] != conv[:-1]]
    turn = _segmented_cumsum(np.ones(len(conv), dtype=np.int64), first) - 1
    gaps = np.where(first, 0.0, rng.exponential(spec.think_s, size=len(conv)))
    arrival = starts[conv] + _segmented_cumsum(gaps, first)
    comps = TRACE_SHAPES[shape].components
    weights = np.array([c[0] for c in comps])
    which = rng.choice(len(comps), size=len(conv), p=weights / weights.sum())
    ask = np.empty(len(conv), dtype=np.int64)
    answer = np.empty(len(conv), dtype=np.int64)
    for i, (_, in_dist, out_dist) in enumerate(comps):
        mask = which == i
        ask[mask] = in_dist.sample(rng, int(mask.sum()))
        answer[mask] = out_dist.sample(rng, int(mask.sum()))
    system = sys_len[app[conv]]
    history = _segmented_cumsum(ask + answer, first) - (ask + answer)
    prompt = system + history + ask
    # A conversation ends at its first turn past the context limit.
    over = (prompt + answer > spec.max_context_tokens).astype(np.int64)
    keep = (_segmented_cumsum(over, first) == 0) & (arrival >= 0.0)
    kept_turns = np.bincount(conv[prompt + answer <= spec.max_context_tokens],
                             minlength=n_conv)
    idx = np.flatnonzero(keep)
    idx = idx[np.argsort(arrival[idx], kind="stable")][:num_requests]
    if len(idx) == 0:
        raise TraceError(f"prefix spec {spec}: no request fits max_context_tokens="
                         f"{spec.max_context_tokens}; raise it or shorten the system prompts")
    session = np.where(kept_turns[conv] > 1, conv, -1)[idx]
    app_id = np.where(system > 0, app[conv], -1)[idx]
    sharing = Sharing(app_id, system[idx], session, np.where(session >= 0, turn[idx], 0))
    t = arrival[idx]
    return Trace(t - t[0], prompt[idx], answer[idx], None, f"{shape}-shared", sharing)


@dataclass(frozen=True)
class SharedTraffic:
    """A conversation workload at any per-replica rate: drawn anew at each rate.

    Time-scaling one base trace would shrink think times with the rate; a replica at rate r
    instead sees conversations at rate r with their real think times (affinity routing,
    module docstring), so how many other conversations come between two turns of one (the
    cache's reuse distance) grows with r, as in production.

    Args:
        shape: the turns' length shape.
        spec: applications and conversations.
        num_requests: requests per run (at least; more at high rates to cover
            `min_span_s`, at most `max_requests`).
        seed: the draws' seed (`at_rate`'s `seed` is added).
        routing: ``affinity`` or ``random`` (module docstring).
        cache: model the prefix cache; False drops the sharing columns (every prompt
            prefilled whole, the same requests).
        min_span_s: each run covers at least this many seconds (when `max_requests` allows).
        max_requests: most requests per run.

    """

    shape: str
    spec: PrefixSpec
    num_requests: int = 1000
    seed: int = 0
    routing: Routing = "affinity"
    cache: bool = True
    min_span_s: float = 0.0
    max_requests: int = 20_000

    def _finish(self, trace: Trace) -> Trace:
        if not self.cache or trace.sharing is None:
            return trace.without_sharing()
        if self.routing == "random":
            return Trace(trace.arrival_s, trace.input_tokens, trace.output_tokens, None,
                         trace.name, trace.sharing.without_sessions())
        return trace

    def at_rate(self, rate_rps: float, seed: int = 0) -> Trace:
        """The workload drawn at `rate_rps`."""
        n = int(min(self.max_requests, max(self.num_requests, rate_rps * self.min_span_s)))
        return self._finish(generate_shared_trace(self.shape, self.spec, rate_rps=rate_rps,
                                                  num_requests=n, seed=self.seed + seed))

    def lengths(self) -> Trace:
        """`num_requests` requests at 1 req/s (the capacity runs' lengths and sharing)."""
        return self.at_rate(1.0)

    def describe(self) -> dict[str, Any]:
        """``poisson`` conversations, with the spec, routing and cache."""
        return {"model": "poisson", "conversations": asdict(self.spec), "shape": self.shape,
                "routing": self.routing, "cache": self.cache, "seed": self.seed,
                "min_span_s": self.min_span_s}
