import asyncio
import json
import math
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from app.request_log import (
    SCHEMA,
    ReadReport,
    RequestLog,
    RequestLogError,
    read_log,
    read_log_report,
    recover_log,
)

ROOT = Path(__file__).parents[2]
# A writer to kill: runs `ops` ("r<k>": record k rows, printing the count after each record
# returned; "f": await flush) with the background task running, then waits to be killed.
WRITER = r"""
import asyncio, json, os, sys
from app.request_log import RequestLog

async def main(folder, ops, base, kwargs):
    log = RequestLog(folder, **kwargs)
    task = asyncio.create_task(log.run())
    n = 0
    for op in ops.split():
        if op == "f":
            await log.flush()
            continue
        for _ in range(int(op[1:])):
            log.record(base + n, n % 100, n % 7, 0.5, "m", "g", 0.1, 0.2, 200, True,
                       key_id="k1" if n % 2 else None, outcome="shed" if n % 5 == 0 else "ok")
            n += 1
            os.write(1, b"%d\n" % n)
            if n % 8 == 0:
                await asyncio.sleep(0.0005)
    os.write(1, b"done\n")
    await asyncio.sleep(3600)

asyncio.run(main(sys.argv[1], sys.argv[2], float(sys.argv[3]), json.loads(sys.argv[4])))
"""


def _spawn(folder: Path, ops: str, base: float = 1000.0,
           **kwargs: object) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", WRITER, str(folder), ops, str(base),
                             json.dumps(kwargs)], stdout=subprocess.PIPE, cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})


def _kill_at(proc: subprocess.Popen[bytes], count: int | None) -> int:
    """SIGKILL `proc` once it printed `count` (None: "done"); the last count it printed."""
    assert proc.stdout is not None
    last = 0
    for line in proc.stdout:
        if line == b"done\n":
            break
        last = int(line)
        if last == count:
            break
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    for line in proc.stdout.read().split():            # printed before the kill landed
        if line != b"done":
            last = int(line)
    return last


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


def test_read_log_errors_and_torn_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                        ) -> None:
    with pytest.raises(FileNotFoundError, match="no readable request log"):
        read_log(tmp_path)
    (tmp_path / "requests-1-0000.parquet").write_bytes(b"PAR1 torn")
    with pytest.raises(FileNotFoundError):
        read_log(tmp_path)
    assert (tmp_path / "quarantine" / "requests-1-0000.parquet").exists()   # never skipped
    assert "1 file(s) in quarantine/ (requests-1-0000.parquet" in capsys.readouterr().err
    with pytest.raises(RequestLogError, match=r"flush_s=0 must be > 0"):
        RequestLog(tmp_path, flush_s=0)
    log = RequestLog(tmp_path)
    with pytest.raises(RequestLogError, match=r"outcome='late' must be one of \['abandoned'"):
        log.record(1.0, 1, 1, 0.5, "m", "g", 0.1, 0.2, 200, False, outcome="late")
    log.close()
    with pytest.raises(RequestLogError, match="is closed"):
        log.record(1.0, 1, 1, 0.5, "m", "g", 0.1, 0.2, 200, False)


def _arrivals(table: pa.Table, base: float = 1000.0) -> list[int]:
    return sorted(int(a - base) for a in table["arrival_s"].to_pylist())


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_killed_writer_loses_no_record_that_returned(tmp_path: Path, seed: int) -> None:
    count = random.Random(seed).randint(1, 1500)
    proc = _spawn(tmp_path, "r1500", flush_s=0.005, rotate_bytes=3000, max_buffer=64,
                  fsync_s=0.02)
    last = _kill_at(proc, count)
    table, report = read_log_report(tmp_path)
    got = _arrivals(table)
    assert got in (list(range(last)), list(range(last + 1)))   # + the one being recorded
    assert report.recovery.recovered_writers and not report.recovery.live_writers
    assert not list(tmp_path.glob("*.wal")) and not list(tmp_path.glob("*.lock"))
    shed = [i for i, o in zip(table["arrival_s"].to_pylist(), table["outcome"].to_pylist(),
                              strict=True) if o == "shed"]
    assert sorted(int(a - 1000) for a in shed) == [i for i in got if i % 5 == 0]
    assert read_log(tmp_path).num_rows == len(got)              # recovered once, read again


def test_torn_parquet_is_quarantined_and_its_rows_recovered(tmp_path: Path) -> None:
    # file 0 closed with rows 0-49, file 1 open (torn) with 50-69, rows 70-79 only in the WAL;
    # the WAL still holds 0-79 (its first segment is not retired before file 1 closes)
    proc = _spawn(tmp_path, "r50 f r20 f r10", flush_s=3600, rotate_bytes=1)
    assert _kill_at(proc, None) == 80
    assert len(list(tmp_path.glob("requests-*.wal"))) == 2
    report = recover_log(tmp_path)
    assert [p.name for p in report.quarantined] == [
        f"requests-{report.recovered_writers[0]}-0001.parquet"]
    assert report.recovered_rows == 30 and report.dropped_lines == 0
    table = read_log(tmp_path)
    assert _arrivals(table) == list(range(80))                  # none lost, none doubled
    assert table.schema.equals(SCHEMA)
    assert table["key_id"].null_count == 40
    assert recover_log(tmp_path) == type(report)()              # nothing left to do


def test_live_writers_are_read_and_left_alone(tmp_path: Path) -> None:
    dead = _spawn(tmp_path, "r30 f r5", base=5000.0, flush_s=3600)
    assert _kill_at(dead, None) == 35

    async def serve() -> None:
        live = RequestLog(tmp_path, fsync_s=None)
        assert live.recovery.recovered_rows == 35 and len(live.recovery.quarantined) == 1
        _fill(live, 10)
        table, report = read_log_report(tmp_path)
        assert report.live_rows == 10 and report.recovery.live_writers == (live.writer_id,)
        assert _arrivals(table).count(0) == 1 and table.num_rows == 45
        await live.flush()                                      # open Parquet file: torn
        other = RequestLog(tmp_path)                            # a second replica starts
        assert other.recovery.live_writers == (live.writer_id,)
        assert not other.recovery.quarantined
        _fill(other, 5, 100)
        table, report = read_log_report(tmp_path)
        assert table.num_rows == 50 and report.live_rows == 15 and not report.unreadable
        assert len(list(tmp_path.glob(f"requests-{live.writer_id}-*.wal"))) == 1
        live.close()
        other.close()

    asyncio.run(serve())
    assert read_log(tmp_path).num_rows == 50
    assert not list(tmp_path.glob("*.wal")) and not list(tmp_path.glob("*.lock"))


def test_a_torn_last_wal_line_is_dropped_and_counted(tmp_path: Path) -> None:
    log = RequestLog(tmp_path, fsync_s=None)
    _fill(log, 5)
    numpy_row: list[object] = [np.float64(1005.0), np.int64(3), np.int32(4), np.float32(0.5),
                               "m", "g", 0.1, 0.2, np.int16(200), np.bool_(True)]
    log.record(*numpy_row)  # type: ignore[arg-type]               # numpy: converted
    os.write(log._wal_fd, b'[6,"late",1,1,0.5,"m","g",0.1,0.2,200,true,null,"ok"]\n')
    os.write(log._wal_fd, b'[7,1007.0,12,')                    # killed mid-write
    os.close(log._wal_fd)                                       # ... and the process died
    os.close(log._lock_fd)
    report = recover_log(tmp_path)
    assert report.dropped_lines == 2 and report.recovered_rows == 6   # torn + wrong type
    assert _arrivals(read_log(tmp_path)) == list(range(6))


def test_old_schema_files_read_with_null_key_and_outcome_from_status(tmp_path: Path) -> None:
    old = pa.schema(list(SCHEMA)[:10])
    pq.write_table(pa.table({
        "arrival_s": [1.0, 2.0, 3.0], "prompt_tokens": [1, 2, 3], "output_tokens": [1, 2, 3],
        "score": [0.1, 0.2, 0.3], "model": ["m"] * 3, "group": ["g"] * 3,
        "ttft_s": [0.1] * 3, "latency_s": [0.2] * 3, "status": [200, 404, 502],
        "stream": [True] * 3}, schema=old), tmp_path / "requests-5-6-0000.parquet")
    log = RequestLog(tmp_path)
    log.record(4.0, 1, 1, 0.5, "m", "g", 0.1, 0.2, 429, False, key_id="team-a",
               outcome="rate_limited")
    log.record(5.0, 1, 1, 0.5, "m", "g", 0.1, 0.2, 200, False, workload="math")
    log.record(6.0, 1, 1, 0.5, "m", "g", 0.1, 0.2, 200, False, workload="math",
               length_class="short")
    log.close()
    table = read_log(tmp_path)
    assert table.schema.equals(SCHEMA)
    assert table.sort_by("arrival_s")["outcome"].to_pylist() == [
        "ok", "client_error", "engine_error", "rate_limited", "ok", "ok"]
    assert table.sort_by("arrival_s")["key_id"].to_pylist() == [None, None, None, "team-a",
                                                                 None, None]
    # Files (and WAL segments) from before the workload / length_class columns read null.
    assert table.sort_by("arrival_s")["workload"].to_pylist() == [None] * 4 + ["math"] * 2
    assert table.sort_by("arrival_s")["length_class"].to_pylist() == [None] * 5 + ["short"]


def test_grafana_dashboard_plots_only_exported_metrics() -> None:
    import json
    import re

    from app.observability import METRICS

    dash = json.loads((Path(__file__).parents[2] / "docs" / "grafana-boute.json").read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    used = {re.sub(r"_(total|bucket)$", "", m) for e in exprs
            for m in re.findall(r"ray_(boute_\w+)", e)}
    assert used == set(METRICS)


def test_concurrent_readers_recover_two_killed_writers_once(tmp_path: Path) -> None:
    import threading

    procs = [_spawn(tmp_path, "r300 f r40", base=base, flush_s=3600, rotate_bytes=2000)
             for base in (1000.0, 9000.0)]
    assert [_kill_at(p, None) for p in procs] == [340, 340]
    results: list[tuple[pa.Table, ReadReport]] = []
    readers = [threading.Thread(target=lambda: results.append(read_log_report(tmp_path)))
               for _ in range(3)]
    for t in readers:
        t.start()
    for t in readers:
        t.join()
    for table, _ in results:                        # each reader sees every row exactly once
        assert _arrivals(table) == list(range(340)) + list(range(8000, 8340))
    assert sum(len(r.recovery.recovered_writers) for _, r in results) == 2
    assert len(list((tmp_path / "quarantine").iterdir())) == 2
