"""`boute bench` bounds: bad flags are refused before any request; arrivals are drawn lazily."""

from __future__ import annotations

import asyncio
import itertools
import json
import threading
import tracemalloc
from typing import Any

import numpy as np
import pytest

from boute.bench import (
    _CHUNK,
    MAX_BENCH_RATE_RPS,
    MAX_BENCH_REQUESTS,
    BenchRequest,
    check_load,
    generated_requests,
    run_bench,
)
from boute.cli import main
from common.errors import BenchError
from profiling import generate_trace

# Port 9 (discard) on localhost: nothing listens, so a request that were sent would fail
# with exit 1, not 2 (and "no request succeeded" on stderr).
URL = ["--url", "http://127.0.0.1:9"]


@pytest.mark.parametrize(("flags", "message"), [
    (["--rate", "0"], "--rate=0 must be a number of requests/s > 0"),
    (["--rate", "-5"], "--rate=-5 must be a number of requests/s > 0"),
    (["--rate", "nan"], "--rate=nan must be"),
    (["--rate", "inf"], "--rate=inf must be"),
    (["--rate", "1e9", "--duration", "1"], "at most 10000 req/s"),
    (["--rate", "10001"], "--rate=10001 req/s is more than one load generator"),
    (["--rate", "5000", "--duration", "1000"], "5e+06 requests, more than the 1,000,000"),
    (["--rate", "10000", "--duration", "1e308"], "inf requests, more than the 1,000,000"),
    (["--duration", "0"], "--duration=0 must be a number of seconds > 0"),
    (["--duration", "-3"], "--duration=-3 must be"),
    (["--duration", "inf"], "--duration=inf must be"),
    (["--timeout", "0"], "--timeout=0 must be a number of seconds > 0"),
    (["--timeout", "-1"], "--timeout=-1 must be"),
    (["--max-concurrency", "0"], "--max-concurrency=0 must be >= 1 and <= 16384"),
    (["--max-concurrency", "1000000000"], "--max-concurrency=1000000000 must be"),
    (["--shape", "chess"], "--shape='chess' is unknown"),
    (["--trace", "nowhere.csv"], "trace file 'nowhere.csv' does not exist"),
    (["--trace", "nowhere.csv", "--rate", "0"], "--rate=0 must be"),
])
def test_bad_bench_flags_are_one_line_and_exit_2(
        flags: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["bench", *URL, *flags])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.count("\n") == 1 and message in err and "Traceback" not in err


def test_check_load_counts_and_bounds() -> None:
    assert check_load(10.0, 60.0) == 600
    assert check_load(0.1, 1.0) == 1                    # at least one request
    assert check_load(MAX_BENCH_RATE_RPS, MAX_BENCH_REQUESTS / MAX_BENCH_RATE_RPS) \
        == MAX_BENCH_REQUESTS
    with pytest.raises(BenchError, match="more than the 1,000,000"):
        check_load(MAX_BENCH_RATE_RPS, MAX_BENCH_REQUESTS / MAX_BENCH_RATE_RPS + 1)


def test_small_generated_run_is_the_plain_generated_trace() -> None:
    got = list(generated_requests("mtbench", rate_rps=20.0, duration_s=10.0, seed=3))
    ref = generate_trace("mtbench", rate_rps=20.0, num_requests=200, seed=3)
    assert [r.arrival_s for r in got] == pytest.approx(ref.arrival_s.tolist())
    assert [r.input_tokens for r in got] == ref.input_tokens.tolist()
    assert [r.output_tokens for r in got] == ref.output_tokens.tolist()


def test_chunks_join_into_one_poisson_stream() -> None:
    n = 3 * _CHUNK + 17
    got = list(generated_requests("gsm8k", rate_rps=50.0, duration_s=n / 50.0, seed=1))
    arrivals = np.array([r.arrival_s for r in got])
    assert len(got) == n and arrivals[0] == 0.0
    gaps = np.diff(arrivals)
    assert (gaps >= 0).all()
    # Exponential gaps of mean 1/50 s: the mean of n - 1 gaps is within 5% (sd 1/sqrt(n)).
    assert gaps.mean() == pytest.approx(1 / 50.0, rel=0.05)
    # Gaps across chunk boundaries are draws too, not zeros.
    assert all(gaps[k * _CHUNK - 1] > 0 for k in (1, 2, 3))


def test_arrivals_are_drawn_lazily_in_bounded_memory() -> None:
    """A million requests (the cap) cost the memory of one chunk, not of the whole run."""
    requests = generated_requests("sharegpt", rate_rps=MAX_BENCH_RATE_RPS,
                                  duration_s=MAX_BENCH_REQUESTS / MAX_BENCH_RATE_RPS)
    tracemalloc.start()
    try:
        count = sum(1 for _ in itertools.islice(requests, 5 * _CHUNK))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert count == 5 * _CHUNK
    # One chunk: ~3 arrays of 4097 x 8 bytes plus the trace; the whole run would be
    # 10^6 x (3 x 8 bytes + a ~100-byte object) > 100 MB.
    assert peak < 2_000_000, peak


# -- an in-process fake server: the worker pool holds at most max_concurrency in flight ------
class _FakeServer:
    def __init__(self) -> None:
        self.in_flight = 0
        self.peak = 0
        self.requests = 0
        self.loop = asyncio.new_event_loop()
        self.port = 0
        started = threading.Event()
        self.thread = threading.Thread(target=self._serve, args=(started,), daemon=True)
        self.thread.start()
        started.wait(10)

    def _serve(self, started: threading.Event) -> None:
        from aiohttp import web

        async def handler(request: web.Request) -> web.StreamResponse:
            body: dict[str, Any] = await request.json()
            self.requests += 1
            self.in_flight += 1
            self.peak = max(self.peak, self.in_flight)
            resp = web.StreamResponse(headers={"x-boute-model": "weak"})
            await resp.prepare(request)
            for _ in range(body["max_tokens"]):
                await asyncio.sleep(0.002)
                chunk = {"choices": [{"delta": {"content": "x"}}]}
                await resp.write(f"data: {json.dumps(chunk)}\n\n".encode())
            await resp.write(b"data: [DONE]\n\n")
            self.in_flight -= 1
            return resp

        async def start() -> None:
            app = web.Application()
            app.router.add_post("/v1/chat/completions", handler)
            runner = web.AppRunner(app)
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
            started.set()

        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(start())
        self.loop.run_forever()

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


def test_run_bench_sends_every_request_with_bounded_concurrency() -> None:
    server = _FakeServer()
    try:
        requests = [BenchRequest(0.0, 8, 4)] * 30 + [BenchRequest(0.05, 8, 3, "hello")]
        result = run_bench(f"http://127.0.0.1:{server.port}", requests, max_concurrency=4)
    finally:
        server.stop()
    s = result.summary()
    assert s["requests"] == 31 and s["ok"] == 31 and server.requests == 31
    assert 1 <= server.peak <= 4                      # 30 arrive at once, 4 workers send
    assert sorted(r.output_tokens for r in result.records) == [3] + [4] * 30
    assert s["model_share"] == {"weak": 1.0}
    # The 31st request waited for a worker: its latency counts from its scheduled arrival.
    assert all(r.e2e_s > r.ttft_s > 0 for r in result.records)
