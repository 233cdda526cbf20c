"""The emulated engine: a declared dry-run backend whose timing follows the stage-1 model.

It runs vLLM's continuous batching in real time with asyncio: each engine step schedules the
running decodes first (up to ``max_num_seqs``), then prompt chunks into the rest of the
``max_num_batched_tokens`` budget (chunked prefill), admits a new sequence only while the KV
cache (``kv_capacity_tokens`` of the replica's memory plan) holds its prompt plus its
requested output, sleeps for the step time the replica model predicts
(`profiling.ReplicaModel.step_time_s`), and then emits one token for every decoding
sequence and the first token of every prompt completed in the step. A request therefore sees
the TTFT and per-token latency a real replica of that (model, GPU, TP, PP) would give under
the same load — without a GPU. Tokens are placeholders (``" tok"``); prompt length is
estimated as one token per 4 characters (the BPE rule of thumb). ``time_scale`` multiplies
every step time (0: a zero-latency engine, to measure the serving stack alone).

Never a silent fallback: it is chosen with ``--backend emulated``.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from profiling import ReplicaModel

__all__ = ["EmulatedEngine", "estimate_tokens"]


def estimate_tokens(text: str) -> int:
    """Prompt tokens of `text` by the 4-characters-per-token rule (at least 1)."""
    return max(1, len(text) // 4)


@dataclass
class _Seq:
    prompt_tokens: int
    max_tokens: int
    queue: asyncio.Queue[int | None] = field(default_factory=asyncio.Queue)
    prefilled: int = 0
    generated: int = 0

    @property
    def context(self) -> int:
        return self.prefilled + self.generated


class EmulatedEngine:
    """Continuous batching in real time on the replica model's step times."""

    def __init__(self, replica: ReplicaModel, time_scale: float = 1.0) -> None:
        if not time_scale >= 0:
            raise ValueError(f"time_scale={time_scale} must be >= 0 (0: zero-latency engine)")
        self.replica = replica
        self.time_scale = time_scale
        self._clock = -math.inf       # when the current step is due to end (loop time)
        self.max_num_seqs = replica.engine.max_num_seqs
        self.token_budget = replica.engine.max_num_batched_tokens
        self.kv_capacity = replica.memory.kv_capacity_tokens
        self.waiting: list[_Seq] = []
        self.running: list[_Seq] = []
        self._wake = asyncio.Event()
        self._loop: asyncio.Task[None] | None = None
        self.steps = 0

    async def generate(self, prompt_tokens: int, max_tokens: int) -> AsyncIterator[int]:
        """Yield the index of each generated token as the emulated engine produces it."""
        seq = _Seq(max(1, prompt_tokens), max(1, max_tokens))
        self.waiting.append(seq)
        self._wake.set()
        if self._loop is None or self._loop.done():
            self._loop = asyncio.get_running_loop().create_task(self._run())
        while True:
            tok = await seq.queue.get()
            if tok is None:
                return
            yield tok

    def _admit(self) -> None:
        used = sum(s.prompt_tokens + s.max_tokens for s in self.running)
        while self.waiting and len(self.running) < self.max_num_seqs:
            nxt = self.waiting[0]
            if self.running and used + nxt.prompt_tokens + nxt.max_tokens > self.kv_capacity:
                break
            self.running.append(self.waiting.pop(0))
            used += nxt.prompt_tokens + nxt.max_tokens

    async def _run(self) -> None:
        while True:
            self._admit()
            if not self.running:
                self._wake.clear()
                await self._wake.wait()
                continue
            decoding = [s for s in self.running if s.prefilled == s.prompt_tokens]
            budget = self.token_budget - len(decoding)
            chunks: list[tuple[_Seq, int]] = []
            for s in self.running:
                if s.prefilled < s.prompt_tokens and budget > 0:
                    c = min(budget, s.prompt_tokens - s.prefilled)
                    chunks.append((s, c))
                    budget -= c
            finishing = sum(1 for s, c in chunks if s.prefilled + c == s.prompt_tokens)
            dt = self.replica.step_time_s(
                prefill_tokens=sum(c for _, c in chunks),
                prefill_attn_work=sum(c * (s.prefilled + c / 2) for s, c in chunks),
                prefill_kv_tokens=sum(s.prefilled + c for s, c in chunks),
                decode_seqs=len(decoding),
                decode_ctx_tokens=sum(s.context for s in decoding),
                sampled_seqs=len(decoding) + finishing) * self.time_scale
            # Steps run back to back on a schedule (each ends dt after the previous one's
            # scheduled end), so timer overshoot does not accumulate over a long decode.
            # (A step starts where the previous one was due to end, unless that is more than
            # 50 ms ago: after an idle spell or a stall it starts now, with no burst.)
            now = asyncio.get_running_loop().time()
            start = self._clock if now - self._clock < 0.05 else now
            self._clock = start + dt
            await asyncio.sleep(max(0.0, self._clock - now))
            self.steps += 1
            for s, c in chunks:
                s.prefilled += c
                if s.prefilled == s.prompt_tokens:
                    self._emit(s)
            for s in decoding:
                self._emit(s)
            self.running = [s for s in self.running if s.generated < s.max_tokens]

    @staticmethod
    def _emit(s: _Seq) -> None:
        s.queue.put_nowait(s.generated)
        s.generated += 1
        if s.generated >= s.max_tokens:
            s.queue.put_nowait(None)
