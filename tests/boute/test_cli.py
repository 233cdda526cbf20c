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
    path.write_text("arrival_s,input_tokens,output_tokens\n0,5,3\n2,5,3\n1,5,3\n")
    code, _, err = _run(capsys, "trace", "--file", str(path))
    assert code == 2 and "arrival_s is not sorted" in err


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
