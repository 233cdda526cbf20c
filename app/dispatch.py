"""The router's decisions: where a request goes, where it goes when that fails, what it cost.

Plain Python (no HTTP framework, no Serve): `app.ingress.RouterIngress` parses and guards a
request, then hands it to a `Dispatcher`, which answers a `Reply` (or a `StreamReply`) the
ingress writes back. Engines are reached through an `EngineClient` (the ingress's Serve
handles; a fake in tests) and every outcome goes to a `Recorder` (metrics and the request
log, `app.observability.Observer`; a fake in tests).

1. **Routing** (`Dispatcher.route`): ``model: "auto"`` is scored by the plan's scorer and
   sent by the workload's live policy (`app.routing.LivePolicy`): the pair's threshold
   (`app.routing.LiveThreshold`), or a ladder workload's cascade (`app.routing.LiveCascade`;
   a request names its workload with ``auto:NAME`` or the ``x-boute-workload`` header, else
   the plan's first). A model name pins it. A completions prompt of token ids has no text to
   score: with ``auto`` it goes to the workload's models by the plan's target shares (smooth
   weighted round robin, so the split holds exactly; it neither reads nor moves the live
   threshold; ``x-boute-score: unscored``), its prompt tokens counted from the list (a
   batch: its longest prompt). A plan with length classes sends a request to its class's
   lane (``short`` when prompt + max_tokens <= the plan's threshold).
2. **Admission**: a group of the lane is chosen by the plan's shares among the available
   ones (`app.groups.GroupPool`) that have room for the request's units (``prompts x n``
   sequences, `app.sampling.request_units`); when every healthy group of the model is at
   its in-flight bound the request is refused at once (429, ``Retry-After``: ``shed``).
3. **Failover**: each engine call has a deadline (`RouterSettings.call_timeout_s`). A call
   that fails or times out before a byte reached the client (any non-streamed call; a
   stream before its first item) is retried after a short backoff on another group of the
   same model, up to ``max_tries`` calls; a 4xx from the engine is the client's and is never
   retried. Failures feed the group's circuit breaker. A model with no healthy group left
   sends its requests to the nearest other model of the ladder (``x-boute-degraded``), or
   answers 503 with ``on_model_down: fail``. A group that loses replicas
   (`Dispatcher.set_replicas`) has its waiting calls aborted and retried elsewhere.
4. **Accounting**: every request, answered, refused or abandoned, is counted (``/health``)
   and recorded once (`Recorder.observe`). The types exchanged (`EngineClient`, `Recorder`,
   `Call`, `Reply`, `StreamReply`, `Tally`) are `app.calls`'.
5. **Liveness probes** (`Dispatcher.probe`, every ``PROBE_PERIOD_S`` by `Dispatcher.watch`):
   every group is pinged (``ping()``, the backend contract) under a ``PROBE_TIMEOUT_S``
   deadline; ``PROBE_THRESHOLD`` misses in a row make it unresponsive (down: no traffic, its
   waiting calls aborted and retried elsewhere) until a probe or a call is answered again.
   A group whose node is lost is down within ``PROBE_PERIOD_S + PROBE_THRESHOLD *
   PROBE_TIMEOUT_S`` = 4 s (the first missed probe starts at most one period after the loss,
   each miss takes at most its deadline, and a round that overruns the period is followed at
   once by the next), instead of the ~15 s Serve and Ray take to notice a dead node.
   ``/health`` and ``/health/ready`` are `app.health`'s.
6. **Prediction error** (`Dispatcher.prediction`, `app.drift`): every request answered ``ok``
   goes into its group's sliding window; ``/health`` shows each group's ``prediction``
   (observed rate, P95, TPOT against the deploy's prediction table, the error and the drift
   verdict) and `Dispatcher.export_prediction` sets ``boute_prediction_error{group,
   quantity}``. Read-only: it routes nothing, and a failure in it never fails a request.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Collection
from typing import Any

from placement import Lane
from tuning import LENGTH_CLASSES, PredictionTable

from .calls import (
    Call,
    EngineClient,
    Recorder,
    Reply,
    StreamReply,
    Tally,
)
from .drift import LiveDrift, Sample
from .emulated import estimate_tokens
from .groups import GroupPool
from .guard import check_max_tokens
from .health import health_code, model_health, overall_status, readiness
from .openai_api import ApiError, error_body, error_status, prompt_of, sse, token_prompts
from .router_config import RouterConfig, RouterSettings
from .routing import (
    LiveCascade,
    LivePolicy,
    LiveThreshold,
    RouterError,
    SmoothWeightedRoundRobin,
    StrongWinRateRouter,
    make_router,
)
from .sampling import request_units

__all__ = ["DEFAULT_WORKLOAD", "PROBE_PERIOD_S", "PROBE_THRESHOLD", "PROBE_TIMEOUT_S",
           "ROUTED_MODELS", "STATUS_ABANDONED", "WORKLOAD_HEADER", "Dispatcher"]

ROUTED_MODELS = ("auto", "boute")
WORKLOAD_HEADER = "x-boute-workload"
DEFAULT_WORKLOAD = "default"
STATUS_ABANDONED = 499          # nginx's "client closed request"
EXPORT_EVERY = 50               # routed requests between two updates of the routing gauges
# Liveness probes (module docstring, 5.): a ping is a no-op on the replica's event loop, so
# 1.5 s without an answer is not load (an engine replica takes far more calls at once than any
# group's in-flight bound: the emulated one 4096, Ray Serve LLM's 1e9, so a ping never queues
# behind requests); two misses in a row, not one, so that one slow answer on a busy machine
# takes nothing down, and any answered call resets the count.
PROBE_PERIOD_S = 1.0
PREDICTION_CACHE_S = 1.0        # the prediction report is reused this long (module doc, 6.)
PROBE_TIMEOUT_S = 1.5
PROBE_THRESHOLD = 2


class _Aborted(Exception):
    """A call aborted by the router (its group lost replicas): retry elsewhere."""


def _unscored_pickers(cfg: RouterConfig) -> dict[str, SmoothWeightedRoundRobin]:
    """Per workload: its models by the plan's target shares (how unscored requests go).

    The pair: weak ``1 - strong_share``, strong ``strong_share``; a ladder workload: its
    ``shares``. (All zero: the smallest model.)
    """
    targets = {w: dict(zip(cfg.ladder_models, r.shares, strict=True))
               for w, r in cfg.workloads.items()}
    if not targets:
        targets = {DEFAULT_WORKLOAD: {cfg.weak: 1.0 - cfg.strong_share,
                                      cfg.strong: cfg.strong_share}}
    return {w: SmoothWeightedRoundRobin(t if sum(t.values()) > 0
                                        else {cfg.ladder_models[0]: 1.0})
            for w, t in targets.items()}


def _known(cfg: RouterConfig) -> str:
    """The served model names for an error message (built only when one is raised)."""
    return ", ".join(repr(m) for m in cfg.ladder_models)


def _reason(exc: BaseException) -> str:
    """One line for a failed engine call (no internal stack, bounded)."""
    text = str(exc).strip().splitlines()
    line = text[0] if text else type(exc).__name__
    return f"{type(exc).__name__}: {line[:200]}"


def _guard_report(policy: LiveThreshold | LiveCascade) -> dict[str, Any]:
    """``/health``'s ``threshold_guard``: moves seen, tenants, the bound in force.

    Tenants as a count and the largest one's fraction of the window, never their key ids.
    """
    fractions = policy.window.fractions()
    share = policy.strong_share if isinstance(policy, LiveThreshold) else (
        policy.tails[-1] if policy.tails else 0.0)
    iso = policy.isolation
    return {**policy.guard.report(), "tenants": len(fractions),
            "largest_fraction": max(fractions.values(), default=None),
            "bound": iso.bound(share) if iso.enabled else None}


class Dispatcher:
    """Routing, failover and accounting of one router replica (module docstring)."""

    def __init__(self, engines: EngineClient, recorder: Recorder,
                 clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time) -> None:
        self.engines, self.rec = engines, recorder
        self.clock = clock              # the routing policies' seconds (their move bound)
        self.wall = wall                # wall-clock seconds (arrivals; the drift window)
        self.config: RouterConfig | None = None
        self.settings = RouterSettings()
        self.scorer: StrongWinRateRouter | None = None
        self.pair: LiveThreshold | None = None
        self.cascades: dict[str, LiveCascade] = {}
        self.pool: GroupPool | None = None
        self._served: frozenset[str] = frozenset()     # models with a lane in the plan
        self._unscored: dict[str, SmoothWeightedRoundRobin] = {}    # workload -> models
        self.tally = Tally()
        self._calls: dict[str, set[asyncio.Task[Any]]] = {}
        self._aborted: set[asyncio.Task[Any]] = set()
        self.drift = LiveDrift()
        self.drift_failures = 0         # errors inside the prediction error (never raised)
        self.tables: dict[str, PredictionTable] = {}    # group -> the deploy's table
        self._prediction: tuple[float, dict[str, dict[str, Any]]] | None = None

    # -- configuration ---------------------------------------------------------------------
    def reconfigure(self, cfg: RouterConfig, groups: Collection[str]) -> None:
        """Take a new config live; policies, breakers and counters of what stays carry over.

        Args:
            cfg: the validated config.
            groups: the groups the ingress has a handle for.

        Raises:
            RouterError: ``shares`` names a group without a handle, or the scorer cannot be
                built; nothing changed then.

        """
        missing = {g for s in cfg.shares.values() for g in s} - set(groups)
        if missing:
            raise RouterError(f"shares name unknown groups {sorted(missing)}; known: "
                              f"{sorted(groups)}")
        if self.config is None or self.config.router != cfg.router:
            self.scorer = make_router(cfg.router, cfg.seed)
        iso = cfg.settings.isolation
        if self.pair is not None:
            self.pair.set_share(cfg.strong_share, cfg.threshold_or_nan)
            self.pair.set_isolation(iso)
        else:
            self.pair = LiveThreshold(cfg.strong_share, cfg.threshold_or_nan, seed=cfg.seed,
                                      isolation=iso)
        cascades = {}
        for name, w in cfg.workloads.items():
            old = self.cascades.get(name)
            if old is not None:
                old.set_tails(w.tails, w.initial)
                old.set_isolation(iso)
                cascades[name] = old
            else:
                cascades[name] = LiveCascade(w.tails, w.initial, isolation=iso)
        self.cascades = cascades
        s = cfg.settings
        if self.pool is None:
            self.pool = GroupPool(cfg.shares, cfg.limits, cfg.replicas,
                                  fail_threshold=s.fail_threshold, cooldown_s=s.cooldown_s,
                                  probe_threshold=PROBE_THRESHOLD)
        else:
            self.pool.fail_threshold, self.pool.cooldown_s = s.fail_threshold, s.cooldown_s
            self.pool.update(cfg.shares, cfg.limits, cfg.replicas)
        self._served = frozenset(Lane.parse(key).model for key in cfg.shares)
        self._unscored = _unscored_pickers(cfg)
        self.config, self.settings = cfg, s
        self.tables = {g: p.table() for g, p in (cfg.predictions or {}).items()}
        self.drift.track(self.pool.groups, self.wall())
        self._prediction = None

    @property
    def call_timeout_s(self) -> float:
        """The engine-call deadline in force: the setting, else ``max(30 s, 4 x plan P95)``."""
        if self.settings.call_timeout_s is not None:
            return self.settings.call_timeout_s
        p95 = self.config.plan_p95_s if self.config is not None else None
        return max(30.0, 4.0 * (p95 or 0.0))

    @property
    def models(self) -> tuple[str, ...]:
        """The ladder's models, smallest first (the pair: weak, strong)."""
        return self.config.ladder_models if self.config is not None else ()

    # -- 1. routing --------------------------------------------------------------------------
    def route(self, call: Call, body: dict[str, Any]) -> None:
        """Set the call's model, score (None when pinned), workload and length class.

        Raises:
            ApiError: 400 without ``model``; 404 for an unknown model or workload, or a model
                the running plan does not serve.

        """
        cfg, pair = self.config, self.pair
        assert cfg is not None and pair is not None and self.scorer is not None, \
            "reconfigure() runs first"
        self.tally.routed += 1
        if self.tally.routed % EXPORT_EVERY == 0:
            self.export_routing()
        asked = body.get("model")
        if asked is None:
            raise ApiError(f"model is required: 'auto' to route, or one of {_known(cfg)}",
                           param="model")
        ids = token_prompts(body) if call.kind == "completions" else None
        prompt = None if ids is not None else prompt_of(call.kind, body)
        call.units = request_units(call.kind, body)
        call.prompt_tokens = (max(len(p) for p in ids) if ids is not None
                              else estimate_tokens(prompt or ""))
        if isinstance(asked, str) and asked.startswith("auto:"):
            call.workload_asked, asked = asked.removeprefix("auto:"), "auto"
        if asked in ROUTED_MODELS and prompt is None:       # token ids: no text to score
            call.workload = self._workload(call.workload_asked)
            call.model = self._unscored[call.workload].pick()
            call.unscored = True
            self.tally.unscored += 1
        elif asked in ROUTED_MODELS:
            assert prompt is not None
            s = float(self.scorer.calculate_strong_win_rate(prompt))
            call.workload = self._workload(call.workload_asked)
            policy: LivePolicy = pair
            models: tuple[str, ...] = (cfg.weak, cfg.strong)
            if cfg.ladder:
                policy, models = self.cascades[call.workload], cfg.ladder_models
            guard = policy.guard.clamped + policy.guard.fast
            call.model = models[policy.route(s, call.key_id, self.clock())]
            if policy.guard.clamped + policy.guard.fast != guard:
                self.rec.threshold_guard(call.workload if cfg.ladder else None,
                                         policy.guard.last_wanted, policy.guard.last_move)
            if cfg.ladder:
                self.tally.workload_counts[(call.workload, call.model)] += 1
            call.score = s
            self.tally.counts[call.model] += 1
        elif asked in cfg.ladder_models:
            if not self._serves(asked):             # a plan may serve one model only
                raise ApiError(f"The model {asked!r} has no replicas in the running plan; use "
                               "'auto'", 404, "model", "model_not_found")
            self.tally.pinned += 1
            call.model = str(asked)
        else:
            raise ApiError(f"The model {asked!r} does not exist; use 'auto' to route, or one "
                           f"of {_known(cfg)}", 404, "model", "model_not_found")
        call.length_class = self._length_class(body, call.prompt_tokens)

    def _length_class(self, body: dict[str, Any], prompt_tokens: int) -> str | None:
        """``short`` when prompt + max_tokens <= the plan's threshold, else ``long``.

        A request without ``max_tokens`` (or ``max_completion_tokens``) may generate up to
        the context: it is long. None when the plan has no length classes.
        """
        assert self.config is not None
        tokens = self.config.length_threshold_tokens
        if tokens is None:
            return None
        limit = body.get("max_tokens", body.get("max_completion_tokens"))
        if not isinstance(limit, int) or isinstance(limit, bool):
            return LENGTH_CLASSES[1]
        return LENGTH_CLASSES[0] if prompt_tokens + limit <= tokens else LENGTH_CLASSES[1]

    def _workload(self, asked: str | None) -> str:
        """The workload a routed request belongs to (its alias or header, else the first).

        Raises:
            ApiError: 404 for a workload the plan does not have.

        """
        names = list(self.cascades) or [DEFAULT_WORKLOAD]
        if asked is None or asked == "":
            return names[0]
        if asked not in names:
            raise ApiError(f"The workload {asked!r} does not exist; use one of "
                           f"{', '.join('auto:' + n for n in names)} (or the "
                           f"{WORKLOAD_HEADER} header)", 404, "model", "model_not_found")
        return asked

    def _serves(self, model: str) -> bool:
        """Whether the running plan has a group of `model` (in any lane)."""
        return model in self._served

    # -- 2. admission and the choice of a group ----------------------------------------------
    def _other_model(self, model: str) -> str | None:
        """Where a request goes when its model is down (None: nowhere).

        The nearest served model of the ladder, the larger one first (a pair: the other).
        """
        ladder = self.models
        if model not in ladder:
            return None
        i = ladder.index(model)
        order = sorted((m for m in ladder if m != model),
                       key=lambda m: (abs(ladder.index(m) - i), ladder.index(m) < i))
        return next((m for m in order if self._serves(m)), None)

    def _next_group(self, call: Call, tried: set[str]) -> str:
        """The group of the next try, switching model when this one is down.

        Raises:
            ApiError: 429 (every healthy group of the model is full) or 503 (no model left).

        """
        assert self.pool is not None
        now = time.monotonic()
        # Its own length class first; the other class only when every group of its own is
        # down (a full class answers 429: spilling would break the other class's P95).
        for lane in Lane(call.model, call.length_class).fallbacks():
            group = self.pool.pick(lane.key, now, tried, call.units)
            if group is not None:
                return group
            if self.pool.reachable(lane.key, now, tried):
                raise ApiError(f"The {call.model} model is at its capacity; retry shortly",
                               429, kind="rate_limit_error", retry_after_s=1.0)
        other = self._other_model(call.model)
        if (self.settings.on_model_down == "fallback" and call.degraded is None
                and other is not None):
            self.rec.degraded(call.model)
            call.degraded, call.model = call.model, other
            return self._next_group(call, tried)
        raise ApiError(f"No replica of {call.degraded or call.model} is reachable now; retry "
                       "later", 503, kind="service_unavailable", retry_after_s=5.0)

    # -- 3. failover -------------------------------------------------------------------------
    async def dispatch(self, call: Call, body: dict[str, Any]) -> Reply | StreamReply:
        """Route `call` and serve it, retrying elsewhere while no byte has left.

        Raises:
            ApiError: the request is refused (`refuse` turns it into its reply).

        """
        self.route(call, body)
        assert self.pool is not None
        tried: set[str] = set()
        while True:
            group = self._next_group(call, tried)
            ctx = self.config.context.get(call.model) if self.config is not None else None
            if ctx is not None:
                check_max_tokens(body, ctx)     # the rest was checked on arrival
            call.group = group
            call.tries += 1
            call.headers = self._headers(call)
            fwd = {**body, "model": call.model}
            self.pool.acquire(group, call.units)
            released = False
            try:
                if call.stream:
                    reply = await self._stream(call, fwd)
                    released = True          # the stream releases its group when it ends
                    return reply
                pending = self.engines.call(group, call.kind, fwd)
                response = await self._deadline(group, pending, pending.cancel)
                status = error_status(response) or 200
                if status >= 500:           # the engine's own failure: retry elsewhere
                    raise RuntimeError(response["error"].get("message"))
                self.pool.success(group)
                self.done(call, status, "client_error" if status >= 400 else
                          "degraded" if call.degraded else "ok",
                          response.get("usage") if isinstance(response, dict) else None)
                return Reply(status, response, call.headers)
            except Exception as exc:        # _Aborted, TimeoutError, an engine failure
                if self.pool.failure(group, time.monotonic()):
                    self.rec.group_state(group, "ejected")
                tried.add(group)
                if call.tries >= self.settings.max_tries:
                    self.tally.errors += 1
                    self.done(call, 502, "engine_error")
                    return Reply(502, error_body(
                        502, f"replica group {group} failed after {call.tries} tries: "
                        f"{_reason(exc)}", "engine_error"), call.headers)
                self.rec.retry(group)
                await asyncio.sleep(0.05 * call.tries * (1 + random.random()))
            finally:
                if not released:
                    self.pool.release(group, call.units)

    async def _deadline(self, group: str, result: Awaitable[Any],
                        cancel: Callable[[], None]) -> Any:
        """`result` (a call's answer, a stream's first item) within the deadline, abortable.

        Raises:
            _Aborted: the group lost replicas while the call waited.
            TimeoutError: past the deadline (the call is cancelled).

        """
        async def wait() -> Any:
            return await result

        task: asyncio.Task[Any] = asyncio.ensure_future(wait())
        self._calls.setdefault(group, set()).add(task)
        try:
            return await asyncio.wait_for(task, self.call_timeout_s)
        except asyncio.CancelledError:
            cancel()
            if task in self._aborted:
                raise _Aborted(f"{group} lost replicas") from None
            raise
        except TimeoutError:
            cancel()
            raise TimeoutError(f"no answer from {group} within {self.call_timeout_s:g} s"
                               ) from None
        finally:
            self._calls[group].discard(task)
            self._aborted.discard(task)

    async def _stream(self, call: Call, body: dict[str, Any]) -> Reply | StreamReply:
        """Start a stream: its first item under the deadline (retryable), then pass it on."""
        assert self.pool is not None
        pool, group, timeout = self.pool, call.group, self.call_timeout_s
        gen = self.engines.stream(group, call.kind, body)
        try:
            first = await self._deadline(group, gen.__anext__(), gen.cancel)
        except StopAsyncIteration:
            first = sse("[DONE]")
        ttft = time.perf_counter() - call.t0
        rejected = error_status(first)
        if rejected is not None and rejected >= 500:    # the engine's failure: retryable
            raise RuntimeError(f"{group}: {first['error'].get('message')}")
        if rejected is not None:
            pool.release(group, call.units)
            self.done(call, rejected, "client_error")
            return Reply(rejected, first, call.headers)
        pool.success(group)

        async def events() -> AsyncIterator[str]:
            # Output tokens: the stream's data events (one per token in vLLM and the
            # emulated engine; vLLM's first chat event, the role, adds one).
            tokens, code = first.count("data: {"), 200
            outcome = "degraded" if call.degraded else "ok"
            finished = False
            try:
                yield first
                while True:
                    try:
                        text = await asyncio.wait_for(gen.__anext__(), timeout)
                    except StopAsyncIteration:
                        break
                    tokens += text.count("data: {")
                    yield text
                finished = True
            except (asyncio.CancelledError, GeneratorExit):
                code, outcome = STATUS_ABANDONED, "abandoned"
                raise
            except Exception as exc:        # mid-stream failure: an error event, then done
                self.tally.errors += 1
                code, outcome = 502, "engine_error"
                finished = True
                yield sse(error_body(502, f"{group}: {_reason(exc)}", "engine_error"))
                yield sse("[DONE]")
            finally:
                if not finished:
                    gen.cancel()
                pool.release(group, call.units)
                self.done(call, code, outcome, output_tokens=tokens, ttft_s=ttft)
        return StreamReply(events(), call.headers)

    def set_replicas(self, group: str, running: int) -> None:
        """Serve's count of running replicas of `group`; abort its waiting calls if it lost some.

        The aborted calls raise `_Aborted` in `dispatch`, which retries them elsewhere.
        """
        if self.pool is None or group not in self.pool.groups:
            return
        lost = self.pool.set_replicas(group, running)
        self.rec.group_state(group, self.pool.groups[group].state(time.monotonic()))
        if lost:
            self._abort(group)

    def _abort(self, group: str) -> None:
        """Abort the calls waiting on `group`; `dispatch` retries them elsewhere."""
        for task in list(self._calls.get(group, ())):
            self._aborted.add(task)
            task.cancel()

    # -- 5. liveness probes ------------------------------------------------------------------
    async def probe(self) -> None:
        """One round: ping every group at once, each under ``PROBE_TIMEOUT_S``.

        A group that misses its ``PROBE_THRESHOLD``-th probe in a row goes down (its waiting
        calls are aborted and retried elsewhere); one that answers again comes back.
        """
        if self.pool is None:
            return
        await asyncio.gather(*(self._probe_one(g) for g in list(self.pool.groups)))

    async def _probe_one(self, group: str) -> None:
        assert self.pool is not None
        try:
            pending = self.engines.ping(group)
        except Exception:           # no handle (a group removed meanwhile): not a probe
            return

        async def wait() -> Any:
            return await pending

        try:
            await asyncio.wait_for(wait(), PROBE_TIMEOUT_S)
            answered = True
        except asyncio.CancelledError:
            pending.cancel()
            raise
        except Exception:           # TimeoutError, a dead actor, an unreachable replica
            pending.cancel()
            answered = False
        changed = self.pool.probe_result(group, answered)
        if changed is None or group not in self.pool.groups:
            return
        self.rec.group_state(group, self.pool.groups[group].state(self.clock()))
        if changed:
            self._abort(group)

    async def watch(self) -> None:
        """Probe every group every ``PROBE_PERIOD_S`` (start to start), forever."""
        while True:
            start = self.clock()
            await self.probe()
            await asyncio.sleep(max(0.0, PROBE_PERIOD_S - (self.clock() - start)))

    # -- 4. accounting -----------------------------------------------------------------------
    def _headers(self, call: Call) -> dict[str, str]:
        h = {"x-boute-model": call.model, "x-boute-group": call.group,
             "x-boute-score": ("unscored" if call.unscored else "pinned" if call.score is None
                               else f"{call.score:.6f}")}
        if call.degraded:
            h["x-boute-degraded"] = call.degraded
        if call.length_class is not None:
            h["x-boute-length-class"] = call.length_class
        if call.tries > 1:
            h["x-boute-tries"] = str(call.tries)
        return h

    def refuse(self, call: Call, exc: ApiError) -> Reply:
        """The reply to a refused request (recorded; 401 asks for a key, 429/503 say when)."""
        outcome = {401: "unauthorized", 408: "body_timeout", 413: "too_large",
                   429: "rate_limited" if call.model == "" else "shed",
                   503: "unavailable"}.get(exc.status, "client_error")
        headers = dict(call.headers)
        if exc.status == 401:
            headers["www-authenticate"] = "Bearer"
        if exc.retry_after_s is not None:
            headers["retry-after"] = str(max(1, math.ceil(exc.retry_after_s)))
        self.done(call, exc.status, outcome)
        return Reply(exc.status, exc.body(), headers)

    def failed(self, call: Call, exc: BaseException) -> Reply:
        """The reply to a request the router itself failed (a bug: still an OpenAI body)."""
        self.tally.errors += 1
        self.done(call, 500, "internal_error")
        return Reply(500, error_body(500, f"internal error: {_reason(exc)}", "internal_error"),
                     call.headers)

    def done(self, call: Call, status: int, outcome: str,
             usage: dict[str, Any] | None = None, output_tokens: int = 0,
             ttft_s: float | None = None) -> None:
        """Count and record one request's end (its latency: from arrival to now)."""
        usage = usage or {}
        latency = time.perf_counter() - call.t0
        if ttft_s is None:
            ttft_s = latency if status < 400 else math.nan
        self.tally.outcomes[outcome] += 1
        if status == 200 and outcome == "ok" and call.group:
            try:
                self.drift.record(call.group, Sample(
                    call.arrival_s, latency, ttft_s,
                    int(usage.get("completion_tokens") or output_tokens), call.stream))
            except Exception:       # observability only: never fail a request
                self.drift_failures += 1
        self.rec.observe(
            arrival_s=call.arrival_s, model=call.model, group=call.group, score=call.score,
            status=status, ttft_s=ttft_s, latency_s=latency,
            prompt_tokens=int(usage.get("prompt_tokens") or call.prompt_tokens),
            output_tokens=int(usage.get("completion_tokens") or output_tokens),
            stream=call.stream, key_id=call.key_id, outcome=outcome, workload=call.workload,
            length_class=call.length_class)

    def export_routing(self) -> None:
        """Set the routing gauges (every 50 routed requests and on each liveness poll)."""
        if self.pair is None or self.config is None:
            return
        counts = self.tally.counts
        total = sum(counts.values())
        self.rec.routing_state(counts[self.config.strong] / total if total else None,
                               self.pair.strong_share, self.pair.threshold)

    def prediction(self) -> dict[str, dict[str, Any]]:
        """Each group's live prediction error (`app.drift.LiveDrift.report`; {} on a failure).

        Per-replica rate over the replicas Serve runs (the plan's count until seen). Computed
        at most once per `PREDICTION_CACHE_S` (``/health`` may be polled often; the windows
        hold up to `app.drift.MAX_SAMPLES` requests per group).
        """
        if self.pool is None:
            return {}
        now = self.wall()
        if self._prediction is not None and 0 <= now - self._prediction[0] < PREDICTION_CACHE_S:
            return self._prediction[1]
        s = self.settings
        try:
            replicas = {g: (st.running if st.running else st.wanted or 1)
                        for g, st in self.pool.groups.items()}
            report = self.drift.report(now, self.tables, replicas, window_s=s.drift_window_s,
                                       min_requests=s.drift_min_requests,
                                       tolerance=s.drift_tolerance)
        except Exception:           # observability only
            self.drift_failures += 1
            return {}
        self._prediction = (now, report)
        return report

    def export_prediction(self) -> dict[str, dict[str, Any]]:
        """Set ``boute_prediction_error{group, quantity}`` (NaN: no value); returns the report."""
        report = self.prediction()
        for (group, quantity), value in LiveDrift.metric(report).items():
            self.rec.prediction_error(group, quantity, value)
        return report

    def health(self, now: float) -> tuple[int, dict[str, Any]]:
        """``/health``'s code and full report (`app.health`).

        200 while any request can be served (``ok`` or ``degraded``), 503 when none can
        (``unavailable``). The report's ``status`` and ``config_id`` are what anyone may see;
        the rest is for key holders (the ingress decides).
        """
        cfg, pair, pool, t = self.config, self.pair, self.pool, self.tally
        assert cfg is not None and pair is not None and pool is not None
        groups = pool.health(now)["groups"]
        prediction = self.prediction()
        for name, entry in groups.items():
            entry["prediction"] = prediction.get(name)
        models = model_health(pool, [m for m in self.models if self._serves(m)], now,
                              self._fallback)
        status = overall_status(groups, models)
        total = sum(t.counts.values())
        ladder = {}
        for name, cascade in self.cascades.items():
            n = sum(v for (w, _), v in t.workload_counts.items() if w == name)
            tails = (1.0, *cascade.tails, 0.0)
            ladder[name] = {
                "requests": n,
                "target": {m: tails[k] - tails[k + 1] for k, m in enumerate(cfg.ladder_models)},
                "routed": {m: t.workload_counts[(name, m)] / n if n else None
                           for m in cfg.ladder_models},
                "thresholds": [v if math.isfinite(v) else None for v in cascade.thresholds],
                "threshold_guard": _guard_report(cascade)}
        return health_code(status), {
            "status": status, "config_id": cfg.config_id,
            "models": models, "groups": groups,
            "requests": total, "pinned": t.pinned, "unscored": t.unscored, "errors": t.errors,
            "outcomes": dict(t.outcomes),
            "strong_share_target": pair.strong_share,
            "strong_share_routed": (t.counts[cfg.strong] / total) if total else None,
            "threshold": pair.threshold if math.isfinite(pair.threshold) else None,
            "threshold_guard": _guard_report(pair),
            "router": cfg.router, "call_timeout_s": self.call_timeout_s,
            "routed_models": dict(t.counts), **({"workloads": ladder} if ladder else {}),
            "drift": {"window_s": self.settings.drift_window_s,
                      "min_requests": self.settings.drift_min_requests,
                      "tolerance": self.settings.drift_tolerance,
                      "drifted": sorted(g for g, e in prediction.items() if e["drifted"]),
                      "failures": self.drift_failures}}

    def readiness(self, now: float) -> tuple[int, dict[str, Any]]:
        """``/health/ready``: 200 when every group of the plan serves, else 503 + what is missing.

        (`app.health.readiness`.) The whole report is for key holders (the ingress decides).
        """
        if self.pool is None or self.config is None:
            return 503, {"ready": False, "config_id": None,
                         "missing": {"router": {"reason": "no routing config received yet"}}}
        ready, missing = readiness(self.pool, now)
        return (200 if ready else 503), {
            "ready": ready, "config_id": self.config.config_id,
            "groups_serving": len(self.pool.groups) - len(missing),
            "groups": len(self.pool.groups), "missing": missing}

    def _fallback(self, model: str) -> str | None:
        """Where `model`'s requests go when it has no group taking traffic (None: they fail)."""
        if self.settings.on_model_down != "fallback":
            return None
        return self._other_model(model)
