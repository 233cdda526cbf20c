"""SLO attainment over time windows: hand-computed cases, the log and the bench reports."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from boute.bench import BenchResult, RequestRecord
from boute.cli import main
from tuning import WindowSLO, attainment, window_p95s
from tuning._slo import window_quantile


def test_windows_by_hand() -> None:
    """Three full 10 s windows (the 4th, at 30 s, is cut off)."""
    arrival = np.array([0, 1, 2, 12, 13, 25, 26, 27, 28, 31.0])
    latency = np.array([1, 1, 9, 2, 2, 5, 5, 5, 5, 99.0])
    p95 = window_p95s(arrival, latency, 10.0)
    # Window 0: [1, 1, 9] -> quantile 0.95 between ranks 1 and 2: 1 + 0.9 x 8 = 8.2.
    assert p95.tolist() == pytest.approx([8.2, 2.0, 5.0])
    assert attainment(arrival, latency, 6.0, 10.0) == (pytest.approx(2 / 3), 3)
    # 90% of windows: the 0.9-quantile of [8.2, 2, 5] = 5 + 0.8 x 3.2 = 7.56.
    assert window_quantile(arrival, latency, WindowSLO(0.9, 10.0)) == pytest.approx(7.56)
    # An empty window meets the SLO.
    gap = np.array([0.0, 1.0, 25.0, 31.0])
    assert attainment(gap, np.array([50.0, 50.0, 1.0, 1.0]), 6.0, 10.0) == (
        pytest.approx(2 / 3), 3)
    with pytest.raises(ValueError, match=r"attainment=1.5 must be a share in \(0, 1\]"):
        WindowSLO(1.5)


def test_bench_reports_attainment_with_failures_as_misses() -> None:
    res = BenchResult("http://x", [RequestRecord(t, 200, 0.1, 1.0, 10) for t in range(0, 60)]
                      + [RequestRecord(t + 0.5, 429) for t in range(60, 120)]
                      + [RequestRecord(120.5 + t, 200, 0.1, 1.0, 10) for t in range(60)],
                      180.0)
    slo = res.summary(slo_p95_s=2.0, slo_window_s=60.0)["slo"]
    # Arrivals 0 to 179.5 s: full windows [0, 60) (all ok) and [60, 120) (all refused: 429).
    assert slo == {"p95_s": 2.0, "window_s": 60.0, "attainment": 0.5, "windows": 2}


def test_boute_slo_reads_the_request_log(tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    from app.request_log import RequestLog

    log = RequestLog(tmp_path / "log")
    t0 = 1_700_000_000.0
    for i in range(300):                   # 5 minutes, 1 req/s; minute 3 is slow on "b"
        slow = 180 <= i < 240
        log.record(t0 + i, 10, 5, 0.5, "m", "b" if i % 2 else "a", 0.1,
                   20.0 if slow and i % 2 else 1.0, 200, True)
    log.close()
    code = main(["--json", "slo", "--log", str(tmp_path / "log"), "--p95", "5",
                 "--window-s", "60"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0
    # Windows [0, 60) ... [240, 300): 4 full ones (the last arrival is at 299 s).
    assert out["system"]["windows"] == 4
    assert out["system"]["attainment"] == pytest.approx(3 / 4)
    assert out["groups"]["a"]["attainment"] == 1.0
    assert out["groups"]["b"]["attainment"] == pytest.approx(3 / 4)
    assert out["groups"]["b"]["requests"] == 150


@pytest.mark.parametrize(("argv", "message"), [
    (["--slo-attainment", "150", "--p95", "5"], "--slo-attainment=150 must be a percentage"),
    (["--slo-attainment", "99"], "--slo-attainment needs --p95"),
    (["--slo-attainment", "99", "--p95", "5", "--slo-window-s", "0"],
     "--slo-window-s=0 must be a positive number"),
])
def test_plan_slo_flags_are_checked(capsys: pytest.CaptureFixture[str], argv: list[str],
                                    message: str) -> None:
    code = main(["plan", "--objective", "min-cost", *argv])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(("argv", "message"), [
    (["slo", "--log", "{tmp}/none", "--p95", "5"], "--log="),
    (["slo", "--log", "{tmp}", "--p95", "-1"], "--p95=-1 must be a positive number"),
    (["slo", "--log", "{tmp}", "--p95", "5", "--window-s", "0"],
     "--window-s=0 must be a positive number"),
    (["schedule", "--scenario", "diurnal-gsm8k", "--p95", "10", "--window-s", "700"],
     "window_s=700 must be whole minutes dividing the day"),
    (["schedule", "--scenario", "diurnal-gsm8k", "--p95", "10", "--max-changes", "-1"],
     "max_changes=-1 must be >= 0"),
    (["schedule", "--scenario", "diurnal-gsm8k", "--p95", "10", "--resim-seeds", "5"],
     "--resim-seeds=5 must be 0 to 3"),
    (["schedule", "--scenario", "paper-gsm8k", "--p95", "10"],
     "a schedule needs a rate that moves"),
    (["trace", "--shape", "gsm8k", "--plot", "{tmp}/rate.jpg"], "must name a .png file"),
])
def test_new_commands_refuse_bad_input_in_one_line(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str],
                                                   argv: list[str], message: str) -> None:
    code = main([a.replace("{tmp}", str(tmp_path)) for a in argv])
    err = capsys.readouterr().err
    assert code == 2 and message in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
