"""Serve deployments: the emulated LLM server and the router ingress.

`RouterIngress` is the app's HTTP entry (OpenAI-compatible): it scores each prompt with the
plan's router, sends it to the strong or weak model by the live-calibrated threshold, picks
one of that model's replica groups by the plan's shares (smooth weighted round robin) and
forwards the request body through the group's DeploymentHandle; streaming passes through as
server-sent events. Routing changes arrive as ``user_config`` (`RouterIngress.reconfigure`):
share, threshold, router, group shares — live, nothing restarts.

The backend contract: every engine deployment (emulated here, vLLM in `app.vllm_server`)
has ``openai(kind, body)`` with ``kind`` ``"chat"`` or ``"completions"`` and an OpenAI request
body. Without ``stream`` it returns the response dict, or an OpenAI error body
``{"error": {..., "code": 4xx}}``; with ``stream: true`` (called through
``options(stream=True)``) it returns an async generator of server-sent-event text ending
with ``data: [DONE]``, whose only item is an error body when the request is rejected. Bad
requests therefore come back as 4xx with an OpenAI error body; an engine failure is a 502
for that request alone.

(No ``from __future__ import annotations`` here: FastAPI reads the route signatures' types at
runtime.)
"""


import math
import time
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from ray import serve
from ray.serve.handle import DeploymentHandle, DeploymentResponseGenerator

from .emulated import EmulatedEngine, estimate_tokens
from .observability import Observer
from .openai_api import (
    ApiError,
    chunk,
    completion,
    error_body,
    error_status,
    prompt_of,
    sse,
    stream_ident,
)
from .routing import LiveThreshold, RouterError, SmoothWeightedRoundRobin, make_router

__all__ = ["EmulatedLLMServer", "RouterIngress"]

DEFAULT_MAX_TOKENS = 128


# Requests a replica takes at once: Serve's default (5) would queue or reject in front of the
# engine, which does its own admission (max_num_seqs, KV cache) like vLLM.
MAX_ONGOING_REQUESTS = 4096
# Stream tokens are sent in batches this far apart. (Ray Serve LLM batches vLLM's stream every
# 50 ms; the emulator batches more coarsely so that a dry run of many streams on a small
# machine is not CPU-bound: TTFT and end-to-end times are unchanged, the first token is sent
# at once and the last one ends the stream.)
STREAM_INTERVAL_S = 0.25


@serve.deployment(ray_actor_options={"num_cpus": 0}, max_ongoing_requests=MAX_ONGOING_REQUESTS)
class EmulatedLLMServer:
    """One replica of a group, emulated on the stage-1 model (see `app.emulated`)."""

    def __init__(self, model: str, gpu: str, tp: int, pp: int,
                 gpu_catalog: list[str] | None = None,
                 model_catalog: list[str] | None = None, time_scale: float = 1.0) -> None:
        from profiling import ReplicaModel, load_catalog

        catalog = load_catalog(gpu_catalog or (), model_catalog or ())
        arch = catalog.model(model)
        self.model = model
        self.max_context = arch.max_position_embeddings
        self.engine = EmulatedEngine(ReplicaModel(arch, catalog.gpu(gpu), tp, pp), time_scale)

    def _check(self, kind: str, body: dict[str, Any]) -> tuple[int, int]:
        """(prompt tokens, max tokens) of a valid body; raises ApiError as vLLM would."""
        prompt_tokens = estimate_tokens(prompt_of(kind, body))
        max_tokens = body.get("max_tokens")
        max_tokens = DEFAULT_MAX_TOKENS if max_tokens is None else max_tokens
        if not isinstance(max_tokens, int) or max_tokens < 1:
            raise ApiError(f"max_tokens={max_tokens!r} must be a positive integer",
                           param="max_tokens")
        if prompt_tokens + max_tokens > self.max_context:
            raise ApiError(f"This model's maximum context length is {self.max_context} "
                           f"tokens. However, you requested {prompt_tokens + max_tokens} "
                           f"tokens ({prompt_tokens} in the messages, {max_tokens} in the "
                           "completion). Please reduce the length of the messages or "
                           "completion.", param="messages" if kind == "chat" else "prompt")
        return prompt_tokens, max_tokens

    async def _stream(self, kind: str, prompt_tokens: int, max_tokens: int
                      ) -> AsyncIterator[str]:
        """SSE text: the first token at once, then batches of `STREAM_INTERVAL_S`.

        (As Ray Serve LLM batches vLLM's stream.) The last batch ends with ``[DONE]``.
        """
        ident = stream_ident(kind)
        pending: list[str] = []
        flushed = time.monotonic()
        async for i in self.engine.generate(prompt_tokens, max_tokens):
            last = i + 1 == max_tokens
            pending.append(sse(chunk(kind, self.model, " tok", ident,
                                     "length" if last else None)))
            now = time.monotonic()
            if i == 0 or now - flushed >= STREAM_INTERVAL_S:
                yield "".join(pending)
                pending, flushed = [], now
        yield "".join(pending) + sse("[DONE]")

    async def _error_stream(self, exc: ApiError) -> AsyncIterator[dict[str, Any]]:
        yield exc.body()

    async def openai(self, kind: str, body: dict[str, Any]) -> Any:
        """The backend contract (see the module docstring)."""
        try:
            prompt_tokens, max_tokens = self._check(kind, body)
        except ApiError as exc:
            return self._error_stream(exc) if body.get("stream") else exc.body()
        if body.get("stream"):
            return self._stream(kind, prompt_tokens, max_tokens)
        n = 0
        async for _ in self.engine.generate(prompt_tokens, max_tokens):
            n += 1
        return completion(kind, self.model, " tok" * n, prompt_tokens, n)


api = FastAPI(title="BOute router")

ROUTED_MODELS = ("auto", "boute")


def _error(exc: ApiError, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(exc.body(), exc.status, headers)


# A router replica's graceful stop runs `__del__`, which flushes the request log; Serve
# force-kills it after `graceful_shutdown_timeout_s` (default 20 s). In Serve's
# high-throughput mode the ingress replica first stays open for the direct-ingress draining
# period (RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S, 30 s by default), so the router gets
# that plus time to drain and flush; an idle stop is not slower for it.
ROUTER_SHUTDOWN_TIMEOUT_S = 60.0


@serve.deployment(ray_actor_options={"num_cpus": 0}, max_ongoing_requests=MAX_ONGOING_REQUESTS,
                  graceful_shutdown_timeout_s=ROUTER_SHUTDOWN_TIMEOUT_S)
@serve.ingress(api)
class RouterIngress:
    """OpenAI-compatible entry; see the module docstring.

    ``groups``: deployment name -> handle; ``user_config``: ``{"weak", "strong",
    "strong_share", "threshold", "router", "seed", "shares": {model: {group: share}}}``, and in
    the stack layout (`app.main.stack_config`) ``"apps": {group: application}`` whose handles
    are looked up by name, plus ``config_id``, echoed by ``/health`` once applied.
    A request's ``model`` is ``"auto"`` (or ``"boute"``) to be routed, or one of the two
    model names to pin it to that model (not counted in the routed share).
    """

    def __init__(self, groups: dict[str, DeploymentHandle[Any]],
                 log_dir: str | None = None, log_rotate_s: float = 60.0) -> None:
        # Handles bound by `serve run`'s process carry that process's transport defaults;
        # taken again here, they use the cluster's (gRPC in Serve's high-throughput mode).
        self.handles = {name: serve.get_deployment_handle(h.deployment_name, h.app_name)
                        for name, h in groups.items()}
        self.obs = Observer(log_dir, log_rotate_s)
        self.live: LiveThreshold | None = None
        self.router_name: str | None = None
        self.config_id: str | None = None
        self.counts: Counter[str] = Counter()
        self.pinned = 0
        self.routed = 0
        self.errors = 0
        self.started = time.time()

    def reconfigure(self, config: dict[str, Any]) -> None:
        """Apply a routing config live (Serve calls this on every user_config change)."""
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
        for group, app_name in config.get("apps", {}).items():   # the stack layout
            if group not in self.handles:
                self.handles[group] = serve.get_deployment_handle(group, app_name)
        self.config_id = config.get("config_id")
        self.pickers = {}
        for model, shares in config["shares"].items():
            missing = set(shares) - set(self.handles)
            if missing:
                raise RouterError(f"shares name unknown groups {sorted(missing)}")
            self.pickers[model] = SmoothWeightedRoundRobin(shares)

    def _route(self, kind: str, body: dict[str, Any]) -> tuple[str, str, float | None]:
        """(model, group, router score or None when pinned) of a request body."""
        assert self.live is not None, "reconfigure() runs before the first request"
        self.routed += 1
        if self.routed % 50 == 0:
            total = sum(self.counts.values())
            self.obs.routing_state(self.counts[self.strong] / total if total else None,
                                   self.live.strong_share, self.live.threshold)
        asked = body.get("model")
        if asked is None:
            raise ApiError("model is required: 'auto' to route, or one of "
                           f"{self.weak!r}, {self.strong!r}", param="model")
        prompt = prompt_of(kind, body)
        if asked in ROUTED_MODELS:
            s = float(self.router.calculate_strong_win_rate(prompt))
            model = self.strong if self.live.route_strong(s) else self.weak
            self.counts[model] += 1
            return model, self.pickers[model].pick(), s
        if asked in (self.weak, self.strong):
            if asked not in self.pickers:       # a plan may serve one model only
                raise ApiError(f"The model {asked!r} has no replicas in the running plan; use "
                               "'auto'", 404, "model", "model_not_found")
            self.pinned += 1
            return str(asked), self.pickers[str(asked)].pick(), None
        raise ApiError(f"The model {asked!r} does not exist; use 'auto' to route, or one of "
                       f"{self.weak!r}, {self.strong!r}", 404, "model", "model_not_found")

    async def _forward(self, kind: str, request: Request) -> Any:
        self.obs.start()
        arrival, t0 = time.time(), time.perf_counter()
        try:
            body = await request.json()
        except ValueError:
            return _error(ApiError("body is not valid JSON"))
        if not isinstance(body, dict):
            return _error(ApiError("body must be a JSON object"))
        try:
            model, group, score = self._route(kind, body)
        except ApiError as exc:
            return _error(exc)
        headers = {"x-boute-model": model, "x-boute-group": group,
                   "x-boute-score": "pinned" if score is None else f"{score:.6f}"}
        body = {**body, "model": model}
        handle = self.handles[group]
        stream = bool(body.get("stream"))

        def done(status: int, ttft_s: float, usage: dict[str, Any] | None = None,
                 output_tokens: int = 0) -> None:
            usage = usage or {}
            self.obs.observe(
                arrival_s=arrival, model=model, group=group, score=score, status=status,
                ttft_s=ttft_s, latency_s=time.perf_counter() - t0,
                prompt_tokens=int(usage.get("prompt_tokens") or
                                  estimate_tokens(prompt_of(kind, body))),
                output_tokens=int(usage.get("completion_tokens") or output_tokens),
                stream=stream)

        if not stream:
            try:
                result = await handle.openai.remote(kind, body)
            except Exception as exc:        # engine failure -> 502 for this request only
                done(502, math.nan)
                return self._failed(group, exc, headers)
            status = error_status(result) or 200
            done(status, time.perf_counter() - t0, result.get("usage"))
            return JSONResponse(result, status, headers)
        gen: DeploymentResponseGenerator[Any] = handle.options(  # type: ignore[assignment]
            stream=True).openai.remote(kind, body)
        try:                                # the first item tells an error from a stream
            first = await gen.__anext__()
        except StopAsyncIteration:
            first = sse("[DONE]")
        except Exception as exc:
            done(502, math.nan)
            return self._failed(group, exc, headers)
        ttft = time.perf_counter() - t0
        rejected = error_status(first)
        if rejected is not None:
            done(rejected, math.nan)
            return JSONResponse(first, rejected, headers)

        async def events() -> AsyncIterator[str]:
            # Output tokens: the stream's data events (one per token in vLLM and the
            # emulated engine; vLLM's first chat event, the role, adds one).
            tokens, code = first.count("data: {"), 200
            try:
                yield first
                async for text in gen:
                    tokens += text.count("data: {")
                    yield text
            except Exception as exc:        # mid-stream failure: an error event, then done
                self.errors += 1
                code = 502
                yield sse(error_body(502, f"{group}: {exc}", "engine_error"))
                yield sse("[DONE]")
            finally:
                done(code, ttft, output_tokens=tokens)
        return StreamingResponse(events(), media_type="text/event-stream", headers=headers)

    def _failed(self, group: str, exc: Exception, headers: dict[str, str]) -> JSONResponse:
        self.errors += 1
        return JSONResponse(error_body(502, f"replica group {group} failed: {exc}",
                                       "engine_error"), 502, headers)

    def __del__(self) -> None:
        """Serve calls this on a graceful shutdown: flush the request log."""
        self.obs.close()

    @api.post("/v1/chat/completions")
    async def chat(self, request: Request) -> Any:
        """OpenAI chat completions (streaming and not)."""
        return await self._forward("chat", request)

    @api.post("/v1/completions")
    async def completions(self, request: Request) -> Any:
        """OpenAI completions (streaming and not)."""
        return await self._forward("completions", request)

    @api.get("/v1/models")
    async def models(self) -> dict[str, Any]:
        """``auto`` (routed) and the two served models (pinned)."""
        return {"object": "list", "data": [
            {"id": m, "object": "model", "owned_by": "boute"}
            for m in (ROUTED_MODELS[0], self.weak, self.strong)]}

    @api.get("/health")
    async def health(self) -> dict[str, Any]:
        """Liveness plus the live routing state."""
        assert self.live is not None
        total = sum(self.counts.values())
        return {"status": "ok", "requests": total, "pinned": self.pinned,
                "errors": self.errors, "strong_share_target": self.live.strong_share,
                "strong_share_routed": (self.counts[self.strong] / total) if total else None,
                "threshold": (self.live.threshold if math.isfinite(self.live.threshold)
                              else None),
                "router": self.router_name, "config_id": self.config_id}
