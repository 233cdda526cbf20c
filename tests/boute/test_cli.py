from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from boute.cli import main
from tests.conftest import TINY_SCENARIO, write_scenario


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_simulate_json_contract(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(capsys, "--json", "simulate", "--model", "llama-3.1-8b", "--gpu", "H100",
                        "--concurrency", "4", "--input-len", "100", "--output-len", "50")
    data = json.loads(out)
    assert code == 0
    assert {"ttft_ms", "tpot_ms", "latency_s", "throughput_tok_s", "throughput_rps"} <= set(data)
    assert set(data["latency_s"]) >= {"p50", "p95", "p99"}
    # Four clients, 50 tokens each per request: tok/s = 50 x req/s.
    assert data["throughput_tok_s"] == pytest.approx(50 * data["throughput_rps"])


@pytest.mark.parametrize(("argv", "message"), [
    (["simulate", "--model", "llama-3.1-70b", "--gpu", "RTX-4090", "--rate", "1",
      "--input-len", "10", "--output-len", "10"], "does not fit: weights need 131.4 GiB"),
    (["simulate", "--model", "llama-3.1-8b", "--gpu", "B200", "--rate", "1",
      "--input-len", "10", "--output-len", "10"], "gpu='B200' is not in the catalog"),
    (["simulate", "--model", "llama-3.1-8b", "--gpu", "H100", "--rate", "-2",
      "--input-len", "10", "--output-len", "10"], "--rate=-2.0 must be > 0"),
    (["simulate", "--model", "llama-3.1-8b", "--gpu", "H100", "--rate", "1",
      "--input-len", "-5", "--output-len", "10"], "--input-len=-5 must be an integer >= 1"),
])
def test_bad_input_is_one_line_and_exit_2(capsys: pytest.CaptureFixture[str], argv: list[str],
                                          message: str) -> None:
    code, _, err = _run(capsys, *argv)
    assert code == 2
    assert message in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_trace_file_errors(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text("arrival_s,input_tokens,output_tokens\n0,5,3\nsoon,5,3\n1,5,3\n")
    code, _, err = _run(capsys, "trace", "--file", str(path))
    assert code == 2 and "column 'arrival_s' must be numbers or datetimes, row 1 holds 'soon'" \
        in err
    assert len(err.strip().splitlines()) == 1


def test_trace_reads_a_production_log(capsys: pytest.CaptureFixture[str],
                                      tmp_path: Path) -> None:
    """Datetime strings out of order, a 0-token answer: read, sorted, counted, plotted."""
    path = tmp_path / "log.csv"
    rows = ["TIMESTAMP,ContextTokens,GeneratedTokens"]
    # 2 req/s in the first minute, 6 req/s in the second, 2 in the third, then 10 more.
    times = [i / 2 for i in range(120)] + [60 + i / 6 for i in range(360)] + \
        [120 + i / 2 for i in range(130)]
    for k, t in enumerate(times):
        rows.append(f"2023-11-16 18:{int(t // 60):02d}:{t % 60:09.6f},{100 + k},"
                    f"{0 if k == 7 else 20}")
    rows[1], rows[2] = rows[2], rows[1]                  # one pair out of order
    path.write_text("\n".join(rows) + "\n")
    png = tmp_path / "rate.png"
    code, out, _ = _run(capsys, "--json", "trace", "--file", str(path), "--columns",
                        "arrival_s=TIMESTAMP,input_tokens=ContextTokens,"
                        "output_tokens=GeneratedTokens", "--plot", str(png))
    data = json.loads(out)
    assert code == 0 and data["requests"] == 610
    assert data["notes"] == ["arrival column read as timestamps, first request at "
                             "2023-11-16T18:00:00.000000Z",
                             "2 row(s) out of arrival order: sorted by arrival",
                             "1 row(s) with output_tokens=0: counted as 1 token"]
    # Three full minutes: 120, 360, 120 requests; mean 200, std sqrt(12800) = 113.1.
    assert data["burstiness"]["count_cv_60s"] == pytest.approx(12800**0.5 / 200)
    assert data["burstiness"]["minute_peak_to_mean"] == pytest.approx(1.8)
    assert data["burstiness"]["minute_trough_to_mean"] == pytest.approx(0.6)
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_trace_out_writes_the_format_its_suffix_names(capsys: pytest.CaptureFixture[str],
                                                      tmp_path: Path) -> None:
    src = tmp_path / "in.csv"
    src.write_text("ts,inp,out\n0,5,3\n1,7,2\n2,9,4\n")
    for suffix in (".csv", ".jsonl", ".parquet"):
        out = tmp_path / f"out{suffix}"
        code, _, err = _run(capsys, "trace", "--file", str(src), "--columns",
                            "arrival_s=ts, input_tokens=inp,output_tokens=out", "--rate", "2",
                            "--out", str(out))
        assert code == 0, err
        code, stdout, _ = _run(capsys, "--json", "trace", "--file", str(out))
        data = json.loads(stdout)
        # 3 requests over 2 s at 1 req/s, rescaled to 2 req/s: 1 s; mean prompt 7 tokens.
        assert (data["requests"], data["duration_s"]) == (3, 1.0)
        assert data["input_tokens_mean"] == 7.0
    assert (tmp_path / "out.csv").read_text().splitlines()[0] == (
        '"arrival_s","input_tokens","output_tokens"')
    code, _, err = _run(capsys, "trace", "--file", str(src), "--columns", "arrival_s=ts,inp",
                        "--out", str(tmp_path / "x.csv"))
    assert code == 2 and "--columns item 'inp' must look like NAME=VALUE" in err
    code, _, err = _run(capsys, "trace", "--shape", "gsm8k", "--out", str(tmp_path / "t.txt"))
    assert code == 2 and "cannot write format '.txt'" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "t.txt").exists()


def test_profile_writes_a_db(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    scenario = write_scenario(tmp_path, TINY_SCENARIO)
    code, out, _ = _run(capsys, "--json", "profile", "--scenario", str(scenario), "--out",
                        str(tmp_path / "db.parquet"), "--workers", "1")
    data = json.loads(out)
    assert code == 0 and data["configs"] == 3 and data["rows"] == 18
    assert (tmp_path / "db.parquet").is_file()
    assert {(b["model"], b["gpu"]) for b in data["best"]} == {("llama-3.1-8b", "H100")}


def test_console_entry_point_has_no_traceback(tmp_path: Path) -> None:
    bad = tmp_path / "scenario.yaml"
    bad.write_text("gpus: {H100: {count: -3}}\n")
    proc = subprocess.run([sys.executable, "-m", "boute.cli", "profile", "--scenario", str(bad)],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 2
    assert "gpus.H100.count=-3" in proc.stderr and "Traceback" not in proc.stderr


def test_trace_reports_the_prefix_reuse_of_a_file(capsys: pytest.CaptureFixture[str],
                                                  tmp_path: Path) -> None:
    """Two requests of one application (a 40-token system prompt), then turn 1 of a chat."""
    path = tmp_path / "t.csv"
    path.write_text("arrival_s,input_tokens,output_tokens,prefix_id,prefix_tokens,session_id,"
                    "turn\n0,50,10,0,40,3,0\n1,50,10,0,40,-1,0\n2,100,10,0,40,3,1\n")
    code, out, _ = _run(capsys, "--json", "trace", "--file", str(path))
    reuse = json.loads(out)["prefix_reuse"]
    # Request 1 reuses the system prompt (40), request 2 its chat's 50 + 10: 100 of 200.
    assert code == 0 and reuse["potential"] == pytest.approx(0.5)
    code, _, err = _run(capsys, "trace", "--shape", "gsm8k", "--turns", "0.5")
    assert code == 2 and "turns=0.5 must be >= 1" in err
