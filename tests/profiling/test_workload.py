from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from common.errors import TraceError
from profiling import Trace, generate_trace, load_trace, read_trace


def test_generator_is_reproducible_and_matches_the_data_set_statistics() -> None:
    a = generate_trace("gsm8k", rate_rps=50, num_requests=20_000, seed=3)
    b = generate_trace("gsm8k", rate_rps=50, num_requests=20_000, seed=3)
    assert a.fingerprint() == b.fingerprint()
    # benchmarks/data/reference/calibration.md s4: GSM8K prompt 69 / 65 (mean / median),
    # 8B-class answer 103.3 / 95.
    assert a.input_tokens.mean() == pytest.approx(69, rel=0.03)
    assert np.median(a.input_tokens) == pytest.approx(65, rel=0.03)
    assert a.output_tokens.mean() == pytest.approx(103.3, rel=0.03)
    assert a.rate_rps == pytest.approx(50, rel=0.03)


def test_gamma_arrivals_have_the_requested_burstiness() -> None:
    t = generate_trace("mtbench", rate_rps=100, num_requests=20_000, arrival="gamma",
                       burstiness_cv=2.0, seed=1)
    assert t.summary()["interarrival_cv"] == pytest.approx(2.0, rel=0.08)
    assert t.rate_rps == pytest.approx(100, rel=0.06)


def test_rate_scaling_keeps_requests() -> None:
    t = generate_trace("gsm8k", rate_rps=10, num_requests=500, seed=0)
    s = t.scaled_to(40)
    assert s.rate_rps == pytest.approx(40)
    assert np.array_equal(s.input_tokens, t.input_tokens)
    with pytest.raises(TraceError, match=r"rate_rps=0 must be > 0"):
        t.scaled_to(0)


def _columns() -> dict[str, list[float]]:
    return {"ts": [0.0, 0.5, 1.5], "prompt_len": [10, 20, 30], "gen_len": [5, 6, 7]}


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".parquet"])
def test_loaders_with_column_mapping(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"trace{suffix}"
    cols = _columns()
    if suffix == ".csv":
        path.write_text("ts,prompt_len,gen_len\n" + "\n".join(
            f"{a},{b},{c}" for a, b, c in zip(*cols.values(), strict=True)))
    elif suffix == ".jsonl":
        path.write_text("\n".join(json.dumps(dict(zip(cols, row, strict=True)))
                                  for row in zip(*cols.values(), strict=True)))
    else:
        pq.write_table(pa.table(cols), path)
    t = load_trace(path, columns={"arrival_s": "ts", "input_tokens": "prompt_len",
                                  "output_tokens": "gen_len"})
    assert t.input_tokens.tolist() == [10, 20, 30]
    assert t.arrival_s.tolist() == [0.0, 0.5, 1.5]
    assert t.rate_rps == pytest.approx(2 / 1.5)


def test_missing_column_negative_length_and_unsorted(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text("arrival_s,input_tokens\n0,5\n")
    with pytest.raises(TraceError, match=r"missing column\(s\) output_tokens"):
        load_trace(path)
    path.write_text("arrival_s,input_tokens,output_tokens\n0,5,3\n1,-4,3\n")
    with pytest.raises(TraceError, match=r"input_tokens=-4 at row 1 must be an integer >= 0"):
        load_trace(path)
    # Out of order: sorted (stably), and the report says how many rows moved.
    path.write_text("arrival_s,input_tokens,output_tokens\n0,5,3\n2,6,3\n1,7,3\n")
    trace, report = read_trace(path)
    assert trace.arrival_s.tolist() == [0.0, 1.0, 2.0]
    assert trace.input_tokens.tolist() == [5, 7, 6]
    assert report.sorted_rows == 2
    assert "2 row(s) out of arrival order: sorted by arrival" in report.notes()


def test_trace_type_validates() -> None:
    with pytest.raises(TraceError, match=r"output_tokens=0 at row 0 must be >= 1"):
        Trace(np.zeros(1), np.ones(1, dtype=np.int64), np.zeros(1, dtype=np.int64))


@pytest.mark.parametrize("suffix", [".parquet", ".csv", ".jsonl"])
def test_save_writes_the_format_its_suffix_names(tmp_path: Path, suffix: str) -> None:
    trace = Trace(np.array([0.0, 0.25, 1.5]), np.array([3, 70, 9]), np.array([1, 2, 400]),
                  ["hi", 'a "quoted", comma', "naïve\nline"], name="t")
    path = trace.save(tmp_path / f"t{suffix}")
    head = path.read_bytes()[:64]
    if suffix == ".parquet":
        assert head.startswith(b"PAR1")
    elif suffix == ".csv":
        assert head.startswith(b'"arrival_s","input_tokens","output_tokens","prompt"')
    else:
        first = json.loads(path.read_text(encoding="utf-8").splitlines()[0])
        assert first == {"arrival_s": 0.0, "input_tokens": 3, "output_tokens": 1,
                         "prompt": "hi"}
    back = load_trace(path)
    assert back.arrival_s.tolist() == [0.0, 0.25, 1.5]
    assert back.input_tokens.tolist() == [3, 70, 9]
    assert back.output_tokens.tolist() == [1, 2, 400]
    assert back.prompts is not None and list(back.prompts) == list(trace.prompts or [])


def test_save_refuses_a_suffix_it_cannot_write(tmp_path: Path) -> None:
    trace = generate_trace("gsm8k", rate_rps=1.0, num_requests=3, seed=0)
    with pytest.raises(TraceError, match=r"cannot write format '\.txt'; use one of "
                       r"\.parquet, \.csv, \.jsonl"):
        trace.save(tmp_path / "t.txt")
    assert not (tmp_path / "t.txt").exists()
