"""Request-log writer: cost per record, throughput, memory, and records lost to a SIGKILL.

    python benchmarks/request_log.py [--records 200000] [--kills 20] [--seed 0]
                                     [--json build/request_log_bench.json]
                                     [--target KEY=VALUE]

Measured (targets in `TARGETS`; exit 1 when one is missed):

1. ``record`` cost: µs per call with the write-ahead log (one JSON line, one `os.write`) and
   without it (``wal=False``: the in-memory buffer only), no flush running.
2. Sustained throughput: records appended on an asyncio loop as the router does, with the
   background task flushing to Parquet every 1 s (and fsync-ing the WAL every 100 ms), until
   `close` returns; the largest number of rows ever waiting in memory and the Python heap peak
   (tracemalloc). Target: >= 2,000 records/s (the slower of WAL / no WAL), every record read
   back, at most 64,000 rows waiting in memory.
3. Kill test: a writer process records rows (Parquet flushed every 5 ms, files rotated every
   3 kB, so closed, open and retired files all occur) and is SIGKILLed after a random number of
   records; after `read_log` recovers the folder, every record whose `record` call returned must
   be there exactly once. Target: 0 lost, 0 doubled.
"""

import argparse
import asyncio
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

from app.request_log import RequestLog, read_log, read_log_report

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _targets import Target, add_target_argument, check, passed, print_checks, resolve

TARGETS = {
    "records_per_s": Target(">=", 2000.0, "1/s", "sustained records/s, slower of WAL / no WAL"),
    "peak_rows_in_memory": Target("<=", 64_000.0, "rows", "most rows waiting in memory"),
    "kill_lost": Target("<=", 0.0, "records", "records lost over the SIGKILLs"),
    "kill_doubled_or_extra": Target("<=", 0.0, "records", "records doubled or invented"),
}
ROOT = Path(__file__).parents[1]
WRITER = r"""
import asyncio, os, sys
from app.request_log import RequestLog

async def main(folder, n):
    log = RequestLog(folder, flush_s=0.005, rotate_bytes=3000, max_buffer=64, fsync_s=0.02)
    task = asyncio.create_task(log.run())
    for i in range(n):
        log.record(1000.0 + i, 120, 200, 0.5, "m", "g", 0.05, 1.5, 200, True)
        os.write(1, b"%d\n" % (i + 1))
        if i % 8 == 0:
            await asyncio.sleep(0.0005)
    await asyncio.sleep(3600)

asyncio.run(main(sys.argv[1], int(sys.argv[2])))
"""


def _row(log: RequestLog) -> None:
    log.record(time.time(), 120, 200, 0.5, "llama-3.1-8b", "g0-llama-3.1-8b-RTX-4090-tp1pp1",
               0.05, 1.5, 200, True, key_id="team-a", outcome="ok")


def record_cost_us(folder: Path, n: int, wal: bool) -> float:
    """Median over 5 runs of µs per `record` call (no flush running)."""
    runs = []
    for k in range(5):
        log = RequestLog(folder / f"cost-{wal}-{k}", max_buffer=n + 1, wal=wal)
        t = time.perf_counter()
        for _ in range(n):
            _row(log)
        runs.append((time.perf_counter() - t) / n * 1e6)
        log.close()
    return sorted(runs)[2]


async def drive(log: RequestLog, n: int, batch: int) -> int:
    task = asyncio.create_task(log.run())
    peak = 0
    for start in range(0, n, batch):
        for _ in range(start, min(n, start + batch)):
            _row(log)
        peak = max(peak, len(log))
        await asyncio.sleep(0)                  # let the flush task run, as a server would
    task.cancel()
    return peak


def sustained(folder: Path, n: int, wal: bool) -> dict[str, float]:
    """Throughput, then heap peak in a second run (tracemalloc would slow the first).

    Tracemalloc slows allocation-heavy code several-fold, so it runs apart from the timing.
    """
    out: dict[str, float] = {}
    for traced in (False, True):
        path = folder / ("traced" if traced else "timed")
        log = RequestLog(path, flush_s=1.0, max_buffer=64_000, rotate_bytes=8 << 20, wal=wal)
        if traced:
            tracemalloc.start()
        t = time.perf_counter()
        peak_rows = asyncio.run(drive(log, n, 500))
        log.close()
        seconds = time.perf_counter() - t
        if traced:
            out["heap_peak_mib"] = tracemalloc.get_traced_memory()[1] / 2**20
            tracemalloc.stop()
        else:
            out.update(records_per_s=n / seconds, seconds=seconds, files=len(log.files),
                       peak_rows_in_memory=peak_rows, rows_read_back=read_log(path).num_rows)
    return out


def kill_once(folder: Path, n: int, at: int) -> dict[str, int]:
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(folder), str(n)],
                            stdout=subprocess.PIPE, cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.stdout is not None
    last = 0
    for line in proc.stdout:
        last = int(line)
        if last == at:
            break
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    last = max([last, *(int(x) for x in proc.stdout.read().split())])
    table, report = read_log_report(folder)
    got = [int(a - 1000) for a in table["arrival_s"].to_pylist()]
    present = set(got)
    return {"returned": last, "rows": len(got), "lost": sum(i not in present for i in range(last)),
            "doubled": len(got) - len(present),
            "extra": len(present - set(range(last + 1))),        # + the one being recorded
            "quarantined": len(report.recovery.quarantined),
            "dropped_lines": report.recovery.dropped_lines}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--records", type=int, default=200_000)
    ap.add_argument("--kills", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default="build/request_log_bench.json")
    add_target_argument(ap, TARGETS)
    args = ap.parse_args()
    targets = resolve(TARGETS, args.target)
    root = Path("build/request-log-bench")
    shutil.rmtree(root, ignore_errors=True)
    cost = {wal: record_cost_us(root, 50_000, wal) for wal in (True, False)}
    runs = {wal: sustained(root / f"sustained-{wal}", args.records, wal) for wal in (True, False)}
    rng = random.Random(args.seed)
    kills = [kill_once(root / f"kill-{k}", 2000, rng.randint(1, 2000))
             for k in range(args.kills)]
    lost = sum(k["lost"] for k in kills)
    bad = sum(k["doubled"] + k["extra"] for k in kills)
    out = {"record_us": {"wal": cost[True], "no_wal": cost[False]},
           "sustained": {"wal": runs[True], "no_wal": runs[False]},
           "kills": kills, "kill_lost": lost, "kill_doubled_or_extra": bad}
    print(f"{'':28s} {'WAL':>12s} {'no WAL':>12s}")
    print(f"{'record() µs/call':28s} {cost[True]:>12.2f} {cost[False]:>12.2f}")
    for key, fmt in (("records_per_s", ",.0f"), ("peak_rows_in_memory", ",d"),
                     ("heap_peak_mib", ".1f"), ("rows_read_back", ",d")):
        print(f"{key:28s} {runs[True][key]:>12{fmt}} {runs[False][key]:>12{fmt}}")
    print(f"kill test: {len(kills)} SIGKILLs at random points, "
          f"{sum(k['returned'] for k in kills):,d} records returned, {lost} lost, "
          f"{bad} doubled or extra (target 0), "
          f"{sum(k['quarantined'] for k in kills)} torn Parquet files quarantined, "
          f"{sum(k['dropped_lines'] for k in kills)} torn WAL lines dropped")
    rows = check(targets, {
        "records_per_s": min(r["records_per_s"] for r in runs.values()),
        "peak_rows_in_memory": max(r["peak_rows_in_memory"] for r in runs.values()),
        "kill_lost": lost, "kill_doubled_or_extra": bad},
        {"every sustained record read back": all(r["rows_read_back"] == args.records
                                                 for r in runs.values())})
    print_checks(rows)
    out["targets"] = rows
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(out, indent=2))
    return 0 if passed(rows) else 1


if __name__ == "__main__":
    sys.exit(main())
