"""What the router's `app.dispatch.Dispatcher` exchanges with the rest: its contracts and records.

* `EngineClient` (with `Pending`, `PendingStream`): how engines are reached (the ingress's
  Serve handles; a fake in tests);
* `Recorder`: where every outcome goes (`app.observability.Observer`: metrics and the request
  log; a fake in tests);
* `Call`: one request as the router handles it; `Reply` / `StreamReply`: its answer;
* `Tally`: what one router replica counted since it started (``/health``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Generator
from dataclasses import dataclass, field
from typing import Any, Protocol

__all__ = ["Call", "EngineClient", "Pending", "PendingStream", "Recorder", "Reply",
           "StreamReply", "Tally"]


class Pending(Protocol):
    """An engine call in flight (Serve's ``DeploymentResponse``): awaitable, cancellable."""

    def __await__(self) -> Generator[Any, None, Any]: ...

    def cancel(self) -> None:
        """Cancel the call (the engine frees its sequence)."""


class PendingStream(Protocol):
    """A streamed engine call (Serve's ``DeploymentResponseGenerator``): SSE text items."""

    def __anext__(self) -> Awaitable[str]: ...

    def cancel(self) -> None:
        """Cancel the call (the engine frees its sequence)."""


class EngineClient(Protocol):
    """How the dispatcher reaches a replica group's engine (`app.emulated_server`'s contract)."""

    def call(self, group: str, kind: str, body: dict[str, Any]) -> Pending:
        """Start ``openai(kind, body)`` on `group`: the response dict (or an error body)."""
        ...

    def stream(self, group: str, kind: str, body: dict[str, Any]) -> PendingStream:
        """Start ``openai(kind, body)`` streamed on `group`: server-sent-event text items."""
        ...

    def ping(self, group: str) -> Pending:
        """Start ``ping()`` on one replica of `group` (answers at once when it is alive)."""
        ...


class Recorder(Protocol):
    """Where outcomes go (`app.observability.Observer`: Serve metrics + the request log)."""

    def observe(self, *, arrival_s: float, model: str, group: str, score: float | None,
                status: int, ttft_s: float, latency_s: float, prompt_tokens: int,
                output_tokens: int, stream: bool, key_id: str | None = None,
                outcome: str = "ok", workload: str | None = None,
                length_class: str | None = None) -> None:
        """One request, answered, refused or abandoned."""

    def retry(self, group: str) -> None:
        """A call to `group` failed and is retried elsewhere."""

    def degraded(self, model: str) -> None:
        """A request for `model` goes to another model."""

    def group_state(self, group: str, state: str) -> None:
        """A group's state as the router sees it."""

    def routing_state(self, routed_share: float | None, target: float,
                      threshold: float) -> None:
        """The pair's strong share routed so far, its target and its live threshold."""

    def threshold_guard(self, workload: str | None, wanted: float, moved: float) -> None:
        """A threshold moved faster than its bound wanted (`app.isolation`).

        `wanted`: the move asked, share of the window; `moved`: the move made (less: clamped).
        """

    def prediction_error(self, group: str, quantity: str, value: float) -> None:
        """A group's live prediction error (`app.drift`; quantity p95 or tpot; NaN: none)."""


@dataclass
class Call:
    """One request as the router handles it: what its log row and headers say."""

    kind: str                       # "chat" or "completions"
    arrival_s: float                # wall clock (the log's arrival)
    t0: float                       # perf_counter at arrival (latencies)
    stream: bool = False
    key_id: str | None = None
    model: str = ""                 # "" until routed (a refusal before: rate_limited)
    group: str = ""
    score: float | None = None      # None: pinned
    workload: str | None = None
    workload_asked: str | None = None
    length_class: str | None = None
    degraded: str | None = None     # the model it was for, when served by another
    tries: int = 0
    prompt_tokens: int = 0
    units: int = 1                  # sequences asked for: prompts x n (app.sampling)
    unscored: bool = False          # routed without a score (a token-id prompt)
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Reply:
    """A whole answer: HTTP status, JSON body (an OpenAI response or error), headers."""

    status: int
    body: Any
    headers: dict[str, str]


@dataclass(frozen=True)
class StreamReply:
    """A stream under way: its server-sent events (the group is released at their end)."""

    events: AsyncIterator[str]
    headers: dict[str, str]


@dataclass
class Tally:
    """What one router replica counted since it started (``/health``)."""

    counts: Counter[str] = field(default_factory=Counter)       # scored requests per model
    workload_counts: Counter[tuple[str, str]] = field(default_factory=Counter)  # (w, model)
    outcomes: Counter[str] = field(default_factory=Counter)     # every request's outcome
    routed: int = 0             # requests that reached the routing decision
    pinned: int = 0             # of which named their model
    unscored: int = 0           # of which were routed by the plan's shares, unscored
    errors: int = 0             # engine failures answered 502 (and router bugs, 500)
