"""The group deployments' request router for ``affinity="prefix"`` (see `app.affinity`)."""

from __future__ import annotations

import time
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

    The policy is Ray's; what differs: the text extraction (`routing_text`; a call of
    another shape, Ray's own request objects, is read as Ray's router reads it), and the
    tree insert after routing is not waited for (`on_request_routed`).
    """

    def on_request_routed(self, pending_request: Any, replica_id: Any, result: Any) -> None:
        """Ray's: the routed prompt goes into the prefix tree, but without waiting for it.

        Ray's router waits (``ray.get``) for the tree actor's insert here, on the caller's
        event loop, which is the BOute router's: every request would hold all the others
        for an actor round trip. The insert is sent and not awaited; the tree actor runs a
        caller's calls in order, so the next request's match still sees it.
        """
        if pending_request is not None and pending_request.args:
            text = self._extract_text_from_request(pending_request)
            self._tree_actor.insert.remote(text, replica_id.to_full_id_str(), time.time())

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
