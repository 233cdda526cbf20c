"""Replanning's bad inputs, without a cluster: each is a one-line error and nothing is
changed (the Serve API stub records any deploy)."""

from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from app.main import Stack, stack_config
from app.replan import ReplanError, ReplanOptions, peak_plan, running_state, window_trace
from app.request_log import RequestLog
from tuning import Group, Plan, Routing

PLAN = Plan(Routing(0.3), (Group("llama-3.1-8b", "RTX-4090", 1, 1, 2, 1.0),
                           Group("llama-3.1-70b", "H100", 4, 1, 1, 1.0)),
            scenario={"name": "paper-gsm8k",
                      "models": {"weak": "llama-3.1-8b", "strong": "llama-3.1-70b"}})


class StubApi:
    """`ServeApi`'s read side over a fixed details dict; any write is recorded."""

    base = "http://head:8265"

    def __init__(self, details: dict[str, Any]) -> None:
        self._details = details
        self.applied: list[Any] = []

    def details(self) -> dict[str, Any]:
        return self._details

    def apply(self, config: Any) -> None:
        self.applied.append(config)


def _details_of(config: dict[str, Any]) -> dict[str, Any]:
    """What Serve's GET reports for a deployed config (the parts replanning reads)."""
    return {"http_options": config["http_options"], "proxy_location": config["proxy_location"],
            "applications": {a["name"]: {"status": "RUNNING", "deployed_app_config": a}
                             for a in config["applications"]}}


def test_running_state_reads_plan_stack_and_last_change_from_the_router_config() -> None:
    stack = Stack(log_dir="/var/log/boute", seed=3)
    api = StubApi(_details_of(stack_config(PLAN, stack, port=8123, applied_unix_s=1000.0)))
    state = running_state(api)  # type: ignore[arg-type]
    assert state.plan.groups == PLAN.groups and state.plan.routing.strong_share == 0.3
    assert (state.stack, state.applied_unix_s, state.port) == (stack, 1000.0, 8123)


def test_no_running_app_or_a_one_application_deploy_is_refused() -> None:
    with pytest.raises(ReplanError, match=r"no application 'boute' runs on the cluster at "
                       r"http://head:8265 \(running: none\); deploy a plan first"):
        running_state(StubApi({"applications": {}}))  # type: ignore[arg-type]
    single = {"applications": {"boute": {"deployed_app_config": {
        "import_path": "app.main:app", "args": {"plan": "p.json"}}}}}
    with pytest.raises(ReplanError, match=r"was not deployed as a BOute stack \(import path "
                       r"'app.main:app'\)"):
        running_state(StubApi(single))  # type: ignore[arg-type]


def _log(folder: Path, arrivals: list[float], status: int = 200, outcome: str = "ok",
         workload: str | None = None, latency_s: float = 1.0) -> None:
    log = RequestLog(folder)
    for t in arrivals:
        log.record(t, 70, 100, 0.5, "llama-3.1-8b", "g", 0.1, latency_s, status, False,
                   outcome=outcome, workload=workload)
    log.close()


def test_window_trace_keeps_successful_requests_of_the_window(tmp_path: Path) -> None:
    _log(tmp_path, [float(t) for t in range(100, 200)])          # 1 req/s, t = 100..199
    _log(tmp_path, [150.5, 151.5], status=502)                   # failures are not workload
    trace = window_trace(str(tmp_path), window_s=50, now_s=199.5, min_requests=10)
    assert len(trace) == 50                                      # t = 150..199
    assert trace.rate_rps == pytest.approx(1.0) and trace.arrival_s[0] == 0.0
    assert set(trace.input_tokens) == {70} and set(trace.output_tokens) == {100}


def test_shed_requests_count_toward_the_rate_and_workloads_are_apart(tmp_path: Path) -> None:
    # math: 1 req/s served at t = 100..199 plus 50 shed at t = 150.25..199.25 (demand 2 req/s
    # over the last 50 s); chat: 0.5 req/s; the router logged each with its workload.
    _log(tmp_path, [float(t) for t in range(100, 200)], workload="math")
    _log(tmp_path, [t + 0.25 for t in range(150, 200)], status=429, outcome="shed",
         workload="math")
    _log(tmp_path, [float(t) for t in range(100, 200, 2)], workload="chat")
    math_trace = window_trace(str(tmp_path), window_s=50, now_s=199.5, min_requests=10,
                              workload="math")
    # Latencies are 1 s, so the settled arrivals end at 198.5: 49 served + 49 shed between
    # 150 and 198.25, (98 - 1) / 48.25 = 2.01 req/s; the lengths are the served ones'.
    assert len(math_trace) == 50
    assert math_trace.rate_rps == pytest.approx(97 / 48.25, rel=1e-6)
    chat = window_trace(str(tmp_path), window_s=50, now_s=199.5, min_requests=10,
                        workload="chat")
    assert len(chat) == 25 and chat.rate_rps == pytest.approx(0.5)


def test_a_short_settled_part_still_counts_the_shed_demand(tmp_path: Path) -> None:
    # An overloaded workload: served 1 req/s at t = 100..199 with 40 s latencies, and 1 req/s
    # shed (t = 150.25..199.25). A 50 s window at 199.5 settles at 159.5: 10 served + 10 shed
    # between 150 and 159.25, (20 - 1) / 9.25 = 2.05 req/s (the demand is 2). Before, a
    # settled part under a third of the window left the served requests' own rate, 1 req/s.
    _log(tmp_path, [float(t) for t in range(100, 200)], latency_s=40.0)
    _log(tmp_path, [t + 0.25 for t in range(150, 200)], status=429, outcome="shed")
    trace = window_trace(str(tmp_path), window_s=50, now_s=199.5, min_requests=10)
    assert trace.rate_rps == pytest.approx(19 / 9.25, rel=1e-6)
    # Too few settled arrivals (min_requests 50: 25 needed, 20 there): every served or shed
    # arrival of the window, 100 over 150..199.25, (100 - 1) / 49.25 = 2.01 req/s.
    trace = window_trace(str(tmp_path), window_s=50, now_s=199.5, min_requests=50)
    assert trace.rate_rps == pytest.approx(99 / 49.25, rel=1e-6)


def test_empty_or_corrupt_or_thin_windows_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(ReplanError, match=r"no readable request log under .*: the request "
                       r"log is empty or unreadable"):
        window_trace(str(tmp_path), window_s=60, now_s=0, min_requests=10)
    (tmp_path / "requests-1-1-0000.parquet").write_bytes(b"not parquet")   # torn file
    with pytest.raises(ReplanError, match="empty or unreadable"):
        window_trace(str(tmp_path), window_s=60, now_s=0, min_requests=10)
    _log(tmp_path, [1.0, 2.0, 3.0])
    with pytest.raises(ReplanError, match=r"hold 3 successful request\(s\) \(3 rows in all\), "
                       r"fewer than min_requests=10; widen the window"):
        window_trace(str(tmp_path), window_s=60, now_s=10, min_requests=10)
    pq.write_table(pa.table({"x": [1]}), tmp_path / "requests-2-1-0000.parquet")  # other schema
    with pytest.raises(ReplanError, match="hold 3 successful"):
        window_trace(str(tmp_path), window_s=60, now_s=10, min_requests=10)


def test_options_and_a_plan_that_no_longer_fits(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ReplanError, match=r"window_s=0 must be a positive number"):
        ReplanOptions(window_s=0)
    with pytest.raises(ReplanError, match=r"solver='bo' must be auto, exact, mobo or random"):
        ReplanOptions(solver="bo")
    import app.deploy as deploy
    from app.deploy import DeployError, check_plan_fits

    # one 8-GPU H100 node and 4 RTX-4090s: the running plan (2x4090 + 4xH100) fits, and so
    # does a proposal of 4x4090 + 4xH100 alone, but not both at once (6 RTX-4090 needed)
    nodes = [{"GPU": 8.0, "gpu_type_H100": 8.0}, {"GPU": 4.0, "gpu_type_RTX-4090": 4.0}]
    monkeypatch.setattr(deploy, "capacity_nodes", lambda: nodes)
    bigger = Plan(PLAN.routing, (Group("llama-3.1-8b", "RTX-4090", 1, 1, 4, 1.0),
                                 PLAN.groups[1]), scenario=PLAN.scenario)
    check_plan_fits(bigger, Stack())
    with pytest.raises(DeployError, match=r"RTX-4090: the plan needs 6 GPU\(s\), the cluster "
                       r"has 4; add 2"):
        check_plan_fits(Plan(PLAN.routing, (Group("llama-3.1-8b", "RTX-4090", 1, 1, 6, 1.0),
                                            PLAN.groups[1]), scenario=PLAN.scenario), Stack())
    with pytest.raises(DeployError, match=r"RTX-4090: the plan needs 6 GPU\(s\), the cluster "
                       r"has 4; add 2"):
        check_plan_fits(peak_plan(bigger, Plan(PLAN.routing, (
            Group("llama-3.1-8b", "RTX-4090", 2, 1, 1, 1.0), PLAN.groups[1]),
            scenario=PLAN.scenario)), Stack())


class RecordingApi(StubApi):
    """Records every config it is asked to deploy; `wait` returns at once."""

    def wait(self, config: Any, timeout_s: float = 0.0) -> dict[str, Any]:
        return {}


def _apps(config: dict[str, Any]) -> dict[str, int | None]:
    """Application -> replicas (None for the router)."""
    return {a["name"]: (a["deployments"][0].get("num_replicas") if a["name"] != "boute"
                        else None) for a in config["applications"]}


def _routing(config: dict[str, Any]) -> tuple[float, dict[str, Any]]:
    uc = config["applications"][0]["deployments"][0]["user_config"]
    return uc["strong_share"], uc["shares"]


def test_changes_go_up_then_switch_then_down(monkeypatch: pytest.MonkeyPatch) -> None:
    import app.replan as replan_mod
    from app.replan import RunningState, apply_plan

    monkeypatch.setattr(replan_mod, "_await_router", lambda *a, **k: None)
    state = RunningState(PLAN, Stack(), 1000.0, "127.0.0.1", 8000, "HeadOnly")
    new = Plan(Routing(0.4), (Group("llama-3.1-8b", "RTX-5090", 1, 1, 3, 1.0),
                              Group("llama-3.1-70b", "H100", 4, 1, 2, 1.0)),
               scenario=PLAN.scenario)
    api = RecordingApi({})
    steps = apply_plan(api, state, new, routing_only=False)  # type: ignore[arg-type]
    assert set(steps) == {"up_s", "switch_s", "down_s"}
    up, switch, down = api.applied
    both = {"boute": None, "llama-3.1-8b-RTX-4090-tp1pp1": 2, "llama-3.1-8b-RTX-5090-tp1pp1": 3,
            "llama-3.1-70b-H100-tp4pp1": 2}
    # up: every group of both plans at its larger count; the router still routes the old plan
    assert _apps(up) == both
    assert _routing(up) == (0.3, {"llama-3.1-8b": {"llama-3.1-8b-RTX-4090-tp1pp1": 1.0},
                                  "llama-3.1-70b": {"llama-3.1-70b-H100-tp4pp1": 1.0}})
    # switch: same applications, the router routes the new plan
    assert _apps(switch) == both
    assert _routing(switch) == (0.4, {"llama-3.1-8b": {"llama-3.1-8b-RTX-5090-tp1pp1": 1.0},
                                      "llama-3.1-70b": {"llama-3.1-70b-H100-tp4pp1": 1.0}})
    # down: only the new plan's groups are left
    assert _apps(down) == {"boute": None, "llama-3.1-8b-RTX-5090-tp1pp1": 3,
                           "llama-3.1-70b-H100-tp4pp1": 2}
    assert _routing(down) == _routing(switch)
    # a routing-only change is one config: same groups and replicas, new routing
    api = RecordingApi({})
    resharded = Plan(Routing(0.2), PLAN.groups, scenario=PLAN.scenario)
    assert set(apply_plan(api, state, resharded, routing_only=True)) == {  # type: ignore[arg-type]
        "switch_s"}
    (only,) = api.applied
    assert _apps(only) == {"boute": None, "llama-3.1-8b-RTX-4090-tp1pp1": 2,
                           "llama-3.1-70b-H100-tp4pp1": 1}
    assert _routing(only)[0] == 0.2


def test_replan_cli_rejects_bad_flags_before_touching_a_cluster(
        capsys: pytest.CaptureFixture[str]) -> None:
    from boute.cli import main

    assert main(["replan", "--min-gain", "-1"]) == 2
    assert capsys.readouterr().err.strip() == (
        "boute replan: error: --min-gain=-1.0 must be a finite number >= 0")
    assert main(["replan", "--p95", "0"]) == 2
    assert "boute replan: error: --p95=0.0 must be > 0 seconds" in capsys.readouterr().err
    assert main(["replan", "--window-s", "-5"]) == 2
    assert "window_s=-5.0 must be a positive number of seconds" in capsys.readouterr().err
    # the solver flags are `boute plan`'s (boute._planning.add_solver_args), checked alike
    assert main(["replan", "--evals", "0"]) == 2
    assert "boute replan: error: --evals=0 must be >= 1" in capsys.readouterr().err
    assert main(["replan", "--time-limit-s", "nan"]) == 2
    assert "--time-limit-s=nan must be a positive number of seconds" in capsys.readouterr().err


def _with_replicas(details: dict[str, Any], running: dict[str, int]) -> dict[str, Any]:
    for name, n in running.items():
        details["applications"][name]["deployments"] = {name: {"replicas": [
            {"state": "RUNNING"}] * n + [{"state": "PENDING_ALLOCATION"}]}}
    return details


def test_short_groups_and_the_watchdog_trigger_after_sustained_loss(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import app.replan as rp

    config = stack_config(PLAN, Stack())
    details = _with_replicas(_details_of(config), {"llama-3.1-8b-RTX-4090-tp1pp1": 1,
                                                   "llama-3.1-70b-H100-tp4pp1": 1})
    state = running_state(StubApi(details))
    # The 8B group wants 2 replicas and runs 1; the 70B group runs its 1.
    assert rp.short_groups(details, state) == {"llama-3.1-8b-RTX-4090-tp1pp1": (1, 2)}
    clock = [0.0]
    monkeypatch.setattr(rp, "ServeApi", lambda base: StubApi(details))
    monkeypatch.setattr(rp.time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(rp.time, "sleep", lambda s: clock.__setitem__(0, clock[0] + s))
    calls: list[float] = []
    monkeypatch.setattr(rp, "replan", lambda options: calls.append(clock[0]) or {"applied": 1})
    reports = rp.watch(ReplanOptions(dashboard="http://head:8265"), loss_s=60, poll_s=5,
                       rounds=1)
    # Short from t=0 on; polled every 5 s; replans at the first look with >= 60 s of loss.
    assert calls == [60.0]
    assert reports[0]["trigger"] == {"llama-3.1-8b-RTX-4090-tp1pp1": {"running": 1,
                                                                      "wanted": 2}}
    with pytest.raises(ReplanError, match="must be > 0"):
        rp.watch(ReplanOptions(dashboard="http://head:8265"), loss_s=0)


def test_lost_gpu_types_are_those_the_live_cluster_no_longer_has(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import placement
    from app.replan import RunningState, lost_gpu_types

    state = RunningState(PLAN, Stack(), None, "127.0.0.1", 8000, "HeadOnly")
    h100 = {"GPU": 8.0, "gpu_type_H100": 8.0}
    monkeypatch.setattr(placement, "live_nodes", lambda: [h100, {"GPU": 8.0,
                                                                 "gpu_type_RTX-4090": 8.0}])
    assert lost_gpu_types(state) == []
    monkeypatch.setattr(placement, "live_nodes", lambda: [h100])     # the 4090 node died
    assert lost_gpu_types(state) == ["RTX-4090"]


def test_engine_replicas_drain_for_four_times_the_plan_latency_level() -> None:
    from dataclasses import replace

    from app.main import drain_timeout_s
    from tuning import Goal

    # No goal, no prediction: the minimum, 60 s (Serve's own default, 20 s, cut the streams
    # of a loaded ladder plan's slow groups when a replan deleted them).
    assert drain_timeout_s(PLAN) == 60.0
    # A 40 s P95 target (the ladder test's plan): 4 x 40 = 160 s; 3.6 s: 14.4 -> 60 s; a
    # 400 s target: 1,600 -> capped at 600 s.
    assert drain_timeout_s(replace(PLAN, goal=Goal("min-cost", p95_s=40.0))) == 160.0
    assert drain_timeout_s(replace(PLAN, goal=Goal("min-cost", p95_s=3.6))) == 60.0
    assert drain_timeout_s(replace(PLAN, goal=Goal("min-cost", p95_s=400.0))) == 600.0
    # Each engine application of the stack's Serve config carries it (a replan's "down" step
    # deletes or shrinks groups through this config).
    config = stack_config(replace(PLAN, goal=Goal("min-cost", p95_s=40.0)), Stack())
    engines = [a for a in config["applications"] if a["name"] != "boute"]
    assert len(engines) == 2
    assert all(a["deployments"][0]["graceful_shutdown_timeout_s"] == 160.0 for a in engines)
