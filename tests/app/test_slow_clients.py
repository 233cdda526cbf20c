"""The router's side of slow and departing clients, and the key-id label's opt-in (no HTTP)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from starlette.requests import ClientDisconnect, Request

from app.ingress import _read_body
from app.observability import AGGREGATE_KEY, Observer
from app.openai_api import ApiError
from app.router_config import RouterConfig, RouterSettings


def _request(chunks: list[bytes], then: str) -> Request:
    """A request whose body arrives as `chunks`, then `then`: ``stall`` (the client sends
    nothing more), ``disconnect`` (it leaves) or ``end``."""
    queue = list(chunks)

    async def receive() -> dict[str, Any]:
        if queue:
            return {"type": "http.request", "body": queue.pop(0), "more_body": True}
        if then == "stall":
            await asyncio.sleep(3600)
        if then == "disconnect":
            return {"type": "http.disconnect"}
        return {"type": "http.request", "body": b"", "more_body": False}

    return Request({"type": "http", "method": "POST", "headers": []}, receive)


def test_a_complete_body_is_read() -> None:
    assert asyncio.run(_read_body(_request([b'{"a":', b"1}"], "end"), 100, 1.0)) == b'{"a":1}'


def test_a_body_that_stalls_is_cut_at_its_timeout() -> None:
    t0 = time.perf_counter()
    with pytest.raises(ApiError, match=r"not complete within 0.3 s \(5 bytes arrived\)") as err:
        asyncio.run(_read_body(_request([b'{"a":'], "stall"), 100, 0.3))
    assert err.value.status == 408
    assert 0.3 <= time.perf_counter() - t0 < 1.0        # the timeout, plus scheduling


def test_a_client_that_leaves_mid_body_is_a_disconnect_not_an_error() -> None:
    # (the ingress logs it as 499 "abandoned"; before, it fell through to a 500)
    with pytest.raises(ClientDisconnect):
        asyncio.run(_read_body(_request([b'{"a":'], "disconnect"), 100, 5.0))


def test_the_size_limit_still_applies_inside_the_timeout() -> None:
    with pytest.raises(ApiError, match="exceeds the limit of 4 bytes") as err:
        asyncio.run(_read_body(_request([b"12345"], "end"), 4, 5.0))
    assert err.value.status == 413


def test_body_timeout_and_key_label_defaults_and_bounds() -> None:
    s = RouterSettings()
    assert s.body_timeout_s == 60.0 and s.metrics_key_label is False
    from app.routing import RouterError

    base = {"weak": "w", "strong": "s", "strong_share": 0.5, "shares": {"w": {"g": 1.0}}}
    with pytest.raises(RouterError, match=r"settings\.body_timeout_s=0: .*greater than 0"):
        RouterConfig.parse({**base, "settings": {"body_timeout_s": 0}})


class _Counter:
    def __init__(self) -> None:
        self.tags: list[dict[str, str]] = []

    def inc(self, value: float, tags: dict[str, str]) -> None:
        self.tags.append(tags)


@pytest.mark.parametrize(("opted_in", "expected"), [(False, AGGREGATE_KEY), (True, "team-a")])
def test_refusals_are_labelled_by_key_id_only_when_opted_in(opted_in: bool,
                                                            expected: str) -> None:
    obs = Observer()
    obs.refused = _Counter()
    obs.key_label = opted_in
    obs.observe(arrival_s=0.0, model="", group="", score=None, status=401, ttft_s=0.0,
                latency_s=0.0, prompt_tokens=0, output_tokens=0, stream=False,
                key_id="team-a", outcome="unauthorized")
    assert obs.refused.tags == [{"model": "", "outcome": "unauthorized", "key": expected}]
