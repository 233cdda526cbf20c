"""Sampling fields of an OpenAI request, checked as vLLM checks them, and what a request costs.

Pure (no Ray, no HTTP framework): `app.guard.check_body` calls `check_sampling` on every
chat and completions body before it is routed, so a field the engine would refuse is a 400
naming the field (``param``) and its allowed range at the router, and a field the engine
would take but should not (``n`` = 1e6, 50,000 ``logit_bias`` entries) never reaches it.

The bounds are vLLM's own (``vllm/sampling_params.py`` ``SamplingParams._verify_args`` and
the OpenAI request models of ``vllm/entrypoints/openai/``, vLLM 0.32), where OpenAI's
documented ones are tighter, OpenAI's:

==========================  =========================================================
field                       accepted
==========================  =========================================================
``n``                       integer in [1, ``max_n``] (`RequestLimits`, default 16;
                            vLLM's own cap is 16,384)
``best_of``                 integer in [``n``, ``max_n``]
``temperature``             finite number in [0, 2]
``top_p``                   finite number in (0, 1]
``top_k``                   integer >= -1 (0 and -1: off)
``min_p``                   number in [0, 1]
``presence_penalty``,       number in [-2, 2]
``frequency_penalty``
``repetition_penalty``      finite number > 0
``seed``                    integer in [-2^63, 2^63 - 1]
``logprobs``                chat: true/false; completions: integer in [0, 20]
``top_logprobs``,           integer in [0, 20] (vLLM's default ``max_logprobs``); chat's
``prompt_logprobs``         ``top_logprobs`` > 0 needs ``logprobs: true``
``logit_bias``              object of at most ``max_logit_bias`` (300, OpenAI's limit)
                            entries, token id (a decimal string) -> number in [-100, 100]
``stop``                    a non-empty string, or a list of at most 4 (vLLM's
                            ``VLLM_MAX_STOP_STRINGS``) non-empty strings
==========================  =========================================================

``null`` is the field left out (the engine's default). Numbers are JSON numbers, never
``true``/``false``; integers are JSON integers.

**What a request costs** (`request_units`): the sequences the engine generates for it,
``prompts x max(n, best_of)`` (a completions batch of k prompts is k prompts). Admission
counts these units: a key's token bucket gives one token per unit (`app.guard.ApiKeys.admit`)
and a replica group's in-flight bound counts units (`app.groups.GroupPool`).
"""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping
from typing import Any

from .openai_api import ApiError, token_prompts

__all__ = ["MAX_LOGPROBS", "MAX_STOP", "check_sampling", "request_units"]

MAX_LOGPROBS = 20           # vLLM's default ModelConfig.max_logprobs
MAX_STOP = 4                # vLLM's VLLM_MAX_STOP_STRINGS (and OpenAI's "up to 4")
INT64 = (-(2**63), 2**63 - 1)


def _given(body: Mapping[str, Any], name: str) -> bool:
    return body.get(name) is not None


def _number(body: Mapping[str, Any], name: str, lo: float, hi: float, *,
            lo_open: bool = False, rule: str) -> None:
    """A finite JSON number in [lo, hi] (``(lo, hi]`` with `lo_open`); else 400 with `rule`."""
    v = body.get(name)
    if v is None:
        return
    # (No float() of an int: a JSON integer may be 10**400, past float's range: refused.)
    ok = (((isinstance(v, int) and not isinstance(v, bool) and abs(v) <= sys.float_info.max)
           or (isinstance(v, float) and math.isfinite(v)))
          and (v > lo if lo_open else v >= lo) and v <= hi)
    if not ok:
        raise ApiError(f"{name}={v!r} must be {rule}", param=name)


def _integer(body: Mapping[str, Any], name: str, lo: int, hi: int, rule: str) -> int | None:
    """A JSON integer in [lo, hi] (None when left out); else 400 with `rule`."""
    v = body.get(name)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise ApiError(f"{name}={v!r} must be {rule}", param=name)
    return v


def check_sampling(kind: str, body: Mapping[str, Any], max_n: int = 16,
                   max_logit_bias: int = 300) -> None:
    """Check the sampling fields of a chat or completions body (the module's table).

    Args:
        kind: ``"chat"`` or ``"completions"``.
        body: the parsed body (its other fields are checked elsewhere).
        max_n: the largest ``n`` (and ``best_of``) accepted.
        max_logit_bias: the most ``logit_bias`` entries accepted.

    Raises:
        ApiError: 400 naming the first field out of its range, with the range.

    """
    n = _integer(body, "n", 1, max_n, f"an integer in [1, {max_n}] (the completions to "
                 "generate; this server's limit)")
    _integer(body, "best_of", n or 1, max_n, f"an integer in [n={n or 1}, {max_n}]")
    _number(body, "temperature", 0.0, 2.0, rule="a finite number in [0, 2]")
    _number(body, "top_p", 0.0, 1.0, lo_open=True, rule="a finite number in (0, 1]")
    _integer(body, "top_k", -1, INT64[1], "an integer >= 1, or 0 or -1 (no top-k)")
    _number(body, "min_p", 0.0, 1.0, rule="a number in [0, 1]")
    for name in ("presence_penalty", "frequency_penalty"):
        _number(body, name, -2.0, 2.0, rule="a number in [-2, 2]")
    _number(body, "repetition_penalty", 0.0, math.inf, lo_open=True,
            rule="a finite number > 0 (1: no penalty)")
    _integer(body, "seed", *INT64, "an integer in [-2^63, 2^63 - 1]")
    _check_logprobs(kind, body)
    _check_logit_bias(body, max_logit_bias)
    _check_stop(body)


def _check_logprobs(kind: str, body: Mapping[str, Any]) -> None:
    rule = f"an integer in [0, {MAX_LOGPROBS}]"
    if kind == "chat":
        lp = body.get("logprobs")
        if lp is not None and not isinstance(lp, bool):
            raise ApiError(f"logprobs={lp!r} must be true or false (chat; the number of "
                           "alternatives is top_logprobs)", param="logprobs")
        top = _integer(body, "top_logprobs", 0, MAX_LOGPROBS, rule)
        if top and not lp:
            raise ApiError(f"top_logprobs={top} needs logprobs: true", param="top_logprobs")
    else:
        _integer(body, "logprobs", 0, MAX_LOGPROBS, rule)
    _integer(body, "prompt_logprobs", 0, MAX_LOGPROBS, rule)


def _check_logit_bias(body: Mapping[str, Any], limit: int) -> None:
    bias = body.get("logit_bias")
    if bias is None:
        return
    if not isinstance(bias, dict) or len(bias) > limit:
        size = f" of {len(bias)} entries" if isinstance(bias, dict) else ""
        raise ApiError(f"logit_bias{size} must be an object of at most {limit} entries, "
                       "token id -> bias", param="logit_bias")
    for token, v in bias.items():
        if not (isinstance(token, str) and token.isascii() and token.isdigit()
                and len(token) <= 10):
            raise ApiError(f"logit_bias key {token!r} must be a token id (a non-negative "
                           "integer, as a string)", param="logit_bias")
        if isinstance(v, bool) or not isinstance(v, int | float) or not -100 <= v <= 100:
            raise ApiError(f"logit_bias[{token!r}]={v!r} must be a number in [-100, 100]",
                           param="logit_bias")


def _check_stop(body: Mapping[str, Any]) -> None:
    stop = body.get("stop")
    if stop is None:
        return
    items = [stop] if isinstance(stop, str) else stop
    if (not isinstance(items, list) or len(items) > MAX_STOP
            or not all(isinstance(s, str) and s for s in items)):
        raise ApiError(f"stop must be a non-empty string or a list of at most {MAX_STOP} "
                       "non-empty strings", param="stop")


def request_units(kind: str, body: Mapping[str, Any]) -> int:
    """Sequences a checked body asks the engine for: ``prompts x max(n, best_of)``.

    A chat body and a single completions prompt are one prompt; a completions batch (a list
    of strings, or a list of token-id lists) is one per entry.
    """
    n = body.get("n") or 1
    seqs = max(n, body.get("best_of") or n)
    prompts = 1
    if kind != "chat":
        ids = token_prompts(body)
        prompt = body.get("prompt")
        if ids is not None:
            prompts = len(ids)
        elif isinstance(prompt, list):
            prompts = max(1, len(prompt))
    return int(prompts * seqs)
