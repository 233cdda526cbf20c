"""Cache-affine routing inside a group (`app.affinity`): Ray Serve LLM's prefix-cache-affinity
router on BOute's ``openai(kind, body)`` calls, driven directly with two fake replicas whose
queue lengths the test sets; and the emulated engine's prefix cache."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from types import SimpleNamespace
from typing import Any

import pytest

from app.affinity import DEFAULT_IMBALANCE, check_affinity, routing_text
from app.stack import Stack

SYSTEM = "You are a careful assistant. " * 40          # a long shared system prompt


def _turns(n: int, tag: str) -> list[dict[str, Any]]:
    """The chat bodies of a conversation's first `n` turns (each holds the history)."""
    bodies, messages = [], [{"role": "system", "content": SYSTEM}]
    for t in range(n):
        messages = [*messages, {"role": "user", "content": f"{tag} question {t} " * 5}]
        bodies.append({"model": "m", "messages": list(messages)})
        messages.append({"role": "assistant", "content": f"{tag} answer {t} " * 5})
    return bodies


def test_routing_text_reads_the_openai_body() -> None:
    chat = {"messages": [{"role": "system", "content": "S"},
                         {"role": "user", "content": [{"type": "text", "text": "hi"}]}]}
    assert routing_text("chat", chat) == "Shi"                  # as Ray concatenates messages
    assert routing_text("completions", {"prompt": "abc"}) == "abc"
    assert routing_text("completions", {"prompt": [1, 2]}) == "1 2 "
    assert routing_text("chat", {**chat, "user": "s1"}) == "\x1esession:s1\x1eShi"


@pytest.mark.parametrize(("affinity", "imbalance", "match"), [
    ("nearest", 8, "affinity='nearest' is unknown"),
    ("prefix", -1, "affinity_imbalance=-1 must be an integer >= 0"),
])
def test_bad_affinity_settings_are_refused(affinity: str, imbalance: int, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        check_affinity(affinity, imbalance)
    with pytest.raises(ValueError, match=match):
        Stack(affinity=affinity, affinity_imbalance=imbalance)


def test_off_by_default_and_prefix_configures_rays_router() -> None:
    from app.affinity_router import BodyPrefixRouter, request_router_config

    assert Stack().affinity == "off"
    assert request_router_config("off") is None              # Serve's power of two choices
    cfg = request_router_config("prefix", 3)
    assert cfg is not None
    assert cfg.request_router_class == f"{BodyPrefixRouter.__module__}.BodyPrefixRouter"
    assert cfg.request_router_kwargs == {"imbalanced_threshold": 3}
    assert Stack.from_args(Stack(affinity="prefix").to_args()).affinity_imbalance == (
        DEFAULT_IMBALANCE)


# -- the router itself, two fake replicas ------------------------------------------------------
class _LocalTree:
    """Ray's PrefixTree in this process, called as its actor is (``.method.remote(...)``)."""

    def __init__(self) -> None:
        from ray.llm._internal.serve.routing_policies.prefix_aware.prefix_tree import (
            PrefixTree,
        )

        self.tree = PrefixTree()

    def __getattr__(self, name: str) -> Any:
        return SimpleNamespace(remote=getattr(self.tree, name))


class _Group:
    """`BodyPrefixRouter` over replicas ``a`` and ``b`` whose queue lengths the test sets."""

    def __init__(self, imbalance: int, monkeypatch: pytest.MonkeyPatch) -> None:
        from ray.llm._internal.serve.routing_policies.prefix_aware import prefix_aware_router
        from ray.serve._private.common import DeploymentHandleSource, DeploymentID
        from ray.serve._private.test_utils import FakeRunningReplica

        from app.affinity_router import BodyPrefixRouter

        # The tree is a local object: Ray's `ray.get` on its results is the identity here.
        monkeypatch.setattr(prefix_aware_router, "ray", SimpleNamespace(get=lambda x: x))
        self.loop = asyncio.new_event_loop()      # the router binds to its loop, as in Serve

        async def make() -> tuple[Any, dict[str, Any]]:
            router = BodyPrefixRouter(deployment_id=DeploymentID(name="g"),
                                      handle_source=DeploymentHandleSource.UNKNOWN)
            router.initialize_state(imbalanced_threshold=imbalance, tree_actor=_LocalTree())
            replicas = {n: FakeRunningReplica(n, max_ongoing_requests=1000) for n in "ab"}
            router.update_replicas(list(replicas.values()))
            return router, replicas
        self.router, self.replicas = self.loop.run_until_complete(make())
        self.load(0, 0)

    def close(self) -> None:
        self.loop.close()

    def load(self, a: int, b: int) -> None:
        self.replicas["a"].set_queue_len_response(a)
        self.replicas["b"].set_queue_len_response(b)

    def route(self, body: dict[str, Any]) -> str:
        """Where `body` goes: the router's ranked candidates, then the shortest queue (as
        Serve's `_select_from_candidate_replicas`), then the router is told."""
        from ray.serve._private.common import RequestMetadata
        from ray.serve._private.request_router.common import PendingRequest

        async def go() -> str:
            pr = PendingRequest(["chat", body], {}, RequestMetadata("r", "r"))
            ranks = await self.router.choose_replicas(list(self.replicas.values()), pr)
            chosen = await self.router._select_from_candidate_replicas(ranks[0], 0)
            assert chosen is not None
            self.router.on_request_routed(pr, chosen.replica_id, None)
            return str(chosen.replica_id.unique_id)
        return self.loop.run_until_complete(go())


@pytest.fixture
def make_group(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[int], _Group]]:
    """`_Group` with that imbalance threshold (closed after the test)."""
    groups: list[_Group] = []

    def make(imbalance: int) -> _Group:
        groups.append(_Group(imbalance, monkeypatch))
        return groups[-1]
    yield make
    for g in groups:
        g.close()


def test_a_session_stays_on_its_replica_until_imbalance_moves_it(make_group: Any) -> None:
    group = make_group(2)
    turns = _turns(8, "s")
    home = group.route(turns[0])
    other = "b" if home == "a" else "a"
    # Balanced, or imbalanced by at most the threshold (2) against its replica: it stays,
    # even when the other replica is idle (power of two would pick the shorter queue).
    for t, (own, idle) in enumerate([(0, 0), (1, 0), (2, 0), (2, 0)], start=1):
        group.load(**{home: own, other: idle})
        assert group.route(turns[t]) == home, f"turn {t} left at queues {own} / {idle}"
    # Imbalance past the threshold (3 > 2): power of two picks the shorter queue: it moves.
    group.load(**{home: 3, other: 0})
    assert group.route(turns[5]) == other
    # Balanced again: it follows the replica holding its longest prefix, the new one.
    group.load(0, 0)
    assert [group.route(turns[t]) for t in (6, 7)] == [other, other]


def test_sessions_by_id_spread_over_the_group_and_stick(make_group: Any) -> None:
    group = make_group(DEFAULT_IMBALANCE)
    a = [{**b, "user": "alice"} for b in _turns(4, "alice")]
    b = [{**x, "user": "bob"} for x in _turns(4, "bob")]
    first_a = group.route(a[0])
    first_b = group.route(b[0])        # no match for a new session: the emptier replica
    assert {first_a, first_b} == {"a", "b"}
    assert [group.route(x) for x in a[1:]] == [first_a] * 3
    assert [group.route(x) for x in b[1:]] == [first_b] * 3


# -- the emulated engine's prefix cache ----------------------------------------------------------
def _engine(prefix_cache: bool) -> Any:
    from app.emulated import EmulatedEngine
    from profiling import ReplicaModel, load_catalog

    cat = load_catalog()
    return EmulatedEngine(ReplicaModel(cat.model("llama-3.1-8b"), cat.gpu("H100"), 1, 1),
                          time_scale=0.0, prefix_cache=prefix_cache)


async def _run(engine: Any, prompt: int, share: tuple[int, int, int] | None) -> None:
    async for _ in engine.generate(prompt, 1, share):
        pass


def test_emulated_engine_reuses_a_sessions_prefix() -> None:
    engine = _engine(True)

    async def two_turns() -> None:
        await _run(engine, 500, (0, 400, 7))      # system prompt 400 tokens, session 7
        await _run(engine, 800, (0, 400, 7))      # its next turn
    asyncio.run(two_turns())
    # Turn 2 finds turn 1's full blocks of 16: 500 // 16 = 31 blocks (25 of the system
    # prompt, 6 of the session) = 496 tokens, of 500 + 800 prompt tokens.
    assert engine.prefix_cache.cached_tokens_total == 496
    assert engine.prefix_cache.hit_rate == pytest.approx(496 / 1300)
    assert _engine(False).prefix_cache is None


def test_emulated_server_reads_what_a_chat_shares() -> None:
    from app.emulated_server import EmulatedLLMServer

    server = EmulatedLLMServer.func_or_class("llama-3.1-8b", "H100", 1, 1, time_scale=0.0,
                                             prefix_cache=True)
    t0, t1 = _turns(2, "s")
    app, system_tokens, session = server._share("chat", t0)
    assert (app, system_tokens) == (0, len(SYSTEM) // 4)     # 4 characters per token
    assert server._share("chat", t1) == (app, system_tokens, session)   # same conversation
    assert server._share("chat", _turns(1, "other")[0])[2] != session
    assert server._share("chat", {**t0, "user": "u"})[2] != session
    assert server._share("completions", {"prompt": "x"}) == (-1, 0, -1)


@pytest.mark.parametrize(("affinity", "router"), [
    ("off", "ray.serve._private.request_router:PowerOfTwoChoicesRequestRouter"),
    ("prefix", "app.affinity_router.BodyPrefixRouter"),
])
def test_group_deployments_use_the_stacks_router(affinity: str, router: str) -> None:
    from app.main import _engine
    from app.stack import stack_specs
    from tuning import Group, Plan, Routing

    plan = Plan(Routing(1.0), (Group("llama-3.1-8b", "H100", 1, 1, 2, 1.0),),
                scenario={"models": {"weak": "llama-3.1-8b", "strong": "llama-3.1-8b"}})
    stack = Stack(affinity=affinity, prefix_cache=True)
    (spec,) = stack_specs(plan, stack)
    deployment = _engine(spec, stack)._bound_deployment
    assert deployment._deployment_config.request_router_config.request_router_class == router
    assert deployment.init_args[-2:] == (True, None)     # the prefix cache; no prefill pool
