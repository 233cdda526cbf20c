"""Prefix caching: the sharing columns, the cache's hit rate on hand-built traces, the
generator of conversations, and traces without sharing running exactly as before."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from common.errors import TraceError
from profiling import (
    Catalog,
    PrefixCache,
    PrefixSpec,
    Sharing,
    Trace,
    capacity_rps,
    generate_shared_trace,
    generate_trace,
    load_trace,
    simulate,
)
from profiling._scenario import Scenario
from tests.conftest import make_replica


def _hand_trace() -> Trace:
    """Six requests 100 s apart (none overlaps another), block size B = 16.

    row  app (P)   session/turn  prompt  output
    0    0 (100)   -             120     10
    1    0 (100)   -             200     10
    2    0 (100)   7 / 0         150     50
    3    0 (100)   7 / 1         230     20
    4    -         -              64      5
    5    1 (40)    -              50     10
    """
    sharing = Sharing(np.array([0, 0, 0, 0, -1, 1]), np.array([100, 100, 100, 100, 0, 40]),
                      np.array([-1, -1, 7, 7, -1, -1]), np.array([0, 0, 0, 1, 0, 0]))
    return Trace(np.arange(6) * 100.0, np.array([120, 200, 150, 230, 64, 50]),
                 np.array([10, 10, 50, 20, 5, 10]), None, "hand", sharing)


def test_hit_rate_of_a_hand_built_trace(catalog: Catalog) -> None:
    r = make_replica(catalog)
    res = simulate(r, _hand_trace())
    # App 0's system prompt is floor(100 / 16) = 6 blocks = 96 tokens.
    # 0: cold cache, 0 cached; it leaves floor(130 / 16) = 8 blocks: 6 of app 0, 2 its own.
    # 1: app 0's 6 blocks, its own tail is new: 96.   2: the same 96 (session 7 is new);
    #    it leaves floor(200 / 16) = 12 blocks: 6 of app 0, 6 of session 7.
    # 3: m = floor(229 / 16) = 14 blocks at most; 6 of app 0 + min(6, 14 - 6) of session 7
    #    = 12 blocks = 192.   4: nothing shared, 0.   5: app 1 is new, 0.
    # Hit rate = (96 + 96 + 192) / (120 + 200 + 150 + 230 + 64 + 50) = 384 / 814.
    assert res.extra["prefix_cached_tokens"] == 384.0
    assert res.extra["prefix_hit_rate"] == pytest.approx(384 / 814, rel=1e-12)
    assert res.summary()["prefix_hit_rate"] == pytest.approx(0.4717444717, rel=1e-9)
    # Prefill is charged only for the uncached tokens: request 1 computes 200 - 96 = 104
    # tokens attending to the 96 cached ones (work 104 (96 + 104 / 2), KV 200).
    ttft = r.step_time_s(104, 104 * (96 + 52), 200, 0, 0, 1) + r.engine.frontend_latency_s
    assert res.ttft_s[1] == pytest.approx(ttft, rel=1e-12)


def test_perfect_cache_potential_of_the_hand_built_trace() -> None:
    reuse = _hand_trace().prefix_reuse()
    assert reuse is not None
    # Token granular and unbounded: 1 and 2 reuse app 0's 100 tokens, 3 its session's last
    # context 150 + 50 = 200; (100 + 100 + 200) / 814.
    assert reuse["potential"] == pytest.approx(400 / 814, rel=1e-12)
    assert reuse["system_share"] == pytest.approx(300 / 814, rel=1e-12)
    assert (reuse["apps"], reuse["sessions"]) == (2.0, 1.0)


def test_lru_evicts_the_least_recently_freed_segment_tail_first() -> None:
    # Three one-shot requests of apps 0, 1, 2, each with a 32-token (2-block) system prompt.
    sharing = Sharing(np.array([0, 1, 2, 0]), np.full(4, 32), np.full(4, -1), np.zeros(4))
    cache = PrefixCache(sharing, block_tokens=16)
    for rid in range(3):
        assert cache.admit(rid, 40) == 0
        cache.release(rid, 40)           # 2 app blocks + 0 own full blocks (40 // 16 = 2)
    assert cache.pool_blocks == 6
    cache.fit(4 * 16 + 15)               # room for 4 blocks: app 0 (the oldest) goes
    assert cache.pool_blocks == 4 and cache.cached_tokens(3, 40) == 0
    cache.fit(3 * 16)                    # app 1 loses its tail block
    assert cache.cached_tokens(1, 40) == 16 and cache.cached_tokens(2, 40) == 32


def test_pinned_segments_hit_but_are_not_evicted() -> None:
    sharing = Sharing(np.zeros(2, dtype=np.int64), np.full(2, 64), np.full(2, -1), np.zeros(2))
    cache = PrefixCache(sharing, block_tokens=16)
    cache.admit(0, 100)
    cache.computed(0, 100)               # its prompt is done: app 0's 4 blocks are hashed
    cache.fit(0)                         # no free KV at all: in-use blocks stay
    assert cache.admit(1, 100) == 64 and cache.hit_rate == pytest.approx(64 / 200)


def test_no_sharing_runs_exactly_as_before(catalog: Catalog) -> None:
    r = make_replica(catalog)
    plain = generate_trace("sharegpt", rate_rps=5.0, num_requests=300, seed=3)
    # Every request its own: the cache runs (it caches unique tails) but never hits, so the
    # schedule, and every number, is the same as without it.
    alone = Trace(plain.arrival_s, plain.input_tokens, plain.output_tokens, None, "x",
                  Sharing(np.full(300, -1), np.zeros(300), np.arange(300), np.zeros(300)))
    a, b = simulate(r, plain), simulate(r, alone)
    assert "prefix_hit_rate" not in a.extra and b.extra["prefix_hit_rate"] == 0.0
    assert np.array_equal(a.latency_s, b.latency_s) and np.array_equal(a.ttft_s, b.ttft_s)
    assert capacity_rps(r, plain) == capacity_rps(r, alone)
    # A trace whose sharing columns share nothing takes the cache-free path.
    none = Trace(plain.arrival_s, plain.input_tokens, plain.output_tokens, None, "x",
                 Sharing.none(300))
    assert plain.fingerprint() != none.fingerprint()
    assert np.array_equal(simulate(r, none).latency_s, a.latency_s)


def test_conversations_share_system_prompts_and_history() -> None:
    spec = PrefixSpec(apps=3, system_tokens=500, turns=4, think_s=10)
    t = generate_shared_trace("gsm8k", spec, rate_rps=5.0, num_requests=800, seed=1)
    assert len(t) == 800 and t.sharing is not None
    sh = t.sharing
    assert set(np.unique(sh.prefix_id)) <= {0, 1, 2} and np.all(sh.prefix_tokens == 500)
    # Turn t + 1 of a conversation starts with turn t's prompt and answer.
    s = int(sh.session_id[sh.turn == 2][0])
    rows = np.flatnonzero(sh.session_id == s)
    for a, b in itertools.pairwise(rows):
        assert sh.turn[b] == sh.turn[a] + 1
        assert t.input_tokens[b] > t.input_tokens[a] + t.output_tokens[a]
    reuse = t.prefix_reuse()
    assert reuse is not None and reuse["potential"] > 0.8
    assert generate_shared_trace("gsm8k", spec, rate_rps=5.0, num_requests=800, seed=1
                                 ).fingerprint() == t.fingerprint()
    with pytest.raises(TraceError, match=r"turns=0\.5 must be >= 1"):
        PrefixSpec(turns=0.5)


def test_cache_raises_capacity_of_a_shared_workload(catalog: Catalog) -> None:
    r = make_replica(catalog)
    t = generate_shared_trace("sharegpt", PrefixSpec(apps=2, system_tokens=1500, turns=3,
                                                     think_s=20), rate_rps=1.0,
                              num_requests=600)
    assert capacity_rps(r, t) > 1.3 * capacity_rps(r, t.without_sharing())


def test_sharing_columns_round_trip_through_files(tmp_path: object) -> None:
    t = _hand_trace()
    back = load_trace(t.save(f"{tmp_path}/t.parquet"))
    assert back.sharing is not None and back.fingerprint() == t.fingerprint()
    with pytest.raises(TraceError, match="prefix_tokens=300 at row 0 exceeds"):
        Trace(np.zeros(1), np.array([10]), np.array([1]), None, "x",
              Sharing(np.array([0]), np.array([300]), np.array([-1]), np.array([0])))


def test_scenario_prefix_option() -> None:
    base = {"gpus": {"H100": {"count": 1}}, "models": ["llama-3.1-8b"]}
    sc = Scenario.model_validate({**base, "workload": {"prefix": {"turns": 3}}})
    traffic = sc.profile_spec().traffic()
    assert traffic.describe()["routing"] == "affinity"
    assert traffic.lengths().sharing is not None
    off = Scenario.model_validate({**base, "workload": {"prefix": {"cache": False}}})
    assert off.profile_spec().base_trace().sharing is None
    with pytest.raises(ValueError, match="poisson arrivals"):
        Scenario.model_validate({**base, "workload": {"arrival": "gamma", "prefix": {}}})
