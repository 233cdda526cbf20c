"""`--hardware-profiles`: simulate and the perf DB use a GPU type's profile when one is there."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from boute.cli import main
from profiling import Catalog, Efficiency, fit_efficiency, load_hardware_profile
from tests.conftest import TINY_SCENARIO, write_roofline_profile, write_scenario

REPO = Path(__file__).resolve().parents[2]
HW = REPO / "benchmarks" / "data" / "hardware"
H100_REF = HW / "h100-sxm-reference"
ROW = ["simulate", "--model", "llama-3.1-8b", "--gpu", "H100", "--rate", "10",
       "--input-len", "70", "--output-len", "100", "--requests", "300"]


def _simulate(capsys: pytest.CaptureFixture[str], *extra: str) -> dict:  # type: ignore[type-arg]
    code = main(["--json", *ROW, *extra])
    out, err = capsys.readouterr()
    assert code == 0, err
    return dict(json.loads(out))


def test_tpot_moves_the_way_the_fitted_memory_efficiency_says(
        capsys: pytest.CaptureFixture[str], tmp_path: Path, catalog: Catalog) -> None:
    h100 = catalog.gpu("H100")
    base = _simulate(capsys)
    assert base["efficiency_source"] == "spec-sheet"
    tpot = {}
    for e_m in (0.5, 1.0):   # default 0.85; decode of an 8B model at 10 req/s is memory-bound
        root = tmp_path / f"m{e_m}"
        write_roofline_profile(root / "h100", "H100", h100.bf16_tflops,
                               h100.memory_bandwidth_gbps, Efficiency().compute, e_m,
                               Efficiency().kernel_latency_s)
        got = _simulate(capsys, "--hardware-profiles", str(root))
        assert got["efficiency_source"] == f"profile:{root / 'h100'}"
        assert got["efficiency"]["memory"] == pytest.approx(e_m, rel=1e-3)
        tpot[e_m] = got["tpot_ms"]
    assert tpot[0.5] > 1.3 * base["tpot_ms"]          # bytes at 0.5 instead of 0.85: ~1.7x
    assert tpot[1.0] < base["tpot_ms"] < tpot[0.5]


def test_h100_reference_profile_is_opt_in_and_matches_the_fit(
        capsys: pytest.CaptureFixture[str], catalog: Catalog) -> None:
    fitted = fit_efficiency(load_hardware_profile(H100_REF), catalog.gpu("H100"))
    base = _simulate(capsys)
    ref = _simulate(capsys, "--hardware-profiles", str(HW))   # the folder: H100 + a CPU
    assert ref["efficiency_source"] == f"profile:{H100_REF}"
    assert ref["efficiency"] == {"compute": fitted.compute, "memory": fitted.memory,
                                 "attention_compute": fitted.attention_compute,
                                 "kernel_latency_s": fitted.kernel_latency_s}
    # memory 0.78 < 0.85 and 8 us > 5 us per kernel: decode steps are slower.
    assert fitted.memory < Efficiency().memory and ref["tpot_ms"] > base["tpot_ms"]


def test_no_profile_for_the_gpu_gives_todays_numbers(
        capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    shutil.copytree(HW / "cpu-amd-epyc", tmp_path / "cpu")   # a profile, of another type
    (tmp_path / "empty").mkdir()
    base = _simulate(capsys)
    for root in (tmp_path, tmp_path / "empty"):
        assert _simulate(capsys, "--hardware-profiles", str(root)) == base


def test_profile_db_reports_its_source_and_plan_rebuilds_a_stale_db(
        capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    from tuning import planning_problem

    notes: list[str] = []
    scenario = write_scenario(tmp_path, TINY_SCENARIO)
    db = tmp_path / "db.parquet"
    code = main(["--json", "profile", "--scenario", str(scenario), "--out", str(db),
                 "--workers", "1"])
    assert code == 0
    assert json.loads(capsys.readouterr().out)["efficiency_source"] == {"H100": "spec-sheet"}
    planning_problem(str(scenario), db=str(db), hardware_profiles=str(H100_REF),
                     note=notes.append)
    assert len(notes) == 1
    assert "is stale: H100's efficiency came from spec-sheet" in notes[0]
    assert "rebuilding" in notes[0]
    problem = planning_problem(str(scenario), db=str(db), hardware_profiles=str(H100_REF),
                               note=notes.append)
    assert len(notes) == 1                                    # rebuilt with the profile: current
    assert problem.db.meta["efficiency_source"] == {"H100": f"profile:{H100_REF}"}


@pytest.mark.parametrize("command", ["simulate", "profile", "plan"])
@pytest.mark.parametrize("case", ["missing", "bad-json", "bad-gemm"])
def test_bad_hardware_profiles_is_one_line_and_exit_2(
        capsys: pytest.CaptureFixture[str], tmp_path: Path, command: str, case: str) -> None:
    root = tmp_path / "profiles"
    bad = root / "h100"
    if case != "missing":
        bad.mkdir(parents=True)
        (bad / "gemm.csv").write_text("m,n,k,median_us\n1,2,3,4\n1,2,3,4\n1,2,3,4\n")
        if case == "bad-json":
            (bad / "meta.json").write_text("{oops")
        else:
            (bad / "gemm.csv").write_text("m,n,k,median_us\n1,2,3,fast\n")
    argv = {"simulate": ROW,
            "profile": ["profile", "--scenario", str(write_scenario(tmp_path, TINY_SCENARIO)),
                        "--out", str(tmp_path / "db.parquet")],
            "plan": ["plan", "--scenario", str(write_scenario(tmp_path, TINY_SCENARIO)),
                     "--db", str(tmp_path / "db.parquet")]}[command]
    code = main([*argv, "--hardware-profiles", str(root)])
    _, err = capsys.readouterr()
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    named = root if case == "missing" else bad
    assert f"'{named}'" in err
    fix = {"missing": "no such directory; pass the folder `boute profile hardware` writes",
           "bad-json": "meta.json is not valid JSON", "bad-gemm": "median_us='fast'"}[case]
    assert fix in err and ("re-run" in err or case == "missing")
    assert not (tmp_path / "db.parquet").exists()
