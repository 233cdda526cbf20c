"""The router's metrics without Ray: the buffered per-request series export every request.

`Observer`'s Ray metric objects are replaced by fakes that keep every record; the buffered
series (requests, tokens, TTFT, latency) reach them on `Observer.flush_metrics`, the rare
ones (errors, refusals) at once.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

import app.observability as observability
from app.observability import AGGREGATE_KEY, MAX_PENDING, Observer


class _Metric:
    """Keeps every ``inc`` / ``observe`` as (value, a copy of its tags)."""

    def __init__(self) -> None:
        self.records: list[tuple[float, dict[str, str]]] = []

    def inc(self, value: float, tags: dict[str, str]) -> None:
        self.records.append((value, dict(tags)))

    def observe(self, value: float, tags: dict[str, str]) -> None:
        self.records.append((value, dict(tags)))


NAMES = ("requests", "tokens", "errors", "ttft", "latency", "refused")


def _observer() -> tuple[Observer, dict[str, _Metric]]:
    obs = Observer()
    fakes = {name: _Metric() for name in NAMES}
    for name, fake in fakes.items():
        setattr(obs, name, fake)
    return obs, fakes


def _observe(obs: Observer, model: str, group: str, status: int = 200, ttft_s: float = 0.1,
             latency_s: float = 0.5, prompt_tokens: int = 10, output_tokens: int = 4,
             outcome: str = "ok") -> None:
    obs.observe(arrival_s=0.0, model=model, group=group, score=0.3, status=status,
                ttft_s=ttft_s, latency_s=latency_s, prompt_tokens=prompt_tokens,
                output_tokens=output_tokens, stream=False, outcome=outcome)


def test_buffered_series_export_the_same_sums_and_every_latency() -> None:
    obs, m = _observer()
    _observe(obs, "8b", "g1", ttft_s=0.1, latency_s=0.5, prompt_tokens=10, output_tokens=4)
    _observe(obs, "8b", "g1", ttft_s=0.2, latency_s=0.7, prompt_tokens=30, output_tokens=0)
    _observe(obs, "70b", "g2", ttft_s=0.3, latency_s=0.9, prompt_tokens=5, output_tokens=6)
    _observe(obs, "70b", "g2", status=502, outcome="engine_error", prompt_tokens=5)
    # The rare series at once; the per-request ones wait for the export.
    assert m["errors"].records == [(1, {"group": "g2", "kind": "engine"})]
    assert m["requests"].records == m["tokens"].records == m["latency"].records == []
    obs.flush_metrics()
    assert sorted((v, t["model"], t["group"], t["status"]) for v, t in m["requests"].records) == [
        (1, "70b", "g2", "200"), (1, "70b", "g2", "502"), (2, "8b", "g1", "200")]
    # 8b prompt: 10 + 30 = 40 in one record; its output 4 (the 0 adds nothing); the failed
    # request's tokens are not counted (as before).
    assert sorted((t["model"], t["kind"], v) for v, t in m["tokens"].records) == [
        ("70b", "output", 6), ("70b", "prompt", 5), ("8b", "output", 4), ("8b", "prompt", 40)]
    assert m["ttft"].records == [(0.1, {"model": "8b", "group": "g1"}),
                                 (0.2, {"model": "8b", "group": "g1"}),
                                 (0.3, {"model": "70b", "group": "g2"})]
    assert [v for v, _ in m["latency"].records] == [0.5, 0.7, 0.9]
    obs.flush_metrics()                                     # nothing twice
    assert len(m["requests"].records) == 3 and len(m["latency"].records) == 3


def test_refusals_are_recorded_at_once_and_counted_in_requests() -> None:
    obs, m = _observer()
    _observe(obs, "", "", status=429, outcome="rate_limited", prompt_tokens=0,
             output_tokens=0)
    assert m["refused"].records == [(1, {"model": "", "outcome": "rate_limited",
                                         "key": AGGREGATE_KEY})]
    obs.flush_metrics()
    assert [(v, t["status"]) for v, t in m["requests"].records] == [(1, "429")]


def test_a_full_buffer_exports_at_once_and_close_exports_the_rest() -> None:
    obs, m = _observer()
    for _ in range(MAX_PENDING - 1):
        _observe(obs, "8b", "g1")
    assert m["latency"].records == []
    _observe(obs, "8b", "g1")                               # the MAX_PENDING-th
    assert len(m["latency"].records) == MAX_PENDING
    assert m["requests"].records == [(MAX_PENDING, {"model": "8b", "group": "g1",
                                                    "status": "200"})]
    _observe(obs, "8b", "g1", latency_s=2.0)
    obs.close()
    assert m["latency"].records[-1] == (2.0, {"model": "8b", "group": "g1"})
    assert m["requests"].records[-1][0] == 1


def test_the_background_task_exports_every_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(observability, "METRICS_EXPORT_S", 0.01)
    obs, m = _observer()

    async def run() -> list[Any]:
        obs.start()
        _observe(obs, "8b", "g1", latency_s=0.25)
        await asyncio.sleep(0.05)
        seen = list(m["latency"].records)
        obs.close()
        return seen

    assert asyncio.run(run()) == [(0.25, {"model": "8b", "group": "g1"})]


def test_a_failed_export_does_not_stop_the_next_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(observability, "METRICS_EXPORT_S", 0.01)
    obs, m = _observer()
    broken = {"on": True}

    class _Flaky(_Metric):
        def observe(self, value: float, tags: dict[str, str]) -> None:
            if broken["on"]:
                broken["on"] = False
                raise RuntimeError("metrics agent gone")
            super().observe(value, tags)

    obs.ttft = _Flaky()

    async def run() -> None:
        obs.start()
        _observe(obs, "8b", "g1", latency_s=0.25)      # its export fails (the TTFT record)
        await asyncio.sleep(0.05)
        _observe(obs, "8b", "g1", latency_s=0.5)       # the task still runs: exported
        await asyncio.sleep(0.05)
        obs.close()

    asyncio.run(run())
    assert [v for v, _ in m["latency"].records] == [0.5]
