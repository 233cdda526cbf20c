"""A replica's prefix cache (vLLM's automatic prefix caching), for the simulator's scheduler.

vLLM keeps the KV blocks of finished (and preempted) sequences, keyed by a hash of all the
tokens up to and including each block, in its free-block queue; a new request reuses the
longest run of full blocks at the start of its prompt that are cached, and allocating a block
evicts the least recently freed one (a freed sequence's tail blocks first). We model it:

Notation: B tokens per block (`BLOCK_TOKENS`, vLLM's default 16); request i has prompt L_i,
application a_i with system prompt P_i (``prefix_tokens``) and session s_i (`profiling._sharing`).

* **Keys.** A request's blocks fall in two *segments*: its application's system prompt
  (blocks ``[0, floor(P_i / B))``, key ``(app, a_i)``, shared by every request of a_i) and the
  rest (key ``(session, s_i)``: a conversation's token k is the same in every turn; a request
  without a session has a segment of its own, never reused but for its own recompute). Since
  a segment is evicted from its tail, its cached blocks are always a run from its start: one
  count per segment stands for the set of its blocks.
* **Hit** at admission: ``h_a = min(cached(app), floor(P_i / B), m)`` with
  ``m = floor((L_i - 1) / B)`` (vLLM recomputes at least a prompt's last token); then, only
  when the whole system prompt hit (a block's hash covers every token before it),
  ``h_s = min(cached(session), m - h_a)``. The request's prefill starts at ``B (h_a + h_s)``
  tokens: only the rest is computed (charged to the step time), while its KV use still
  counts its whole context (shared blocks are not deduplicated: a conservative simplification).
* **In use.** A segment held by running sequences is pinned: hittable (growing as they
  complete prompts, `computed`) but not evictable. When its last holder leaves (finished,
  preempted, cancelled) it goes back to the *pool*, most recently used, with every full block
  computed.
* **Capacity.** The pool lives in the KV blocks running sequences leave free:
  ``sum of pooled blocks <= floor((K - kv_used) / B)``; the scheduler calls `fit` after every
  change of kv_used, which evicts least-recently-used segments, tail blocks first.

Hit rate = cached prompt tokens / prompt tokens, over requests' first admissions.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Protocol

from ._sharing import Sharing

__all__ = ["BLOCK_TOKENS", "KvCache", "PrefixCache"]


class KvCache(Protocol):
    """What `BatchScheduler` asks of a replica's cache of KV it did not compute itself.

    `PrefixCache` (automatic prefix caching) is one; a disaggregated decode instance's KV
    received from its prefill pool (`profiling._disagg.RemoteKv`) is another.
    """

    def cached_tokens(self, rid: int, prompt_tokens: int) -> int:
        """Prompt tokens of request `rid` whose KV is present at its admission."""

    def admit(self, rid: int, prompt_tokens: int) -> int:
        """Request `rid` is admitted with that prompt; returns its cached tokens."""

    def computed(self, rid: int, context_tokens: int) -> None:
        """Request `rid` has computed its prompt."""

    def release(self, rid: int, context_tokens: int) -> None:
        """Request `rid` leaves the replica (finished, preempted or removed)."""

    def fit(self, free_tokens: int) -> None:
        """Keep what is cached within `free_tokens` of free KV."""

BLOCK_TOKENS = 16
"""KV block size, tokens (vLLM's default `block_size`)."""
_APP, _SESSION, _OWN = 0, 1, 2
Key = tuple[int, int]


class PrefixCache:
    """The prefix cache of one replica serving requests 0..N-1 of a trace (module docstring).

    Args:
        sharing: what the requests share (row = request id).
        block_tokens: B, tokens per KV block (>= 1).

    Raises:
        ValueError: ``block_tokens < 1``.

    """

    def __init__(self, sharing: Sharing, block_tokens: int = BLOCK_TOKENS) -> None:
        if block_tokens < 1:
            raise ValueError(f"{block_tokens=} must be >= 1")
        self.block_tokens = block_tokens
        app = sharing.prefix_id.tolist()
        sess = sharing.session_id.tolist()
        self._app_blocks = (sharing.prefix_tokens // block_tokens).tolist()
        self._app_key: list[Key] = [(_APP, a) for a in app]
        self._tail_key: list[Key] = [(_SESSION, s) if s >= 0 else (_OWN, i)
                                     for i, s in enumerate(sess)]
        self._pool: OrderedDict[Key, int] = OrderedDict()   # least recently used first
        self.pool_blocks = 0
        """Blocks cached and free (evictable)."""
        self._in_use: dict[Key, list[int]] = {}             # key -> [holders, blocks]
        self._holding: set[int] = set()
        self.prompt_tokens = 0
        """Prompt tokens of the requests admitted so far (first admissions)."""
        self.cached_tokens_total = 0
        """Their prompt tokens found in the cache."""
        self._admitted: set[int] = set()

    def add_request(self, prefix_id: int, prefix_tokens: int, session_id: int) -> int:
        """Append a request (a live engine's, whose trace is not known ahead); returns its id.

        Args:
            prefix_id: its application (-1: no shared system prompt).
            prefix_tokens: that system prompt's tokens (0 without one).
            session_id: its conversation (-1: none).

        Returns:
            The request's id (the next row: ``len`` of the requests so far).

        Raises:
            ValueError: ``prefix_tokens < 0``, or ``prefix_tokens > 0`` without a prefix id.

        """
        if prefix_tokens < 0 or (prefix_tokens > 0 and prefix_id < 0):
            raise ValueError(f"{prefix_tokens=} must be >= 0, and 0 when {prefix_id=} < 0")
        rid = len(self._app_blocks)
        self._app_blocks.append(prefix_tokens // self.block_tokens)
        self._app_key.append((_APP, prefix_id))
        self._tail_key.append((_SESSION, session_id) if session_id >= 0 else (_OWN, rid))
        return rid

    # ---- lookups -------------------------------------------------------------------------

    def _cached(self, key: Key) -> int:
        held = self._in_use.get(key)
        return held[1] if held is not None else self._pool.get(key, 0)

    def cached_tokens(self, rid: int, prompt_tokens: int) -> int:
        """Leading prompt tokens of request `rid` found in the cache now (a multiple of B)."""
        b = self.block_tokens
        most = (prompt_tokens - 1) // b
        pa = self._app_blocks[rid]
        ha = min(self._cached(self._app_key[rid]), pa, most) if pa else 0
        if ha < pa:
            return ha * b
        return (ha + min(self._cached(self._tail_key[rid]), most - ha)) * b

    # ---- a sequence's life ---------------------------------------------------------------

    def admit(self, rid: int, prompt_tokens: int) -> int:
        """Request `rid` is admitted: pin its segments; returns its cached tokens.

        The first admission of a request counts toward the hit rate (a recompute after a
        preemption does not).
        """
        hit = self.cached_tokens(rid, prompt_tokens)
        if rid not in self._admitted:
            self._admitted.add(rid)
            self.prompt_tokens += prompt_tokens
            self.cached_tokens_total += hit
        self._holding.add(rid)
        for key in self._keys(rid):
            held = self._in_use.get(key)
            if held is not None:
                held[0] += 1
            else:
                blocks = self._pool.pop(key, 0)
                self.pool_blocks -= blocks
                self._in_use[key] = [1, blocks]
        return hit

    def computed(self, rid: int, context_tokens: int) -> None:
        """Request `rid` holds `context_tokens` computed tokens: their full blocks are cached."""
        if rid not in self._holding:
            return
        full = context_tokens // self.block_tokens
        pa = self._app_blocks[rid]
        if pa:
            held = self._in_use[self._app_key[rid]]
            held[1] = max(held[1], min(pa, full))
        if full > pa:
            held = self._in_use[self._tail_key[rid]]
            held[1] = max(held[1], full - pa)

    def release(self, rid: int, context_tokens: int) -> None:
        """Request `rid` leaves the running set with `context_tokens` computed: unpin.

        A segment no running request holds goes to the pool, most recently used.
        """
        if rid not in self._holding:
            return
        self.computed(rid, context_tokens)
        self._holding.discard(rid)
        for key in self._keys(rid):
            held = self._in_use[key]
            held[0] -= 1
            if held[0] == 0:
                del self._in_use[key]
                if held[1] > 0:
                    self._pool[key] = held[1]
                    self.pool_blocks += held[1]

    def fit(self, free_tokens: int) -> None:
        """Evict until the pool fits in `free_tokens` (LRU segment first, its tail first)."""
        limit = max(free_tokens, 0) // self.block_tokens
        pool = self._pool
        while self.pool_blocks > limit:
            key, blocks = next(iter(pool.items()))
            excess = self.pool_blocks - limit
            if blocks <= excess:
                del pool[key]
                self.pool_blocks -= blocks
            else:
                pool[key] = blocks - excess         # keeps its place in the LRU order
                self.pool_blocks -= excess

    def _keys(self, rid: int) -> tuple[Key, ...]:
        if self._app_blocks[rid]:
            return (self._app_key[rid], self._tail_key[rid])
        return (self._tail_key[rid],)

    @property
    def hit_rate(self) -> float:
        """Cached prompt tokens / prompt tokens of the admitted requests (0 before any)."""
        return self.cached_tokens_total / self.prompt_tokens if self.prompt_tokens else 0.0
