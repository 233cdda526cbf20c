"""Bounded request log: refusals counted exactly and sampled; retention by age and size."""

import asyncio
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from app.request_log import (
    LogLimits,
    RequestLog,
    RequestLogError,
    apply_retention,
    read_dropped,
    read_log,
    read_log_report,
)

ROOT = Path(__file__).parents[2]
BASE = 1_000_000.0


def _disk_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def _refuse(log: RequestLog, arrival_s: float, status: int = 401, outcome: str = "unauthorized",
            key_id: str | None = None) -> None:
    log.record(arrival_s, 0, 0, math.nan, "", "", math.nan, 0.0004, status, False,
               key_id=key_id, outcome=outcome)


def _serve(log: RequestLog, arrival_s: float) -> None:
    log.record(arrival_s, 100, 20, 0.5, "weak", "g0", 0.05, 0.5, 200, False, key_id="team-a")


def test_a_wrong_key_flood_is_counted_exactly_and_its_bytes_are_bounded(tmp_path: Path) -> None:
    # 100,000 wrong-key 401s at 1,000/s (100 one-second intervals), a valid key's 429 every
    # 50th request, a served request every 100th; 10 rows sampled per (status, outcome, key).
    now = [BASE]
    log = RequestLog(tmp_path, limits=LogLimits(refused_sample=10), clock=lambda: now[0],
                     fsync_s=None)
    peak = 0
    for i in range(100_000):
        now[0] = BASE + i / 1000                 # exact at each interval boundary
        if i % 100 == 0:
            _serve(log, now[0])
        if i % 50 == 0:
            _refuse(log, now[0], 429, "rate_limited", "team-b")
        _refuse(log, now[0])
        if i % 10_000 == 9_999:
            asyncio.run(log.flush())             # 10 flushes: Parquet and WAL coexist
        if i % 1000 == 999:
            peak = max(peak, _disk_bytes(tmp_path))
    log.close()
    # Counted exactly, in memory and on disk.
    assert log.refused[(401, "unauthorized", None)] == 100_000
    assert log.refused[(429, "rate_limited", "team-b")] == 2_000
    table, report = read_log_report(tmp_path)
    assert report.refused_total() == {(401, "unauthorized"): 100_000, (429, "rate_limited"): 2_000}
    assert report.refused.num_rows == 200        # 100 intervals x 2 buckets
    assert set(report.refused["count"].to_pylist()) == {1000, 20}
    assert set(report.refused["sampled"].to_pylist()) == {10}
    # Rows: every served request (the replan job's input), 10 of each bucket per interval.
    outcomes = table["outcome"].to_pylist()
    assert outcomes.count("ok") == 1000
    assert outcomes.count("unauthorized") == 100 * 10
    assert outcomes.count("rate_limited") == 100 * 10
    assert table.num_rows == 3000 == log.written
    # Bytes. WAL: 3,000 rows + 200 count lines, each < 128 B (the longest, a served row:
    # ~75 B of fixed text, seq <= 6 digits, floats <= 18 chars), + a 220-B header: <= 410,000 B.
    # Parquet (2 files, 11 row groups each: 10 flushes + close): <= 256 B of metadata per
    # column chunk (14 + 7 columns), 8 B per value, 8 KiB of footer each:
    # 11 x 21 x 256 + 3,000 x 14 x 8 + 200 x 7 x 8 + 2 x 8,192 = 484,528 B. Peak: both at once.
    bound = 410_000 + 484_528
    assert peak <= bound
    unsampled_wal = 102_000 * 80                 # each refusal a >= 80-B WAL line: 8.2 MB
    assert peak * 9 < unsampled_wal


def test_sampling_off_writes_every_refusal_and_counts_nothing(tmp_path: Path) -> None:
    log = RequestLog(tmp_path, limits=LogLimits(refused_sample=None))
    for i in range(300):
        _refuse(log, BASE + i / 1000)
    log.close()
    table, report = read_log_report(tmp_path)
    assert table.num_rows == 300 and report.refused.num_rows == 0
    assert not list(tmp_path.glob("refused-*"))


def test_count_only_writes_no_refusal_row(tmp_path: Path) -> None:
    now = [BASE]
    log = RequestLog(tmp_path, limits=LogLimits(refused_sample=0, refused_interval_s=10.0),
                     clock=lambda: now[0])
    for i in range(25):
        now[0] = BASE + i                        # 25 s: intervals of 10, 10 and 5
        _refuse(log, now[0], 413, "too_large", "team-a")
    _serve(log, BASE)
    log.close()
    table, report = read_log_report(tmp_path)
    assert table["outcome"].to_pylist() == ["ok"]
    assert report.refused["count"].to_pylist() == [10, 10, 5]
    assert report.refused["interval_start_s"].to_pylist() == [BASE, BASE + 10, BASE + 20]
    assert read_log_report(tmp_path, since_s=BASE + 10)[1].refused_total() == {
        (413, "too_large"): 15}


def test_shed_and_routed_errors_are_never_sampled(tmp_path: Path) -> None:
    log = RequestLog(tmp_path, limits=LogLimits(refused_sample=1))
    for i in range(20):
        log.record(BASE + i, 5, 0, 0.5, "weak", "", math.nan, 0.001, 429, False,
                   outcome="shed")                                # the replan job's demand
        log.record(BASE + i, 5, 0, 0.5, "weak", "g0", math.nan, 0.1, 400, False,
                   outcome="client_error")                        # routed: not a refusal
    log.close()
    assert read_log(tmp_path).num_rows == 40
    assert not log.refused


WRITER = r"""
import os, sys, time
from app.request_log import LogLimits, RequestLog

ticks = iter(range(10**9))
log = RequestLog(sys.argv[1], limits=LogLimits(refused_sample=5),
                 clock=lambda: 1000.0 + (next(ticks) - 1) / 100, fsync_s=None)
for i in range(1049):          # clock: 999.99 at start (retention), then 1000 + i / 100
    log.record(1000.0 + i, 0, 0, 0.0, "", "", 0.0, 0.0, 401, False, outcome="unauthorized")
os.write(1, b"done\n")
time.sleep(3600)
"""


def test_a_killed_writer_keeps_every_closed_interval_count(tmp_path: Path) -> None:
    # 100 refusals per 1-s interval (clock ticks of 10 ms, one per refusal); killed in the 11th
    # interval: the 10 closed intervals' counts (1,000) are in the WAL and recovered; the open
    # one's count (49) is lost, its 5 sampled rows are not (the stated loss bound).
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path)],
                            stdout=subprocess.PIPE, cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.stdout is not None and proc.stdout.readline() == b"done\n"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    table, report = read_log_report(tmp_path)
    assert report.recovery.recovered_counts == 10
    assert report.refused_total() == {(401, "unauthorized"): 1000}
    assert table.num_rows == 11 * 5


def test_retention_by_age_with_an_injected_clock(tmp_path: Path) -> None:
    day = 86_400.0
    log = RequestLog(tmp_path, limits=LogLimits(retain_s=7 * day))
    for i in range(30):
        _serve(log, BASE + i)
    log.close()
    (old,) = log.files
    closed_s = old.stat().st_mtime
    later = RequestLog(tmp_path, limits=LogLimits(retain_s=7 * day),
                       clock=lambda: closed_s + 7 * day - 60)           # 6 days 23:59 old
    assert not later.retention_dropped and old.exists()
    later.close()
    last = RequestLog(tmp_path, limits=LogLimits(retain_s=7 * day),
                      clock=lambda: closed_s + 7 * day + 60)            # 7 days 00:01 old
    assert [(d.name, d.reason, d.rows) for d in last.retention_dropped] == [
        (old.name, "age", 30)]
    _serve(last, BASE + 100)
    last.close()
    table, report = read_log_report(tmp_path)
    assert table.num_rows == 1                                          # the new row only
    assert (report.dropped.files, report.dropped.rows, report.dropped.by_reason) == (
        1, 30, {"age": 1})
    assert json.loads((tmp_path / "retention.json").read_text())["last"][0]["name"] == old.name


def test_retention_by_size_drops_the_oldest_first(tmp_path: Path) -> None:
    files = []
    for k in range(5):                          # 5 closed files, 100 rows each, k days old
        log = RequestLog(tmp_path, limits=LogLimits(max_bytes=None))
        for i in range(100):
            _serve(log, BASE + 100 * k + i)
        log.close()
        files += log.files
    for age_days, p in zip((5, 4, 3, 2, 1), files, strict=True):
        t = time.time() - age_days * 86_400
        os.utime(p, (t, t))
    sizes = [p.stat().st_size for p in files]
    cap = sizes[3] + sizes[4]                   # room for the two newest only
    live = RequestLog(tmp_path, limits=LogLimits(max_bytes=None))
    _serve(live, BASE + 999)
    asyncio.run(live.flush())                   # its file, open: never dropped (R3)
    dropped = apply_retention(tmp_path, retain_s=None, max_bytes=cap, now_s=time.time())
    assert [d.name for d in dropped] == [p.name for p in files[:3]]
    assert {d.reason for d in dropped} == {"size"} and sum(d.rows for d in dropped) == 300
    assert [p.exists() for p in files] == [False, False, False, True, True]
    assert apply_retention(tmp_path, retain_s=None, max_bytes=1, now_s=time.time()) != ()
    assert live._path is not None and live._path.exists()
    live.close()
    assert read_dropped(tmp_path).by_reason == {"size": 5}
    assert read_log(tmp_path).num_rows == 1


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"refused_sample": -1}, r"refused_sample=-1 must be an integer >= 0"),
    ({"refused_interval_s": 0.0}, r"refused_interval_s=0.0 must be a number > 0"),
    ({"retain_s": math.inf}, r"retain_s=inf must be a number > 0 or None"),
    ({"max_bytes": 0}, r"max_bytes=0 must be an integer > 0 or None"),
])
def test_log_limits_name_the_bad_field(kwargs: dict[str, float], match: str) -> None:
    with pytest.raises(RequestLogError, match=match):
        LogLimits(**kwargs)  # type: ignore[arg-type]


def test_the_stack_carries_the_log_limits_to_the_router() -> None:
    from app.main import Stack

    assert Stack().log_limits() == LogLimits()                  # 100 per s, 7 days, 1 GiB
    stack = Stack(log_refused_sample=5, log_retain_s=None, log_max_bytes=1 << 20)
    assert Stack.from_args(stack.to_args()).log_limits() == LogLimits(5, 1.0, None, 1 << 20)
    with pytest.raises(RequestLogError, match=r"max_bytes=0 must be an integer > 0"):
        Stack(log_max_bytes=0)
