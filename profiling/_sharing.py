"""What a trace's requests share: system prompts and conversation history (prefix caching).

A trace may carry, per request, which leading tokens of its prompt other requests also have:

* ``prefix_id`` (int, -1: none) and ``prefix_tokens``: the request starts with the system
  prompt of application ``prefix_id``, ``prefix_tokens`` long (0 when ``prefix_id = -1``;
  at most the request's ``input_tokens``). Every request of one application starts with the
  same ``prefix_tokens``.
* ``session_id`` (int, -1: none) and ``turn`` (0 for the first): the request is turn ``t`` of
  a conversation, whose prompt begins with the whole context of the conversation's turn
  ``t - 1`` (its prompt and its answer). Token ``k`` of a conversation is therefore the same
  in every turn that reaches it.

The prefix cache (`profiling._prefix_cache`) keys KV blocks by these ids; `reuse_potential`
gives the share of prompt tokens a perfect cache (unbounded, token granular) would skip.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from common.errors import TraceError

__all__ = ["SHARING_COLUMNS", "Sharing", "reuse_potential"]

IntArray = npt.NDArray[np.int64]
SHARING_COLUMNS = ("prefix_id", "prefix_tokens", "session_id", "turn")
"""The optional trace columns, in file order."""


@dataclass(frozen=True)
class Sharing:
    """The sharing columns of a trace: ``(N,)`` int64 arrays (module docstring).

    Raises:
        TraceError: columns of unequal length, an id below -1, negative ``prefix_tokens``
            or ``turn``, or ``prefix_tokens > 0`` without a ``prefix_id``.

    """

    prefix_id: IntArray
    prefix_tokens: IntArray
    session_id: IntArray
    turn: IntArray

    def __post_init__(self) -> None:
        n = len(self.prefix_id)
        for col in SHARING_COLUMNS:
            arr = np.asarray(getattr(self, col), dtype=np.int64)
            if arr.shape != (n,):
                raise TraceError(f"sharing column {col} has shape {arr.shape}, expected ({n},)")
            arr.setflags(write=False)
            object.__setattr__(self, col, arr)
        for col, low in (("prefix_id", -1), ("session_id", -1), ("prefix_tokens", 0),
                         ("turn", 0)):
            bad = np.flatnonzero(getattr(self, col) < low)
            if bad.size:
                raise TraceError(f"{col}={int(getattr(self, col)[bad[0]])} at row "
                                 f"{int(bad[0])} must be >= {low}")
        bad = np.flatnonzero((self.prefix_id < 0) & (self.prefix_tokens > 0))
        if bad.size:
            raise TraceError(f"prefix_tokens={int(self.prefix_tokens[bad[0]])} at row "
                             f"{int(bad[0])} needs a prefix_id (-1 there: no shared system "
                             "prompt); set prefix_tokens to 0 or give the application's id")

    def __len__(self) -> int:
        return len(self.prefix_id)

    @classmethod
    def none(cls, n: int) -> Sharing:
        """`n` requests that share nothing."""
        minus = np.full(n, -1, dtype=np.int64)
        zero = np.zeros(n, dtype=np.int64)
        return cls(minus, zero, minus.copy(), zero.copy())

    def take(self, idx: IntArray) -> Sharing:
        """The rows `idx`, in that order."""
        return Sharing(self.prefix_id[idx], self.prefix_tokens[idx], self.session_id[idx],
                       self.turn[idx])

    def tiled(self, reps: int, n: int) -> Sharing:
        """The columns repeated `reps` times, cut to `n` rows, each copy its own sessions.

        Session ids of copy k are shifted by ``k (max id + 1)``, so a repeated conversation
        does not find the previous copy's history; applications are shared across copies.
        """
        shift = int(self.session_id.max()) + 1 if len(self) else 0
        sess = np.concatenate([np.where(self.session_id >= 0, self.session_id + k * shift, -1)
                               for k in range(reps)])
        return Sharing(np.tile(self.prefix_id, reps)[:n], np.tile(self.prefix_tokens, reps)[:n],
                       sess[:n], np.tile(self.turn, reps)[:n])

    def without_sessions(self) -> Sharing:
        """The same system prompts, no conversation reuse (every turn on a fresh replica)."""
        n = len(self)
        return Sharing(self.prefix_id, self.prefix_tokens, np.full(n, -1, dtype=np.int64),
                       np.zeros(n, dtype=np.int64))

    @property
    def shares(self) -> bool:
        """Whether any two requests can share a prefix (an application or a session)."""
        return bool(np.any(self.prefix_tokens > 0) or np.any(self.session_id >= 0))


def reuse_potential(input_tokens: IntArray, output_tokens: IntArray, sharing: Sharing
                    ) -> dict[str, float]:
    """The share of prompt tokens a perfect prefix cache would skip.

    A perfect cache is unbounded and token granular. Request i (in trace order) reuses

        r_i = min(L_i, max(P_i [its application seen before], C_i [its session seen before]))

    with L_i its prompt tokens, P_i its system prompt (``prefix_tokens``) and C_i the context
    (prompt + output tokens) of the latest earlier request of its session. The potential is
    ``sum r_i / sum L_i``.

    Returns:
        ``potential`` (that share), ``system_share`` (the part a cache of system prompts
        alone would skip: ``sum min(L_i, P_i [seen]) / sum L_i``), ``apps`` and ``sessions``
        (distinct ids), ``shared_requests`` (share of requests with r_i > 0).

    """
    seen_apps: set[int] = set()
    last_ctx: dict[int, int] = {}
    total = reused = system = hits = 0
    for length, out, app, p, sess in zip(input_tokens.tolist(), output_tokens.tolist(),
                                         sharing.prefix_id.tolist(),
                                         sharing.prefix_tokens.tolist(),
                                         sharing.session_id.tolist(), strict=True):
        from_app = p if app >= 0 and app in seen_apps else 0
        from_sess = last_ctx.get(sess, 0) if sess >= 0 else 0
        r = min(length, max(from_app, from_sess))
        total += length
        reused += r
        system += min(length, from_app)
        hits += r > 0
        if app >= 0:
            seen_apps.add(app)
        if sess >= 0:
            last_ctx[sess] = length + out
    n = max(len(input_tokens), 1)
    return {"potential": reused / total if total else 0.0,
            "system_share": system / total if total else 0.0,
            "apps": float(len(seen_apps)), "sessions": float(len(last_ctx)),
            "shared_requests": hits / n}
