from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from common.errors import PerfDBError, StaleDBError
from profiling import (
    QUANTILES,
    Catalog,
    PerfDB,
    build_perfdb,
    generate_trace,
    load_scenario,
    mixture_quantile,
)
from tests.conftest import TINY_SCENARIO, write_scenario


@pytest.fixture(scope="module")
def tiny_db(tmp_path_factory: pytest.TempPathFactory) -> tuple[PerfDB, Path]:
    from profiling import load_catalog

    tmp = tmp_path_factory.mktemp("db")
    spec = load_scenario(write_scenario(tmp, TINY_SCENARIO)).profile_spec()
    db = build_perfdb(spec, load_catalog(), workers=1, progress=False)
    return db, db.save(tmp / "db.parquet")


def test_db_has_every_feasible_config_and_rate(tiny_db: tuple[PerfDB, Path]) -> None:
    db = tiny_db[0]
    # 8B on up to 2 H100s: (tp, pp) in (1,1), (1,2), (2,1); 6 rates each.
    assert db.keys == [("llama-3.1-8b", "H100", 1, 1), ("llama-3.1-8b", "H100", 1, 2),
                       ("llama-3.1-8b", "H100", 2, 1)]
    assert db.table.num_rows == 18
    assert db.saturated[:, -2:].all() and not db.saturated[:, :-2].any()


def test_roundtrip_and_lookup_interpolation(tiny_db: tuple[PerfDB, Path], catalog: Catalog
                                            ) -> None:
    path = tiny_db[1]
    loaded = PerfDB.load(path, catalog=catalog)
    ci = loaded.config_index([("llama-3.1-8b", "H100", 1, 1)])
    r0, r1 = loaded.rates[ci[0], 1], loaded.rates[ci[0], 2]
    q, mean, sat = loaded.lookup(np.repeat(ci, 3), np.array([r0, 0.5 * (r0 + r1), 1e9]))
    np.testing.assert_allclose(q[0], loaded.quantiles[ci[0], 1])
    np.testing.assert_allclose(q[1], 0.5 * (loaded.quantiles[ci[0], 1]
                                            + loaded.quantiles[ci[0], 2]))
    assert mean[1] == pytest.approx(0.5 * (loaded.mean[ci[0], 1] + loaded.mean[ci[0], 2]))
    assert sat.tolist() == [False, False, True] and np.isinf(q[2]).all()


def test_stale_corrupt_and_missing_files(tiny_db: tuple[PerfDB, Path], tmp_path: Path) -> None:
    _, path = tiny_db
    other = generate_trace("mtbench", rate_rps=1, num_requests=200)
    with pytest.raises(StaleDBError, match=r"is stale: trace_fingerprint="):
        PerfDB.load(path, trace=other)
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"not parquet at all")
    with pytest.raises(PerfDBError, match=r"is not a readable Parquet file"):
        PerfDB.load(bad)
    with pytest.raises(PerfDBError, match=r"does not exist; build it with"):
        PerfDB.load(tmp_path / "none.parquet")
    with pytest.raises(PerfDBError, match=r"no rows for model='llama-3.1-70b'"):
        tiny_db[0].config_index([("llama-3.1-70b", "H100", 1, 1)])


def test_mixture_of_uniforms() -> None:
    levels = np.asarray(QUANTILES)
    a, b = 2.0 * levels, 4.0 * levels          # U(0, 2) and U(0, 4)
    # F(x) = 0.5 + x / 8 on (2, 4]: F = 0.95 at x = 3.6; alone, U(0,4) has p95 = 3.8.
    both = mixture_quantile(np.stack([a, b]), np.array([0.5, 0.5]), QUANTILES)
    assert float(both) == pytest.approx(3.6, rel=1e-6)
    alone = mixture_quantile(np.stack([a, b]), np.array([0.0, 1.0]), QUANTILES)
    assert float(alone) == pytest.approx(3.8, rel=1e-6)
    batch = mixture_quantile(np.stack([np.stack([a, b]), np.stack([a, np.full_like(b, np.inf)])]),
                             np.array([[0.5, 0.5], [0.5, 0.5]]), QUANTILES)
    assert batch[0] == pytest.approx(3.6, rel=1e-6) and np.isinf(batch[1])


def _data_equal(a: PerfDB, b: PerfDB) -> bool:
    """Same rows and columns, and the same metadata but the build's own time stamps."""
    stamps = {"build_seconds", "created_utc"}
    meta_a = {k: v for k, v in a.meta.items() if k not in stamps}
    meta_b = {k: v for k, v in b.meta.items() if k not in stamps}
    return a.table.equals(b.table, check_metadata=False) and meta_a == meta_b


def test_processes_and_any_mapper_give_the_serial_rows(
        tiny_db: tuple[PerfDB, Path], catalog: Catalog, tmp_path: Path) -> None:
    from profiling import SweepJob, Trace, map_serial

    serial = tiny_db[0]
    spec = load_scenario(write_scenario(tmp_path, TINY_SCENARIO)).profile_spec()
    pooled = build_perfdb(spec, catalog, workers=2, progress=False)
    assert _data_equal(serial, pooled)

    def backwards(jobs: Sequence[SweepJob], base: Trace) -> list[list[dict[str, Any]]]:
        return list(map_serial(jobs[::-1], base))          # finishes in another order

    mapped = build_perfdb(spec, catalog, map_configs=backwards, progress=False)
    assert _data_equal(serial, mapped)
    assert mapped.meta["build_seconds"] >= 0 and "created_utc" in mapped.meta

    def loses_one(jobs: Sequence[SweepJob], base: Trace) -> list[list[dict[str, Any]]]:
        return list(map_serial(jobs[1:], base))

    with pytest.raises(PerfDBError, match=r"returned 2 results for 3 configs"):
        build_perfdb(spec, catalog, map_configs=loses_one, progress=False)
