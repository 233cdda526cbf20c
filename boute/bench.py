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
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from profiling import Trace

__all__ = ["BenchResult", "RequestRecord", "format_bench", "run_bench", "synth_prompt"]

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


@dataclass
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


@dataclass
class BenchResult:
    """Aggregates of a bench run (see `format_bench`)."""

    url: str
    records: list[RequestRecord] = field(default_factory=list)
    duration_s: float = 0.0

    def summary(self) -> dict[str, Any]:
        """The JSON report: counts, throughput, latency quantiles, routed shares, errors."""
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
        out["group_share"] = {g: n / len(ok) for g, n in sorted(groups.items())} if ok else {}
        first = next((r.error for r in self.records if r.error), "")
        out["first_error"] = first
        return out


async def _one(session: Any, url: str, kind: str, body: dict[str, Any], rec: RequestRecord,
               t0: float, sem: asyncio.Semaphore, timeout_s: float) -> None:
    import aiohttp

    path = "/v1/chat/completions" if kind == "chat" else "/v1/completions"
    async with sem:
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


async def _run(url: str, trace: Trace, *, kind: str, model: str, max_concurrency: int,
               timeout_s: float, seed: int) -> BenchResult:
    import aiohttp

    rng = np.random.default_rng(seed)
    result = BenchResult(url)
    sem = asyncio.Semaphore(max_concurrency)
    connector = aiohttp.TCPConnector(limit=max_concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        tasks = []
        t0 = time.perf_counter()
        for i in range(len(trace)):
            arrival = float(trace.arrival_s[i] - trace.arrival_s[0])
            prompt = trace.prompts[i] if trace.prompts else synth_prompt(
                int(trace.input_tokens[i]), rng)
            body: dict[str, Any] = {"model": model, "max_tokens": int(trace.output_tokens[i]),
                                    "stream": True, "ignore_eos": True}
            if kind == "chat":
                body["messages"] = [{"role": "user", "content": prompt}]
            else:
                body["prompt"] = prompt
            rec = RequestRecord(arrival)
            result.records.append(rec)
            delay = arrival - (time.perf_counter() - t0)
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(
                _one(session, url, kind, body, rec, t0, sem, timeout_s)))
        await asyncio.gather(*tasks)
        result.duration_s = time.perf_counter() - t0
    return result


def run_bench(url: str, trace: Trace, *, kind: str = "chat", model: str = "auto",
              max_concurrency: int = 256, timeout_s: float = 600.0, seed: int = 0
              ) -> BenchResult:
    """Send `trace` to `url` open-loop and collect every request's timings.

    Args:
        url: the server's base URL, e.g. ``http://127.0.0.1:8000``.
        trace: arrivals and lengths (and optionally prompt text).
        kind: ``"chat"`` or ``"completions"``.
        model: the request's ``model`` (``"auto"``: routed by BOute's router).
        max_concurrency: requests in flight at most.
        timeout_s: per-request timeout.
        seed: seeds the synthesized prompts.

    """
    if kind not in ("chat", "completions"):
        raise ValueError(f"kind={kind!r} must be 'chat' or 'completions'")
    if max_concurrency < 1:
        raise ValueError(f"max_concurrency={max_concurrency} must be >= 1")
    return asyncio.run(_run(url.rstrip("/"), trace, kind=kind, model=model,
                            max_concurrency=max_concurrency, timeout_s=timeout_s, seed=seed))


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
