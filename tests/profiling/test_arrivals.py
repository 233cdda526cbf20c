"""Real traces in, and traffic at any rate that keeps the workload's own arrival process."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from common.errors import ScenarioError, StaleDBError, TraceError
from profiling import (
    Catalog,
    PerfDB,
    ScaledTraffic,
    ThinnedTraffic,
    Trace,
    build_perfdb,
    generate_trace,
    load_scenario,
    read_trace,
)

T0 = 1_700_000_000.0          # 2023-11-14T22:13:20Z


def _csv(path: Path, column: list[str]) -> Path:
    path.write_text("t,input_tokens,output_tokens\n" + "".join(
        f"{v},10,5\n" for v in column))
    return path


@pytest.mark.parametrize(("values", "unit", "how", "start"), [
    (["0", "0.5", "2"], "auto", "seconds", None),
    ([str(T0), str(T0 + 0.5), str(T0 + 2)], "auto", "epoch seconds",
     "2023-11-14T22:13:20.000000Z"),
    ([str(int(T0 * 1e3)), str(int(T0 * 1e3) + 500), str(int(T0 * 1e3) + 2000)], "auto",
     "epoch milliseconds", "2023-11-14T22:13:20.000000Z"),
    ([str(int(T0 * 1e6)), str(int(T0 * 1e6) + 500_000), str(int(T0 * 1e6) + 2_000_000)],
     "auto", "epoch microseconds", "2023-11-14T22:13:20.000000Z"),
    (["0", "500", "2000"], "ms", "ms (given)", None),
    (["2023-11-14T22:13:20Z", "2023-11-14T22:13:20.5Z", "2023-11-14T22:13:22Z"], "auto",
     "timestamps", "2023-11-14T22:13:20.000000Z"),
    # Offsets: 23:13:20.5+01:00 is 22:13:20.5 UTC.
    (["2023-11-14 22:13:20+00:00", "2023-11-14 23:13:20.5+01:00", "2023-11-14 22:13:22"],
     "auto", "ISO datetime strings", "2023-11-14T22:13:20.000000Z"),
])
def test_arrival_clocks(tmp_path: Path, values: list[str], unit: str, how: str,
                        start: str | None) -> None:
    trace, report = read_trace(_csv(tmp_path / "t.csv", values), columns={"arrival_s": "t"},
                               time_unit=unit)  # type: ignore[arg-type]
    assert trace.arrival_s.tolist() == pytest.approx([0.0, 0.5, 2.0], abs=1e-6)
    assert report.time_format.startswith(how.split()[0])
    assert report.start == start


def test_parquet_timestamps_and_zero_tokens(tmp_path: Path) -> None:
    ms = np.array([T0 * 1e3 + 2000, T0 * 1e3, T0 * 1e3 + 500]).astype(np.int64)
    table = pa.table({"arrival_s": pa.array(ms, pa.timestamp("ms")),
                      "input_tokens": [7, 0, 9], "output_tokens": [0, 3, 4]})
    pq.write_table(table, tmp_path / "t.parquet")
    trace, report = read_trace(tmp_path / "t.parquet")
    assert report.time_format == "timestamps"
    assert trace.arrival_s.tolist() == [0.0, 0.5, 2.0]
    assert trace.input_tokens.tolist() == [1, 9, 7]          # 0 counts as 1
    assert trace.output_tokens.tolist() == [3, 4, 1]
    assert (report.sorted_rows, report.zero_input_rows, report.zero_output_rows) == (3, 1, 1)


def test_a_bad_datetime_names_row_and_value(tmp_path: Path) -> None:
    path = _csv(tmp_path / "t.csv", ["2023-11-14T22:13:20", "yesterday"])
    with pytest.raises(TraceError, match=r"column 't' must be numbers or datetimes, row 1 "
                       r"holds 'yesterday'"):
        read_trace(path, columns={"arrival_s": "t"})


def _two_level_stream() -> Trace:
    """1 req/s for 10 minutes, then 3 req/s for 10 minutes, 30 times (evenly spaced)."""
    times: list[float] = []
    for period in range(30):
        base = period * 1200.0
        times += [base + i for i in range(600)]
        times += [base + 600 + i / 3 for i in range(1800)]
    n = len(times)
    return Trace(np.asarray(times), np.full(n, 10), np.full(n, 5), name="two-level")


def test_block_bootstrap_keeps_the_per_minute_cv() -> None:
    """Hand-computed: per-minute counts of the stream are 60 or 180 (CV 0.5 aligned).

    Bootstrap windows are aligned to 300 s blocks, so a block's 5 minutes hold at most one
    level change (probability 300/600): 10% of minutes straddle it, with a count uniform on
    [60, 180]. Mean 120; variance 0.9 x 60^2 + 0.1 x 120^2 / 12 = 3360: CV 0.483. Thinned by
    p = 1/2, counts are binomial: variance 3360 / 4 + 120 / 4 = 870 around 60: CV 0.492.
    """
    stream = _two_level_stream()
    traffic = ThinnedTraffic(stream, "trace", num_requests=200_000, block_s=300.0,
                             max_requests=400_000)
    full = traffic.at_rate(stream.rate_rps)
    half = traffic.at_rate(stream.rate_rps / 2)
    assert full.burstiness()["count_cv_60s"] == pytest.approx(0.483, abs=0.03)
    assert half.burstiness()["count_cv_60s"] == pytest.approx(0.492, abs=0.03)
    assert half.rate_rps == pytest.approx(stream.rate_rps / 2, rel=0.05)
    # Time-scaling the same stream (what renewal traffic does) would stretch its minutes:
    # at half the rate the 10-minute levels last 20 minutes, but the thinned stream's keep
    # their 10 minutes: its 10-minute-lagged counts are anti-correlated.
    counts = half.window_counts(600.0)
    assert np.corrcoef(counts[:-1], counts[1:])[0, 1] < 0.3


def test_thinning_uses_common_random_numbers() -> None:
    """A lower rate's requests are a subset of a higher one's (same stretches, same draws)."""
    stream = generate_trace("gsm8k", rate_rps=10.0, num_requests=20_000, arrival="modulated",
                            minute_cv=1.0, seed=3)
    traffic = ThinnedTraffic(stream, "modulated", num_requests=500)
    t_lo, i_lo = traffic._thinned(0.2, 3000.0, (0, 0))
    t_hi, i_hi = traffic._thinned(0.4, 3000.0, (0, 0))
    assert 0 < len(t_lo) < len(t_hi)
    assert set(zip(np.round(t_lo, 9), i_lo, strict=True)) <= set(
        zip(np.round(t_hi, 9), i_hi, strict=True))
    lo = traffic.at_rate(2.0)
    assert traffic.at_rate(2.0).arrival_s.tolist() == lo.arrival_s.tolist()   # deterministic
    assert traffic.at_rate(2.0, seed=1).arrival_s.tolist() != lo.arrival_s.tolist()
    # Above the workload's own rate: k independent streams superposed.
    fast = traffic.at_rate(25.0)
    assert fast.rate_rps == pytest.approx(25.0, rel=0.15)


def test_modulated_arrivals_have_the_stated_minute_cv() -> None:
    """Per-minute counts of a modulated stream: CV^2 = minute_cv^2 + 1 / (rate x 60)."""
    t = generate_trace("gsm8k", rate_rps=20.0, num_requests=720_000, arrival="modulated",
                       minute_cv=0.8, seed=5)
    expected = (0.8**2 + 1 / (20.0 * 60)) ** 0.5
    assert t.burstiness()["count_cv_60s"] == pytest.approx(expected, rel=0.1)
    poisson = generate_trace("gsm8k", rate_rps=20.0, num_requests=72_000, seed=5)
    assert poisson.burstiness()["count_cv_60s"] == pytest.approx((1 / 1200) ** 0.5, rel=0.25)


SCENARIO = """
name: tr
gpus: {{H100: {{count: 1}}}}
models: [llama-3.1-8b]
task: gsm8k
workload:
  trace: {trace}
  columns: {{arrival_s: TIMESTAMP, input_tokens: ContextTokens, output_tokens: GeneratedTokens}}
  rate_rps: 4
{extra}
profile: {{num_rates: 4, num_requests: 100}}
"""


def _bursty_log(path: Path) -> Path:
    t = generate_trace("gsm8k", rate_rps=4.0, num_requests=4800, arrival="modulated",
                       minute_cv=1.0, seed=2)
    stamps = (np.datetime64("2024-05-10T00:00:00", "ms")
              + (t.arrival_s * 1e3).astype("timedelta64[ms]"))
    pq.write_table(pa.table({"TIMESTAMP": stamps, "ContextTokens": t.input_tokens,
                             "GeneratedTokens": t.output_tokens}), path)
    return path


def test_scenario_reads_its_trace_like_boute_trace(tmp_path: Path, catalog: Catalog) -> None:
    """Relative path from the scenario's folder, column mapping, datetimes, arrival model."""
    (tmp_path / "data").mkdir()
    _bursty_log(tmp_path / "data" / "log.parquet")
    (tmp_path / "sc.yaml").write_text(SCENARIO.format(trace="data/log.parquet", extra=""))
    (tmp_path / "sc-poisson.yaml").write_text(SCENARIO.format(
        trace="data/log.parquet", extra="  arrival: poisson"))
    sc = load_scenario(tmp_path / "sc.yaml")
    assert sc.workload.trace == str(tmp_path / "data" / "log.parquet")
    assert sc.workload.arrival_model == "trace"
    spec = sc.profile_spec()
    traffic = spec.traffic()
    assert isinstance(traffic, ThinnedTraffic)
    assert traffic.stream_rate_rps == pytest.approx(4.0, rel=1e-3)   # scaled to rate_rps
    assert spec.base_trace() is traffic.stream
    poisson = load_scenario(tmp_path / "sc-poisson.yaml").profile_spec()
    assert isinstance(poisson.traffic(), ScaledTraffic)
    assert poisson.base_trace().rate_rps == pytest.approx(1.0)
    # A DB built under Poisson arrivals is stale for the trace's own arrivals.
    db = build_perfdb(poisson, catalog, workers=1, progress=False)
    db.save(tmp_path / "db.parquet")
    assert db.meta["arrival"] == {"model": "poisson"}
    with pytest.raises(StaleDBError, match=r"arrival="):
        PerfDB.load(tmp_path / "db.parquet", arrival=traffic.describe())
    PerfDB.load(tmp_path / "db.parquet", arrival=poisson.traffic().describe())


@pytest.mark.parametrize(("extra", "message"), [
    ("  arrival: modulated", "workload.arrival='modulated' generates arrivals"),
    ("  columns: {when: TIMESTAMP}", "workload.columns names ['when']"),
])
def test_scenario_workload_errors(tmp_path: Path, extra: str, message: str) -> None:
    path = tmp_path / "sc.yaml"
    path.write_text(SCENARIO.format(trace="log.parquet", extra=extra).replace(
        "  columns: {arrival_s: TIMESTAMP, input_tokens: ContextTokens, output_tokens: "
        "GeneratedTokens}\n", "" if "columns" in extra else
        "  columns: {arrival_s: TIMESTAMP}\n"))
    with pytest.raises(ScenarioError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_scenario(path)


def test_trace_arrival_needs_a_file(tmp_path: Path) -> None:
    path = tmp_path / "sc.yaml"
    path.write_text("gpus: {H100: {count: 1}}\nworkload: {shape: gsm8k, arrival: trace}\n")
    with pytest.raises(ScenarioError, match=r"workload.arrival='trace' needs workload.trace"):
        load_scenario(path)


def test_a_short_trace_is_replayed_as_recorded(tmp_path: Path) -> None:
    """Under 10 minutes at the workload's rate (a replanning window): no bootstrap with auto."""
    t = generate_trace("gsm8k", rate_rps=4.0, num_requests=400, seed=3)      # ~100 s
    t.save(tmp_path / "short.csv")
    body = ("gpus: {H100: {count: 1}}\nmodels: [llama-3.1-8b]\n"
            "workload: {trace: short.csv, rate_rps: 4%s}\n")
    (tmp_path / "auto.yaml").write_text(body % "")
    (tmp_path / "forced.yaml").write_text(body % ", arrival: trace")
    auto = load_scenario(tmp_path / "auto.yaml").profile_spec().traffic()
    assert isinstance(auto, ScaledTraffic) and auto.describe() == {"model": "trace-head"}
    assert auto.base.arrival_s.tolist() == pytest.approx(
        (t.scaled_to(1.0).arrival_s).tolist())             # the file's own gaps, at 1 req/s
    forced = load_scenario(tmp_path / "forced.yaml").profile_spec().traffic()
    assert isinstance(forced, ThinnedTraffic)
