"""The emulated engine: a declared dry-run backend whose timing follows the stage-1 model.

It runs vLLM's continuous batching in real time with asyncio, on the same scheduling policy as
the load simulator (`profiling.BatchScheduler`: decodes first, then prompt chunks in the rest
of the ``max_num_batched_tokens`` budget, FCFS admission while fewer than ``max_num_seqs``
run and the prompt fits the KV cache (``kv_capacity_tokens`` of the replica's memory plan),
recompute preemption of the newest sequence when decoding overflows the cache). Each step
sleeps for the step time the replica model predicts (`profiling.ReplicaModel.step_time_s`)
and then emits one token for every sequence that decoded and the first token of every prompt
completed in the step (a preempted sequence's recompute emits its next token, not a repeat).
A request therefore sees the TTFT and per-token latency a real replica of that (model, GPU,
TP, PP) would give under the same load — without a GPU. Tokens are placeholders (``" tok"``);
prompt length is estimated as one token per 4 characters (the BPE rule of thumb).
``time_scale`` multiplies every step time (0: a zero-latency engine, to measure the serving
stack alone).

**Engine speed** (a dry-run feature, for rehearsing drift): ``speed_factor`` f runs the
engine at f times the model's speed, every step taking ``step_time / f`` (0.625: 1.6x
slower, as if the hardware were slower than profiled). It changes live
(`EmulatedEngine.speed_factor`; on Serve, the group deployment's ``user_config``
``{"speed_factor": f}``, `EngineSettings`, set by `app.deploy.set_engine_speed`); steps
already under way keep their time.

Admission control, as vLLM: `EmulatedEngine.check` rejects a request whose prompt plus
``max_tokens`` can never fit the KV cache (`profiling.SequenceTooLongError`, a `ValueError`;
the server answers 400). A request whose consumer stops reading (``aclose``, cancellation)
leaves the scheduler at once and frees its KV cache.

**Prefix cache** (optional, ``prefix_cache=True``; vLLM's automatic prefix caching, on by
default in vLLM): the simulator's model of it (`profiling.PrefixCache`, through the shared
scheduler): a request's leading system-prompt blocks are reused from any earlier request of
its application, the rest of its prompt from its session's earlier turns, while they are
cached (least recently used evicted into the KV blocks the running sequences leave free); only
the uncached part of a prompt is prefilled. `generate`'s ``share`` says what a prompt shares
(the server reads it from the request, `app.emulated_server`); `PrefixCache.hit_rate` is the
replica's hit rate. (The cache keeps three integers per request served: a dry run's memory.)

Never a silent fallback: it is chosen with ``--backend emulated``.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
from collections.abc import AsyncGenerator, Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from profiling import (
    BatchScheduler,
    PrefixCache,
    RemoteKv,
    ReplicaModel,
    SequenceTooLongError,
    Sharing,
)

__all__ = ["EmulatedEngine", "EngineSettings", "SequenceTooLongError", "Share",
           "estimate_tokens"]

Share = tuple[int, int, int]
"""What a prompt shares: (application id, system prompt tokens, session id); -1: none."""

_log = logging.getLogger(__name__)

# A step starts where the previous one was due to end unless that is more than this long ago
# (after an idle spell or a stall it starts now, with no burst of catch-up steps).
_CATCH_UP_S = 0.05


class EngineSettings(BaseModel):
    """An emulated group deployment's ``user_config`` (live; a dry-run feature)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    speed_factor: float = Field(
        1.0, gt=0, le=1000.0, description="The engine runs at this times the model's speed: "
        "each step takes step_time / speed_factor (0.625: 1.6x slower). Dry runs only.")

    @classmethod
    def parse(cls, obj: Mapping[str, Any] | None) -> EngineSettings:
        """Validate `obj` (None: the defaults).

        Raises:
            ValueError: one line naming the field, its value and the rule.

        """
        try:
            return cls.model_validate(dict(obj or {}))
        except ValidationError as exc:
            err = exc.errors()[0]
            where = ".".join(str(x) for x in err["loc"])
            raise ValueError(f"emulated engine user_config: {where}={err.get('input')!r}: "
                             f"{err['msg']} (known: {sorted(cls.model_fields)})") from None

    def wire(self) -> dict[str, Any]:
        """The JSON dict a Serve config carries."""
        return self.model_dump(mode="json")


def estimate_tokens(text: str) -> int:
    """Prompt tokens of `text` by the 4-characters-per-token rule (at least 1)."""
    return max(1, len(text) // 4)


class _PdKv(RemoteKv):
    """`profiling.RemoteKv` except for the requests in `local`, whose prompt is computed here."""

    def __init__(self) -> None:
        super().__init__()
        self.local: set[int] = set()

    def cached_tokens(self, rid: int, prompt_tokens: int) -> int:
        return 0 if rid in self.local else super().cached_tokens(rid, prompt_tokens)


class EmulatedEngine:
    """Continuous batching in real time on the replica model's step times.

    Args:
        replica: the replica's step-time model, engine settings and KV capacity.
        time_scale: multiplies every step time (0: zero latency).
        remote_kv: the decode pool of a prefill/decode pair: each request's prompt KV is
            present at admission (computed by the prefill pool).

    Raises:
        ValueError: ``time_scale < 0``.

    """

    def __init__(self, replica: ReplicaModel, time_scale: float = 1.0,
                 prefix_cache: bool = False, *, remote_kv: bool = False) -> None:
        if not time_scale >= 0:
            raise ValueError(f"time_scale={time_scale} must be >= 0 (0: zero-latency engine)")
        self.replica = replica
        self.time_scale = time_scale
        self.speed_factor = 1.0
        """Runs at this times the model's speed (module docstring; > 0, live)."""
        if prefix_cache and remote_kv:
            raise ValueError("an emulated engine models either vLLM's prefix cache or a decode "
                             "pool's remote KV, not both: serve pool pairs without "
                             "--prefix-cache")
        self.prefix_cache = PrefixCache(Sharing.none(0)) if prefix_cache else None
        """The replica's prefix cache (module docstring; None: off)."""
        # remote_kv: a decode instance of a pool pair; a request's prompt KV arrives from the
        # prefill pool (all but its last token, `profiling.RemoteKv`), as in `simulate_pd`.
        self._remote = _PdKv() if remote_kv else None
        self.scheduler = BatchScheduler(replica.engine, replica.memory.kv_capacity_tokens,
                                        self._remote or self.prefix_cache)
        self.steps = 0
        """Engine steps run so far."""
        self.engine_time_s = 0.0
        """Sum of the steps' modelled times, seconds, before `time_scale`: the simulator's
        clock for a run in which the engine is never idle."""
        self._clock = -math.inf       # when the current step is due to end (loop time)
        self._ids = itertools.count()
        self._queues: dict[int, asyncio.Queue[int | None]] = {}
        self._delivered: dict[int, int] = {}   # tokens emitted per live sequence
        self._wake = asyncio.Event()
        self._loop: asyncio.Task[None] | None = None
        self._error: BaseException | None = None   # why the engine loop stopped, if it did

    def check(self, prompt_tokens: int, max_tokens: int) -> None:
        """Reject a request that can never fit the KV cache (vLLM answers it with 400).

        Args:
            prompt_tokens: prompt length, tokens (counted as at least 1, as `generate` does).
            max_tokens: requested output tokens (counted as at least 1).

        Raises:
            SequenceTooLongError: ``prompt + max_tokens`` exceeds the per-sequence limit,
                floor(0.99 K) for K = ``replica.memory.kv_capacity_tokens``; the message gives
                the numbers and the fix.

        """
        self.scheduler.check(max(1, prompt_tokens), max(1, max_tokens))

    async def generate(self, prompt_tokens: int, max_tokens: int,
                       share: Share | None = None, *, kv_present: bool = True
                       ) -> AsyncGenerator[int, None]:
        """Yield the index (0, 1, ...) of each generated token as the engine produces it.

        Stopping early (``aclose()``, the consuming task cancelled) removes the request from
        the engine at once: its KV cache is freed and it takes no further step.

        Args:
            prompt_tokens: prompt length, tokens.
            max_tokens: tokens to generate.
            share: what the prompt shares, ``(application id, system prompt tokens, session
                id)`` (ids -1: none; `profiling.Sharing`'s columns); None: nothing. Used
                only with the prefix cache on.
            kv_present: (``remote_kv`` engines) the prompt's KV came from the prefill pool;
                False computes the prompt here, as a co-located replica (the prefill pool was
                lost).

        Raises:
            SequenceTooLongError: as `check`, before anything is queued.

        """
        prompt_tokens, max_tokens = max(1, prompt_tokens), max(1, max_tokens)
        self.scheduler.check(prompt_tokens, max_tokens)
        rid = next(self._ids)
        if self.prefix_cache is not None:
            app, system, session = share or (-1, 0, -1)
            system = min(system, prompt_tokens) if app >= 0 else 0
            rid = self.prefix_cache.add_request(app, system, session)
        queue: asyncio.Queue[int | None] = asyncio.Queue()
        self._queues[rid] = queue
        self._delivered[rid] = 0
        if self._remote is not None and not kv_present:
            self._remote.local.add(rid)
        self.scheduler.add(rid, prompt_tokens, max_tokens)
        self._ensure_loop()
        try:
            while True:
                tok = await queue.get()
                if tok is None:
                    if self._error is not None:
                        raise RuntimeError("the emulated engine loop failed") from self._error
                    return
                yield tok
        finally:
            del self._queues[rid], self._delivered[rid]
            if self._remote is not None:
                self._remote.local.discard(rid)
            if self.scheduler.remove(rid):      # cancelled: free its KV, let others in
                self._wake.set()

    def _ensure_loop(self) -> None:
        """Wake the engine loop, starting it (again) on the running event loop if needed."""
        running = asyncio.get_running_loop()
        if self._loop is None or self._loop.done() or self._loop.get_loop() is not running:
            self._wake = asyncio.Event()        # an Event binds to the loop that first awaits it
            self._error = None
            self._loop = running.create_task(self._run())
        self._wake.set()

    async def _run(self) -> None:
        try:
            await self._steps()
        except Exception as exc:               # end every stream with the error, not a hang
            _log.exception("emulated engine loop failed; its %d streams end with the error",
                           len(self._queues))
            self._error = exc
            for queue in self._queues.values():
                queue.put_nowait(None)

    async def _steps(self) -> None:
        sched = self.scheduler
        loop = asyncio.get_running_loop()
        while True:
            plan = sched.schedule()
            if plan.empty:                      # idle, or nothing admissible: wait for news
                self._wake.clear()
                await self._wake.wait()
                continue
            decoding = sched.decoding() if plan.decode else []
            step_s = plan.step_time_s(self.replica)
            dt = step_s * self.time_scale / self.speed_factor
            # Steps run back to back on a schedule (each ends dt after the previous one's
            # scheduled end), so timer overshoot does not accumulate over a long decode.
            now = loop.time()
            start = self._clock if now - self._clock < _CATCH_UP_S else now
            self._clock = start + dt
            await asyncio.sleep(max(0.0, self._clock - now))
            self.steps += 1
            self.engine_time_s += step_s
            prompt_done, finished = sched.finish_step(plan)
            for rid in decoding:
                self._emit(rid)
            for rid in prompt_done:
                self._emit(rid)
            for rid in finished:
                queue = self._queues.get(rid)
                if queue is not None:
                    queue.put_nowait(None)

    def _emit(self, rid: int) -> None:
        queue = self._queues.get(rid)
        if queue is None:                       # removed during the step
            return
        n = self._delivered[rid]
        queue.put_nowait(n)
        self._delivered[rid] = n + 1
