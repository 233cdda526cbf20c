"""Cache-affine routing inside a replica group: Ray Serve LLM's prefix-cache-affinity router.

A group's deployment picks a replica for each call with a Ray Serve *request router*
(``request_router_config``). By default that is Serve's power-of-two-choices router (two
random replicas, the shorter queue). With ``affinity="prefix"`` (`Stack.affinity`, ``boute
deploy --affinity prefix``) it is `ray.serve.llm.request_router.PrefixCacheAffinityRouter`,
Ray Serve LLM's own policy, unchanged:

1. load balanced (the replicas' queue lengths differ by at most ``imbalanced_threshold``):
   the replicas whose earlier prompts share the longest prefix with this one (a prefix tree
   of routed prompt text, one per deployment, in a detached actor); when that match is under
   ``match_rate_threshold`` of the prompt, the replicas holding the least text;
2. imbalanced: power of two choices;

then the shortest queue among those. A multi-turn chat's prompt holds its history, so every
turn matches the replica that served the previous one: a conversation stays on one replica
until the imbalance passes the threshold (then it moves, and its next turns follow the
replica that holds the longer prefix).

What BOute's router passes: the backend contract's ``openai(kind, body)`` (`app.emulated_server`)
is a (str, dict) call, where Ray's router looks for an argument with a ``messages`` or
``prompt`` attribute; `BodyPrefixRouter` is that router reading the OpenAI body instead (the
only change). A **session id** (the body's OpenAI ``user`` field, which the BOute router fills
from the ``x-session-id`` header, `SESSION_HEADER`, when the body has none) is put in front of
the text the tree sees: the session's requests then match only each other, and a new session
(no match) goes to the replica holding the least text, so sessions spread over the group and
each stays where it started until the imbalance moves it.

**Limit: Serve's high-throughput mode.** Under HAProxy (``RAY_SERVE_ENABLE_HA_PROXY=1``,
`placement.HIGH_THROUGHPUT_ENV`, as cluster.yaml starts its nodes) Serve refuses a custom
request router on an application's *ingress* deployment, and in the stack layout
(`app.main.stack_config`) each group's engine deployment is its application's ingress: the
group fails to deploy with Serve's message saying so. Affinity works there in the
one-application layout (``serve run app.main:app``, `app.main.build_app`: the engines are not
ingress deployments) and on clusters running Serve's own proxy.

Ray Serve LLM's other router, ``KVAwareRouter``, scores the engines' actual KV blocks through
a KV-event tracker that its own OpenAI ingress (``LLMRouter``) builds from tokenized prompts; it
does not fit behind BOute's router and is not offered.

This module is pure (the settings and the routing text); the Ray router class and the
deployment option are in `app.affinity_router`.
"""

from __future__ import annotations

from typing import Any, Literal

__all__ = ["AFFINITIES", "DEFAULT_IMBALANCE", "SESSION_HEADER", "Affinity", "check_affinity",
           "routing_text"]

Affinity = Literal["off", "prefix"]
AFFINITIES: tuple[Affinity, ...] = ("off", "prefix")
"""``off``: Serve's power of two choices (the default); ``prefix``: `BodyPrefixRouter`."""

DEFAULT_IMBALANCE = 8
"""Queue-length difference (requests) past which load balance overrides affinity.

Ray's default is infinite (affinity always wins, a hot replica keeps its sessions however
long its queue); BOute bounds it so that load imbalance moves a session, at about one
vLLM batch step's worth of waiting prompts on a small engine."""

SESSION_HEADER = "x-session-id"
"""The HTTP header naming a session; copied into the body's ``user`` field by the router."""

_SESSION_MARK = "\x1esession:"


def check_affinity(affinity: str, imbalance: int) -> None:
    """Validate the affinity settings.

    Raises:
        ValueError: an unknown mode, or ``imbalance < 0`` (named, with the fix).

    """
    if affinity not in AFFINITIES:
        raise ValueError(f"affinity={affinity!r} is unknown; use one of {', '.join(AFFINITIES)}")
    if not (isinstance(imbalance, int) and imbalance >= 0):
        raise ValueError(f"affinity_imbalance={imbalance!r} must be an integer >= 0 (queue "
                         "length difference, requests)")


def routing_text(kind: str, body: dict[str, Any]) -> str:
    r"""The text the prefix tree keys a call on: the session mark, then the prompt text.

    Args:
        kind: ``"chat"`` (the messages' text contents, concatenated as Ray's router does) or
            ``"completions"`` (the prompt; token ids as decimal text, a batch concatenated).
        body: the OpenAI request body.

    Returns:
        ``"\x1esession:<user>\x1e" + text`` when the body has a ``user`` string, else text.

    """
    if kind == "chat":
        text = "".join(_content(m.get("content") if isinstance(m, dict) else m)
                       for m in body.get("messages") or ())
    else:
        prompt = body.get("prompt")
        text = prompt if isinstance(prompt, str) else _content(prompt)
    user = body.get("user")
    if isinstance(user, str) and user:
        return f"{_SESSION_MARK}{user}\x1e{text}"
    return text


def _content(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, int):
        return f"{value} "
    if isinstance(value, list):
        return "".join(_content(v) for v in value)
    if isinstance(value, dict):
        text = value.get("text")
        return text if isinstance(text, str) else _content(value.get("content"))
    return ""
