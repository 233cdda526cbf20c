"""The engine side of the stack: the backend contract and the emulated LLM server.

The router (`app.ingress.RouterIngress`, through `app.dispatch.Dispatcher`) forwards each
request to a replica group's deployment.

The backend contract: every engine deployment (emulated here, vLLM in `app.vllm_server`)
has ``openai(kind, body)`` with ``kind`` ``"chat"`` or ``"completions"`` and an OpenAI request
body. Without ``stream`` it returns the response dict, or an OpenAI error body
``{"error": {..., "code": 4xx}}``; with ``stream: true`` (called through
``options(stream=True)``) it returns an async generator of server-sent-event text ending
with ``data: [DONE]``, whose only item is an error body when the request is rejected. Bad
requests therefore come back as 4xx with an OpenAI error body; an engine failure is a 502
for that request alone (the router retries it elsewhere when no byte was sent). Every engine
deployment also has ``ping()``, the router's liveness probe: it answers ``True`` at once
while the replica's event loop runs (vLLM: while its engine passes its health check).

The emulated deployment also takes a ``user_config`` (`app.emulated.EngineSettings`, live,
a dry-run feature): ``speed_factor`` runs its engines at that times the model's speed
(`app.deploy.set_engine_speed`), to rehearse a group that drifted from its profile.

With ``prefix_cache`` (`app.stack.Stack.prefix_cache`) each replica models vLLM's prefix
cache (`app.emulated`): a chat's leading ``system`` messages are its application's system
prompt, its session the body's ``user`` (else its first other message); ``prefix_cache_stats()``
gives the replica's hit rate, so cache-affine routing (`app.affinity`) shows in a dry run.

Prefill/decode pool pairs (a plan's groups with ``role``): the decode group is the one the
router sees (a "pd group"); its deployment, given ``prefill`` (the prefill group's
application, GPU, TP, PP), sends each request's prompt to the prefill group first, waits the
KV transfer, then decodes with the prompt's KV present (`EmulatedEngine` ``remote_kv``) and
streams from its own first token, as vLLM's P/D proxy does. When the prefill group fails (a
lost pool), the decode group computes the prompt itself, as a co-located replica would.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from ray import serve

from .emulated import (
    EmulatedEngine,
    EngineSettings,
    SequenceTooLongError,
    Share,
    estimate_tokens,
)
from .openai_api import ApiError, chunk, completion, prompt_of, sse, stream_ident, token_prompts

__all__ = ["EmulatedLLMServer", "EngineSettings"]

_log = logging.getLogger(__name__)

DEFAULT_MAX_TOKENS = 128


# Requests a replica takes at once: Serve's default (5) would queue or reject in front of the
# engine, which does its own admission (max_num_seqs, KV cache) like vLLM.
MAX_ONGOING_REQUESTS = 4096
# Stream tokens are sent in batches this far apart. (Ray Serve LLM batches vLLM's stream every
# 50 ms; the emulator batches more coarsely so that a dry run of many streams on a small
# machine is not CPU-bound: TTFT and end-to-end times are unchanged, the first token is sent
# at once and the last one ends the stream.)
STREAM_INTERVAL_S = 0.25


# Serve checks every engine replica this often and gives up on one that does not answer
# within the timeout (defaults 10 s / 30 s): a replica on a lost node is replaced, and the
# router stops waiting on it (`app.ingress` polls, `app.dispatch` aborts), within about
# period + timeout.
HEALTH_CHECK_PERIOD_S, HEALTH_CHECK_TIMEOUT_S = 2.0, 5.0


@serve.deployment(ray_actor_options={"num_cpus": 0}, max_ongoing_requests=MAX_ONGOING_REQUESTS,
                  health_check_period_s=HEALTH_CHECK_PERIOD_S,
                  health_check_timeout_s=HEALTH_CHECK_TIMEOUT_S)
class EmulatedLLMServer:
    """One replica of a group, emulated on the stage-1 model (see `app.emulated`)."""

    def __init__(self, model: str, gpu: str, tp: int, pp: int,
                 gpu_catalog: list[str] | None = None,
                 model_catalog: list[str] | None = None, time_scale: float = 1.0,
                 prefix_cache: bool = False,
                 prefill: dict[str, Any] | None = None) -> None:
        from profiling import ReplicaModel, kv_link, load_catalog

        catalog = load_catalog(gpu_catalog or (), model_catalog or ())
        arch = catalog.model(model)
        self.model = model
        self.arch = arch
        self.max_context = arch.max_position_embeddings
        replica = ReplicaModel(arch, catalog.gpu(gpu), tp, pp)
        self.time_scale = time_scale
        self.prefill = prefill
        if prefill is not None:     # the decode pool of a pool pair (`_prefill_first`)
            peer = ReplicaModel(arch, catalog.gpu(prefill["gpu"]), int(prefill["tp"]),
                                int(prefill["pp"]))
            self.link = kv_link(peer, replica, same_node=False)
        self.engine = EmulatedEngine(replica, time_scale, prefix_cache,
                                     remote_kv=prefill is not None)
        self._ids: dict[str, dict[str, int]] = {}      # kind -> text -> id (0, 1, ...)

    def _id(self, kind: str, text: str) -> int:
        ids = self._ids.setdefault(kind, {})
        return ids.setdefault(text, len(ids))

    def _share(self, kind: str, body: dict[str, Any]) -> Share | None:
        """What the prompt shares (`app.emulated.Share`); None without the prefix cache.

        Chat: the leading ``system`` messages are its application's system prompt; its
        session is the body's ``user`` (the router copies ``x-session-id`` there), else its
        first other message (a chat's history starts the same in every turn). Completions:
        the session is ``user``; no system prompt.
        """
        if self.engine.prefix_cache is None:
            return None
        user = body.get("user")
        session = self._id("user", user) if isinstance(user, str) and user else -1
        if kind != "chat":
            return (-1, 0, session)
        messages = [m for m in body.get("messages") or () if isinstance(m, dict)]
        system = ""
        k = 0
        while k < len(messages) and messages[k].get("role") == "system":
            system += _text(messages[k].get("content"))
            k += 1
        if session < 0 and k < len(messages):
            first = _text(messages[k].get("content"))
            session = self._id("user", f"\x1ffirst\x1f{system}\x1e{first}")
        if not system:
            return (-1, 0, session)
        return (self._id("system", system), estimate_tokens(system), session)

    async def _prefill_first(self, kind: str, body: dict[str, Any],
                             prompt_tokens: int) -> dict[str, Any] | None:
        """A decode pool's request: the prompt on the prefill pool, then its KV over the link.

        As vLLM's P/D proxy: the prefill instance runs the request with ``max_tokens=1``
        (its KV computed), the KV moves to this instance (`profiling.kv_link`'s transfer time
        of `profiling.kv_transfer_bytes`, emulated by a sleep), then this instance decodes
        and streams from its first token. Returns the prefill pool's error body, if any.
        """
        from profiling import kv_transfer_bytes

        assert self.prefill is not None
        handle = serve.get_app_handle(self.prefill["app"])
        out = await handle.openai.remote(kind, {**body, "stream": False, "max_tokens": 1})
        if isinstance(out, dict) and "error" in out:
            return out
        wait_s = self.link.transfer_s(kv_transfer_bytes(self.arch, prompt_tokens))
        await asyncio.sleep(wait_s * self.time_scale / self.engine.speed_factor)
        return None

    def _check(self, kind: str, body: dict[str, Any]) -> tuple[int, int]:
        """(prompt tokens, max tokens) of a valid body; raises ApiError as vLLM would.

        A chat's prompt is its whole conversation (every message's text, 4 characters per
        token), as vLLM reads it; it was the last user message alone, which made a
        multi-turn conversation's later turns as short as its first.
        """
        ids = token_prompts(body) if kind == "completions" else None
        text = prompt_of(kind, body) if ids is None else ""     # validates the body
        if kind == "chat":      # the whole conversation is the prompt, as vLLM reads it
            text = "".join(_text(m.get("content")) for m in body["messages"]
                           if isinstance(m, dict))
        prompt_tokens = max(len(p) for p in ids) if ids is not None else estimate_tokens(text)
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
        try:            # a sequence that can never fit the KV cache is refused, as in vLLM
            self.engine.check(prompt_tokens, max_tokens)
        except SequenceTooLongError as exc:
            raise ApiError(str(exc), param="max_tokens") from None
        return prompt_tokens, max_tokens

    async def _stream(self, kind: str, prompt_tokens: int, max_tokens: int,
                      share: Share | None = None, kv_present: bool = True
                      ) -> AsyncIterator[str]:
        """SSE text: the first token at once, then batches of `STREAM_INTERVAL_S`.

        (As Ray Serve LLM batches vLLM's stream.) The last batch ends with ``[DONE]``.
        """
        ident = stream_ident(kind)
        pending: list[str] = []
        flushed = time.monotonic()
        async for i in self.engine.generate(prompt_tokens, max_tokens, share,
                                            kv_present=kv_present):
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

    async def _error_stream_body(self, body: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        yield body

    def reconfigure(self, config: dict[str, Any]) -> None:
        """Take a ``user_config`` live (`EngineSettings`: ``speed_factor``).

        Raises:
            ValueError: a bad field (named); the engine keeps its speed.

        """
        self.engine.speed_factor = EngineSettings.parse(config).speed_factor

    async def ping(self) -> bool:
        """The router's liveness probe (the backend contract): True at once."""
        return True

    async def prefix_cache_stats(self) -> dict[str, Any]:
        """The replica's prefix cache: ``prompt_tokens``, ``cached_tokens``, ``hit_rate``.

        Over the requests admitted so far (zeros without the prefix cache); ``replica``:
        this replica's Serve id (to tell replicas apart).
        """
        replica = str(serve.get_replica_context().replica_id.unique_id)
        cache = self.engine.prefix_cache
        if cache is None:
            return {"replica": replica, "prompt_tokens": 0.0, "cached_tokens": 0.0,
                    "hit_rate": 0.0}
        return {"replica": replica, "prompt_tokens": float(cache.prompt_tokens),
                "cached_tokens": float(cache.cached_tokens_total), "hit_rate": cache.hit_rate}

    async def openai(self, kind: str, body: dict[str, Any]) -> Any:
        """The backend contract (see the module docstring)."""
        try:
            prompt_tokens, max_tokens = self._check(kind, body)
        except ApiError as exc:
            return self._error_stream(exc) if body.get("stream") else exc.body()
        share = self._share(kind, body)
        kv_present = True
        if self.prefill is not None:
            try:
                error = await self._prefill_first(kind, body, prompt_tokens)
            except Exception as exc:    # the prefill group is lost: compute the prompt here
                _log.warning("%s: prefill group %s failed (%s: %s); prompt computed on the "
                             "decode group", self.model, self.prefill["app"],
                             type(exc).__name__, exc)
                error, kv_present = None, False
            if error is not None:
                return self._error_stream_body(error) if body.get("stream") else error
        if body.get("stream"):
            return self._stream(kind, prompt_tokens, max_tokens, share, kv_present)
        n = 0
        async for _ in self.engine.generate(prompt_tokens, max_tokens, share,
                                            kv_present=kv_present):
            n += 1
        return completion(kind, self.model, " tok" * n, prompt_tokens, n)


def _text(content: Any) -> str:
    """A message's text (a string, or the ``text`` of its parts)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content
                       if isinstance(p, dict) and isinstance(p.get("text"), str))
    return ""
