"""Following a schedule: ahead of rises, at falls, reactive on a surprise, and no flapping."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest

import app.follow as follow
from app.follow import FollowOptions, FollowState, LoadedSchedule, scheduled_target
from app.replan import ReplanOptions
from tuning import Plan


def _plan(replicas: int) -> Plan:
    return Plan.from_dict({
        "routing": {"strong_share": 0.0, "threshold": 1.0},
        "groups": [{"model": "llama-3.1-8b", "gpu": "H100", "tp": 1, "pp": 1,
                    "replicas": replicas, "share": 1.0}]})


SMALL, BIG = _plan(1), _plan(3)
# Four 100 s windows: small, big, big, small; the change into window 1 starts 2 replicas
# whose cold start is 50 s.
SCHED = LoadedSchedule(100.0, (10.0, 30.0, 30.0, 10.0), (0, 1, 1, 0), (SMALL, BIG),
                       (0, 2, 0, 0), (0.0, 50.0, 0.0, 0.0))
OPTS = FollowOptions("unused.json", day_start_unix_s=0.0, min_lead_s=10.0,
                     replan=ReplanOptions(window_s=60.0))


@pytest.mark.parametrize(("t", "window", "plan", "ahead"), [
    (40.0, 0, SMALL, False),       # 60 s before the rise: the lead is 50 s
    (55.0, 0, BIG, True),          # 45 s before: the big plan already
    (150.0, 1, BIG, False),
    (299.0, 2, BIG, False),        # a fall is not applied ahead
    (300.0, 3, SMALL, False),
    (455.0, 0, BIG, True),         # the day repeats (400 s period)
])
def test_scheduled_target(t: float, window: int, plan: Plan, ahead: bool) -> None:
    w, target, why = scheduled_target(SCHED, OPTS, t)
    assert (w, target is plan, why.startswith("ahead")) == (window, True, ahead)


def test_a_compressed_day_scales_the_lead() -> None:
    """x10: 100 s windows last 10 wall seconds and the 50 s cold start 5 wall seconds."""
    opts = replace(OPTS, time_scale=10.0)
    # min_lead_s 10 dominates: 9.7 wall s before the rise, already the big plan.
    assert scheduled_target(SCHED, opts, 0.3)[1] is BIG
    fast = replace(opts, min_lead_s=2.0)                     # lead = the 5 wall s cold start
    assert scheduled_target(SCHED, fast, 4.0)[1] is SMALL    # 6 wall s to go
    assert scheduled_target(SCHED, fast, 5.5)[1] is BIG      # 4.5 wall s to go


@dataclass
class _Fake:
    running: Plan
    observed: list[float | None]
    applied: list[Plan]
    replans: int = 0


def _patch(monkeypatch: pytest.MonkeyPatch, fake: _Fake) -> None:
    monkeypatch.setattr(follow, "running_state",
                        lambda api, app: type("S", (), {"plan": fake.running})())
    monkeypatch.setattr(follow, "_observed_rate", lambda running, opts, now: fake.observed.pop(0))

    def apply(api: Any, running: Any, target: Plan, opts: Any) -> dict[str, float]:
        fake.running = target
        fake.applied.append(target)
        return {"switch_s": 0.0}

    def replan(options: Any) -> dict[str, Any]:
        fake.replans += 1
        return {"applied": False}

    monkeypatch.setattr(follow, "_apply_target", apply)
    monkeypatch.setattr(follow, "replan", replan)


def test_following_a_day_changes_once_per_scheduled_change(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Steps every 5 s over two days at the forecast rate: only the schedule's 2 changes."""
    fake = _Fake(SMALL, [None] * 160, [])
    _patch(monkeypatch, fake)
    state = FollowState()
    for k in range(160):
        follow.follow_step(OPTS, state, api=object(), now_s=5.0 * k, sched=SCHED)
    assert fake.applied == [BIG, SMALL, BIG, SMALL]       # twice a day, never back and forth
    assert fake.replans == 0


def test_departure_falls_back_to_reactive_with_a_band(monkeypatch: pytest.MonkeyPatch) -> None:
    """Window 0 forecasts 10 req/s (tolerance 25%): 13 -> reactive, 12 stays, 11 returns."""
    fake = _Fake(SMALL, [13.0, 12.0, 11.0, 10.0], [])
    _patch(monkeypatch, fake)
    state = FollowState()
    modes = [follow.follow_step(OPTS, state, api=object(), now_s=1.0 + k, sched=SCHED)["mode"]
             for k in range(4)]
    assert modes == ["reactive", "reactive", "scheduled", "scheduled"]
    assert fake.replans == 2 and fake.applied == []


def test_a_change_to_smaller_replicas_is_a_fall_even_if_it_starts_some() -> None:
    """TP4 -> TP2 starts a TP2 replica but lowers capacity: applied at its boundary only."""
    tp4, tp2 = BIG, SMALL
    sched = LoadedSchedule(100.0, (30.0, 10.0), (0, 1), (tp4, tp2), (1, 1), (50.0, 50.0),
                           levels=(33.0, 11.0))
    assert sched.rises(0) and not sched.rises(1)
    assert scheduled_target(sched, OPTS, 80.0)[1] is tp4           # no early fall
    assert scheduled_target(sched, OPTS, 180.0)[1] is tp4          # the rise at 200 s: ahead


def test_a_bad_schedule_file_fails_before_touching_the_cluster(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from boute.cli import main

    bad = tmp_path / "s.json"
    bad.write_text('{"window_s": 900}')
    assert main(["replan", "--schedule", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "is not a `boute schedule` JSON" in err and len(err.strip().splitlines()) == 1
