from __future__ import annotations

import itertools

import numpy as np
import pytest

from profiling import (
    Catalog,
    Trace,
    capacity_rps,
    generate_trace,
    simulate,
    simulate_closed_loop,
)
from tests.conftest import make_replica


def _fixed(n: int, inp: int, out: int, rate: float = 1.0) -> Trace:
    return Trace(np.arange(n) / rate, np.full(n, inp, dtype=np.int64),
                 np.full(n, out, dtype=np.int64))


def test_single_request_latency_is_prefill_plus_decode_steps(catalog: Catalog) -> None:
    r = make_replica(catalog)
    res = simulate(r, _fixed(1, 100, 10))
    # First token after the prefill step; then 9 decode steps with context 101..109.
    expected = r.prefill_time_s(100) + sum(r.decode_time_s(1, 100 + j) for j in range(1, 10))
    assert res.latency_s[0] == pytest.approx(expected, rel=1e-9)
    assert res.ttft_s[0] == pytest.approx(r.prefill_time_s(100), rel=1e-9)


def test_frontend_latency_adds_once_to_ttft_and_latency(catalog: Catalog) -> None:
    d = 0.004
    base = simulate(make_replica(catalog), _fixed(3, 100, 10, rate=0.5))
    res = simulate(make_replica(catalog, frontend_latency_s=d), _fixed(3, 100, 10, rate=0.5))
    # Requests 2 s apart never overlap: each one is the isolated request plus d, TPOT as is.
    np.testing.assert_allclose(res.ttft_s, base.ttft_s + d, rtol=1e-12)
    np.testing.assert_allclose(res.latency_s, base.latency_s + d, rtol=1e-12)
    np.testing.assert_allclose(res.tpot_s, base.tpot_s, rtol=1e-12)


def test_closed_loop_client_waits_the_frontend_latency(catalog: Catalog) -> None:
    # One client, n requests of engine latency L: the client sees each end d late and sends the
    # next then, so the run lasts n (L + d) and every request's latency is L + d.
    d, n = 0.004, 5
    r = make_replica(catalog, frontend_latency_s=d)
    engine_l = simulate(make_replica(catalog), _fixed(1, 100, 10)).latency_s[0]
    res = simulate_closed_loop(r, _fixed(n, 100, 10), 1)
    np.testing.assert_allclose(res.latency_s, engine_l + d, rtol=1e-12)
    assert res.duration_s == pytest.approx(n * (engine_l + d), rel=1e-12)
    assert res.throughput_tok_s == pytest.approx(10 / (engine_l + d), rel=1e-12)


def test_long_prompt_is_chunked_into_the_token_budget(catalog: Catalog) -> None:
    r = make_replica(catalog, max_num_batched_tokens=2048, max_model_len=8192)
    res = simulate(r, _fixed(1, 5000, 2))
    # Chunks of 2048, 2048, 904: three steps before the first token.
    chunks = [(2048, 0), (2048, 2048), (904, 4096)]
    t = sum(r.step_time_s(c, c * (s + c / 2), s + c, 0, 0, 1 if s + c == 5000 else 0)
            for c, s in chunks)
    assert res.ttft_s[0] == pytest.approx(t, rel=1e-9)


def test_throughput_rises_with_load_then_saturates(catalog: Catalog) -> None:
    r = make_replica(catalog)
    trace = generate_trace("gsm8k", rate_rps=1, num_requests=1500, seed=0)
    tput = [simulate_closed_loop(r, trace, c).throughput_tok_s for c in (1, 4, 16, 64, 256, 512)]
    assert all(b > a for a, b in itertools.pairwise(tput[:5]))
    # max_num_seqs = 256: more clients than that only queue, throughput stays flat.
    assert tput[5] == pytest.approx(tput[4], rel=0.05)
    assert tput[4] > 20 * tput[0]


def test_latency_diverges_past_capacity_and_is_flagged(catalog: Catalog) -> None:
    r = make_replica(catalog, "llama-3.1-70b", "H100", tp=4)
    base = generate_trace("gsm8k", rate_rps=1, num_requests=4000, seed=0)
    cap = capacity_rps(r, base.head(1000))
    below = simulate(r, base.head(1000).scaled_to(0.5 * cap), capacity=cap)
    short = simulate(r, base.head(1000).scaled_to(1.3 * cap), capacity=cap)
    long = simulate(r, base.scaled_to(1.3 * cap), capacity=cap)
    assert not below.saturated
    assert short.saturated and long.saturated
    # Past capacity the backlog grows with time: 4x the requests, a much higher P95, and the
    # last requests wait far longer than under half load.
    assert np.quantile(long.latency_s, 0.95) > 1.5 * np.quantile(short.latency_s, 0.95)
    assert long.latency_s[-50:].mean() > 4 * below.latency_s[-50:].mean()


def test_kv_pressure_preempts_and_still_completes(catalog: Catalog) -> None:
    # 70B at TP 2 on H100 holds ~55k KV tokens: 256 sequences of 2,000 tokens do not fit.
    r = make_replica(catalog, "llama-3.1-70b", "H100", tp=2, max_model_len=4096)
    res = simulate_closed_loop(r, _fixed(300, 1000, 1000), concurrency=256)
    assert res.completed == 300
    assert res.preemptions > 0
    assert res.output_tokens == 300 * 1000
