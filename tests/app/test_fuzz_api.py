"""Fuzz the OpenAI routes: hypothesis-made bodies never get a 500/502, the router lives on.

Two emulated engines at zero latency (``time_scale=0``) behind the router, on a throw-away
Serve instance; 1,100 bodies per route (chat, completions): random JSON values, raw bytes,
and OpenAI-shaped bodies whose fields take random types and values. Every answer must be a
2xx or a 4xx with an OpenAI error body; no engine fault is injected, so a 5xx is a bug.
"""

import http.client
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.app import SharedServe

pytestmark = pytest.mark.heavy

REPO = Path(__file__).resolve().parents[2]
WEAK, STRONG = "llama-3.1-8b", "llama-3.1-70b"
EXAMPLES = 1100          # per route: 2,200 requests in all

scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70),
                    st.floats(allow_nan=False), st.text(max_size=40))
json_values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=20)
small_ints = st.one_of(st.integers(-5, 64), st.integers(-2**40, 2**40))
parts = st.one_of(
    st.fixed_dictionaries({"type": st.sampled_from(["text", "image_url", "audio", ""]),
                           "text": st.one_of(st.text(max_size=30), json_values)}),
    json_values)
content = st.one_of(st.text(max_size=200), st.lists(parts, max_size=3), json_values)
message = st.one_of(
    st.fixed_dictionaries({"role": st.one_of(st.sampled_from(
        ["user", "system", "assistant", "tool", "wizard"]), json_values),
        "content": content}),
    json_values)
model = st.one_of(st.sampled_from(["auto", "boute", WEAK, STRONG, "gpt-4"]), json_values)
common = {"model": model, "max_tokens": st.one_of(small_ints, json_values),
          "stream": st.one_of(st.booleans(), json_values),
          "temperature": st.one_of(st.floats(-10, 10), json_values)}
chat_bodies = st.fixed_dictionaries(
    {"messages": st.one_of(st.lists(message, max_size=4), json_values)},
    optional={**common, "n": small_ints, "stop": json_values})
completion_bodies = st.fixed_dictionaries(
    {"prompt": st.one_of(st.text(max_size=200), st.lists(st.text(max_size=20), max_size=3),
                         st.lists(st.integers(0, 5000), max_size=5), json_values)},
    optional=common)


def _bodies(shaped: st.SearchStrategy[Any]) -> st.SearchStrategy[bytes]:
    return st.one_of(shaped.map(lambda b: json.dumps(b).encode()),
                     json_values.map(lambda b: json.dumps(b).encode()),
                     st.binary(max_size=64))


@pytest.fixture(scope="module")
def router_port(shared_serve: SharedServe):
    from ray import serve

    from app.emulated_server import EmulatedLLMServer
    from app.ingress import RouterIngress

    handles = {"w": EmulatedLLMServer.options(name="w").bind(WEAK, "RTX-4090", 1, 1, None, None,
                                                             0.0),
               "s": EmulatedLLMServer.options(name="s").bind(STRONG, "H100", 4, 1, None, None,
                                                             0.0)}
    config = {"weak": WEAK, "strong": STRONG, "strong_share": 0.5, "threshold": None,
              "router": "builtin", "seed": 0, "shares": {WEAK: {"w": 1.0}, STRONG: {"s": 1.0}},
              "context": {WEAK: 256, STRONG: 256}}
    port = shared_serve.fresh()
    serve.run(RouterIngress.options(user_config=config).bind(handles), name="fuzz",
              route_prefix="/")
    return port


class _Client:
    def __init__(self, port: int) -> None:
        self.port = port
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        self.statuses: dict[int, int] = {}

    def post(self, path: str, raw: bytes) -> tuple[int, bytes]:
        for attempt in range(2):
            try:
                self.conn.request("POST", path, raw, {"Content-Type": "application/json"})
                r = self.conn.getresponse()
                data = r.read()
                self.statuses[r.status] = self.statuses.get(r.status, 0) + 1
                return r.status, data
            except (http.client.HTTPException, OSError):
                self.conn.close()
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
                if attempt:
                    raise
        raise AssertionError("unreachable")


def _check(status: int, data: bytes, raw: bytes) -> None:
    assert status < 500, (status, data[:300], raw[:300])
    if status >= 400:
        err = json.loads(data)["error"]
        assert set(err) == {"message", "type", "param", "code"} and err["code"] == status


def test_fuzzed_bodies_never_get_a_5xx(router_port: int) -> None:
    client = _Client(router_port)
    fuzz = settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
                    suppress_health_check=list(HealthCheck))

    @fuzz
    @given(_bodies(chat_bodies))
    def chat(raw: bytes) -> None:
        _check(*client.post("/v1/chat/completions", raw), raw)

    @fuzz
    @given(_bodies(completion_bodies))
    def completions(raw: bytes) -> None:
        _check(*client.post("/v1/completions", raw), raw)

    chat()
    completions()
    sent = sum(client.statuses.values())
    assert sent >= 2000, client.statuses
    # Some bodies were served, most were refused as the client's mistake.
    assert client.statuses.get(200, 0) > 0 and client.statuses.get(400, 0) > 0
    # The router is alive and says so.
    conn = http.client.HTTPConnection("127.0.0.1", router_port, timeout=30)
    conn.request("GET", "/health")
    r = conn.getresponse()
    assert r.status == 200 and json.loads(r.read())["status"] == "ok"
