"""Request log under a wrong-key flood: bytes written with and without refusal sampling.

    python benchmarks/log_flood.py [--seconds 60] [--rate 1500] [--served-rate 20]
                                   [--sample 100] [--json benchmarks/data/log_flood.json]
                                   [--target KEY=VALUE]

Drives ``seconds`` x ``rate`` wrong-key requests (401, outcome ``unauthorized``, no key id:
the rows `app.dispatch.Dispatcher.refuse` records through `app.observability.Observer`) and
``served-rate`` served requests per second through the real writer (`app.request_log.
RequestLog`: WAL, Parquet flushed every simulated second, no Serve), on a simulated clock
(arrival i at ``i / rate`` s; the writer's clock injected), twice: sampling on (the default
`LogLimits`: the first ``sample`` refusals per (status, outcome, key id) per second written as
rows, the rest counted) and off (every refusal a row, as before). Reported per run: the
largest bytes on disk during the flood (WAL + Parquet, sampled each simulated second), the
bytes left after `close` (Parquet only), rows, the refusals counted (`read_log_report`'s
``refused``), wall time.

Targets (`TARGETS`): sampled peak bytes at most the hand bound below; sampled / unsampled
peak at most 10%; counted refusals exactly ``seconds x rate``; every served request read back.
Hand bound of the sampled peak: WAL lines = seconds x (sample + 1 count line + served-rate),
each < 128 B (~75 B of fixed text, seq <= 7 digits, floats <= 18 chars), plus one 220-B header;
Parquet: <= 8 B per value (14 columns per row, 7 per count), 256 B of metadata per column
chunk (one row group per simulated second per file), 8 KiB of footer per file (2 files).
"""

import argparse
import asyncio
import json
import math
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from app.request_log import LogLimits, RequestLog, read_log_report

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _targets import Target, add_target_argument, check, passed, print_checks, resolve

TARGETS = {
    "peak_bytes_sampled": Target("<=", math.nan, "B", "bytes on disk at the flood's peak, "
                                 "sampling on (bound: the docstring's hand formula)"),
    "peak_ratio": Target("<=", 0.10, "", "sampled / unsampled peak bytes"),
}
BASE_S = 1_800_000_000.0


def hand_bound(seconds: int, sample: int, served_rate: int) -> int:
    """The docstring's bound on the sampled run's bytes on disk (WAL + Parquet), in bytes."""
    rows, counts = seconds * (sample + served_rate), seconds
    wal = (rows + counts) * 128 + 220
    parquet = rows * 14 * 8 + counts * 7 * 8 + (seconds + 1) * (14 + 7) * 256 + 2 * 8192
    return wal + parquet


def flood(folder: Path, seconds: int, rate: int, served_rate: int,
          limits: LogLimits) -> dict[str, Any]:
    """One run (see the module docstring); its figures."""
    shutil.rmtree(folder, ignore_errors=True)
    now = [BASE_S]
    log = RequestLog(folder, limits=limits, clock=lambda: now[0], fsync_s=None,
                     rotate_s=3600.0)
    every = rate // served_rate if served_rate else 0
    peak = 0
    t0 = time.perf_counter()
    for i in range(seconds * rate):
        now[0] = BASE_S + i / rate
        if every and i % every == 0:        # a served request (what the replan job reads)
            log.record(now[0], 120, 200, 0.4, "llama-3.1-8b", "g0", 0.05, 1.5, 200, False,
                       key_id="team-a")
        log.record(now[0], 0, 0, math.nan, "", "", math.nan, 0.0003, 401, False,
                   outcome="unauthorized")
        if (i + 1) % rate == 0:             # each simulated second: the background flush
            asyncio.run(log.flush())
            peak = max(peak, _disk_bytes(folder))
    log.close()
    wall = time.perf_counter() - t0
    table, report = read_log_report(folder)
    outcomes = table["outcome"].to_pylist()
    return {"peak_bytes": peak, "bytes_after_close": _disk_bytes(folder),
            "rows": table.num_rows, "served_rows": outcomes.count("ok"),
            "refused_rows": outcomes.count("unauthorized"),
            "refused_counted": report.refused_total().get((401, "unauthorized"), 0),
            "count_rows": report.refused.num_rows, "wall_s": round(wall, 2),
            "us_per_record": round(wall / (seconds * (rate + served_rate)) * 1e6, 2)}


def _disk_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=int, default=60)
    ap.add_argument("--rate", type=int, default=1500, help="wrong-key requests per second")
    ap.add_argument("--served-rate", type=int, default=20, help="served requests per second")
    ap.add_argument("--sample", type=int, default=LogLimits.refused_sample)
    ap.add_argument("--json", default="benchmarks/data/log_flood.json")
    add_target_argument(ap, TARGETS)
    args = ap.parse_args()
    bound = hand_bound(args.seconds, args.sample, args.served_rate)
    targets = resolve({**TARGETS, "peak_bytes_sampled": Target(
        "<=", float(bound), "B", TARGETS["peak_bytes_sampled"].what)}, args.target)
    root = Path("build/log-flood-bench")
    runs = {name: flood(root / name, args.seconds, args.rate, args.served_rate,
                        LogLimits(refused_sample=sample))
            for name, sample in (("sampled", args.sample), ("unsampled", None))}
    sent = args.seconds * args.rate
    served = args.seconds * args.served_rate
    print(f"{args.seconds} s of {args.rate:,d} wrong-key req/s ({sent:,d} refusals) + "
          f"{args.served_rate} served req/s ({served:,d}) through RequestLog")
    print(f"{'':24s} {'sampled':>12s} {'unsampled':>12s}")
    for key in ("peak_bytes", "bytes_after_close", "rows", "served_rows", "refused_rows",
                "refused_counted", "count_rows", "wall_s", "us_per_record"):
        a, b = runs["sampled"][key], runs["unsampled"][key]
        print(f"{key:24s} {a:>12,} {b:>12,}" if isinstance(a, int) else
              f"{key:24s} {a:>12} {b:>12}")
    print(f"hand bound of the sampled peak: {bound:,d} B")
    s, u = runs["sampled"], runs["unsampled"]
    rows = check(targets, {"peak_bytes_sampled": s["peak_bytes"],
                           "peak_ratio": s["peak_bytes"] / u["peak_bytes"]},
                 {"refusals counted exactly (sampled run)": s["refused_counted"] == sent,
                  "every refusal a row (unsampled run)": u["refused_rows"] == sent,
                  "every served request read back (both)": s["served_rows"] == served
                  == u["served_rows"],
                  "sampled rows = seconds x sample": s["refused_rows"] == args.seconds
                  * min(args.sample, args.rate)})
    print_checks(rows)
    out = {"settings": vars(args) | {"target": args.target}, "hand_bound_bytes": bound,
           "runs": runs, "targets": rows}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    return 0 if passed(rows) else 1


if __name__ == "__main__":
    sys.exit(main())
