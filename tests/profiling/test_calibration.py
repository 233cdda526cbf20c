"""Hardware profiles in the planning path: per-GPU efficiency, DB metadata and staleness."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from common.errors import ProfilerError, StaleDBError
from profiling import Catalog, Efficiency, PerfDB, ProfileSpec, build_perfdb, load_scenario
from profiling._hardware import SPEC_SHEET, resolve_calibration, scan_hardware_profiles
from profiling._perfdb import spec_calibration
from tests.conftest import TINY_SCENARIO, write_roofline_profile, write_scenario

REPO = Path(__file__).resolve().parents[2]
H100_REF = REPO / "benchmarks" / "data" / "hardware" / "h100-sxm-reference"


@pytest.fixture()
def slow_h100(tmp_path: Path, catalog: Catalog) -> Path:
    """A profiles folder with one H100 profile of memory efficiency 0.5 (default 0.85)."""
    h100 = catalog.gpu("H100")
    write_roofline_profile(tmp_path / "profiles" / "h100", "H100", h100.bf16_tflops,
                           h100.memory_bandwidth_gbps, 0.72, 0.5, 5e-6)
    return tmp_path / "profiles"


def test_resolve_calibration_per_gpu_type(slow_h100: Path, catalog: Catalog) -> None:
    gpus = [catalog.gpu("H100"), catalog.gpu("A100-80G")]
    cal = resolve_calibration(gpus, slow_h100)
    assert cal.efficiency["H100"].memory == pytest.approx(0.5, rel=1e-3)
    assert cal.source == {"H100": f"profile:{slow_h100 / 'h100'}", "A100-80G": SPEC_SHEET}
    assert cal.efficiency["A100-80G"] == Efficiency() and set(cal.profile_sha256) == {"H100"}
    # No folder: the spec sheet everywhere; one profile directory works as the folder too.
    assert resolve_calibration(gpus, None).source == {"H100": SPEC_SHEET, "A100-80G": SPEC_SHEET}
    assert resolve_calibration(gpus, slow_h100 / "h100").efficiency == cal.efficiency


@pytest.mark.parametrize(("files", "message"), [
    ({"meta.json": "{not json", "gemm.csv": "m,n,k,median_us\n1,2,3,4\n1,2,3,4\n1,2,3,4\n"},
     "meta.json is not valid JSON"),
    ({"meta.json": '{"gpu_type": "H100"}'}, "no gemm.csv there"),
    ({"gemm.csv": "m,n,k,median_us\n1,2,3,4\nx,2,3,4\n1,2,3,4\n"},
     "gemm.csv line 3 has m='x', expected a number"),
    ({"gemm.csv": "m,n,k\n1,2,3\n1,2,3\n1,2,3\n"}, "gemm.csv line 2 has median_us=None"),
    ({"gemm.csv": "m,n,k,median_us\n1,2,3,4\n"}, "gemm.csv has 1 rows, the fit needs >= 3"),
])
def test_malformed_profile_names_the_directory(tmp_path: Path, files: dict[str, str],
                                               message: str) -> None:
    bad = tmp_path / "root" / "bad"
    bad.mkdir(parents=True)
    for name, text in files.items():
        (bad / name).write_text(text)
    with pytest.raises(ProfilerError, match="hardware profile") as err:
        scan_hardware_profiles(tmp_path / "root")
    assert str(bad) in str(err.value) and message in str(err.value)
    with pytest.raises(ProfilerError, match=r"no such directory"):
        scan_hardware_profiles(tmp_path / "missing")


@pytest.fixture(scope="module")
def tiny_spec(tmp_path_factory: pytest.TempPathFactory) -> ProfileSpec:
    return load_scenario(write_scenario(tmp_path_factory.mktemp("sc"), TINY_SCENARIO)
                         ).profile_spec()


def test_db_records_calibration_and_detects_other_calibration(
        tiny_spec: ProfileSpec, slow_h100: Path, catalog: Catalog, tmp_path: Path) -> None:
    plain = build_perfdb(tiny_spec, catalog, workers=1, progress=False).save(tmp_path / "a.pq")
    slow = build_perfdb(tiny_spec, catalog, hardware_profiles=slow_h100, workers=1,
                        progress=False).save(tmp_path / "b.pq")
    spec_sheet = spec_calibration(tiny_spec, catalog)
    profiled = spec_calibration(tiny_spec, catalog, hardware_profiles=slow_h100)
    meta = PerfDB.load(slow, calibration=profiled).meta
    assert meta["efficiency_source"] == {"H100": f"profile:{slow_h100 / 'h100'}"}
    assert meta["efficiency"]["H100"]["memory"] == pytest.approx(0.5, rel=1e-3)
    assert meta["hardware_profiles"]["H100"]["sha256"] == profiled.profile_sha256["H100"]
    assert PerfDB.load(plain, calibration=spec_sheet).meta["efficiency_source"] == {
        "H100": SPEC_SHEET}
    with pytest.raises(StaleDBError, match=r"H100's efficiency came from spec-sheet when it "
                       r"was built, the current inputs give profile:"):
        PerfDB.load(plain, calibration=profiled)
    with pytest.raises(StaleDBError, match=r"came from profile:.* give spec-sheet"):
        PerfDB.load(slow, calibration=spec_sheet)
    # Slower memory -> every unsaturated latency of the 1-GPU config is higher.
    a, b = PerfDB.load(plain), PerfDB.load(slow)
    ia, ib = (db.index[("llama-3.1-8b", "H100", 1, 1)] for db in (a, b))
    assert b.capacity[ib] < a.capacity[ia]
    assert b.quantiles[ib, 0, -1] > a.quantiles[ia, 0, -1]
    # The scenario field selects the same folder when no argument is given.
    scenario = tiny_spec.scenario
    profile = scenario.profile.model_copy(update={"hardware_profiles": str(slow_h100)})
    via_field = scenario.model_copy(update={"profile": profile}).profile_spec()
    assert spec_calibration(via_field, catalog).source == profiled.source
    assert spec_calibration(via_field, catalog, hardware_profiles=H100_REF).source == {
        "H100": f"profile:{H100_REF}"}


def test_db_of_the_old_format_is_current_without_profiles(
        tiny_spec: ProfileSpec, catalog: Catalog, slow_h100: Path, tmp_path: Path) -> None:
    """DBs written before per-GPU efficiencies (one flat dict) stay valid on the spec sheet."""
    db = build_perfdb(tiny_spec, catalog, workers=1, progress=False)
    meta = dict(db.meta)
    meta["efficiency"] = meta["efficiency"]["H100"]
    for key in ("efficiency_source", "hardware_profiles"):
        meta.pop(key)
    path = tmp_path / "old.pq"
    pq.write_table(db.table.replace_schema_metadata({"boute": json.dumps(meta)}), path)
    PerfDB.load(path, calibration=spec_calibration(tiny_spec, catalog))
    with pytest.raises(StaleDBError, match=r"came from spec-sheet"):
        PerfDB.load(path, calibration=spec_calibration(tiny_spec, catalog,
                                                       hardware_profiles=slow_h100))
    # A DB swept before a factor existed (here: roofline_sharpness) is stale, and says why.
    meta["efficiency"] = {k: v for k, v in meta["efficiency"].items()
                          if k != "roofline_sharpness"}
    pq.write_table(db.table.replace_schema_metadata({"boute": json.dumps(meta)}), path)
    with pytest.raises(StaleDBError, match=r"give spec-sheet \(roofline_sharpness 'absent' -> 3"):
        PerfDB.load(path, calibration=spec_calibration(tiny_spec, catalog))
