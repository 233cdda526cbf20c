import asyncio
import math
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from app.request_log import SCHEMA, RequestLog, read_log


def _fill(log: RequestLog, n: int, start: int = 0) -> None:
    for i in range(start, start + n):
        log.record(1000.0 + i, 10 + i % 7, i % 50, math.nan if i % 9 == 0 else i / n,
                   "strong" if i % 3 == 0 else "weak", f"g{i % 2}", 0.01 * (i % 5),
                   0.1 * (i % 11), 200 if i % 13 else 502, i % 2 == 0)


def test_every_record_lands_across_rotations_and_back_pressure(tmp_path: Path) -> None:
    log = RequestLog(tmp_path, max_buffer=1000, rotate_bytes=20_000)

    async def serve() -> None:
        task = asyncio.create_task(log.run())
        for k in range(5):                      # 5 bursts of 2,500 with flushes between
            _fill(log, 2500, k * 2500)
            await log.flush()
        task.cancel()

    log.flush_s = 0.01
    asyncio.run(serve())
    _fill(log, 7, 12_500)                       # waiting in memory at shutdown
    assert len(log) == 7
    log.close()
    assert len(log.files) >= 3                  # rotated by size
    table = read_log(tmp_path)
    assert table.num_rows == 12_507 == log.written
    arrival = np.sort(table["arrival_s"].to_numpy())
    assert np.array_equal(arrival, 1000.0 + np.arange(12_507))   # none lost, none doubled
    assert table.schema.equals(SCHEMA)
    statuses = table["status"].to_numpy()
    assert (statuses == 502).sum() == sum(1 for i in range(12_507) if i % 13 == 0)
    assert read_log(tmp_path, since_s=1000.0 + 12_000).num_rows == 507


def test_buffer_is_bounded_by_synchronous_writes(tmp_path: Path) -> None:
    log = RequestLog(tmp_path, max_buffer=100)
    _fill(log, 250)
    assert len(log) == 50 and log.written == 200    # two full buffers went to disk
    log.close()
    assert pq.read_table(log.files[0]).num_rows == 250


def test_read_log_errors_and_torn_files(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no readable request log"):
        read_log(tmp_path)
    (tmp_path / "requests-1-0000.parquet").write_bytes(b"PAR1 torn")
    with pytest.raises(FileNotFoundError):
        read_log(tmp_path)


def test_grafana_dashboard_plots_only_exported_metrics() -> None:
    import json
    import re

    from app.observability import METRICS

    dash = json.loads((Path(__file__).parents[2] / "docs" / "grafana-boute.json").read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    used = {re.sub(r"_(total|bucket)$", "", m) for e in exprs
            for m in re.findall(r"ray_(boute_\w+)", e)}
    assert used == set(METRICS)
