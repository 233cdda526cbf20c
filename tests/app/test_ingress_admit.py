"""The ingress's steps 1-2 without Serve: key, expiry, rate by units, body checks, in order.

`RouterIngress._admit` runs on a bare instance (no handles, no Serve) with a fake request.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

import pytest

from app.calls import Call
from app.guard import ApiKeys, KeyEntry, RequestLimits, hash_key
from app.openai_api import ApiError


class FakeRequest:
    def __init__(self, body: dict[str, Any], key: str) -> None:
        self.raw = json.dumps(body).encode()
        self.headers = {"authorization": f"Bearer {key}"}

    async def stream(self) -> AsyncIterator[bytes]:
        yield self.raw


def _ingress(keys: ApiKeys) -> Any:
    """What `RouterIngress._admit` reads of its instance (no Serve, no handles)."""
    return SimpleNamespace(keys=keys, limits=RequestLimits(), body_timeout_s=60.0)


def _admit(ing: Any, body: dict[str, Any], key: str = "k1") -> int:
    from app.ingress import RouterIngress

    call = Call("completions", time.time(), time.perf_counter())
    try:
        asyncio.run(RouterIngress.func_or_class._admit(ing, call, FakeRequest(body, key)))
    except ApiError as exc:
        return exc.status
    return 200


def test_admission_takes_prompts_times_n_and_refuses_expired_keys(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import app.guard as guard

    now = [100.0]
    monkeypatch.setattr(guard.time, "monotonic", lambda: now[0])
    wall = [2_000_000_000.0]
    keys = ApiKeys([KeyEntry("a", hash_key("k1"), rate_rps=1.0, burst=6),
                    KeyEntry("b", hash_key("k2"), expires_at="2033-05-18T03:33:20Z")],
                   clock=lambda: wall[0])
    ing = _ingress(keys)
    body = {"model": "auto", "prompt": [[1, 2], [3]], "n": 2}       # 2 prompts x 2 = 4 units
    assert _admit(ing, body) == 200                                  # 6 - 4 = 2 left
    assert _admit(ing, {**body, "temperature": -1}) == 400           # costs its first token
    assert _admit(ing, {**body, "n": 1}) == 429                      # 2 units: took 1, 0 left
    assert _admit(ing, {"model": "auto", "prompt": "x"}) == 429      # before its body
    now[0] += 1.0                                                    # 1 token back
    assert _admit(ing, {"model": "auto", "prompt": "x"}) == 200
    now[0] += 100.0
    assert _admit(ing, {**body, "n": 4}) == 400                      # 8 units > burst 6
    # Key b expires at 2_000_000_000 s (2033-05-18T03:33:20Z): refused from then on, counted.
    wall[0] -= 1.0
    assert _admit(ing, {"model": "auto", "prompt": "x"}, "k2") == 200
    wall[0] += 1.0
    assert _admit(ing, {"model": "auto", "prompt": "x"}, "k2") == 401
    assert keys.report() == {"keys": 2, "expired": 1, "refused_expired": 1}
