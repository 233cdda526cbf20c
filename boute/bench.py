"""`boute bench`: an open-loop load generator for an OpenAI-compatible endpoint.

Requests are sent at the trace's arrival times (Poisson or bursty generated traces, or a
trace file's own timestamps), whatever the server's progress — an open loop, so a slow server
meets the real queue, not a politely waiting client. ``max_concurrency`` bounds the requests
in flight (a client-side limit: a request that waits for a slot keeps its scheduled arrival
time, so the wait counts in its latency). Every request streams, so the first token's arrival
is seen: TTFT = first content token - scheduled arrival; end-to-end = last byte - scheduled
arrival; TPOT = (end-to-end - TTFT) / (output tokens - 1). Prompts are the trace's text, or
synthesized words of about the trace's input length (4 characters per token); ``max_tokens``
is the trace's output length with ``ignore_eos`` so engines produce exactly that many.
The router's ``x-boute-model`` / ``x-boute-group`` headers give the routed shares.

Memory stays bounded: generated requests are drawn lazily in chunks (`generated_requests`),
prompts are made when a request is sent, and ``max_concurrency`` workers send them. A run is
refused (`BenchError`) above `MAX_BENCH_RATE_RPS` or `MAX_BENCH_REQUESTS` (see their notes).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from common.errors import BenchError
from profiling import Trace

__all__ = ["MAX_BENCH_CONCURRENCY", "MAX_BENCH_RATE_RPS", "MAX_BENCH_REQUESTS", "BenchRequest",
           "BenchResult", "RequestRecord", "check_client", "check_duration", "check_load",
           "check_rate", "format_bench",
           "generated_requests", "run_bench", "synth_prompt", "trace_requests",
           "workload_requests"]

QUANTILES = (0.5, 0.9, 0.95, 0.99)
_WORDS = ("the", "model", "explain", "why", "sum", "of", "each", "cost", "train", "step",
          "prove", "42", "+", "x", "def", "apple", "route", "answer", "then", "compute")


def synth_prompt(tokens: int, rng: np.random.Generator) -> str:
    """Random words of about ``4 * tokens`` characters (the 4-characters-per-token rule)."""
    out: list[str] = []
    chars = 0
    while chars < 4 * tokens:
        w = _WORDS[int(rng.integers(len(_WORDS)))]
        out.append(w)
        chars += len(w) + 1
    return " ".join(out)


@dataclass(slots=True)
class RequestRecord:
    """One request as the client saw it (times in seconds from the bench start)."""

    arrival_s: float
    status: int = 0
    ttft_s: float = float("nan")
    e2e_s: float = float("nan")
    output_tokens: int = 0
    model: str = ""
    group: str = ""
    error: str = ""
    workload: str = ""


@dataclass
class BenchResult:
    """Aggregates of a bench run (see `format_bench`)."""

    url: str
    records: list[RequestRecord] = field(default_factory=list)
    duration_s: float = 0.0

    def summary(self, slo_p95_s: float | None = None, slo_window_s: float = 60.0
                ) -> dict[str, Any]:
        """The JSON report: counts, throughput, latency quantiles, routed shares, errors.

        With `slo_p95_s`: ``slo``, the measured attainment of "P95 <= slo_p95_s in each
        `slo_window_s` window" (`tuning.attainment`: windows by arrival; a request that
        failed, 429s included, counts as a miss: infinite latency).
        """
        ok = [r for r in self.records if r.status == 200 and not r.error]
        errors = Counter(str(r.status) if r.status != 200 else "stream-error"
                         for r in self.records if r.status != 200 or r.error)
        out: dict[str, Any] = {
            "url": self.url, "requests": len(self.records), "ok": len(ok),
            "errors": dict(errors), "duration_s": self.duration_s,
            "throughput_rps": len(ok) / self.duration_s if self.duration_s else 0.0,
            "output_tokens_per_s": (sum(r.output_tokens for r in ok) / self.duration_s
                                    if self.duration_s else 0.0)}
        tpot = [(r.e2e_s - r.ttft_s) / (r.output_tokens - 1) for r in ok if r.output_tokens > 1]
        for name, values in (("ttft_s", [r.ttft_s for r in ok]),
                             ("e2e_s", [r.e2e_s for r in ok]), ("tpot_s", tpot)):
            arr = np.asarray(values, dtype=float)
            out[name] = ({f"p{round(q * 100)}": float(np.quantile(arr, q)) for q in QUANTILES}
                         | {"mean": float(arr.mean())}) if arr.size else {}
        models = Counter(r.model for r in ok)
        groups = Counter(r.group for r in ok)
        out["model_share"] = {m: n / len(ok) for m, n in sorted(models.items())} if ok else {}
        by_workload: dict[str, Counter[str]] = {}
        for r in ok:
            if r.workload:
                by_workload.setdefault(r.workload, Counter())[r.model] += 1
        if by_workload:
            out["workload_share"] = {
                w: {m: n / sum(c.values()) for m, n in sorted(c.items())}
                for w, c in sorted(by_workload.items())}
            out["workload_requests"] = {w: sum(c.values()) for w, c in sorted(by_workload.items())}
        out["group_share"] = {g: n / len(ok) for g, n in sorted(groups.items())} if ok else {}
        first = next((r.error for r in self.records if r.error), "")
        out["first_error"] = first
        by_kind: dict[str, str] = {}        # each error kind's first message (what broke)
        for r in self.records:
            if r.status != 200 or r.error:
                by_kind.setdefault(str(r.status) if r.status != 200 else "stream-error", r.error)
        out["first_errors"] = by_kind
        if slo_p95_s is not None:
            from tuning import attainment

            arrival = np.array([r.arrival_s for r in self.records], dtype=float)
            latency = np.array([r.e2e_s if r.status == 200 and not r.error else np.inf
                                for r in self.records], dtype=float)
            share, windows = attainment(arrival, np.nan_to_num(latency, nan=np.inf),
                                        slo_p95_s, slo_window_s)
            out["slo"] = {"p95_s": slo_p95_s, "window_s": slo_window_s,
                          "attainment": share, "windows": windows}
        return out


# Bounds of one load generator (one process, one asyncio event loop). Each request costs the
# client CPU to open a stream and parse one server-sent event per output token; measured with
# aiohttp on one core that is on the order of 100 us per request, so above ~10^4 req/s the
# client, not the server, sets the pace and arrivals slip from their schedule.
MAX_BENCH_RATE_RPS = 10_000.0
# Every request keeps a `RequestRecord` (~200 bytes) until the summary: 10^6 of them is
# ~200 MB, and 10^4 req/s x 100 s. Longer runs: several `boute bench` processes.
MAX_BENCH_REQUESTS = 1_000_000
# One TCP connection per request in flight; one client address has 28,232 ephemeral ports
# to a server (Linux's default range 32768-60999), so more cannot be in flight anyway.
MAX_BENCH_CONCURRENCY = 16_384
_CHUNK = 4096                   # generated requests drawn at a time (`generated_requests`)


@dataclass(frozen=True, slots=True)
class BenchRequest:
    """One request to send: its scheduled arrival (s), lengths, and prompt text if any."""

    arrival_s: float
    input_tokens: int
    output_tokens: int
    prompt: str | None = None
    model: str | None = None          # the request's ``model`` (None: the bench's)


def check_rate(rate_rps: float, flag: str = "--rate") -> None:
    """Check a bench rate: a number of requests/s in (0, `MAX_BENCH_RATE_RPS`].

    Raises:
        BenchError: naming `flag`, the value and the bound.

    """
    if not (rate_rps > 0 and math.isfinite(rate_rps)):
        raise BenchError(f"{flag}={rate_rps:g} must be a number of requests/s > 0")
    if rate_rps > MAX_BENCH_RATE_RPS:
        raise BenchError(f"{flag}={rate_rps:g} req/s is more than one load generator sends on "
                         f"schedule (at most {MAX_BENCH_RATE_RPS:g} req/s); lower it or run "
                         "several `boute bench` processes")


def check_duration(duration_s: float, flag: str = "--duration") -> None:
    """Check a bench duration: a positive finite number of seconds.

    Raises:
        BenchError: naming `flag` and the value.

    """
    if not (duration_s > 0 and math.isfinite(duration_s)):
        raise BenchError(f"{flag}={duration_s:g} must be a number of seconds > 0")


def check_load(rate_rps: float, duration_s: float, *, rate_flag: str = "--rate",
               duration_flag: str = "--duration") -> int:
    """Number of requests a generated load of `rate_rps` for `duration_s` sends.

    Returns:
        ``max(1, round(rate_rps * duration_s))``.

    Raises:
        BenchError: the rate is not in (0, `MAX_BENCH_RATE_RPS`], the duration is not a
            positive finite number, or the run would send more than `MAX_BENCH_REQUESTS`.

    """
    check_rate(rate_rps, rate_flag)
    check_duration(duration_s, duration_flag)
    expected = rate_rps * duration_s        # may overflow to inf: compared before rounding
    if not math.isfinite(expected) or round(expected) > MAX_BENCH_REQUESTS:
        raise BenchError(f"{rate_flag}={rate_rps:g} for {duration_flag}={duration_s:g} s is "
                         f"{expected:.3g} requests, more than the {MAX_BENCH_REQUESTS:,} one "
                         "bench run keeps; shorten the duration or lower the rate")
    return max(1, round(expected))


def check_client(max_concurrency: int, timeout_s: float) -> None:
    """Check the client settings of a bench run.

    Raises:
        BenchError: `max_concurrency` is not in [1, `MAX_BENCH_CONCURRENCY`], or `timeout_s`
            is not a positive finite number of seconds.

    """
    if not 1 <= max_concurrency <= MAX_BENCH_CONCURRENCY:
        raise BenchError(f"--max-concurrency={max_concurrency} must be >= 1 and <= "
                         f"{MAX_BENCH_CONCURRENCY} (one connection per request in flight)")
    if not (timeout_s > 0 and math.isfinite(timeout_s)):
        raise BenchError(f"--timeout={timeout_s:g} must be a number of seconds > 0")


def generated_requests(shape: str, *, rate_rps: float, duration_s: float, seed: int = 0,
                       rate_flag: str = "--rate", duration_flag: str = "--duration"
                       ) -> Iterator[BenchRequest]:
    """Poisson arrivals of `shape`'s lengths at `rate_rps` for `duration_s`, drawn lazily.

    ``check_load`` requests in all, drawn `_CHUNK` at a time (`generate_trace` per chunk), so
    memory stays bounded whatever the count. A run of at most `_CHUNK` requests is exactly
    ``generate_trace(shape, rate_rps=..., num_requests=n, seed=seed)``; later chunks use
    seeds derived from (`seed`, chunk index) and start one exponential gap after the last.

    Raises:
        BenchError: see `check_load`; also an unknown `shape` (raised here, not when
            iterating).

    """
    from profiling import TRACE_SHAPES, generate_trace

    if shape not in TRACE_SHAPES:
        raise BenchError(f"--shape={shape!r} is unknown; use one of {sorted(TRACE_SHAPES)}")
    n = check_load(rate_rps, duration_s, rate_flag=rate_flag, duration_flag=duration_flag)

    def draw() -> Iterator[BenchRequest]:
        start_s, sent = 0.0, 0
        for chunk in itertools.count():
            if sent >= n:
                return
            size = min(_CHUNK, n - sent)
            if chunk == 0:
                trace = generate_trace(shape, rate_rps=rate_rps, num_requests=size, seed=seed)
                skip = 0
            else:           # one more, dropped: its arrival is 0; the next one's is a gap
                child = int(np.random.SeedSequence([seed, chunk]).generate_state(1)[0])
                trace = generate_trace(shape, rate_rps=rate_rps, num_requests=size + 1,
                                       seed=child)
                skip = 1
            for i in range(skip, len(trace)):
                yield BenchRequest(start_s + float(trace.arrival_s[i]),
                                   int(trace.input_tokens[i]), int(trace.output_tokens[i]))
            start_s += float(trace.arrival_s[-1])
            sent += size

    return draw()


def workload_requests(workloads: Iterable[tuple[str, str, float]], *, duration_s: float,
                      seed: int = 0, duration_flag: str = "--duration"
                      ) -> Iterator[BenchRequest]:
    """Several workloads' generated requests, merged by arrival time.

    Each ``(name, shape, rate_rps)`` is `generated_requests` of its own (seed ``seed + i``)
    whose requests ask for ``model: "auto:<name>"`` (the router's workload alias).
    """
    import heapq
    from dataclasses import replace

    def tagged(name: str, requests: Iterator[BenchRequest]) -> Iterator[BenchRequest]:
        for r in requests:
            yield replace(r, model=f"auto:{name}")

    streams = [tagged(name, generated_requests(
        shape, rate_rps=rate, duration_s=duration_s, seed=seed + i,
        rate_flag=f"the rate of workload {name!r}", duration_flag=duration_flag))
        for i, (name, shape, rate) in enumerate(workloads)]
    return heapq.merge(*streams, key=lambda r: r.arrival_s)


def trace_requests(trace: Trace) -> Iterator[BenchRequest]:
    """The rows of `trace` as requests, one at a time."""
    for i in range(len(trace)):
        yield BenchRequest(float(trace.arrival_s[i]), int(trace.input_tokens[i]),
                           int(trace.output_tokens[i]),
                           trace.prompts[i] if trace.prompts else None)


def _body(kind: str, model: str, req: BenchRequest, rng: np.random.Generator
          ) -> dict[str, Any]:
    prompt = req.prompt if req.prompt is not None else synth_prompt(req.input_tokens, rng)
    body: dict[str, Any] = {"model": req.model or model, "max_tokens": req.output_tokens,
                            "stream": True,
                            "ignore_eos": True}
    if kind == "chat":
        body["messages"] = [{"role": "user", "content": prompt}]
    else:
        body["prompt"] = prompt
    return body


async def _one(session: Any, url: str, kind: str, body: dict[str, Any], rec: RequestRecord,
               t0: float, timeout_s: float) -> None:
    import aiohttp

    path = "/v1/chat/completions" if kind == "chat" else "/v1/completions"
    try:
        timeout = aiohttp.ClientTimeout(total=timeout_s)
        async with session.post(url + path, json=body, timeout=timeout) as resp:
            rec.status = resp.status
            rec.model = resp.headers.get("x-boute-model", body.get("model", ""))
            rec.group = resp.headers.get("x-boute-group", "")
            if resp.status != 200:
                rec.error = (await resp.text())[:300]
                return
            async for line in resp.content:
                text = line.decode().strip()
                if not text.startswith("data:") or text == "data: [DONE]":
                    continue
                event = json.loads(text[5:])
                if "error" in event:
                    rec.error = json.dumps(event["error"])[:300]
                    continue
                choice = (event.get("choices") or [{}])[0]
                piece = (choice.get("delta") or {}).get("content") or choice.get("text")
                if piece:
                    if rec.output_tokens == 0:
                        rec.ttft_s = time.perf_counter() - t0 - rec.arrival_s
                    rec.output_tokens += 1
            rec.e2e_s = time.perf_counter() - t0 - rec.arrival_s
    except (TimeoutError, aiohttp.ClientError, ValueError) as exc:
        rec.error = f"{type(exc).__name__}: {exc}"[:300]


_Item = tuple[BenchRequest, RequestRecord]


async def _run(url: str, requests: Iterable[BenchRequest], *, kind: str, model: str,
               max_concurrency: int, timeout_s: float, seed: int,
               api_key: str | None = None) -> BenchResult:
    """Dispatch `requests` at their arrival times to `max_concurrency` sending workers.

    What is held at once: the records (one per request sent so far), at most
    `max_concurrency` request bodies (a prompt is made when a worker takes its request), and
    the requests that arrived while every worker was busy (client-side queue; a request keeps
    its scheduled arrival, so the wait counts in its latency).
    """
    import aiohttp

    rng = np.random.default_rng(seed)
    result = BenchResult(url)
    queue: asyncio.Queue[_Item | None] = asyncio.Queue()
    connector = aiohttp.TCPConnector(limit=max_concurrency)
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else None
    async with aiohttp.ClientSession(connector=connector, headers=headers) as session:
        t0 = time.perf_counter()

        async def worker() -> None:
            while (item := await queue.get()) is not None:
                req, rec = item     # prompts are made in arrival order: seeded, reproducible
                await _one(session, url, kind, _body(kind, model, req, rng), rec, t0,
                           timeout_s)

        workers = [asyncio.create_task(worker()) for _ in range(max_concurrency)]
        first: float | None = None
        for req in requests:
            first = req.arrival_s if first is None else first
            rec = RequestRecord(req.arrival_s - first)
            if req.model and req.model.startswith("auto:"):
                rec.workload = req.model.removeprefix("auto:")
            result.records.append(rec)
            await asyncio.sleep(max(0.0, rec.arrival_s - (time.perf_counter() - t0)))
            queue.put_nowait((req, rec))
        for _ in workers:
            queue.put_nowait(None)
        await asyncio.gather(*workers)
        result.duration_s = time.perf_counter() - t0
    return result


def run_bench(url: str, requests: Trace | Iterable[BenchRequest], *, kind: str = "chat",
              model: str = "auto", max_concurrency: int = 256, timeout_s: float = 600.0,
              seed: int = 0, api_key: str | None = None) -> BenchResult:
    """Send `requests` to `url` open-loop and collect every request's timings.

    Args:
        url: the server's base URL, e.g. ``http://127.0.0.1:8000``.
        requests: a trace (arrivals, lengths and optionally prompt text), or requests in
            arrival order, e.g. `generated_requests` (consumed lazily, as they are sent).
        kind: ``"chat"`` or ``"completions"``.
        model: the request's ``model`` (``"auto"``: routed by BOute's router).
        max_concurrency: requests in flight at most.
        timeout_s: per-request timeout.
        seed: seeds the synthesized prompts.
        api_key: sent as ``Authorization: Bearer <key>`` (BOute's router wants one).

    Raises:
        BenchError: an unknown `kind`, or client settings out of bounds (`check_client`).

    """
    if kind not in ("chat", "completions"):
        raise BenchError(f"--kind={kind!r} must be 'chat' or 'completions'")
    check_client(max_concurrency, timeout_s)
    if isinstance(requests, Trace):
        requests = trace_requests(requests)
    return asyncio.run(_run(url.rstrip("/"), requests, kind=kind, model=model,
                            max_concurrency=max_concurrency, timeout_s=timeout_s, seed=seed,
                            api_key=api_key))


def format_bench(summary: dict[str, Any], predicted: dict[str, Any] | None = None) -> str:
    """A human table of a summary, with the plan's predictions beside it when given."""
    def ms(d: dict[str, float], key: str) -> str:
        return f"{d[key] * 1000:9.1f}" if key in d else "        -"

    lines = [f"{summary['requests']} requests to {summary['url']} in "
             f"{summary['duration_s']:.1f} s: {summary['ok']} ok, errors {summary['errors']}",
             f"throughput {summary['throughput_rps']:.2f} req/s, "
             f"{summary['output_tokens_per_s']:.0f} output tokens/s",
             f"{'ms':8s} {'p50':>9s} {'p90':>9s} {'p95':>9s} {'p99':>9s} {'mean':>9s}"]
    for name in ("ttft_s", "tpot_s", "e2e_s"):
        d = summary[name]
        lines.append(f"{name[:-2]:8s} " + " ".join(ms(d, k) for k in
                                                  ("p50", "p90", "p95", "p99", "mean")))
    lines.append("routed   " + ", ".join(f"{m} {s:.1%}" for m, s in
                                         summary["model_share"].items()))
    for g, s in summary["group_share"].items():
        lines.append(f"  {g}: {s:.1%}")
    if summary["first_error"]:
        lines.append(f"first error: {summary['first_error']}")
    if "slo" in summary:
        slo = summary["slo"]
        lines.append(f"SLO P95 <= {slo['p95_s']:g} s per {slo['window_s']:g} s window: "
                     f"{slo['attainment']:.1%} of {slo['windows']} windows")
    if predicted:
        lines.append("")
        lines.append(f"{'':22s} {'predicted':>10s} {'measured':>10s} {'error':>7s}")
        e2e = summary["e2e_s"]
        for label, p, m in (("P95 latency (s)", predicted.get("system_p95_s"), e2e.get("p95")),
                            ("mean latency (s)", predicted.get("mean_s"), e2e.get("mean")),
                            ("strong share", predicted.get("strong_share"),
                             summary.get("strong_share"))):
            if p is None or m is None:
                continue
            lines.append(f"{label:22s} {p:10.3f} {m:10.3f} {(m - p) / p:+7.1%}")
    return "\n".join(lines)
