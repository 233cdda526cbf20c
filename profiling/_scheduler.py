"""One continuous-batching scheduling policy (vLLM-like), shared by the simulator and the emulator.

`BatchScheduler` decides what one engine step computes; the caller owns time (the simulator's
event clock, the emulated engine's asyncio loop) and the step's duration
(`StepPlan.step_time_s`). The policy, after vLLM's scheduler:

* chunked prefill (v1, `EngineConfig.enable_chunked_prefill`): every step schedules one token
  for each decoding sequence, then continues unfinished prompts (FCFS), then admits waiting
  requests first-come-first-served, chunking prompts into the leftover token budget
  ``B - n_decode``;
* prefill-first (v0): when the first waiting prompt is admissible the step computes whole
  prompts only (up to the token budget B; a first prompt longer than B is taken whole);
  otherwise it decodes every running sequence;
* admission (C1): fewer than ``max_num_seqs`` running sequences and
  ``kv_used + prompt <= 0.99 K`` (K = KV capacity in tokens; vLLM keeps a ~1% watermark free);
  a prompt chunk of a running sequence is continued only while ``kv_used + c <= K`` (C2);
* recompute preemption (C3): after a step, while ``kv_used > K`` and more than one sequence
  decodes, the newest decoding sequence is evicted: its prompt becomes prompt + generated
  tokens, its remaining output shrinks by the same amount, and it goes back to the head of
  the queue (its tokens already delivered stay delivered).

KV accounting: a sequence holds ``prompt + generated`` tokens once its prompt is done (the
computed prefix while prefilling). Decoding sequences are tracked in aggregate (count, total
context) and their token counts advance lazily with the decode-step counter, with a heap of
"decode step at which the sequence ends", so a step costs O(log n) work, not O(n); the
simulator's fast path uses `steps_to_next_finish` and `advance_decodes` to skip a stretch of
pure decode steps in closed form.

(One deliberate difference from the simulator's earlier copy of this loop: v0 calls a step
prompt-only only when the first waiting prompt passes the same 1% watermark as admission;
it used to test ``<= K``, and a prompt between 0.99 K and K then gave a step with no work,
which froze the decodes until the next arrival or looped forever in a closed loop.)

Prefix caching (`profiling._prefix_cache.PrefixCache`, optional): at admission a sequence's
prefill starts after its cached tokens h (``done = h``; its chunks, the step's prefill tokens
and attention work cover only ``[h, prompt)``), while its KV use counts the whole prompt;
the cache is told when a prompt completes, when a sequence leaves (finished, preempted,
removed) and, after every change of ``kv_used``, how many tokens are free for it. Without a
cache every step is the same as before it existed.

A sequence can ever be served iff ``prompt + max_tokens <= floor(0.99 K)`` (`fits_ever`):
then it is admissible on an empty cache, and so is its recompute after any preemption
(prompt + generated < prompt + max_tokens).
"""

from __future__ import annotations

from collections import deque
from heapq import heappop, heappush
from typing import NamedTuple

from common.errors import BouteError

from ._prefix_cache import KvCache
from ._replica import EngineConfig, ReplicaModel

__all__ = ["BatchScheduler", "PlanFields", "SequenceTooLongError", "StepOutcome", "StepPlan"]

# Admission keeps 1% of the KV cache free (vLLM's block-manager watermark, 0.01).
_ADMIT_FRACTION = 0.99


class SequenceTooLongError(BouteError, ValueError):
    """A request's prompt plus its output can never fit the replica's KV cache.

    Attributes:
        prompt_tokens: the request's prompt length, tokens.
        max_tokens: its requested output length, tokens.
        limit_tokens: the most ``prompt_tokens + max_tokens`` the replica can hold.

    """

    def __init__(self, prompt_tokens: int, max_tokens: int, limit_tokens: int,
                 kv_capacity_tokens: int) -> None:
        self.prompt_tokens = prompt_tokens
        self.max_tokens = max_tokens
        self.limit_tokens = limit_tokens
        fix = (f"reduce max_tokens to at most {limit_tokens - prompt_tokens}"
               if prompt_tokens < limit_tokens else "shorten the prompt")
        super().__init__(
            f"This replica's KV cache holds at most {limit_tokens} tokens per sequence "
            f"({kv_capacity_tokens} tokens, 1% kept free). However, you requested "
            f"{prompt_tokens + max_tokens} tokens ({prompt_tokens} in the prompt, {max_tokens} "
            f"in the completion). Please {fix}, or serve the model with more GPUs per replica "
            "(tp/pp) or a higher gpu_memory_utilization.")


class StepPlan(NamedTuple):
    """What one engine step computes (a NamedTuple: one is built per simulated step).

    The last six fields are `ReplicaModel.step_time_s`'s arguments, in its order.

    Attributes:
        chunks: ``(seq id, c)`` prompt chunks: c prompt tokens of that sequence this step.
        decode: the decoding sequences advance one token this step.
        prefill_tokens: sum of c.
        prefill_attn_work: sum of ``c (s + c / 2)``, s = the sequence's prompt tokens done.
        prefill_kv_tokens: sum of ``s + c``.
        decode_seqs: decoding sequences (0 when not `decode`).
        decode_ctx_tokens: their total context (prompt + generated) tokens.
        sampled_seqs: sequences that sample a token: decodes plus prompts completed.

    """

    chunks: list[tuple[int, int]]
    decode: bool
    prefill_tokens: int
    prefill_attn_work: float
    prefill_kv_tokens: int
    decode_seqs: int
    decode_ctx_tokens: int
    sampled_seqs: int

    @property
    def empty(self) -> bool:
        """Nothing to compute (no chunk, no decode): the engine must wait for new work."""
        return not self.chunks and self.decode_seqs == 0

    def step_time_s(self, replica: ReplicaModel) -> float:
        """The step's duration on `replica`, seconds (`ReplicaModel.step_time_s`)."""
        return replica.step_time_s(self.prefill_tokens, self.prefill_attn_work,
                                   self.prefill_kv_tokens, self.decode_seqs,
                                   self.decode_ctx_tokens, self.sampled_seqs)


PlanFields = tuple[list[tuple[int, int]], bool, int, float, int, int, int, int]
"""A `StepPlan`'s fields as a plain tuple."""
StepOutcome = tuple[list[int], list[int]]
"""Token events of a finished step besides one token per sequence that decoded:
``(prompt_done, finished)``, the sequences whose prompt (or recompute) completed, each of
which sampled a token, and those that produced their last token (their KV is freed)."""
# Build NamedTuples without their Python-level __new__ (2x faster; one per simulated step).
_new_plan = tuple.__new__
_NO_CHUNKS: list[tuple[int, int]] = []  # shared, never mutated


class _Seq:
    """Per-sequence state; `prompt` and `out` change on a recompute preemption."""

    __slots__ = ("done", "epoch", "generated", "join_gen", "join_step", "out", "prompt")

    def __init__(self, prompt: int, out: int) -> None:
        self.prompt = prompt       # prompt tokens to compute in this admission
        self.out = out             # output tokens still to generate in this admission
        self.done = 0              # prompt tokens computed
        self.generated = 0         # output tokens of this admission (lazy while decoding)
        self.epoch = 0             # invalidates heap entries of preempted sequences
        self.join_step = 0         # decode-step counter when it started decoding
        self.join_gen = 0          # `generated` then


class BatchScheduler:
    """Continuous batching over sequences identified by int ids (see the module docstring).

    One step is ``plan = schedule()``, the caller runs it for ``plan.step_time_s(replica)``,
    then ``finish_step(plan)``. Sequences enter with `add` and leave when finished or by
    `remove` (cancellation), which frees their KV at once.

    Args:
        engine: the scheduler settings (max_num_seqs, max_num_batched_tokens, chunked prefill).
        kv_capacity_tokens: K, tokens the KV cache holds (`MemoryPlan.kv_capacity_tokens`).
        prefix_cache: the replica's prefix cache, keyed by the sequence ids (None: none).

    Raises:
        ValueError: ``kv_capacity_tokens < 1``.

    """

    def __init__(self, engine: EngineConfig, kv_capacity_tokens: int,
                 prefix_cache: KvCache | None = None) -> None:
        if kv_capacity_tokens < 1:
            raise ValueError(f"{kv_capacity_tokens=} must be >= 1 token")
        self.engine = engine
        self.kv_capacity_tokens = kv_capacity_tokens
        self.prefix_cache = prefix_cache
        self.max_seq_tokens = int(kv_capacity_tokens * _ADMIT_FRACTION)
        """floor(0.99 K): the longest prompt + output a sequence can ever hold."""
        self._admit_limit = kv_capacity_tokens * _ADMIT_FRACTION
        self._token_budget = engine.max_num_batched_tokens
        self._max_seqs = engine.max_num_seqs
        self._chunked = engine.enable_chunked_prefill
        self.waiting: deque[int] = deque()
        """Queued sequences, FCFS (preempted ones go back to the head)."""
        self.prefilling: list[int] = []
        """Admitted sequences whose prompt is split over steps, FCFS."""
        self.running: dict[int, None] = {}
        """Every admitted sequence, in admission order (the newest is preempted first)."""
        self.kv_used_tokens = 0
        self.n_decode = 0
        """Sequences decoding (prompt done, not finished)."""
        self.ctx_decode_tokens = 0
        """Their total context, prompt + generated tokens."""
        self.decode_steps = 0
        """Steps so far in which the decoding sequences advanced."""
        self.preemptions = 0
        self._seqs: dict[int, _Seq] = {}
        self._heap: list[tuple[int, int, int]] = []  # (decode step it finishes at, epoch, id)
        self._inflight: list[tuple[int, int]] = []   # chunks scheduled, not yet finished

    # ---- admission limits ----------------------------------------------------------------

    def fits_ever(self, prompt_tokens: int, max_tokens: int) -> bool:
        """Whether a sequence of this size can ever be served: ``p + m <= floor(0.99 K)``."""
        return prompt_tokens + max_tokens <= self.max_seq_tokens

    def check(self, prompt_tokens: int, max_tokens: int) -> None:
        """Raise unless `fits_ever` (vLLM answers such a request with HTTP 400).

        Raises:
            SequenceTooLongError: the message names the numbers and the fix.

        """
        if not self.fits_ever(prompt_tokens, max_tokens):
            raise SequenceTooLongError(prompt_tokens, max_tokens, self.max_seq_tokens,
                                       self.kv_capacity_tokens)

    # ---- sequences -----------------------------------------------------------------------

    def add(self, seq_id: int, prompt_tokens: int, output_tokens: int) -> None:
        """Queue a sequence (last in FCFS order).

        Args:
            seq_id: an id never used before (a finished sequence's id may still sit in the
                completion heap).
            prompt_tokens: prompt length (>= 1); callers check `fits_ever` first.
            output_tokens: tokens to generate (>= 1).

        """
        self._seqs[seq_id] = _Seq(prompt_tokens, output_tokens)
        self.waiting.append(seq_id)

    def __contains__(self, seq_id: object) -> bool:
        """Whether the sequence is queued or running (not finished, not removed)."""
        return seq_id in self._seqs

    def decoding(self) -> list[int]:
        """The decoding sequences, oldest admission first (O(running))."""
        seqs = self._seqs
        return [r for r in self.running if seqs[r].done >= seqs[r].prompt]

    def _generated(self, s: _Seq) -> int:
        return s.join_gen + (self.decode_steps - s.join_step)

    def remove(self, seq_id: int) -> bool:
        """Drop a sequence wherever it is (cancellation); its KV is freed at once.

        Safe between `schedule` and `finish_step`: the step then ignores it.

        Returns:
            False if the id is unknown (already finished or removed).

        """
        s = self._seqs.pop(seq_id, None)
        if s is None:
            return False
        if seq_id not in self.running:
            self.waiting.remove(seq_id)
            return True
        del self.running[seq_id]
        cache = self.prefix_cache
        if s.done >= s.prompt:                      # decoding
            ctx = s.prompt + self._generated(s)
            self.kv_used_tokens -= ctx
            self.ctx_decode_tokens -= ctx
            self.n_decode -= 1
            if cache is not None:
                cache.release(seq_id, ctx)
            return True
        held = s.done + sum(c for r, c in self._inflight if r == seq_id)
        self.kv_used_tokens -= held
        if cache is not None:
            cache.release(seq_id, s.done)
        if seq_id in self.prefilling:
            self.prefilling.remove(seq_id)
        return True

    # ---- one step ------------------------------------------------------------------------

    def schedule(self) -> StepPlan:
        """Choose the next step's work and reserve the KV of its prompt chunks.

        Returns:
            The plan; when `StepPlan.empty` nothing changed (wait for an arrival).

        """
        return _new_plan(StepPlan, self.schedule_fields())

    def schedule_fields(self) -> PlanFields:
        """`schedule` as a plain tuple, in `StepPlan`'s field order (the simulator's hot loop)."""
        # Hot loop of the simulator: locals, and the sums built as the chunks are chosen.
        waiting = self.waiting
        n_decode = self.n_decode
        seqs = self._seqs
        running = self.running
        kv_used = self.kv_used_tokens
        if not self.prefilling and (                 # decodes only: nothing admissible
                not waiting or len(running) >= self._max_seqs
                or kv_used + seqs[waiting[0]].prompt > self._admit_limit
                or (self._chunked and n_decode >= self._token_budget)):
            chunks: list[tuple[int, int]] = []
            self._inflight = chunks
            return (chunks, True, 0, 0.0, 0, n_decode, self.ctx_decode_tokens, n_decode)
        chunks = []
        p_tokens = p_kv = sampled = 0
        p_work = 0.0
        run_decode = True
        budget = self._token_budget
        if self._chunked:
            budget -= n_decode
            kv_cap = self.kv_capacity_tokens
            for rid in self.prefilling:              # continue unfinished prompts (C2)
                if budget <= 0:
                    break
                s = seqs[rid]
                done = s.done
                c = min(s.prompt - done, budget)
                if kv_used + c > kv_cap:
                    break
                chunks.append((rid, c))
                kv_used += c
                budget -= c
                p_tokens += c
                p_work += c * (done + c / 2.0)
                p_kv += done + c
                if done + c == s.prompt:
                    sampled += 1
        elif (waiting and len(running) < self._max_seqs
              and kv_used + seqs[waiting[0]].prompt <= self._admit_limit):
            run_decode = False                       # v0: a prompt-only step
        if waiting:
            chunked = self._chunked
            max_seqs = self._max_seqs
            admit_limit = self._admit_limit
            cache = self.prefix_cache
            hit = 0
            while waiting and budget > 0 and len(running) < max_seqs:
                rid = waiting[0]
                s = seqs[rid]
                remaining = s.prompt
                if cache is not None:
                    hit = cache.cached_tokens(rid, remaining)
                need = remaining - hit                 # prompt tokens to compute
                if chunked:
                    c = min(need, budget)
                else:
                    if need > budget and chunks:
                        break
                    c = need
                if kv_used + remaining > admit_limit:  # C1: the whole prompt must fit
                    break
                waiting.popleft()
                running[rid] = None
                s.done = hit
                if cache is not None:
                    cache.admit(rid, remaining)
                if c < need:
                    self.prefilling.append(rid)
                else:
                    sampled += 1
                chunks.append((rid, c))
                kv_used += hit + c
                budget -= c
                p_tokens += c
                p_work += c * (hit + c / 2.0)
                p_kv += hit + c
                if not chunked and budget <= 0:
                    break
        self.kv_used_tokens = kv_used
        self._inflight = chunks
        if run_decode:
            return (chunks, True, p_tokens, p_work, p_kv, n_decode, self.ctx_decode_tokens,
                    sampled + n_decode)
        return (chunks, False, p_tokens, p_work, p_kv, 0, 0, sampled)

    def finish_step(self, plan: StepPlan | PlanFields) -> StepOutcome:
        """Apply a step planned by `schedule`, then preempt while the KV cache overflows (C3).

        Every sequence that decoded in the step (and was not removed meanwhile) produced one
        token.

        Returns:
            ``(prompt_done, finished)`` (`StepOutcome`): the other token events.

        """
        seqs = self._seqs
        running = self.running
        finished: list[int] = []
        prompt_done: list[int] = []
        self._inflight = _NO_CHUNKS
        n_decode = self.n_decode
        kv_used = self.kv_used_tokens
        ctx_decode = self.ctx_decode_tokens
        step = self.decode_steps
        heap = self._heap
        cache = self.prefix_cache
        if plan[1] and n_decode:                     # plan.decode
            step += 1
            self.decode_steps = step
            ctx_decode += n_decode
            kv_used += n_decode
            while heap and heap[0][0] <= step:
                _, ep, rid = heappop(heap)
                s = seqs.get(rid)
                if s is None or ep != s.epoch:
                    continue
                ctx = s.prompt + s.out
                kv_used -= ctx
                ctx_decode -= ctx
                n_decode -= 1
                del running[rid]
                del seqs[rid]
                finished.append(rid)
                if cache is not None:
                    cache.release(rid, ctx)
        for rid, c in plan[0]:                       # plan.chunks
            s = seqs.get(rid)
            if s is None:                            # removed during the step
                continue
            s.done += c
            if s.done < s.prompt:
                continue
            if rid in self.prefilling:
                self.prefilling.remove(rid)
            s.generated += 1
            prompt_done.append(rid)
            if cache is not None:
                cache.computed(rid, s.prompt)
            if s.generated >= s.out:
                kv_used -= s.prompt
                del running[rid]
                del seqs[rid]
                finished.append(rid)
                if cache is not None:
                    cache.release(rid, s.prompt)
                continue
            s.join_step = step
            s.join_gen = s.generated
            heappush(heap, (step + s.out - s.generated, s.epoch, rid))
            n_decode += 1
            ctx_decode += s.prompt + s.generated
            kv_used += 1
        self.n_decode = n_decode
        self.kv_used_tokens = kv_used
        self.ctx_decode_tokens = ctx_decode
        if kv_used > self.kv_capacity_tokens and n_decode > 1:
            self._preempt()
        if cache is not None:
            cache.fit(self.kv_capacity_tokens - self.kv_used_tokens)
        return prompt_done, finished

    def _preempt(self) -> None:
        """C3: evict the newest decoding sequences until the KV cache fits (recompute later)."""
        seqs = self._seqs
        running = self.running
        prefilling = self.prefilling
        while self.kv_used_tokens > self.kv_capacity_tokens and self.n_decode > 1:
            victim = next(r for r in reversed(running) if r not in prefilling)
            s = seqs[victim]
            s.generated = self._generated(s)
            ctx = s.prompt + s.generated
            self.kv_used_tokens -= ctx
            self.ctx_decode_tokens -= ctx
            self.n_decode -= 1
            s.epoch += 1
            del running[victim]
            if self.prefix_cache is not None:
                self.prefix_cache.release(victim, ctx)
            # Recompute: the prompt now includes what was generated; output continues after it.
            s.prompt = ctx
            s.out -= s.generated
            s.generated = 0
            s.join_gen = 0
            self.waiting.appendleft(victim)
            self.preemptions += 1

    # ---- the simulator's fast path -------------------------------------------------------

    def decode_only(self) -> bool:
        """Only decodes are pending: nothing waits, no prompt is half done.

        (Every decoding sequence has a live entry in the completion heap, so the heap is then
        not empty.)
        """
        return not self.waiting and not self.prefilling and self.n_decode > 0

    def steps_to_next_finish(self) -> int:
        """Decode steps until the earliest heap entry (a completion, or a stale entry)."""
        return self._heap[0][0] - self.decode_steps

    def advance_decodes(self, k: int) -> None:
        """Apply k pure decode steps that complete nothing (k < `steps_to_next_finish`)."""
        self.decode_steps += k
        grow = k * self.n_decode
        self.ctx_decode_tokens += grow
        self.kv_used_tokens += grow
        if self.prefix_cache is not None:
            self.prefix_cache.fit(self.kv_capacity_tokens - self.kv_used_tokens)
