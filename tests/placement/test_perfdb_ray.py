"""The perf DB built as Ray tasks (`placement.ray_config_mapper`, `boute profile --address`).

The rows must equal the serial build's; only ``build_seconds`` and ``created_utc`` (the
build's own time stamps) differ between builds.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

import placement
from boute.cli import main
from placement import PlacementError, ray_config_mapper, ray_temp_dir
from profiling import (
    Catalog,
    ConfigMapper,
    PerfDB,
    SweepJob,
    Trace,
    build_perfdb,
    load_scenario,
)
from tests.conftest import TINY_SCENARIO, write_scenario

REPO = Path(__file__).resolve().parents[2]
STAMPS = {"build_seconds", "created_utc"}


def _same_content(a: PerfDB, b: PerfDB) -> bool:
    """Identical rows, columns and metadata, but the build's own time stamps."""
    return (a.table.equals(b.table, check_metadata=False)
            and {k: v for k, v in a.meta.items() if k not in STAMPS}
            == {k: v for k, v in b.meta.items() if k not in STAMPS})


def _no_ray_connection() -> None:
    import ray

    if ray.is_initialized():
        pytest.skip("a Ray connection is open in this process")


def test_the_mapper_needs_a_ray_connection(catalog: Catalog, tmp_path: Path) -> None:
    _no_ray_connection()
    spec = load_scenario(write_scenario(tmp_path, TINY_SCENARIO)).profile_spec()
    with pytest.raises(PlacementError, match=r"needs a Ray connection: call placement.connect"):
        build_perfdb(spec, catalog, map_configs=ray_config_mapper(), progress=False)


def test_profile_with_an_unreachable_address_is_one_line(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    _no_ray_connection()
    monkeypatch.setenv("RAY_AUTH_MODE", "token")        # as on a BOute cluster's machines
    scenario = write_scenario(tmp_path, TINY_SCENARIO)
    assert main(["profile", "--scenario", str(scenario), "--out", str(tmp_path / "db.pq"),
                 "--address", "127.0.0.1:1"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("boute profile: error: cannot reach a Ray cluster at "
                          "--address=127.0.0.1:1 (nothing answers at 127.0.0.1:1"), err
    assert "drop --address to build in local processes" in err
    assert not (tmp_path / "db.pq").exists()
    with pytest.raises(SystemExit) as exc:      # one place to build: processes or the cluster
        main(["profile", "--address", "127.0.0.1:1", "--workers", "2"])
    assert exc.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err


@pytest.mark.heavy
def test_ray_tasks_build_the_serial_rows(catalog: Catalog, tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    """A head (2 CPUs) and one more node (1 CPU): the tasks spread over both."""
    pytest.importorskip("ray")
    import ray

    from placement import local_cluster

    _no_ray_connection()
    scenario = write_scenario(tmp_path, TINY_SCENARIO)
    spec = load_scenario(scenario).profile_spec()
    serial = build_perfdb(spec, catalog, workers=1, progress=False)
    # A throw-away test cluster: token authentication off for it alone (BOute never does).
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    temp = ray_temp_dir(REPO / "build" / "ray-tmp-pdb")
    monkeypatch.setenv("RAY_TMPDIR", str(temp))         # local_cluster sets it; put it back
    cluster = local_cluster({"H100": 1}, {"H100": 8}, head_cpus=2, temp_dir=temp)
    try:
        assert len(ray.nodes()) == 2  # type: ignore[no-untyped-call]
        on_ray = build_perfdb(spec, catalog, map_configs=ray_config_mapper(), progress=False)
        assert _same_content(serial, on_ray)
        ray.shutdown()              # `boute profile --address` connects by itself
        out = tmp_path / "db.parquet"
        assert main(["--json", "profile", "--scenario", str(scenario), "--out", str(out),
                     "--address", cluster.address]) == 0
        data = json.loads(capsys.readouterr().out)      # stdout: the one JSON object
        assert data["configs"] == 3 and data["rows"] == 18
        assert data["built_with"] == f"Ray tasks on {cluster.address} (3 CPUs)"
        assert not ray.is_initialized()                 # the CLI disconnected
        assert _same_content(serial, PerfDB.load(out, catalog=catalog))

        def failing_mapper() -> ConfigMapper:           # every task raises on its node
            def run(jobs: Sequence[SweepJob], base: Trace) -> Iterable[list[dict[str, Any]]]:
                return ray_config_mapper()([replace(j, num_rates=1) for j in jobs], base)
            return run

        monkeypatch.setattr(placement, "ray_config_mapper", failing_mapper)
        assert main(["profile", "--scenario", str(scenario), "--out", str(tmp_path / "x.pq"),
                     "--address", cluster.address]) == 2
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert err.startswith(f"boute profile: error: building the perf DB as Ray tasks on "
                              f"--address={cluster.address} failed (ValueError: "), err
        assert "every node must run this BOute" in err and not ray.is_initialized()
    finally:
        ray.shutdown()
        cluster.shutdown()
