"""`boute calibrate` on a request log, and the perf DB / plan built on its output."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from app.request_log import SCHEMA
from boute.cli import main
from common.errors import StaleDBError
from profiling import (
    Efficiency,
    EngineConfig,
    PerfDB,
    ReplicaModel,
    build_perfdb,
    generate_trace,
    load_catalog,
    load_scenario,
    load_served_calibration,
    scale_efficiency,
    spec_calibration,
)
from profiling.measure import synthetic_group
from tests.conftest import TINY_SCENARIO, write_scenario

T0 = 1_700_000_000.0


def _write_log(folder: Path, groups: dict[str, object]) -> None:
    """A closed Parquet file of the request log holding `groups`' requests (all ok, streamed)."""
    rows: dict[str, list[object]] = {n: [] for n in SCHEMA.names}
    for name, g in groups.items():
        n = len(g.arrival_s)  # type: ignore[attr-defined]
        rows["arrival_s"] += list(g.arrival_s)  # type: ignore[attr-defined]
        rows["prompt_tokens"] += [int(v) for v in g.input_tokens]  # type: ignore[attr-defined]
        rows["output_tokens"] += [int(v) for v in g.output_tokens]  # type: ignore[attr-defined]
        rows["score"] += [0.5] * n
        rows["model"] += [name.split("-H100")[0]] * n
        rows["group"] += [name] * n
        rows["ttft_s"] += list(g.ttft_s)  # type: ignore[attr-defined]
        rows["latency_s"] += list(g.latency_s)  # type: ignore[attr-defined]
        rows["status"] += [200] * n
        rows["stream"] += [True] * n
        rows["key_id"] += [None] * n
        rows["outcome"] += ["ok"] * n
        rows["workload"] += [None] * n
        rows["length_class"] += [None] * n
    # plus refusals and failures that must not be fitted on
    for key, value in (("arrival_s", T0 + 1), ("prompt_tokens", 10), ("output_tokens", 0),
                       ("score", 0.5), ("model", ""), ("group", ""), ("ttft_s", float("nan")),
                       ("latency_s", 0.001), ("status", 429), ("stream", False),
                       ("key_id", None), ("outcome", "shed"), ("workload", None),
                       ("length_class", None)):
        rows[key].append(value)
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pydict(rows, schema=SCHEMA),
                   folder / "requests-1700000000000-1-0000.parquet")


@pytest.fixture(scope="module")
def served_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cat = load_catalog()
    engine = replace(EngineConfig(), step_overhead_s=4.5e-3, frontend_latency_s=0.04)
    truth = ReplicaModel(cat.model("llama-3.1-8b"), cat.gpu("H100"), 1, 1, engine,
                         scale_efficiency(Efficiency(), 0.7))
    group = synthetic_group(truth, generate_trace("sharegpt", rate_rps=8.0, num_requests=200,
                                                  seed=3), replicas=2, seed=3, start_unix_s=T0)
    folder = tmp_path_factory.mktemp("log") / "request-log"
    _write_log(folder, {"llama-3.1-8b-H100-tp1pp1": group})
    return folder


def test_calibrate_writes_a_profile_and_a_fidelity_table(served_log: Path, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]
                                                         ) -> None:
    from tuning import Group, Plan, Routing

    plan = Plan(Routing(0.0), (Group("llama-3.1-8b", "H100", 1, 1, 2, 1.0),))
    plan_path = plan.save(tmp_path / "plan.json")
    out = tmp_path / "served.json"
    code = main(["calibrate", "--json", "--log", str(served_log), "--plan", str(plan_path),
                 "--out", str(out), "--bootstrap", "0"])
    payload = json.loads(capsys.readouterr().out)
    assert code == 0
    cal = load_served_calibration(out)
    assert payload["sha256"] == cal.sha256
    (g,) = cal.groups
    assert (g.model, g.gpu, g.tp, g.pp, g.replicas, g.requests) == (
        "llama-3.1-8b", "H100", 1, 1, 2, 200)          # the 429 row is not fitted on
    # one group on the GPU type: s and o trade along the decode ridge (`fit_served`), but d
    # is a plain offset and the fitted model must reproduce the window's latency
    assert g.frontend_latency_s == pytest.approx(0.04, rel=0.15)
    fid = g.fidelity["latency_p95_s"]
    assert fid["before_err"] < -0.25 and abs(fid["after_err"]) < 0.10
    # the human table prints before and after per metric
    main(["calibrate", "--log", str(served_log), "--plan", str(plan_path), "--out",
          str(tmp_path / "again.json"), "--bootstrap", "0"])
    text = capsys.readouterr().out
    assert "llama-3.1-8b-H100-tp1pp1" in text and "latency_p95_s" in text


def test_calibrate_errors_are_one_line(served_log: Path, tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["calibrate", "--log", str(tmp_path / "none"), "--out", "x.json"]) == 2
    assert "no readable request log" in capsys.readouterr().err
    assert main(["calibrate", "--log", str(served_log), "--out", "x.json",
                 "--min-requests", "1000"]) == 2
    assert "no replica group served --min-requests=1000" in capsys.readouterr().err
    assert main(["calibrate", "--log", str(served_log), "--out", "x.json",
                 "--bootstrap", "-1"]) == 2
    assert "--bootstrap=-1 must be >= 0" in capsys.readouterr().err


def test_perfdb_built_with_a_served_calibration(served_log: Path, tmp_path: Path) -> None:
    out = tmp_path / "served.json"
    assert main(["calibrate", "--log", str(served_log), "--out", str(out),
                 "--bootstrap", "0"]) == 0
    cal = load_served_calibration(out)
    cat = load_catalog()
    spec = load_scenario(write_scenario(tmp_path, TINY_SCENARIO)).profile_spec()
    served = spec_calibration(spec, cat, served_calibration=out)
    db = build_perfdb(spec, cat, calibration=served, workers=1, progress=False)
    path = db.save(tmp_path / "db.parquet")
    meta = PerfDB.load(path).meta
    assert meta["efficiency_source"] == {"H100": cal.label}
    assert meta["served_calibration"]["sha256"] == cal.sha256
    assert meta["efficiency"]["H100"]["memory"] == pytest.approx(
        0.85 * cal.gpus["H100"]["scale"])
    # the same DB loads with the same calibration, and is stale without it (and vice versa)
    PerfDB.load(path, calibration=served)
    with pytest.raises(StaleDBError, match="served calibration"):
        PerfDB.load(path, calibration=spec_calibration(spec, cat))
    plain = build_perfdb(spec, cat, workers=1, progress=False).save(tmp_path / "plain.pq")
    with pytest.raises(StaleDBError):
        PerfDB.load(plain, calibration=served)
    # the fitted overheads are swept: the calibrated DB is slower at the lowest rate
    p50 = {k: float(PerfDB.load(p).quantiles[0, 0][6]) for k, p in
           (("served", path), ("plain", plain))}
    assert p50["served"] > 1.25 * p50["plain"], p50
    assert np.isfinite(p50["served"])


def test_plan_on_a_served_calibration_names_it_and_its_age(
        served_log: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "served.json"
    assert main(["calibrate", "--log", str(served_log), "--out", str(out),
                 "--bootstrap", "0"]) == 0
    cal = load_served_calibration(out)
    capsys.readouterr()
    scenario = write_scenario(tmp_path, TINY_SCENARIO)
    code = main(["plan", "--json", "--scenario", str(scenario), "--db",
                 str(tmp_path / "db.parquet"), "--calibration", str(out), "--resim-seeds", "0",
                 "--out", str(tmp_path / "plan.json")])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    model = json.loads(captured.out)["model"]
    assert model["efficiency_source"] == {"H100": cal.label}
    assert model["served_calibration"]["sha256"] == cal.sha256
    # the window is from 2023 (T0): older than 7 days, so named stale on stderr
    assert model["served_calibration"]["stale"] is True
    assert "STALE" in captured.err and cal.sha256 in captured.err


# -- the fit as a function (`calibrate_log`), its window, and the levels of `--via` ----------
def test_log_window_defaults_to_the_whole_log_and_ignores_nan() -> None:
    from boute.calibrate_cli import log_window

    arrivals = np.asarray([T0 + 5, np.nan, T0, T0 + 20])
    assert log_window(arrivals) == (T0, T0 + 20)              # oldest to newest arrival
    assert log_window(arrivals, since_s=10) == (T0 + 10, T0 + 20)
    assert log_window(arrivals, since_s=10, now_unix_s=T0 + 8) == (T0 - 2, T0 + 8)


def test_calibrate_log_is_the_cli_fit(served_log: Path, tmp_path: Path) -> None:
    from boute.calibrate_cli import calibrate_log
    from common.errors import BouteError

    out = tmp_path / "cli.json"
    assert main(["calibrate", "--log", str(served_log), "--out", str(out),
                 "--bootstrap", "0"]) == 0
    cli = load_served_calibration(out)
    fit = calibrate_log(served_log, load_catalog(), bootstrap=0)
    # Same inputs, same deterministic solver: the same parameters (only created_unix_s and
    # the fit's timings differ between the two).
    (a,), (b,) = cli.groups, fit.calibration.groups
    assert (a.step_overhead_s, a.frontend_latency_s) == (b.step_overhead_s,
                                                         b.frontend_latency_s)
    assert cli.gpus["H100"]["scale"] == fit.calibration.gpus["H100"]["scale"]
    assert fit.notes == [] and fit.base_source == {"H100": "spec-sheet"}
    # A window before the log's first arrival holds nothing to fit: one line that says so.
    with pytest.raises(BouteError, match="no replica group served --min-requests=50"):
        calibrate_log(served_log, load_catalog(), since_s=10.0, now_unix_s=T0 - 1)


def test_bench_levels_window_covers_every_level(monkeypatch: pytest.MonkeyPatch) -> None:
    import time

    import boute.calibrate_cli as cc
    from boute.bench import check_load
    from tests.boute.test_bench_bounds import _FakeServer

    monkeypatch.setattr(cc, "LOG_LAG_S", 0.0)
    server = _FakeServer()
    before = time.time()
    try:
        out = cc.bench_levels(f"http://127.0.0.1:{server.port}", [20.0, 40.0], level_s=0.5,
                              seed=3)
    finally:
        server.stop()
    # Each level sends check_load's count (rate x seconds, rounded): 10 and 20 requests.
    assert [lv["requests"] for lv in out["levels"]] == [check_load(20.0, 0.5),
                                                        check_load(40.0, 0.5)] == [10, 20]
    assert [lv["ok"] for lv in out["levels"]] == [10, 20] and server.requests == 30
    assert before <= out["start_unix_s"] < out["end_unix_s"] <= time.time()
    # The levels ran one after the other: at least the second level's 0.5 s of arrivals.
    assert out["end_unix_s"] - out["start_unix_s"] >= 0.5
    assert all(lv["model_share"] == {"weak": 1.0} and lv["e2e_p95_s"] > 0
               for lv in out["levels"])


@pytest.mark.parametrize(("flags", "message"), [
    (["--rate", ""], "--via needs at least one --rate level"),
    (["--rate", "2,x"], "--rate='2,x': 'x' is not a number"),
    (["--level-s", "0"], "--level-s=0 must be a positive number of seconds"),
    (["--rate", "0"], "--rate=0 must be a number of requests/s > 0"),
])
def test_via_flags_fail_before_anything_is_sent(flags: list[str], message: str,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    # Port 9 (discard): nothing listens, so a request that were sent would not fail like this.
    assert main(["calibrate", "--via", "http://127.0.0.1:9", "--out", "x.json",
                 *flags]) == 2
    assert message in capsys.readouterr().err


def test_trace_level_replays_the_trace_at_the_level_rate() -> None:
    from boute.calibrate_cli import trace_level
    from profiling import Trace

    trace = Trace(np.arange(10.0), np.full(10, 7), np.arange(1, 11), None, "t")  # 1 req/s
    level = trace_level(trace, 2.0, 3.0)
    # Stretched to 2 req/s (arrivals halved), then rate x seconds = 6 requests.
    assert level.arrival_s.tolist() == [0.0, 0.5, 1.0, 1.5, 2.0, 2.5]
    assert level.output_tokens.tolist() == [1, 2, 3, 4, 5, 6]
    # A level longer than the trace sends the whole trace once.
    assert len(trace_level(trace, 2.0, 60.0)) == 10


def test_via_fits_exactly_the_levels_window(served_log: Path, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    import boute.calibrate_cli as cc

    # The levels (stubbed: no server) covered the log's first 10 s; the fit must see only them.
    seen: dict[str, object] = {}

    def levels(url: str, rates: tuple[float, ...], **kw: object) -> dict[str, object]:
        seen.update(url=url, rates=rates, **kw)
        return {"url": url, "start_unix_s": T0, "end_unix_s": T0 + 10.0, "levels": [
            {"rate_rps": 8.0, "requests": 80, "ok": 80, "e2e_p95_s": 1.0, "e2e_mean_s": 0.5}]}

    monkeypatch.setattr(cc, "bench_levels", levels)
    out = tmp_path / "via.json"
    assert main(["calibrate", "--json", "--via", "http://x:1", "--rate", "8", "--level-s",
                 "10", "--log", str(served_log), "--out", str(out), "--bootstrap", "0",
                 "--min-requests", "10", "--since", "1", "--now", "1"]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert seen["rates"] == (8.0,) and seen["level_s"] == 10.0 and seen["shape"] == "gsm8k"
    assert payload["via"]["levels"][0]["rate_rps"] == 8.0
    # --since/--now ignored: the window is the levels' (the synthetic log runs at 8 req/s, so
    # its first 10 s hold ~80 of its 200 requests, all of one group).
    cal = load_served_calibration(out)
    assert (cal.window_start_unix_s, cal.window_end_unix_s) == (T0, T0 + 10.0)
    assert 40 <= cal.window_requests <= 120
