"""Serve deployments: the emulated LLM server and the router ingress.

`RouterIngress` is the app's HTTP entry (OpenAI-compatible): it scores each prompt with the
plan's router, sends it to the strong or weak model by the live-calibrated threshold, picks
one of that model's replica groups by the plan's shares (smooth weighted round robin) and
forwards the request body through the group's DeploymentHandle; streaming passes through as
server-sent events. Routing changes arrive as ``user_config`` (`RouterIngress.reconfigure`):
share, threshold, router, group shares — live, nothing restarts.

Every backend deployment answers ``chat(body)`` / ``completions(body)`` with an OpenAI
response dict, or, for ``stream: true`` bodies called with ``options(stream=True)``, a
generator of chunk dicts.

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
from ray.serve.handle import DeploymentHandle

from .emulated import EmulatedEngine, estimate_tokens
from .openai_api import ApiError, chunk, completion, prompt_of, sse, stream_ident
from .routing import LiveThreshold, RouterError, SmoothWeightedRoundRobin, make_router

__all__ = ["EmulatedLLMServer", "RouterIngress"]

DEFAULT_MAX_TOKENS = 128


@serve.deployment(ray_actor_options={"num_cpus": 0})
class EmulatedLLMServer:
    """One replica of a group, emulated on the stage-1 model (see `app.emulated`)."""

    def __init__(self, model: str, gpu: str, tp: int, pp: int,
                 gpu_catalog: list[str] | None = None,
                 model_catalog: list[str] | None = None) -> None:
        from profiling import ReplicaModel, load_catalog

        catalog = load_catalog(gpu_catalog or (), model_catalog or ())
        self.model = model
        self.engine = EmulatedEngine(ReplicaModel(catalog.model(model), catalog.gpu(gpu),
                                                  tp, pp))

    async def _run(self, kind: str, body: dict[str, Any], prompt_tokens: int
                   ) -> AsyncIterator[dict[str, Any]]:
        max_tokens = int(body.get("max_tokens") or DEFAULT_MAX_TOKENS)
        ident = stream_ident(kind)
        async for i in self.engine.generate(prompt_tokens, max_tokens):
            last = i + 1 == max_tokens
            yield chunk(kind, self.model, " tok", ident, "length" if last else None)

    async def _answer(self, kind: str, body: dict[str, Any]) -> Any:
        prompt_tokens = estimate_tokens(prompt_of(kind, body))
        if body.get("stream"):
            return self._run(kind, body, prompt_tokens)
        n = 0
        async for _ in self._run(kind, body, prompt_tokens):
            n += 1
        return completion(kind, self.model, " tok" * n, prompt_tokens, n)

    async def chat(self, body: dict[str, Any]) -> Any:
        """``/v1/chat/completions`` body -> response dict or chunk generator."""
        return await self._answer("chat", body)

    async def completions(self, body: dict[str, Any]) -> Any:
        """``/v1/completions`` body -> response dict or chunk generator."""
        return await self._answer("completions", body)


api = FastAPI(title="BOute router")


@serve.deployment(ray_actor_options={"num_cpus": 0})
@serve.ingress(api)
class RouterIngress:
    """OpenAI-compatible entry; see the module docstring.

    ``groups``: deployment name -> handle; ``user_config``: ``{"weak", "strong",
    "strong_share", "threshold", "router", "seed", "shares": {model: {group: share}}}``.
    """

    def __init__(self, groups: dict[str, DeploymentHandle[Any]]) -> None:
        self.handles = groups
        self.live: LiveThreshold | None = None
        self.router_name: str | None = None
        self.counts: Counter[str] = Counter()
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
        self.pickers = {}
        for model, shares in config["shares"].items():
            missing = set(shares) - set(self.handles)
            if missing:
                raise RouterError(f"shares name unknown groups {sorted(missing)}")
            self.pickers[model] = SmoothWeightedRoundRobin(shares)

    def _route(self, kind: str, body: dict[str, Any]) -> tuple[str, str, float]:
        assert self.live is not None, "reconfigure() runs before the first request"
        score = float(self.router.calculate_strong_win_rate(prompt_of(kind, body)))
        model = self.strong if self.live.route_strong(score) else self.weak
        group = self.pickers[model].pick()
        self.counts[model] += 1
        return model, group, score

    async def _forward(self, kind: str, request: Request) -> Any:
        try:
            body = await request.json()
        except ValueError:
            return JSONResponse({"error": {"message": "body is not valid JSON"}}, 400)
        if not isinstance(body, dict):
            return JSONResponse({"error": {"message": "body must be a JSON object"}}, 400)
        try:
            model, group, score = self._route(kind, body)
        except ApiError as exc:
            return JSONResponse({"error": {"message": str(exc), "type": "invalid_request"}},
                                400)
        headers = {"x-boute-model": model, "x-boute-group": group,
                   "x-boute-score": f"{score:.6f}"}
        handle = self.handles[group]
        method = "chat" if kind == "chat" else "completions"
        if not body.get("stream"):
            try:
                result = await getattr(handle, method).remote(body)
            except Exception as exc:        # engine failure -> 502, counted
                self.errors += 1
                return JSONResponse({"error": {"message": f"{group}: {exc}"}}, 502, headers)
            return JSONResponse(result, headers=headers)
        gen = getattr(handle.options(stream=True), method).remote(body)

        async def events() -> AsyncIterator[str]:
            try:
                async for c in gen:
                    yield sse(c)
            except Exception as exc:
                self.errors += 1
                yield sse({"error": {"message": f"{group}: {exc}"}})
            yield sse("[DONE]")
        return StreamingResponse(events(), media_type="text/event-stream", headers=headers)

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
        """The two served models (a request's ``model`` field is advisory: the router picks)."""
        return {"object": "list", "data": [
            {"id": m, "object": "model", "owned_by": "boute"} for m in (self.weak,
                                                                         self.strong)]}

    @api.get("/health")
    async def health(self) -> dict[str, Any]:
        """Liveness plus the live routing state."""
        assert self.live is not None
        total = sum(self.counts.values())
        return {"status": "ok", "requests": total, "errors": self.errors,
                "strong_share_target": self.live.strong_share,
                "strong_share_routed": (self.counts[self.strong] / total) if total else None,
                "threshold": (self.live.threshold if math.isfinite(self.live.threshold)
                              else None),
                "router": self.router_name}
