"""Request-log writer throughput and memory.

    python benchmarks/request_log.py [--records 200000] [--json build/request_log_bench.json]

Records are appended on an asyncio loop, as the router does, with the background flush task
running (1 s period) and a 64,000-row buffer bound; reports records/s sustained (append + write
to Parquet, until `close` returns), the largest number of rows ever waiting in memory, and the
Python heap peak (tracemalloc). Target: >= 2,000 records/s with bounded memory.
"""

import argparse
import asyncio
import json
import math
import shutil
import sys
import time
import tracemalloc
from pathlib import Path

from app.request_log import RequestLog, read_log

TARGET_RPS = 2000.0


async def drive(log: RequestLog, n: int, batch: int) -> int:
    task = asyncio.create_task(log.run())
    peak = 0
    for start in range(0, n, batch):
        for _ in range(start, min(n, start + batch)):
            log.record(time.time(), 120, 200, 0.5, "llama-3.1-8b",
                       "g0-llama-3.1-8b-RTX-4090-tp1pp1", 0.05, 1.5, 200, True)
        peak = max(peak, len(log))
        await asyncio.sleep(0)                  # let the flush task run, as a server would
    task.cancel()
    return peak


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--records", type=int, default=200_000)
    ap.add_argument("--json", default="build/request_log_bench.json")
    args = ap.parse_args()
    folder = Path("build/request-log-bench")
    shutil.rmtree(folder, ignore_errors=True)
    log = RequestLog(folder, flush_s=1.0, max_buffer=64_000, rotate_bytes=8 << 20)
    tracemalloc.start()
    t = time.perf_counter()
    peak_rows = asyncio.run(drive(log, args.records, 500))
    log.close()
    seconds = time.perf_counter() - t
    heap_mib = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    rows = read_log(folder).num_rows
    out = {"records": args.records, "seconds": seconds, "records_per_s": args.records / seconds,
           "peak_rows_in_memory": peak_rows, "heap_peak_mib": heap_mib, "files": len(log.files),
           "rows_read_back": rows}
    print(f"{'records':24s} {args.records:>12,d}")
    print(f"{'records/s (sustained)':24s} {out['records_per_s']:>12,.0f}   target >= 2,000")
    print(f"{'peak rows in memory':24s} {peak_rows:>12,d}   bound 64,000")
    print(f"{'heap peak (MiB)':24s} {heap_mib:>12.1f}")
    print(f"{'files / rows read back':24s} {len(log.files):>5d} / {rows:,d}")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(out, indent=2))
    ok = out["records_per_s"] >= TARGET_RPS and rows == args.records and peak_rows <= 64_000
    return 0 if ok and math.isfinite(seconds) else 1


if __name__ == "__main__":
    sys.exit(main())
