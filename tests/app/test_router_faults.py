"""The router under faults, overload and strangers, on a real (throw-away) Ray Serve instance.

Engines are small fakes with the backend contract (`app.emulated_server`): one that answers at once,
one that always fails, one that never answers, one that takes a while. Each case is an app
of its own under a route prefix on one Serve instance.
"""

import asyncio
import contextlib
import json
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from tests.app import SharedServe

pytestmark = pytest.mark.heavy

REPO = Path(__file__).resolve().parents[2]
WEAK, STRONG = "llama-3.1-8b", "llama-3.1-70b"
KEY = "bk-test-key-0123456789"


def _engines() -> dict[str, Any]:
    from ray import serve

    from app.openai_api import completion, sse

    @serve.deployment(ray_actor_options={"num_cpus": 0}, max_ongoing_requests=1000)
    class Fake:
        """``mode``: ok (answers at once), fail (raises), hang (never answers), slow (1 s)."""

        def __init__(self, mode: str, model: str) -> None:
            self.mode, self.model = mode, model

        async def ping(self) -> bool:
            """The router's liveness probe: the replica is alive, whatever its mode."""
            return True

        async def openai(self, kind: str, body: dict) -> Any:
            if self.mode == "fail":
                raise RuntimeError("CUDA error: an illegal memory access was encountered")
            if self.mode == "hang":
                await asyncio.sleep(3600)
            if self.mode == "slow":
                await asyncio.sleep(1.0)
            if body.get("stream"):
                async def gen():
                    yield sse({"choices": [{"delta": {"content": "a"}}]})
                    yield sse({"choices": [{"delta": {"content": "b"}}]}) + sse("[DONE]")
                return gen()
            return completion(kind, self.model, "ok", 3, 1)

    return {"Fake": Fake}


def _app(groups: dict[str, tuple[str, str]], shares: dict[str, dict[str, float]], **extra):
    """A router over fake groups: name -> (mode, model)."""
    from app.ingress import RouterIngress

    fake = _engines()["Fake"]
    handles = {name: fake.options(name=name).bind(mode, model)
               for name, (mode, model) in groups.items()}
    config = {"weak": WEAK, "strong": STRONG, "strong_share": 0.5, "threshold": None,
              "router": "random", "seed": 0, "shares": shares,
              "context": {WEAK: 8192, STRONG: 8192}, **extra}
    return RouterIngress.options(user_config=config).bind(handles)


def _post(url: str, body: Any, headers: dict[str, str] | None = None,
          raw: bytes | None = None, timeout: float = 30.0) -> tuple[int, dict, Any]:
    data = raw if raw is not None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method="POST", headers={
        "Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            text = r.read().decode()
            return r.status, dict(r.headers), (json.loads(text) if not text.startswith("data:")
                                              else text)
    except urllib.error.HTTPError as exc:
        text = exc.read().decode()
        return exc.code, dict(exc.headers), json.loads(text) if text else None


def _get(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict]:
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def _status_of_huge_post(url: str, size: int) -> int:
    import socket
    from urllib.parse import urlparse

    u = urlparse(url)
    with socket.create_connection((u.hostname, u.port), timeout=30) as sock:
        sock.sendall(f"POST {u.path} HTTP/1.1\r\nHost: {u.hostname}\r\nContent-Type: "
                     f"application/json\r\nContent-Length: {size}\r\n\r\n".encode())
        with contextlib.suppress(OSError):      # the server may close before the end
            sock.sendall(b"{" + b" " * (1 << 16))
        head = sock.recv(4096).decode(errors="replace")
    return int(head.split()[1])


def _chat(model: str = "auto", **kw: Any) -> dict:
    return {"model": model, "max_tokens": 4,
            "messages": [{"role": "user", "content": "What is 2 + 2?"}], **kw}


@pytest.fixture(scope="module")
def serve_url(shared_serve: SharedServe):
    from ray import serve

    return f"http://127.0.0.1:{shared_serve.fresh()}", serve


@pytest.fixture(autouse=True)
def _one_app_at_a_time(serve_url):
    """Each test's apps are deleted after it: an idle router replica polls Serve and probes
    its groups every second (~10% of a core each, seen with `ps`), and twelve of them left
    running slowed the tests beside this module."""
    yield
    for app in serve_url[1].status().applications:
        serve_url[1].delete(app)


def test_failed_calls_are_retried_on_another_group_and_the_group_is_ejected(serve_url) -> None:
    base, serve = serve_url
    serve.run(_app({"bad": ("fail", WEAK), "good": ("ok", WEAK), "big": ("ok", STRONG)},
                   {WEAK: {"bad": 0.5, "good": 0.5}, STRONG: {"big": 1.0}},
                   settings={"cooldown_s": 60.0}),   # no half-open trial in 30 calls on a slow box
              name="retry", route_prefix="/retry")
    url = f"{base}/retry"
    seen = Counter()
    for i in range(30):
        status, headers, body = _post(f"{url}/v1/chat/completions",
                                      _chat(WEAK, stream=(i % 3 == 0)))
        assert status == 200, body
        seen[(headers["x-boute-group"], headers.get("x-boute-tries", "1"))] += 1
    # Every answer came from the good group; the bad one was tried until its breaker opened
    # (3 consecutive failures), then skipped.
    assert set(g for g, _ in seen) == {"good"}
    assert seen[("good", "2")] == 3
    code, health = _get(f"{url}/health")
    assert code == 200 and health["status"] == "degraded"
    assert (health["groups"]["bad"]["state"], health["groups"]["bad"]["routing"]) == (
        "down", "ejected")
    assert health["groups"]["good"]["state"] == "serving"
    assert health["models"][WEAK]["state"] == "degraded"


def test_a_model_without_a_healthy_group_falls_back_or_fails_fast(serve_url) -> None:
    base, serve = serve_url
    groups = {"w": ("ok", WEAK), "s": ("fail", STRONG)}
    shares = {WEAK: {"w": 1.0}, STRONG: {"s": 1.0}}
    serve.run(_app(groups, shares), name="fallback", route_prefix="/fallback")
    for _ in range(4):
        status, headers, body = _post(f"{base}/fallback/v1/chat/completions", _chat(STRONG))
        assert status == 200, body
        assert headers["x-boute-degraded"] == STRONG and headers["x-boute-model"] == WEAK
    # Every request is answered (the 70B's by the 8B): the load balancer keeps the router.
    code, health = _get(f"{base}/fallback/health")
    assert (code, health["status"]) == (200, "degraded")
    assert health["models"][STRONG] == {"state": "degraded", "groups": ["s"],
                                        "served_by": WEAK}
    assert health["models"][WEAK]["state"] == "serving"

    serve.run(_app(groups, shares, settings={"on_model_down": "fail"}), name="fail",
              route_prefix="/fail")
    statuses = [_post(f"{base}/fail/v1/chat/completions", _chat(STRONG)) for _ in range(5)]
    # The model's only group fails: no other group to retry on, so a 503 with Retry-After
    # (not the engine's internals); once the breaker is open the engine is not even called.
    assert {s for s, _, _ in statuses} == {503}
    assert statuses[-1][1]["retry-after"] == "5"
    assert statuses[-1][2]["error"]["type"] == "service_unavailable"
    code, health = _get(f"{base}/fail/health")
    assert health["groups"]["s"]["failed"] == 3 and health["groups"]["s"]["routing"] == "ejected"
    # The 8B still serves: 200, degraded; the 70B is down (its requests get 503).
    assert (code, health["status"], health["models"][STRONG]["state"]) == (
        200, "degraded", "down")


def test_a_call_past_its_deadline_is_cancelled_and_retried(serve_url) -> None:
    base, serve = serve_url
    serve.run(_app({"stuck": ("hang", WEAK), "fine": ("ok", WEAK), "big": ("ok", STRONG)},
                   {WEAK: {"stuck": 0.5, "fine": 0.5}, STRONG: {"big": 1.0}},
                   settings={"call_timeout_s": 0.5}),
              name="deadline", route_prefix="/deadline")
    t = time.monotonic()
    out = [_post(f"{base}/deadline/v1/chat/completions", _chat(WEAK, stream=s))
           for s in (False, True, False, True)]
    assert all(s == 200 for s, _, _ in out)
    assert time.monotonic() - t < 10            # two deadlines of 0.5 s, not an hour
    assert any(h.get("x-boute-tries") == "2" for _, h, _ in out)


def test_overload_is_refused_with_429_and_retry_after(serve_url) -> None:
    base, serve = serve_url
    serve.run(_app({"w": ("slow", WEAK), "s": ("slow", STRONG)},
                   {WEAK: {"w": 1.0}, STRONG: {"s": 1.0}}, limits={"w": 2, "s": 2}),
              name="busy", route_prefix="/busy")

    async def burst() -> list[tuple[int, str | None]]:
        import aiohttp

        async with aiohttp.ClientSession() as session:
            async def one() -> tuple[int, str | None]:
                async with session.post(f"{base}/busy/v1/chat/completions",
                                        json=_chat(WEAK)) as r:
                    await r.read()
                    return r.status, r.headers.get("retry-after")
            return await asyncio.gather(*(one() for _ in range(6)))

    got = Counter(asyncio.run(burst()))
    assert got == {(200, None): 2, (429, "1"): 4}
    _, health = _get(f"{base}/busy/health")
    assert health["groups"]["w"]["inflight"] == 0 and health["groups"]["w"]["inflight_limit"] == 2
    assert health["outcomes"]["shed"] == 4


def test_api_keys_rate_limits_and_live_rotation(serve_url) -> None:
    from app.guard import hash_key

    base, serve = serve_url
    groups = {"w": ("ok", WEAK), "s": ("ok", STRONG)}
    shares = {WEAK: {"w": 1.0}, STRONG: {"s": 1.0}}
    keys = [{"id": "team-a", "sha256": hash_key(KEY), "rate_rps": 0.5, "burst": 2}]
    serve.run(_app(groups, shares, api_keys=keys), name="auth", route_prefix="/auth")
    url = f"{base}/auth/v1/chat/completions"
    for headers in ({}, {"Authorization": "Bearer bk-wrong"}, {"Authorization": KEY}):
        status, h, body = _post(url, _chat(), headers)
        assert status == 401 and body["error"]["code"] == 401 and h["www-authenticate"] == "Bearer"
    ok = {"Authorization": f"Bearer {KEY}"}
    assert [_post(url, _chat(), ok)[0] for _ in range(3)] == [200, 200, 429]
    assert _get(f"{base}/auth/v1/models")[0] == 401
    assert _get(f"{base}/auth/health") == (200, {"status": "ok", "config_id": None})
    assert _get(f"{base}/auth/health/ready")[0] == 401      # operators only
    # Rotation through user_config: the old key stops working, the new one works at once.
    new = "bk-rotated-key-abcdef"
    serve.run(_app(groups, shares, api_keys=[{"id": "team-b", "sha256": hash_key(new)}]),
              name="auth", route_prefix="/auth")
    assert _post(url, _chat(), ok)[0] == 401
    assert _post(url, _chat(), {"Authorization": f"Bearer {new}"})[0] == 200


def test_bodies_that_break_limits_get_4xx_never_5xx(serve_url) -> None:
    base, serve = serve_url
    serve.run(_app({"w": ("ok", WEAK), "s": ("ok", STRONG)},
                   {WEAK: {"w": 1.0}, STRONG: {"s": 1.0}}), name="limits",
              route_prefix="/limits")
    url = f"{base}/limits/v1/chat/completions"
    # A 20 MB body: refused on its Content-Length, before the router reads it (the
    # server answers while the client is still sending; read the answer off the socket).
    assert _status_of_huge_post(url, 20 << 20) == 413
    deep = b'{"model": "auto", "messages": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    status, _, body = _post(url, None, raw=deep)
    assert status == 400 and "nested" in body["error"]["message"]
    cases = [
        (_chat(messages=[{"role": "user", "content": [{"type": "text", "text": 123}]}]), 400),
        (_chat(max_tokens=131_000), 400),
        (_chat(model="gpt-9"), 404),
        ({"messages": "hi"}, 400),
    ]
    for body, want in cases:
        status, _, answer = _post(url, body)
        assert status == want, (body, answer)
        assert set(answer["error"]) == {"message", "type", "param", "code"}
    assert _post(url, None, raw=b"\xff\xfe")[0] == 400


def test_a_client_that_gives_up_cancels_its_engine_call(serve_url) -> None:
    base, serve = serve_url
    serve.run(_app({"stuck": ("hang", WEAK), "s": ("ok", STRONG)},
                   {WEAK: {"stuck": 1.0}, STRONG: {"s": 1.0}}), name="gone", route_prefix="/gone")
    for stream in (False, True):
        with pytest.raises((TimeoutError, urllib.error.URLError)):
            _post(f"{base}/gone/v1/chat/completions", _chat(WEAK, stream=stream), timeout=1.0)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        _, health = _get(f"{base}/gone/health")
        if health["outcomes"].get("abandoned") == 2:
            break
        time.sleep(0.5)
    # Both requests are logged as abandoned and no longer hold the group (the engine call was
    # cancelled, not left running until its deadline).
    assert health["outcomes"].get("abandoned") == 2, health
    assert health["groups"]["stuck"]["inflight"] == 0


def test_a_ladder_routes_each_workload_by_its_own_cascade(serve_url) -> None:
    """Three models, two workloads: ``auto:NAME`` and the workload header pick the cascade."""
    base, serve = serve_url
    big = "llama-3.1-405b"
    config = {"models": [WEAK, STRONG, big], "strong_share": 0.3,
              "workloads": {"math": {"shares": [0.2, 0.5, 0.3], "thresholds": [None, None]},
                            "chat": {"shares": [0.6, 0.4, 0.0], "thresholds": [None, None]}},
              "context": {WEAK: 8192, STRONG: 8192, big: 8192}}
    serve.run(_app({"w": ("ok", WEAK), "s": ("ok", STRONG), "b": ("ok", big)},
                   {WEAK: {"w": 1.0}, STRONG: {"s": 1.0}, big: {"b": 1.0}}, **config),
              name="ladder", route_prefix="/ladder")
    url = f"{base}/ladder"
    math_models, chat_models = Counter(), Counter()
    for _ in range(20):
        status, headers, body = _post(f"{url}/v1/chat/completions", _chat("auto:math"))
        assert status == 200, body
        math_models[headers["x-boute-model"]] += 1
        status, headers, body = _post(f"{url}/v1/chat/completions", _chat(),
                                      {"x-boute-workload": "chat"})
        assert status == 200, body
        chat_models[headers["x-boute-model"]] += 1
    # Until a window of scores is in, each cascade routes by deficit: the shares exactly.
    assert math_models == {WEAK: 4, STRONG: 10, big: 6}
    assert chat_models == {WEAK: 12, STRONG: 8}
    status, _, body = _post(f"{url}/v1/chat/completions", _chat("auto:nope"))
    assert status == 404 and "auto:math" in body["error"]["message"], body
    status, headers, _ = _post(f"{url}/v1/chat/completions", _chat(big))
    assert status == 200 and headers["x-boute-model"] == big
    code, health = _get(f"{url}/health")
    assert code == 200 and health["workloads"]["math"]["requests"] == 20
    assert health["workloads"]["chat"]["routed"][WEAK] == pytest.approx(0.6)
    assert health["workloads"]["math"]["target"][big] == pytest.approx(0.3)
    _, models = _get(f"{url}/v1/models")
    assert [m["id"] for m in models["data"]] == ["auto", "auto:math", "auto:chat", WEAK,
                                                 STRONG, big]


def test_length_classes_route_short_and_long_requests_to_their_own_groups(serve_url) -> None:
    """One model, split at 60 tokens of prompt + max_tokens; a dead class falls back."""
    base, serve = serve_url
    config = {"models": [STRONG], "strong_share": 1.0, "length_threshold_tokens": 60,
              "workloads": {"default": {"shares": [1.0], "thresholds": []}}}
    serve.run(_app({"short-a": ("ok", STRONG), "long-b": ("ok", STRONG)},
                   {f"{STRONG}#short": {"short-a": 1.0}, f"{STRONG}#long": {"long-b": 1.0}},
                   **config), name="lengths", route_prefix="/lengths")
    url = f"{base}/lengths/v1/chat/completions"
    # "What is 2 + 2?" is a handful of tokens: with max_tokens 4 it is short, with 500 long;
    # without max_tokens it may run to the context: long.
    for body, group, cls in ((_chat(), "short-a", "short"),
                             (_chat(max_tokens=500), "long-b", "long"),
                             ({k: v for k, v in _chat().items() if k != "max_tokens"},
                              "long-b", "long"),
                             (_chat(STRONG), "short-a", "short")):
        status, headers, out = _post(url, body)
        assert status == 200, out
        assert (headers["x-boute-group"], headers["x-boute-length-class"]) == (group, cls)
    serve.run(_app({"short-a": ("fail", STRONG), "long-b": ("ok", STRONG)},
                   {f"{STRONG}#short": {"short-a": 1.0}, f"{STRONG}#long": {"long-b": 1.0}},
                   **config), name="lengths-down", route_prefix="/lengths-down")
    status, headers, out = _post(f"{base}/lengths-down/v1/chat/completions", _chat())
    # The short group fails: the request is retried on the long class's group, not lost.
    assert status == 200, out
    assert headers["x-boute-group"] == "long-b" and headers["x-boute-tries"] == "2"
