"""Sampling fields as vLLM checks them: each family accepted at its bound, refused just beyond.

The bounds are vLLM 0.32's (``SamplingParams._verify_args``, the OpenAI request models), with
OpenAI's where tighter; `app.sampling`'s table. Bodies go through `app.guard.check_body`, as
the router checks them on arrival.
"""

from __future__ import annotations

import json
import math
from typing import Any

import pytest

from app.guard import RequestLimits, check_body
from app.openai_api import ApiError, token_prompts
from app.sampling import request_units


def _chat(**fields: Any) -> dict[str, Any]:
    return {"model": "auto", "messages": [{"role": "user", "content": "hi"}], **fields}


def _completion(**fields: Any) -> dict[str, Any]:
    return {"model": "auto", "prompt": "hi", **fields}


def _refused(body: dict[str, Any], param: str, says: str, kind: str = "chat",
             limits: RequestLimits | None = None) -> None:
    with pytest.raises(ApiError) as exc:
        check_body(kind, body, limits or RequestLimits())
    assert exc.value.status == 400 and exc.value.param == param, str(exc.value)
    assert says in str(exc.value), str(exc.value)


@pytest.mark.parametrize("field, ok, bad, says", [
    # n: [1, max_n = 16]; 1e6 arrives as a JSON float.
    ("n", [1, 16, None], [0, -1, 17, 1e6, 2.0, True, "2"], "an integer in [1, 16]"),
    # temperature: finite, [0, 2]
    ("temperature", [0, 0.0, 2, 2.0, 1e-9], [-1, -1e-9, 2.000001, math.nan, math.inf, True,
                                             "1"], "a finite number in [0, 2]"),
    # top_p: (0, 1]
    ("top_p", [1, 1.0, 1e-9], [0, 0.0, 1.0000001, 5, -0.5, math.nan], "(0, 1]"),
    # top_k: integer >= -1 (0 and -1: off)
    ("top_k", [-1, 0, 1, 50], [-2, 1.5, 2.0, True], "an integer >= 1, or 0 or -1"),
    # min_p: [0, 1]
    ("min_p", [0, 1, 0.05], [-0.01, 1.01, math.inf], "a number in [0, 1]"),
    # penalties: [-2, 2]
    ("presence_penalty", [-2, 2, 0.5], [-2.01, 2.01, math.nan], "a number in [-2, 2]"),
    ("frequency_penalty", [-2, 2], [-2.000001, 2.5], "a number in [-2, 2]"),
    # repetition_penalty: finite, > 0
    ("repetition_penalty", [1e-9, 1, 10], [0, -1, math.inf], "a finite number > 0"),
    # seed: int64
    ("seed", [-(2**63), 2**63 - 1, 0], [2**63, -(2**63) - 1, 1.5, True],
     "an integer in [-2^63, 2^63 - 1]"),
])
def test_each_numeric_field_at_and_beyond_its_bound(field: str, ok: list[Any],
                                                    bad: list[Any], says: str) -> None:
    for kind, make in (("chat", _chat), ("completions", _completion)):
        for v in ok:
            check_body(kind, make(**{field: v}), RequestLimits())
        for v in bad:
            _refused(make(**{field: v}), field, says, kind)


def test_integers_past_floats_range_are_refused_not_a_500() -> None:
    """JSON integers have no bound: 10**400 must be a 400, never an OverflowError."""
    huge = json.loads("1" + "0" * 400)
    for field in ("n", "temperature", "top_p", "top_k", "min_p", "presence_penalty",
                  "repetition_penalty", "seed"):
        _refused(_chat(**{field: huge}), field, "must be")
    _refused(_chat(logit_bias={"1": huge}), "logit_bias", "in [-100, 100]")


def test_n_and_best_of_follow_the_configured_limit() -> None:
    lim = RequestLimits(max_n=4)
    check_body("chat", _chat(n=4), lim)
    _refused(_chat(n=5), "n", "an integer in [1, 4]", limits=lim)
    check_body("completions", _completion(n=2, best_of=2), lim)     # best_of = n
    check_body("completions", _completion(n=2, best_of=4), lim)     # best_of = max_n
    _refused(_completion(n=2, best_of=1), "best_of", "[n=2, 4]", "completions", lim)
    _refused(_completion(n=2, best_of=5), "best_of", "[n=2, 4]", "completions", lim)


def test_logprobs() -> None:
    # Completions: logprobs is a count in [0, 20] (vLLM's default max_logprobs).
    check_body("completions", _completion(logprobs=0), RequestLimits())
    check_body("completions", _completion(logprobs=20), RequestLimits())
    for v in (21, -1, True, 1.0):
        _refused(_completion(logprobs=v), "logprobs", "[0, 20]", "completions")
    # Chat: logprobs is a flag; top_logprobs in [0, 20] needs it.
    check_body("chat", _chat(logprobs=True, top_logprobs=20), RequestLimits())
    check_body("chat", _chat(logprobs=False, top_logprobs=0), RequestLimits())
    _refused(_chat(logprobs=True, top_logprobs=21), "top_logprobs", "[0, 20]")
    _refused(_chat(top_logprobs=1), "top_logprobs", "needs logprobs: true")
    _refused(_chat(logprobs=5), "logprobs", "true or false")
    _refused(_chat(prompt_logprobs=21), "prompt_logprobs", "[0, 20]")


def test_logit_bias_size_keys_and_values() -> None:
    at_limit = {str(i): 1.0 for i in range(300)}
    check_body("chat", _chat(logit_bias=at_limit), RequestLimits())
    _refused(_chat(logit_bias={**at_limit, "300": 1.0}), "logit_bias",
             "of 301 entries must be an object of at most 300")
    _refused(_chat(logit_bias={str(i): 0 for i in range(50_000)}), "logit_bias",
             "of 50000 entries")
    check_body("chat", _chat(logit_bias={"5": 100, "6": -100}), RequestLimits())
    _refused(_chat(logit_bias={"5": 100.5}), "logit_bias", "in [-100, 100]")
    _refused(_chat(logit_bias={"5": -101}), "logit_bias", "in [-100, 100]")
    _refused(_chat(logit_bias={"5": True}), "logit_bias", "in [-100, 100]")
    for key in ("abc", "-1", "1.5", ""):
        _refused(_chat(logit_bias={key: 1}), "logit_bias", "must be a token id")
    _refused(_chat(logit_bias=[1, 2]), "logit_bias", "at most 300 entries")
    lim = RequestLimits(max_logit_bias=2)
    _refused(_chat(logit_bias={"1": 1, "2": 1, "3": 1}), "logit_bias", "at most 2",
             limits=lim)


def test_stop_strings() -> None:
    for ok in ("x", ["a", "b", "c", "d"], [], None):
        check_body("chat", _chat(stop=ok), RequestLimits())
    for bad in (["a", "b", "c", "d", "e"], "", [""], [1], 5, {"a": 1}):
        _refused(_chat(stop=bad), "stop", "at most 4 non-empty strings")


@pytest.mark.parametrize("prompt, ok", [
    ([1, 2, 3], True), ([0], True), ([2**31 - 1], True),            # one prompt of token ids
    ([[1, 2], [3]], True),                                          # a batch of them
    ([-1], False), ([2**31], False), ([1.0], False), ([[1], []], False),
    ([[1], "a"], False), ([[1, [2]]], False), ([[]], False), ([[True]], False),
])
def test_token_id_prompts(prompt: Any, ok: bool) -> None:
    body = _completion(prompt=prompt)
    assert (token_prompts(body) is not None) == ok
    if ok:
        check_body("completions", body, RequestLimits())
    else:
        _refused(body, "prompt", "list of token ids", "completions")
    json.dumps(body)


@pytest.mark.parametrize("kind, body, units", [
    ("chat", _chat(), 1),
    ("chat", _chat(n=4), 4),
    ("completions", _completion(prompt=[1, 2, 3]), 1),              # one token-id prompt
    ("completions", _completion(prompt=[[1, 2], [3]], n=2), 4),     # 2 prompts x 2
    ("completions", _completion(prompt=["a", "b", "c"], n=3), 9),
    ("completions", _completion(n=2, best_of=5), 5),                # best_of sequences
    ("completions", _completion(n=None), 1),
])
def test_request_units_are_prompts_times_sequences(kind: str, body: dict[str, Any],
                                                   units: int) -> None:
    check_body(kind, body, RequestLimits())
    assert request_units(kind, body) == units
