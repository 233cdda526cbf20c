"""The group deployments' request router for ``affinity="prefix"`` (see `app.affinity`)."""

from __future__ import annotations

from typing import Any

# The class that `ray.serve.llm.request_router.PrefixCacheAffinityRouter` re-exports (that
# public name is a bare subclass of it), from its own module: the public module also imports
# the KV-aware router, which pulls in vLLM and torch (two minutes and a few hundred MB in the
# BOute router's process, which never runs an engine).
from ray.llm._internal.serve.routing_policies.prefix_aware.prefix_aware_router import (
    PrefixCacheAffinityRouter,
)
from ray.serve.config import RequestRouterConfig

from .affinity import DEFAULT_IMBALANCE, check_affinity, routing_text

__all__ = ["BodyPrefixRouter", "request_router_config"]


class BodyPrefixRouter(PrefixCacheAffinityRouter):
    """Ray Serve LLM's `PrefixCacheAffinityRouter` on BOute's ``openai(kind, body)`` calls.

    Only the text extraction differs (`routing_text`); a call of another shape (Ray's own
    request objects) is read as Ray's router reads it.
    """

    def _extract_text_from_request(self, pending_request: Any) -> str:
        args = pending_request.args
        if len(args) >= 2 and isinstance(args[0], str) and isinstance(args[1], dict):
            return routing_text(args[0], args[1])
        return str(super()._extract_text_from_request(pending_request))


def request_router_config(affinity: str, imbalance: int = DEFAULT_IMBALANCE
                          ) -> RequestRouterConfig | None:
    """The group deployments' ``request_router_config`` (None: Serve's default router).

    Args:
        affinity: `AFFINITIES`.
        imbalance: `DEFAULT_IMBALANCE`'s meaning (Ray's ``imbalanced_threshold``).

    Raises:
        ValueError: as `check_affinity`.

    """
    check_affinity(affinity, imbalance)
    if affinity == "off":
        return None
    options: dict[str, Any] = {"request_router_class": BodyPrefixRouter,
                               "request_router_kwargs": {"imbalanced_threshold": imbalance}}
    return RequestRouterConfig(**options)
