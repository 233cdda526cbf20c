"""The router: the stack's HTTP ingress (OpenAI API), closed by default and failing safe.

A request goes through, in order (each refusal is an OpenAI error body, logged and counted):

1. **API key** (`app.guard.ApiKeys`, when the config carries ``api_keys``): 401 without a
   valid ``Authorization: Bearer`` key; 429 + ``Retry-After`` when its key is over its rate.
2. **Body limits** (`app.guard`): 413 above ``max_body_bytes`` (checked on
   ``Content-Length`` and while reading, before anything is parsed or forwarded); 400 for
   JSON nested too deep, wrong field types, non-text content parts, ``max_tokens`` above the
   model's context.
3. **Routing**: ``model: "auto"`` is scored by the plan's router and sent to the weak or the
   strong model by the live-calibrated threshold (`app.routing.LiveThreshold`); a model name
   pins it. A ladder plan (K models, several workloads) routes each workload by its own
   cascade (`app.routing.LiveCascade`); a request names its workload with the model alias
   ``auto:NAME`` or the ``x-boute-workload`` header (else the plan's first workload). A group
   of that model is chosen by the plan's shares among the available ones
   (`app.groups.GroupPool`).
4. **Admission**: every group has an in-flight bound from the plan's capacity; when all of
   the model's healthy groups are full the request is refused at once with 429 and
   ``Retry-After`` (``shed``), never queued without bound.
5. **Failover**: the engine call has a deadline (``call_timeout_s``). A call that fails or
   times out before any byte reached the client (any non-streamed call; a stream before its
   first token) is retried, after a short backoff, on another group of the same model, up
   to ``max_tries`` calls in all; a 4xx from the engine is the client's and is never
   retried. Failures feed the group's circuit breaker. When the model has no healthy group
   left, the request goes to the other model (``x-boute-degraded: <model>``, counted), or
   gets a fast 503 with ``on_model_down: fail``. Serve's replica counts are polled every
   second: when a group loses replicas (a dead node), the calls still waiting on it are
   aborted and retried elsewhere instead of waiting for their deadline.
6. **Cancellation**: a client that disconnects cancels its engine request (the engine frees
   its sequence) and is logged as ``abandoned`` (status 499).

``/health`` reports each group (healthy / ejected / down, replicas running and wanted,
in-flight and bound) and answers 503 when a model is unreachable. Routing changes and key
rotations arrive as ``user_config`` (`RouterIngress.reconfigure`): live, nothing restarts.

The engine contract (``openai(kind, body)``) is described in `app.server`.

(No ``from __future__ import annotations`` here: FastAPI reads the route signatures' types at
runtime.)
"""

import asyncio
import math
import random
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from ray import serve
from ray.serve.handle import DeploymentHandle, DeploymentResponseGenerator

from tuning import LENGTH_CLASSES

from .emulated import estimate_tokens
from .groups import GroupPool
from .guard import ApiKeys, KeyEntry, RequestLimits, check_body, check_max_tokens, parse_body
from .observability import Observer
from .openai_api import ApiError, error_body, error_status, prompt_of, sse
from .routing import LiveCascade, LiveThreshold, RouterError, make_router

__all__ = ["ROUTED_MODELS", "RouterIngress", "RouterSettings"]

ROUTED_MODELS = ("auto", "boute")
WORKLOAD_HEADER = "x-boute-workload"
DEFAULT_WORKLOAD = "default"
# Requests a replica takes at once: Serve's own bound would queue or reject before the
# router's admission control, which is sized from the plan.
MAX_ONGOING_REQUESTS = 4096
# A router replica's graceful stop runs `__del__`, which flushes the request log; Serve
# force-kills it after `graceful_shutdown_timeout_s` (default 20 s). In Serve's
# high-throughput mode the ingress replica first stays open for the direct-ingress draining
# period (RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S, 30 s by default), so the router gets
# that plus time to drain and flush; an idle stop is not slower for it.
ROUTER_SHUTDOWN_TIMEOUT_S = 60.0
LIVENESS_POLL_S = 1.0
STATUS_ABANDONED = 499          # nginx's "client closed request"


@dataclass(frozen=True)
class RouterSettings:
    """How the router fails safe (the ``settings`` of its ``user_config``; all live).

    Attributes:
        on_model_down: ``fallback`` (a model without a healthy group: its requests go to the
            other model, flagged) or ``fail`` (fast 503).
        call_timeout_s: deadline of one engine call (non-streamed: the whole response;
            streamed: the first token, then each next batch); None: ``max(30 s, 4 x the
            plan's P95)``.
        max_tries: engine calls per request at most (first + retries, fallback included).
        fail_threshold: consecutive failures that eject a group.
        cooldown_s: first ejection's length (doubles per ejection in a row, up to 60 s).
        max_body_bytes: largest request body (413 above).
        max_json_depth: deepest JSON nesting (400 above).

    """

    on_model_down: str = "fallback"
    call_timeout_s: float | None = None
    max_tries: int = 3
    fail_threshold: int = 3
    cooldown_s: float = 5.0
    max_body_bytes: int = RequestLimits.max_body_bytes
    max_json_depth: int = RequestLimits.max_json_depth

    def __post_init__(self) -> None:
        if self.on_model_down not in ("fallback", "fail"):
            raise RouterError(f"on_model_down={self.on_model_down!r} must be 'fallback' or "
                              "'fail'")
        if self.call_timeout_s is not None and not self.call_timeout_s > 0:
            raise RouterError(f"call_timeout_s={self.call_timeout_s!r} must be > 0 (or null)")
        for name in ("max_tries", "fail_threshold", "max_body_bytes", "max_json_depth"):
            if not (isinstance(getattr(self, name), int) and getattr(self, name) >= 1):
                raise RouterError(f"{name}={getattr(self, name)!r} must be an integer >= 1")
        if not self.cooldown_s > 0:
            raise RouterError(f"cooldown_s={self.cooldown_s!r} must be > 0")

    @classmethod
    def from_config(cls, obj: dict[str, Any] | None) -> "RouterSettings":
        """From the ``settings`` mapping (unknown keys are an error naming them)."""
        obj = dict(obj or {})
        extra = sorted(set(obj) - set(cls.__dataclass_fields__))
        if extra:
            raise RouterError(f"unknown router setting(s) {extra}; known: "
                              f"{sorted(cls.__dataclass_fields__)}")
        return cls(**obj)

    @property
    def limits(self) -> RequestLimits:
        """The body limits."""
        return RequestLimits(self.max_body_bytes, self.max_json_depth)


class _Aborted(Exception):
    """A call aborted by the router (its group lost replicas): retry elsewhere."""


@dataclass
class _Call:
    """What one request records for its log row and headers."""

    kind: str
    arrival_s: float
    t0: float
    stream: bool = False
    key_id: str | None = None
    model: str = ""
    group: str = ""
    score: float | None = None
    workload: str | None = None
    workload_asked: str | None = None
    length_class: str | None = None
    degraded: str | None = None
    tries: int = 0
    prompt_tokens: int = 0
    headers: dict[str, str] = field(default_factory=dict)


# (Defined before the ingress class: `serve.ingress` snapshots the module's globals.)
async def _read_body(request: Request, limit: int) -> bytes:
    """The body, refused with 413 past `limit` bytes (on Content-Length, then as it comes)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ApiError(f"Request body of {declared} bytes exceeds the limit of {limit} bytes",
                       413)
    raw = bytearray()
    async for part in request.stream():
        raw += part
        if len(raw) > limit:
            raise ApiError(f"Request body exceeds the limit of {limit} bytes", 413)
    return bytes(raw)


def _reason(exc: BaseException) -> str:
    """One line for a failed engine call (no internal stack, bounded)."""
    text = str(exc).strip().splitlines()
    line = text[0] if text else type(exc).__name__
    return f"{type(exc).__name__}: {line[:200]}"


api = FastAPI(title="BOute router", docs_url=None, redoc_url=None, openapi_url=None)


@serve.deployment(ray_actor_options={"num_cpus": 0}, max_ongoing_requests=MAX_ONGOING_REQUESTS,
                  graceful_shutdown_timeout_s=ROUTER_SHUTDOWN_TIMEOUT_S)
@serve.ingress(api)
class RouterIngress:
    """OpenAI-compatible entry; see the module docstring.

    ``groups``: deployment name -> handle; ``user_config``: ``{"weak", "strong",
    "strong_share", "threshold", "router", "seed", "shares": {model: {group: share}},
    "limits": {group: in-flight bound}, "replicas": {group: n}, "context": {model: tokens},
    "call_timeout_s", "api_keys": [{id, sha256, rate_rps?, burst?}] or null (open),
    "settings": RouterSettings}``, and in the stack layout (`app.main.stack_config`)
    ``"apps": {group: application}`` whose handles are looked up by name, plus ``config_id``,
    echoed by ``/health`` once applied.
    """

    def __init__(self, groups: dict[str, DeploymentHandle[Any]],
                 log_dir: str | None = None, log_rotate_s: float = 60.0) -> None:
        # Handles bound by `serve run`'s process carry that process's transport defaults;
        # taken again here, they use the cluster's (gRPC in Serve's high-throughput mode).
        self.handles = {name: serve.get_deployment_handle(h.deployment_name, h.app_name)
                        for name, h in groups.items()}
        self.obs = Observer(log_dir, log_rotate_s)
        self.live: LiveThreshold | None = None
        self.ladder_models: list[str] = []
        self.length_tokens: int | None = None
        self.cascades: dict[str, LiveCascade] = {}
        self.workload_counts: Counter[tuple[str, str]] = Counter()
        self.router_name: str | None = None
        self.config_id: str | None = None
        self.pool: GroupPool | None = None
        self.keys: ApiKeys | None = None
        self.settings = RouterSettings()
        self.limits = self.settings.limits
        self.context: dict[str, int] = {}
        self.plan_p95_s: float | None = None
        self.counts: Counter[str] = Counter()
        self.outcomes: Counter[str] = Counter()
        self.pinned = self.routed = self.errors = 0
        self.calls: dict[str, set[asyncio.Task[Any]]] = {}
        self.aborted: set[asyncio.Task[Any]] = set()
        self._watcher: asyncio.Task[None] | None = None
        self.started = time.time()

    # -- configuration ---------------------------------------------------------------------
    def reconfigure(self, config: dict[str, Any]) -> None:
        """Apply a routing config live (Serve calls this on every user_config change)."""
        settings = RouterSettings.from_config(config.get("settings"))
        keys_cfg = config.get("api_keys")
        keys = None if keys_cfg is None else ApiKeys.from_config(list(keys_cfg))
        self.weak, self.strong = config["weak"], config["strong"]
        router_name = config.get("router", "builtin")
        if self.router_name != router_name:
            self.router = make_router(router_name, int(config.get("seed", 0)))
            self.router_name = router_name
        threshold = config.get("threshold")
        threshold = math.nan if threshold is None else float(threshold)
        if self.live is not None:
            self.live.set_share(float(config["strong_share"]), threshold)
        else:
            self.live = LiveThreshold(float(config["strong_share"]), threshold,
                                      seed=int(config.get("seed", 0)))
        self._set_ladder(config)
        for group, app_name in config.get("apps", {}).items():   # the stack layout
            if group not in self.handles:
                # Not checked for existence: the group applications deploy beside the router
                # and a vLLM one can take minutes to build (importing vLLM on a busy node);
                # the handle resolves once it exists (the deploy waits for every app).
                self.handles[group] = serve.get_deployment_handle(group, app_name,
                                                                  _check_exists=False)
        shares = config["shares"]
        missing = {g for s in shares.values() for g in s} - set(self.handles)
        if missing:
            raise RouterError(f"shares name unknown groups {sorted(missing)}")
        if self.pool is None:
            self.pool = GroupPool(shares, config.get("limits"), config.get("replicas"),
                                  fail_threshold=settings.fail_threshold,
                                  cooldown_s=settings.cooldown_s)
        else:
            self.pool.fail_threshold = settings.fail_threshold
            self.pool.cooldown_s = settings.cooldown_s
            self.pool.update(shares, config.get("limits"), config.get("replicas"))
        if keys is not None and self.keys is not None:
            keys.carry_buckets(self.keys)
        self.keys, self.settings, self.limits = keys, settings, settings.limits
        self.context = {str(m): int(n) for m, n in (config.get("context") or {}).items()}
        p95 = config.get("plan_p95_s")
        self.plan_p95_s = float(p95) if p95 is not None else None
        self.config_id = config.get("config_id")

    def _set_ladder(self, config: dict[str, Any]) -> None:
        """The ladder's models and each workload's cascade (kept live across configs)."""
        self.ladder_models = list(dict.fromkeys(config.get("models") or [self.weak, self.strong]))
        tokens = config.get("length_threshold_tokens")
        self.length_tokens = None if tokens is None else int(tokens)
        workloads = config.get("workloads") or {}
        cascades = {}
        for i, (name, w) in enumerate(workloads.items()):
            shares = [float(v) for v in w["shares"]]
            if len(shares) != len(self.ladder_models):
                raise RouterError(f"workload {name!r}: {len(shares)} shares for "
                                  f"{len(self.ladder_models)} models")
            tails = [sum(shares[k:]) for k in range(1, len(shares))]
            th = [math.nan if v is None else float(v) for v in w.get("thresholds") or []]
            old = self.cascades.get(name)
            if old is not None:
                old.set_tails(tails, th or None)
                cascades[name] = old
            else:
                cascades[name] = LiveCascade(tails, th or None,
                                             seed=int(config.get("seed", 0)) + i)
        self.cascades = cascades

    @property
    def ladder(self) -> bool:
        """Per-workload cascades over K models (else the pair's threshold)."""
        return bool(self.cascades)

    @property
    def call_timeout_s(self) -> float:
        """The engine-call deadline in force."""
        if self.settings.call_timeout_s is not None:
            return self.settings.call_timeout_s
        return max(30.0, 4.0 * (self.plan_p95_s or 0.0))

    # -- liveness ------------------------------------------------------------------------
    def _start(self) -> None:
        self.obs.start()
        if self._watcher is None or self._watcher.done():
            self._watcher = asyncio.get_running_loop().create_task(self._watch())

    async def _watch(self) -> None:
        """Poll Serve's replica states; abort the calls waiting on a group that lost some."""
        while True:
            try:
                self._export_routing()
                status = await asyncio.to_thread(serve.status)
                self._liveness(status)
            except asyncio.CancelledError:
                raise
            except Exception:       # the controller is restarting: keep the last view
                pass
            await asyncio.sleep(LIVENESS_POLL_S)

    def _export_routing(self) -> None:
        """Set the routing gauges.

        Every 50 routed requests and on each liveness poll, so a dashboard shows the target
        of an idle router too.
        """
        if self.live is None:
            return
        total = sum(self.counts.values())
        self.obs.routing_state(self.counts[self.strong] / total if total else None,
                               self.live.strong_share, self.live.threshold)

    def _liveness(self, status: Any) -> None:
        if self.pool is None:
            return
        apps = status.applications
        for group, handle in self.handles.items():
            if group not in self.pool.groups:
                continue
            app = apps.get(handle.app_name)
            dep = app.deployments.get(handle.deployment_name) if app is not None else None
            running = int((dep.replica_states or {}).get("RUNNING", 0)) if dep else 0
            lost = self.pool.set_replicas(group, running)
            self.obs.group_state(group, self.pool.groups[group].state(time.monotonic()))
            if lost:
                for task in list(self.calls.get(group, ())):
                    self.aborted.add(task)
                    task.cancel()

    # -- the request path ------------------------------------------------------------------
    async def _forward(self, kind: str, request: Request) -> Any:
        self._start()
        call = _Call(kind, time.time(), time.perf_counter())
        try:
            return await self._serve(call, request)
        except ApiError as exc:
            return self._refuse(call, exc)
        except asyncio.CancelledError:
            self._done(call, STATUS_ABANDONED, "abandoned")
            raise
        except Exception as exc:            # a bug: still an OpenAI body, logged
            self.errors += 1
            self._done(call, 500, "internal_error")
            return JSONResponse(error_body(500, f"internal error: {_reason(exc)}",
                                           "internal_error"), 500, call.headers)

    async def _serve(self, call: _Call, request: Request) -> Any:
        assert self.live is not None and self.pool is not None, "reconfigure() runs first"
        if self.keys is not None:
            entry: KeyEntry = self.keys.authenticate(request.headers.get("authorization"))
            call.key_id = entry.id
            self.keys.admit(entry)
        body = parse_body(await _read_body(request, self.limits.max_body_bytes), self.limits)
        check_body(call.kind, body, self.limits)
        call.workload_asked = request.headers.get(WORKLOAD_HEADER)
        call.stream = bool(body.get("stream"))
        self._route(call, body)
        return await self._dispatch(call, body)

    def _route(self, call: _Call, body: dict[str, Any]) -> None:
        """Set the call's model and router score (None when pinned)."""
        assert self.live is not None and self.pool is not None
        self.routed += 1
        if self.routed % 50 == 0:
            self._export_routing()
        asked = body.get("model")
        known = ", ".join(repr(m) for m in self.ladder_models)
        if asked is None:
            raise ApiError(f"model is required: 'auto' to route, or one of {known}",
                           param="model")
        prompt = prompt_of(call.kind, body)
        call.prompt_tokens = estimate_tokens(prompt)
        if isinstance(asked, str) and asked.startswith("auto:"):
            call.workload_asked, asked = asked.removeprefix("auto:"), "auto"
        if asked in ROUTED_MODELS:
            s = float(self.router.calculate_strong_win_rate(prompt))
            if self.ladder:
                call.workload = self._workload(call.workload_asked)
                call.model = self.ladder_models[self.cascades[call.workload].route(s)]
                self.workload_counts[(call.workload, call.model)] += 1
            else:
                call.workload = self._workload(call.workload_asked)
                call.model = self.strong if self.live.route_strong(s) else self.weak
            call.score = s
            self.counts[call.model] += 1
        elif asked in self.ladder_models:
            if not self._serves(asked):             # a plan may serve one model only
                raise ApiError(f"The model {asked!r} has no replicas in the running plan; use "
                               "'auto'", 404, "model", "model_not_found")
            self.pinned += 1
            call.model = str(asked)
        else:
            raise ApiError(f"The model {asked!r} does not exist; use 'auto' to route, or one "
                           f"of {known}", 404, "model", "model_not_found")
        call.length_class = self._length_class(body, call.prompt_tokens)

    def _length_class(self, body: dict[str, Any], prompt_tokens: int) -> str | None:
        """``short`` when prompt + max_tokens <= the plan's threshold, else ``long``.

        A request without ``max_tokens`` (or ``max_completion_tokens``) may generate up to
        the context: it is long. None when the plan has no length classes.
        """
        if self.length_tokens is None:
            return None
        limit = body.get("max_tokens", body.get("max_completion_tokens"))
        if not isinstance(limit, int) or isinstance(limit, bool):
            return LENGTH_CLASSES[1]
        return (LENGTH_CLASSES[0] if prompt_tokens + limit <= self.length_tokens
                else LENGTH_CLASSES[1])

    def _serves(self, model: str) -> bool:
        """Whether the running plan has a group of `model` (of any length class)."""
        assert self.pool is not None
        return any(k == model or k.startswith(f"{model}#") for k in self.pool.pickers)

    def _keys(self, call: _Call) -> list[str]:
        """The pool keys a call may use, in order: its model, or its class then the other."""
        if call.length_class is None:
            return [call.model]
        other = LENGTH_CLASSES[1 - LENGTH_CLASSES.index(call.length_class)]
        return [f"{call.model}#{call.length_class}", f"{call.model}#{other}"]

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

    def _other_model(self, model: str) -> str | None:
        """Where a request goes when its model is down (None: nowhere).

        The nearest served model of the ladder, the larger one first (a pair: the other).
        """
        if model not in self.ladder_models:
            return None
        i = self.ladder_models.index(model)
        rank = self.ladder_models.index
        order = sorted((m for m in self.ladder_models if m != model),
                       key=lambda m: (abs(rank(m) - i), rank(m) < i))
        return next((m for m in order if self.pool is not None and self._serves(m)), None)

    def _next_group(self, call: _Call, tried: set[str]) -> str:
        """The group of the next try, switching model when this one is down.

        Raises:
            ApiError: 429 (every healthy group of the model is full) or 503 (no model left).

        """
        assert self.pool is not None
        now = time.monotonic()
        # Its own length class first; the other class only when every group of its own is
        # down (a full class answers 429: spilling would break the other class's P95).
        for key in self._keys(call):
            group = self.pool.pick(key, now, tried)
            if group is not None:
                return group
            if self.pool.reachable(key, now, tried):
                raise ApiError(f"The {call.model} model is at its capacity; retry shortly",
                               429, kind="rate_limit_error", retry_after_s=1.0)
        other = self._other_model(call.model)
        if (self.settings.on_model_down == "fallback" and call.degraded is None
                and other is not None):
            self.obs.degraded(call.model)
            call.degraded, call.model = call.model, other
            return self._next_group(call, tried)
        raise ApiError(f"No replica of {call.degraded or call.model} is reachable now; retry "
                       "later", 503, kind="service_unavailable", retry_after_s=5.0)

    async def _dispatch(self, call: _Call, body: dict[str, Any]) -> Any:
        assert self.pool is not None
        tried: set[str] = set()
        while True:
            group = self._next_group(call, tried)
            ctx = self.context.get(call.model)
            if ctx is not None:
                check_max_tokens(body, ctx)     # the rest was checked on arrival
            call.group = group
            call.tries += 1
            call.headers = self._headers(call)
            fwd = {**body, "model": call.model}
            self.pool.acquire(group)
            released = False
            try:
                if call.stream:
                    result = await self._stream(call, fwd)
                    released = True          # the stream releases its group when it ends
                    return result
                response = await self._call(
                    group, self.handles[group].openai.remote(call.kind, fwd))
                status = error_status(response) or 200
                if status >= 500:           # the engine's own failure: retry elsewhere
                    raise RuntimeError(response["error"].get("message"))
                self.pool.success(group)
                self._done(call, status, "client_error" if status >= 400 else
                           "degraded" if call.degraded else "ok",
                           response.get("usage") if isinstance(response, dict) else None)
                return JSONResponse(response, status, call.headers)
            except Exception as exc:        # _Aborted, TimeoutError, an engine failure
                if self.pool.failure(group, time.monotonic()):
                    self.obs.group_state(group, "ejected")
                tried.add(group)
                if call.tries >= self.settings.max_tries:
                    self.errors += 1
                    self._done(call, 502, "engine_error")
                    return JSONResponse(error_body(
                        502, f"replica group {group} failed after {call.tries} tries: "
                        f"{_reason(exc)}", "engine_error"), 502, call.headers)
                self.obs.retry(group)
                await asyncio.sleep(0.05 * call.tries * (1 + random.random()))
            finally:
                if not released:
                    self.pool.release(group)

    async def _call(self, group: str, response: Any, *, first_item: bool = False) -> Any:
        """One engine call's result (a stream's first item) under the deadline, abortable.

        Raises:
            _Aborted: the group lost replicas while the call waited.
            TimeoutError: past the deadline (the call is cancelled).

        """
        async def wait() -> Any:
            if first_item:
                return await response.__anext__()
            return await response

        task: asyncio.Task[Any] = asyncio.ensure_future(wait())
        self.calls.setdefault(group, set()).add(task)
        try:
            return await asyncio.wait_for(task, self.call_timeout_s)
        except asyncio.CancelledError:
            response.cancel()
            if task in self.aborted:
                raise _Aborted(f"{group} lost replicas") from None
            raise
        except TimeoutError:
            response.cancel()
            raise TimeoutError(f"no answer from {group} within {self.call_timeout_s:g} s"
                               ) from None
        finally:
            self.calls[group].discard(task)
            self.aborted.discard(task)

    async def _stream(self, call: _Call, body: dict[str, Any]) -> Any:
        """Start a stream: its first item under the deadline (retryable), then pass it on."""
        assert self.pool is not None
        group = call.group
        gen: DeploymentResponseGenerator[Any] = self.handles[group].options(  # type: ignore[assignment]
            stream=True).openai.remote(call.kind, body)
        try:
            first = await self._call(group, gen, first_item=True)
        except StopAsyncIteration:
            first = sse("[DONE]")
        ttft = time.perf_counter() - call.t0
        rejected = error_status(first)
        if rejected is not None and rejected >= 500:    # the engine's failure: retryable
            raise RuntimeError(f"{group}: {first['error'].get('message')}")
        if rejected is not None:
            self.pool.release(group)
            self._done(call, rejected, "client_error")
            return JSONResponse(first, rejected, call.headers)
        self.pool.success(group)
        timeout = self.call_timeout_s

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
                self.errors += 1
                code, outcome = 502, "engine_error"
                finished = True
                yield sse(error_body(502, f"{group}: {_reason(exc)}", "engine_error"))
                yield sse("[DONE]")
            finally:
                if not finished:
                    gen.cancel()  # type: ignore[no-untyped-call]
                self.pool.release(group)  # type: ignore[union-attr]
                self._done(call, code, outcome, output_tokens=tokens, ttft_s=ttft)
        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers=call.headers)

    # -- responses and records -----------------------------------------------------------
    def _headers(self, call: _Call) -> dict[str, str]:
        h = {"x-boute-model": call.model, "x-boute-group": call.group,
             "x-boute-score": "pinned" if call.score is None else f"{call.score:.6f}"}
        if call.degraded:
            h["x-boute-degraded"] = call.degraded
        if call.length_class is not None:
            h["x-boute-length-class"] = call.length_class
        if call.tries > 1:
            h["x-boute-tries"] = str(call.tries)
        return h

    def _refuse(self, call: _Call, exc: ApiError) -> JSONResponse:
        outcome = {401: "unauthorized", 413: "too_large",
                   429: "rate_limited" if call.model == "" else "shed",
                   503: "unavailable"}.get(exc.status, "client_error")
        headers = dict(call.headers)
        if exc.status == 401:
            headers["www-authenticate"] = "Bearer"
        if exc.retry_after_s is not None:
            headers["retry-after"] = str(max(1, math.ceil(exc.retry_after_s)))
        self._done(call, exc.status, outcome)
        return JSONResponse(exc.body(), exc.status, headers)

    def _done(self, call: _Call, status: int, outcome: str,
              usage: dict[str, Any] | None = None, output_tokens: int = 0,
              ttft_s: float | None = None) -> None:
        usage = usage or {}
        latency = time.perf_counter() - call.t0
        if ttft_s is None:
            ttft_s = latency if status < 400 else math.nan
        self.outcomes[outcome] += 1
        self.obs.observe(
            arrival_s=call.arrival_s, model=call.model, group=call.group, score=call.score,
            status=status, ttft_s=ttft_s, latency_s=latency,
            prompt_tokens=int(usage.get("prompt_tokens") or call.prompt_tokens),
            output_tokens=int(usage.get("completion_tokens") or output_tokens),
            stream=call.stream, key_id=call.key_id, outcome=outcome, workload=call.workload,
            length_class=call.length_class)

    def __del__(self) -> None:
        """Serve calls this on a graceful shutdown: flush the request log."""
        self.obs.close()

    # -- routes --------------------------------------------------------------------------
    @api.post("/v1/chat/completions")
    async def chat(self, request: Request) -> Any:
        """OpenAI chat completions (streaming and not)."""
        return await self._forward("chat", request)

    @api.post("/v1/completions")
    async def completions(self, request: Request) -> Any:
        """OpenAI completions (streaming and not)."""
        return await self._forward("completions", request)

    @api.get("/v1/models")
    async def models(self, request: Request) -> Any:
        """``auto`` (routed) and the served models (pinned)."""
        if self.keys is not None:
            try:
                self.keys.authenticate(request.headers.get("authorization"))
            except ApiError as exc:
                return JSONResponse(exc.body(), exc.status, {"www-authenticate": "Bearer"})
        aliases = [f"auto:{w}" for w in self.cascades]
        return {"object": "list", "data": [
            {"id": m, "object": "model", "owned_by": "boute"}
            for m in (ROUTED_MODELS[0], *aliases, *self.ladder_models)]}

    @api.get("/health")
    async def health(self, request: Request) -> Any:
        """Per-group state and the live routing state; 503 when a model is unreachable.

        Without a valid key (when keys are on) only ``status`` and ``config_id`` are shown.
        """
        self._start()
        assert self.live is not None and self.pool is not None
        pool = self.pool.health(time.monotonic())
        code = 503 if pool["status"] == "unavailable" else 200
        brief = {"status": pool["status"], "config_id": self.config_id}
        if self.keys is not None:
            try:
                self.keys.authenticate(request.headers.get("authorization"))
            except ApiError:
                return JSONResponse(brief, code)
        total = sum(self.counts.values())
        ladder = {}
        for name, cascade in self.cascades.items():
            n = sum(v for (w, _), v in self.workload_counts.items() if w == name)
            tails = (1.0, *cascade.tails, 0.0)
            ladder[name] = {
                "requests": n,
                "target": {m: tails[k] - tails[k + 1] for k, m in enumerate(self.ladder_models)},
                "routed": {m: self.workload_counts[(name, m)] / n if n else None
                           for m in self.ladder_models},
                "thresholds": [t if math.isfinite(t) else None for t in cascade.thresholds]}
        return JSONResponse({
            **brief, "models": pool["models"], "groups": pool["groups"],
            "requests": total, "pinned": self.pinned, "errors": self.errors,
            "outcomes": dict(self.outcomes),
            "strong_share_target": self.live.strong_share,
            "strong_share_routed": (self.counts[self.strong] / total) if total else None,
            "threshold": (self.live.threshold if math.isfinite(self.live.threshold) else None),
            "router": self.router_name, "call_timeout_s": self.call_timeout_s,
            "auth": self.keys is not None, "routed_models": dict(self.counts),
            **({"workloads": ladder} if ladder else {})}, code)
