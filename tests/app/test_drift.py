"""The router's live prediction error (`app.drift`) and the emulated engines' speed factor.

No Ray: `LiveDrift` on hand-made samples, the dispatcher's ``/health`` and metric through the
fakes of test_dispatch, the emulated engine with an instant clock.
"""

from __future__ import annotations

import asyncio
import math
from typing import Any

import pytest

from app.drift import LiveDrift, Sample
from app.router_config import GroupPrediction, RouterConfig
from app.routing import RouterError
from tests.app.test_dispatch import STRONG, WEAK, make, request
from tuning import PredictionTable

# One table for every test: per-replica 1 req/s -> P95 2 s, TPOT 20 ms; 3 req/s -> 4 s, 40 ms.
TABLE = PredictionTable((1.0, 3.0), (2.0, 4.0), (0.020, 0.040))


def _fill(d: LiveDrift, group: str, *, n: int, span_s: float, latency_s: float,
          ttft_s: float = 0.5, tokens: int = 11, stream: bool = True,
          start_s: float = 0.0) -> None:
    """`n` requests spread evenly over [start_s, start_s + span_s), all alike."""
    for i in range(n):
        d.record(group, Sample(start_s + i * span_s / n, latency_s, ttft_s, tokens, stream))


def test_the_error_at_the_observed_per_replica_rate_and_its_verdict() -> None:
    d = LiveDrift()
    d.track({"g": None}, now_s=0.0)
    # 240 requests in the 60 s window: 4 req/s over 2 replicas = 2 req/s per replica.
    # Predicted there: P95 (2 + 4) / 2 = 3 s, TPOT 30 ms. Served: every request 5 s, TTFT
    # 0.5 s, 11 tokens: TPOT (5 - 0.5) / 10 = 0.45 s.
    _fill(d, "g", n=240, span_s=60.0, latency_s=5.0)
    rep = d.report(60.0, {"g": TABLE}, {"g": 2}, window_s=60.0, min_requests=30,
                   tolerance=0.25)["g"]
    assert rep["requests"] == 240 and rep["rate_rps"] == pytest.approx(4.0)
    assert rep["rate_per_replica_rps"] == pytest.approx(2.0)
    assert rep["predicted_p95_s"] == pytest.approx(3.0)
    assert rep["error_p95"] == pytest.approx(3.0 / 5.0 - 1)              # -40%
    assert rep["split_error_p95"] == pytest.approx([-0.4, -0.4, -0.4])
    assert rep["observed_tpot_s"] == pytest.approx(0.45)
    assert rep["error_tpot"] == pytest.approx(0.030 / 0.45 - 1)          # -93%
    assert rep["drifted"] is True and rep["state"] == "drifted"
    assert LiveDrift.metric({"g": rep}) == {("g", "p95"): pytest.approx(-0.4),
                                            ("g", "tpot"): pytest.approx(0.030 / 0.45 - 1)}


def test_within_tolerance_is_ok_and_non_streamed_requests_judge_p95_only() -> None:
    d = LiveDrift()
    d.track({"g": None}, now_s=0.0)
    # 60 requests in 60 s on 1 replica: 1 req/s -> predicted P95 2 s; served 2.2 s:
    # error 2 / 2.2 - 1 = -9.1%, inside 25%. No stream: no TPOT.
    _fill(d, "g", n=60, span_s=60.0, latency_s=2.2, stream=False)
    rep = d.report(60.0, {"g": TABLE}, {"g": 1}, window_s=60.0, min_requests=30,
                   tolerance=0.25)["g"]
    assert rep["error_p95"] == pytest.approx(2.0 / 2.2 - 1)
    assert rep["observed_tpot_s"] is None and rep["error_tpot"] is None
    assert rep["drifted"] is False and rep["state"] == "ok"
    assert math.isnan(LiveDrift.metric({"g": rep})[("g", "tpot")])


def test_few_requests_no_table_saturated_idle_and_a_young_window() -> None:
    d = LiveDrift()
    d.track({"few": None, "none": None, "sat": None, "idle": None}, now_s=0.0)
    _fill(d, "few", n=10, span_s=60.0, latency_s=9.0)          # 10 < 30: no verdict
    _fill(d, "none", n=60, span_s=60.0, latency_s=1.0)
    _fill(d, "sat", n=600, span_s=60.0, latency_s=1.0)         # 10 req/s > the table's 3
    tables = {"few": TABLE, "sat": TABLE, "idle": TABLE}
    rep = d.report(60.0, tables, {}, window_s=60.0, min_requests=30, tolerance=0.25)
    assert rep["few"]["state"] == "few_requests" and rep["few"]["drifted"] is None
    assert rep["few"]["error_p95"] == pytest.approx(2.0 / 9.0 - 1)   # shown, not judged
    assert rep["none"]["state"] == "no_prediction" and "error_p95" not in rep["none"]
    assert rep["sat"]["state"] == "saturated" and rep["sat"]["drifted"] is None
    assert rep["idle"]["state"] == "idle" and rep["idle"]["requests"] == 0
    # A group that joined at t = 50 s: its 10 s are its window, not 60 s of which 50 idle.
    d.track({"few": None, "late": None}, now_s=50.0)
    assert set(d.windows) == {"few", "late"}                 # the others left the config
    _fill(d, "late", n=20, span_s=10.0, latency_s=2.0, start_s=50.0)
    late = d.report(60.0, {"late": TABLE}, {"late": 1}, window_s=60.0, min_requests=30,
                    tolerance=0.25)["late"]
    assert late["window_s"] == pytest.approx(10.0) and late["rate_rps"] == pytest.approx(2.0)
    assert late["predicted_p95_s"] == pytest.approx(3.0)     # 2 req/s: halfway, 3 s


def test_the_window_slides_and_its_size_is_bounded() -> None:
    d = LiveDrift(max_samples=100)
    d.track({"g": None}, now_s=0.0)
    _fill(d, "g", n=300, span_s=300.0, latency_s=1.0)        # 1 req/s for 300 s
    assert len(d.windows["g"]) == 100       # the newest 100 kept: arrivals 200 .. 299 s
    # a window wider than what is kept starts at the last arrival let go of (199 s):
    # 100 requests in 300 - 199 = 101 s
    rep = d.report(300.0, {"g": TABLE}, {"g": 1}, window_s=1000.0, min_requests=30,
                   tolerance=0.25)["g"]
    assert rep["window_s"] == pytest.approx(101.0)
    assert rep["rate_rps"] == pytest.approx(100 / 101)
    # a 60 s window: arrivals 240 .. 299 s, 1 req/s; the older ones are let go of
    rep = d.report(300.0, {"g": TABLE}, {"g": 1}, window_s=60.0, min_requests=30,
                   tolerance=0.25)["g"]
    assert rep["requests"] == 60 and rep["rate_rps"] == pytest.approx(1.0)
    assert len(d.windows["g"]) == 60 and d.dropped["g"] == 239.0


def test_group_prediction_wire_format() -> None:
    wire = GroupPrediction.of(PredictionTable((1.0, 2.0), (2.0, 3.0), (0.01, math.nan))).wire()
    assert wire == {"rate_rps": [1.0, 2.0], "p95_s": [2.0, 3.0], "tpot_s": [0.01, None]}
    back = GroupPrediction.parse(wire).table()
    assert back.rate_rps == (1.0, 2.0) and math.isnan(back.tpot_p50_s[1])
    with pytest.raises(RouterError, match="strictly increasing"):
        GroupPrediction.parse({"rate_rps": [2.0, 1.0], "p95_s": [1.0, 2.0]})
    with pytest.raises(RouterError, match="p95_s"):
        GroupPrediction.parse({"rate_rps": [1.0], "p95_s": [-1.0]})
    cfg = RouterConfig.parse({"weak": WEAK, "strong": STRONG, "strong_share": 0.5,
                              "shares": {WEAK: {"w": 1.0}}, "predictions": {"w": wire}})
    assert cfg.predictions is not None and cfg.predictions["w"].p95_s == [2.0, 3.0]
    assert cfg.settings.drift_window_s == 120.0 and cfg.settings.drift_tolerance == 0.25


def _served(d: Any, n: int, latency_s: float, now: float) -> None:
    """`n` requests done by the dispatcher, arrivals spread over the 60 s before `now`."""
    for i in range(n):
        call, _ = request()
        call.arrival_s, call.group, call.model = now - 60.0 + i * 60.0 / n, "w", WEAK
        call.t0 -= latency_s                    # done now: latency = latency_s
        d.done(call, 200, "ok", {"completion_tokens": 4})


def test_health_carries_each_groups_prediction_and_the_metric_follows() -> None:
    wall = [1000.0]
    table = GroupPrediction.of(TABLE).wire()
    d, _, rec = make({"w": ("ok", WEAK), "s": ("ok", STRONG)},
                     predictions={"w": table}, settings={"drift_window_s": 60.0},
                     replicas={"w": 1, "s": 1})
    d.wall = lambda: wall[0]
    d.drift.since = {g: 0.0 for g in d.drift.since}    # tracked long before now
    # 120 non-streamed requests in the last 60 s: 2 req/s on 1 replica -> predicted 3 s;
    # each took ~6 s: error 3 / 6 - 1 = -50%.
    _served(d, 120, 6.0, wall[0])
    d.done(request()[0], 429, "shed")           # a refusal is not served: not counted
    code, report = d.health(0.0)
    assert code == 200
    w = report["groups"]["w"]["prediction"]
    assert w["requests"] == 120 and w["rate_per_replica_rps"] == pytest.approx(2.0)
    assert w["error_p95"] == pytest.approx(-0.5, abs=0.01)
    assert w["state"] == "drifted" and report["drift"]["drifted"] == ["w"]
    assert report["groups"]["s"]["prediction"]["state"] == "idle"
    d.export_prediction()
    assert rec.errors[("w", "p95")] == pytest.approx(-0.5, abs=0.01)
    assert math.isnan(rec.errors[("w", "tpot")]) and math.isnan(rec.errors[("s", "p95")])


def test_a_failing_prediction_never_fails_a_request_or_health() -> None:
    d, _, _ = make({"w": ("ok", WEAK), "s": ("ok", STRONG)})

    def broken(*a: Any, **k: Any) -> Any:
        raise RuntimeError("boom")

    d.drift.record = broken                     # type: ignore[method-assign]
    d.drift.report = broken                     # type: ignore[method-assign]
    from tests.app.test_dispatch import run

    _, reply = run(d, WEAK)
    assert reply.status == 200                  # type: ignore[union-attr]
    code, report = d.health(0.0)
    assert code == 200 and report["groups"]["w"]["prediction"] is None
    assert report["drift"]["failures"] == 2


# -- the emulated engines' speed factor (a dry-run feature) ----------------------------------
def test_speed_factor_stretches_every_step(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each step takes step_time x time_scale / speed_factor: with an instant clock, the
    engine's schedule advances by exactly that sum (the modelled time `engine_time_s`)."""
    from app.emulated_server import EmulatedLLMServer

    async def span(engine: Any) -> float:
        """Seconds the engine's schedule advances over one request (16 tokens)."""
        start = asyncio.get_running_loop().time()
        async for _ in engine.generate(100, 16):
            pass
        return float(engine._clock - start)

    real_sleep = asyncio.sleep
    monkeypatch.setattr("app.emulated.asyncio.sleep", lambda _d: real_sleep(0))
    spans = {}
    for factor in (1.0, 0.625):
        server = EmulatedLLMServer.func_or_class("llama-3.1-8b", "RTX-4090", 1, 1)
        server.reconfigure({"speed_factor": factor})
        assert server.engine.speed_factor == factor
        spans[factor] = asyncio.run(span(server.engine)) / server.engine.engine_time_s
    # factor 1: the schedule spans the modelled time; 0.625: 1 / 0.625 = 1.6 times it
    assert spans[1.0] == pytest.approx(1.0, rel=0.02)
    assert spans[0.625] == pytest.approx(1.6, rel=0.02)


def test_speed_factor_settings_are_checked() -> None:
    from app.emulated_server import EmulatedLLMServer, EngineSettings

    server = EmulatedLLMServer.func_or_class("llama-3.1-8b", "RTX-4090", 1, 1)
    with pytest.raises(ValueError, match="speed_factor=0"):
        server.reconfigure({"speed_factor": 0})
    with pytest.raises(ValueError, match="known: \\['speed_factor'\\]"):
        server.reconfigure({"speed": 2})
    assert server.engine.speed_factor == 1.0            # a refused config changes nothing
    server.reconfigure({})
    assert server.engine.speed_factor == 1.0
    assert EngineSettings.parse({"speed_factor": 0.625}).wire() == {"speed_factor": 0.625}


class _ConfigApi:
    """`ServeApi` over a fixed details dict; applied configs are recorded."""

    base = "http://head:8265"

    def __init__(self, details: dict) -> None:
        self._details, self.applied = details, []

    def details(self) -> dict:
        return self._details

    def apply(self, config: dict) -> None:
        self.applied.append(config)

    def wait(self, config: dict, timeout_s: float) -> None:
        pass


def _group_details(backend: str) -> dict:
    return {"http_options": {"host": "0.0.0.0", "port": 8123}, "applications": {
        "boute": {"deployed_app_config": {"name": "boute", "import_path": "app.main:router_app"}},
        "g8": {"deployed_app_config": {
            "name": "g8", "import_path": "app.main:group_app",
            "args": {"stack": {"backend": backend}},
            "deployments": [{"name": "g8", "num_replicas": 1}]}}}}


def test_set_engine_speed_is_refused_off_emulated_engines_and_applied_on_them() -> None:
    from app.deploy import DeployError, set_engine_speed

    with pytest.raises(DeployError, match=r"no replica group application 'nope' runs at "
                       r"http://head:8265; groups: \['g8'\]"):
        set_engine_speed(_ConfigApi(_group_details("emulated")), "nope", 0.5)  # type: ignore[arg-type]
    with pytest.raises(DeployError, match=r"group 'g8' runs 'vllm' engines; the speed factor "
                       r"is a dry-run feature of emulated engines \(--backend emulated\)"):
        set_engine_speed(_ConfigApi(_group_details("vllm")), "g8", 0.5)  # type: ignore[arg-type]
    api = _ConfigApi(_group_details("emulated"))
    set_engine_speed(api, "g8", 0.625)  # type: ignore[arg-type]
    (config,) = api.applied
    # Both applications are re-applied as deployed; only g8's user_config is new, and the
    # HTTP options are the running ones.
    assert config["http_options"] == {"host": "0.0.0.0", "port": 8123}
    (g8,) = [a for a in config["applications"] if a["name"] == "g8"]
    assert g8["deployments"][0]["user_config"] == {"speed_factor": 0.625}
    assert len(config["applications"]) == 2
