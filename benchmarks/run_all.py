"""Run every benchmark, print one table, exit non-zero when any misses its target.

    python benchmarks/run_all.py [--full] [--only a,b] [--skip a,b]
                                 [--target NAME.KEY=VALUE] [--timeout-s 1800]
                                 [--summary benchmarks/data/bench_summary.json]
    make bench                        # = python benchmarks/run_all.py (quick)
    make bench BENCH_ARGS=--full      # the documented settings; refreshes benchmarks/data/

Every script of this folder is listed in `BENCHMARKS` (a test checks it). Each one runs as
its own process, in turn (never two at once: several start a Ray cluster), and exits 1 when
it misses a target of its own (`TARGETS` in the script, `_targets.py`); it writes JSON with a
``targets`` block that this runner reads for the table.

* **quick** (default): shorter settings for the long benchmarks (fewer seeds, presets,
  records, shorter load phases; the same targets), results under build/bench/; 18 minutes
  on the shared 2-core development machine without cpu_e2e (about 5 more) and gpu_check
  (skipped where there is no NVIDIA GPU).
* **full** (``--full``): each script's documented settings; results go to the committed files
  under benchmarks/data/ that the README cites (about 1.5 hours; review ``git diff`` after).

``--target NAME.KEY=VALUE`` passes ``--target KEY=VALUE`` to benchmark NAME for this run, e.g.
``--only calibration --target calibration.tput_median=0.001`` shows a missed target and the
runner's exit code 1. The summary (one row per benchmark: command, key figure, target,
pass/fail, seconds, load average) goes to ``--summary``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _targets import fmt_value

REPO = Path(__file__).resolve().parents[1]
DATA = Path("benchmarks") / "data"
QUICK_OUT = Path("build") / "bench"


@dataclass(frozen=True)
class Bench:
    """One benchmark script and how to run it in each mode.

    Attributes:
        name: The name used by ``--only``, ``--skip`` and ``--target``.
        script: Path of the script, relative to the repository root.
        full: Arguments of a full run (the documented settings).
        quick: Arguments of a quick run.
        full_json: Where a full run writes its JSON (committed; relative to the repo root);
            "" when the script chooses (then the table shows its exit code only).
        json_flag: The script's option naming its JSON output; "" when the quick arguments
            name its output folder themselves (then the JSON is ``quick_json``).
        quick_json: The JSON of a quick run when ``json_flag`` is "".
        gpu: Needs an NVIDIA GPU: skipped (and not failed) where ``nvidia-smi`` is missing.

    """

    name: str
    script: str
    full: tuple[str, ...] = ()
    quick: tuple[str, ...] = ()
    full_json: str = ""
    json_flag: str = "--json"
    quick_json: str = ""
    gpu: bool = False

    def json_path(self, full: bool) -> Path | None:
        """Where this run's JSON goes (None: where the script chooses)."""
        if full:
            return Path(self.full_json) if self.full_json else None
        return Path(self.quick_json) if self.quick_json else QUICK_OUT / f"{self.name}.json"

    def argv(self, full: bool, targets: Sequence[str] = ()) -> list[str]:
        """The command line (interpreter first) of a full or quick run."""
        args = list(self.full if full else self.quick)
        path = self.json_path(full)
        if self.json_flag and path is not None:
            args += [self.json_flag, str(path)]
        for t in targets:
            args += ["--target", t]
        return [sys.executable, self.script, *args]


_Q = str(QUICK_OUT)
BENCHMARKS: tuple[Bench, ...] = (
    Bench("calibration", "benchmarks/calibration.py", full_json=f"{DATA}/calibration.json"),
    Bench("simulator", "benchmarks/simulator.py", quick=("--repeat", "3"),
          full_json=f"{DATA}/simulator.json"),
    Bench("fidelity", "benchmarks/fidelity.py", full=("--plot", "build/fidelity.png"),
          quick=("--seeds", "1", "--plot", f"{_Q}/fidelity.png"),
          full_json=f"{DATA}/fidelity.json"),
    Bench("heldout_public", "benchmarks/heldout_public.py", full=("--full",),
          quick=("--seeds", "2"), full_json=f"{DATA}/heldout_public.json"),
    Bench("cpu_loop", "benchmarks/cpu_loop.py", full_json=f"{DATA}/cpu_loop.json"),
    Bench("calibrate", "benchmarks/calibrate.py", quick=("--requests", "200", "--bootstrap", "2"),
          full_json=f"{DATA}/calibrate.json"),
    Bench("request_log", "benchmarks/request_log.py", quick=("--records", "50000", "--kills", "5"),
          full_json=f"{DATA}/request_log.json"),
    Bench("log_flood", "benchmarks/log_flood.py", quick=("--seconds", "20"),
          full_json=f"{DATA}/log_flood.json"),
    Bench("perfdb", "benchmarks/perfdb.py",
          full=("--repeat", "2", "--scaling-json", f"{DATA}/perfdb_scaling.json"),
          quick=("--no-ray",), full_json=f"{DATA}/perfdb_bench.json"),
    Bench("exact_scaling", "benchmarks/exact_scaling.py", full=("--no-copy",),
          quick=("--sweeps", "types,models", "--limit-s", "30", "--no-copy"),
          full_json=f"{DATA}/exact_scaling.json"),
    Bench("reference_fronts", "benchmarks/reference_fronts.py",
          full=("--out", f"{DATA}/reference_fronts"),
          # One MOBO run past its 256-point Sobol start (64 plans would be Sobol points only).
          quick=("--presets", "scale-8types-256", "--exact-limit-s", "10", "--seeds", "0",
                 "--evals", "320", "--random-evals", "0", "--out", f"{_Q}/reference_fronts"),
          full_json=f"{DATA}/reference_fronts/summary.json"),
    Bench("search", "benchmarks/search.py", full=("--tune",),
          quick=("--presets", "paper-gsm8k,scale-8types-256", "--seeds", "2", "--evals", "64",
                 "--exact-limit-s", "10"),
          full_json=f"{DATA}/search_bench.json"),
    Bench("certify", "benchmarks/certify.py", json_flag="--out",
          quick=("--presets", "ladder-gsm8k", "--deadline-s", "10"),
          full_json=f"{DATA}/certify.json"),
    Bench("plan_wall", "benchmarks/plan_wall.py", json_flag="--out",
          full=("--several-cpu-s", "45"),
          quick=("--presets", "paper-gsm8k,ladder-gsm8k", "--several-cpu-s", "10"),
          full_json=f"{DATA}/plan_wall.json"),
    Bench("router", "benchmarks/router.py",
          quick=("--decisions", "5000", "--requests", "200", "--seconds", "5",
                 "--router-replicas", "1,2"),
          full_json=f"{DATA}/router/measured-2core.json"),
    Bench("chaos", "benchmarks/chaos.py", quick=("--quick",),
          full_json=f"{DATA}/chaos/chaos.json"),
    Bench("chaos_overload", "benchmarks/chaos.py",
          full=("--overload",),
          quick=("--overload", "--overload-s", "30", "--plot", f"{_Q}/overload.png"),
          full_json=f"{DATA}/chaos/overload.json"),
    Bench("slow_clients", "benchmarks/slow_clients.py",
          quick=("--slow-headers", "6", "--idle", "2", "--slow-bodies", "2", "--large-bodies",
                 "2", "--leavers", "2", "--no-copy"),
          full_json=f"{DATA}/slow_clients.json"),
    Bench("poisoning", "benchmarks/poisoning.py", full=("--no-copy",), quick=("--no-copy",),
          full_json=f"{DATA}/poisoning.json"),
    Bench("replan", "benchmarks/replan.py", quick=("--plot", f"{_Q}/dashboard.png"),
          full_json=f"{DATA}/replan/measured-2core.json"),
    Bench("drift", "benchmarks/drift.py", full=("--no-copy",), quick=("--quick", "--no-copy"),
          full_json=f"{DATA}/drift.json"),
    Bench("ladder", "benchmarks/ladder.py", full=("--no-copy",), quick=("--no-copy",),
          full_json=f"{DATA}/ladder.json"),
    Bench("length_classes", "benchmarks/length_classes.py", full=("--no-copy",),
          quick=("--no-copy", "--cases", "single-70b-gsm8k"),
          full_json=f"{DATA}/length_classes.json"),
    Bench("prefix_cache", "benchmarks/prefix_cache.py", full=("--no-copy",),
          quick=("--no-copy", "--num-rates", "10", "--seeds", "1"),
          full_json=f"{DATA}/prefix_cache.json"),
    Bench("ttft_targets", "benchmarks/ttft_targets.py", full=("--no-copy",),
          quick=("--no-copy", "--seeds", "1"), full_json=f"{DATA}/ttft_targets.json"),
    Bench("pd_disagg", "benchmarks/pd_disagg.py", full=("--no-copy",),
          quick=("--no-copy", "--pools", "paper", "--check-requests", "1000"),
          full_json=f"{DATA}/pd_disagg.json"),
    Bench("real_traffic", "benchmarks/real_traffic.py", full=("--no-copy",),
          quick=("--no-copy", "--cases", "azure-conv"),
          full_json=f"{DATA}/real_traffic.json"),
    Bench("schedule", "benchmarks/schedule.py", full=("--no-copy",),
          quick=("--no-copy", "--sim-scale", "0.25"), full_json=f"{DATA}/schedule.json"),
    Bench("schedule_live", "benchmarks/schedule_live.py", full=("--no-copy",),
          quick=("--no-copy", "--day-s", "300"), full_json=f"{DATA}/schedule_live.json"),
    Bench("cpu_e2e", "benchmarks/cpu_e2e.py", quick=("--duration-s", "60"),
          full_json=f"{DATA}/cpu_e2e.json"),
    Bench("prefix_affinity", "benchmarks/prefix_affinity.py", full=("--no-copy",),
          quick=("--no-copy", "--duration-s", "60"),
          full_json=f"{DATA}/prefix_affinity.json"),
    # `make gpu-check`; a full run writes benchmarks/data/gpu-check/<device>/.
    Bench("gpu_check", "benchmarks/gpu_check.py",
          quick=("--quick", "--requests", "64", "--out", f"{_Q}/gpu_check"), json_flag="",
          quick_json=f"{_Q}/gpu_check/summary.json", gpu=True),
)


@dataclass
class Result:
    """One benchmark's outcome, a row of the table and of the summary JSON."""

    name: str
    command: str
    returncode: int
    seconds: float
    load_1m: tuple[float, float]
    figure: str = "-"
    target: str = "-"
    missed: list[str] = field(default_factory=list)
    skipped: bool = False

    @property
    def ok(self) -> bool:
        """Passed: exit code 0 (the script checks its own targets)."""
        return self.returncode == 0


def summarize_json(path: Path) -> tuple[str, str, list[str]]:
    """(key figure, target, missed checks) from a benchmark's JSON.

    The key figure is the first row of its ``targets`` block; a script without the block
    (``failed``: a list of missed checks) is summarized by that list.
    """
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return "no JSON written", "-", []
    rows = data.get("targets")
    if isinstance(rows, list) and rows:
        missed = [r["key"] for r in rows if not r["ok"]]
        numeric = [r for r in rows if r["op"] != "is"]
        if numeric:
            r = numeric[0]
            unit = f" {r['unit']}" if r["unit"] and r["unit"] != "x" else ""
            figure = f"{r['key']} {fmt_value(r['measured'])}{unit}"
            target = f"{r['op']} {fmt_value(r['target'])}{unit}"
            if len(rows) > 1:
                target += f" (+{len(rows) - 1} more)"
        else:
            figure = f"{sum(r['ok'] for r in rows)}/{len(rows)} checks passed"
            target = "all checks"
        return figure, target, missed
    failed = data.get("failed")
    if isinstance(failed, list):
        return f"{len(failed)} checks missed", "see the script's docstring", [str(f)
                                                                              for f in failed]
    return "-", "-", []


def run_one(bench: Bench, full: bool, targets: Sequence[str], timeout_s: float,
            cwd: Path = REPO) -> Result:
    """Run one benchmark to completion (or its timeout) and read its JSON."""
    argv = bench.argv(full, targets)
    command = "python " + " ".join(argv[1:])
    load0 = os.getloadavg()[0]
    if bench.gpu and shutil.which("nvidia-smi") is None:
        print(f"\n=== {bench.name}: skipped (no NVIDIA GPU here)", flush=True)
        return Result(bench.name, command, 0, 0.0, (load0, load0), "no NVIDIA GPU here", "-",
                      skipped=True)
    rel = bench.json_path(full)
    path = None if rel is None else cwd / rel
    if path is not None:
        path.unlink(missing_ok=True)    # a stale file must not pass for this run's result
    print(f"\n=== {bench.name}: {command}", flush=True)
    t0 = time.perf_counter()
    try:
        rc = subprocess.run(argv, cwd=cwd, timeout=timeout_s, check=False).returncode
    except subprocess.TimeoutExpired:
        print(f"=== {bench.name}: killed after {timeout_s:g} s", flush=True)
        rc = 124
    seconds = time.perf_counter() - t0
    figure, target, missed = ("-", "-", []) if path is None else summarize_json(path)
    return Result(bench.name, command, rc, seconds, (load0, os.getloadavg()[0]), figure,
                  target, missed)


def print_table(results: Sequence[Result]) -> None:
    """The summary table on stdout."""
    head = (f"{'benchmark':<17}{'result':<7}{'seconds':>8}{'load':>10}  {'key figure':<40}"
            f"{'target':<26}command")
    print("\n" + head)
    print("-" * (len(head) + 30))
    for r in results:
        status = ("SKIP" if r.skipped else "PASS" if r.ok
                  else "TIMEOUT" if r.returncode == 124 else "FAIL")
        load = "{:.1f}-{:.1f}".format(*r.load_1m)
        print(f"{r.name:<17}{status:<7}{r.seconds:>8.0f}{load:>10}  {r.figure[:39]:<40}"
              f"{r.target[:25]:<26}{r.command}")
        if r.missed:
            print(f"{'':<17}missed: {'; '.join(r.missed)}")
    failed = [r.name for r in results if not r.ok]
    skipped = sum(r.skipped for r in results)
    print(f"\n{len(results) - len(failed) - skipped} of {len(results) - skipped} passed"
          + (f" ({skipped} skipped)" if skipped else "") + "; "
          f"{sum(r.seconds for r in results) / 60:.1f} min"
          + (f"; FAILED: {', '.join(failed)}" if failed else ""))


def run_all(benches: Sequence[Bench], *, full: bool, targets: Sequence[str] = (),
            timeout_s: float = 1800.0, summary: Path | None = None,
            cwd: Path = REPO) -> int:
    """Run ``benches`` in turn, print the table, write the summary; 1 when any failed.

    Args:
        benches: The benchmarks to run.
        full: Full (documented settings, committed JSON) or quick.
        targets: ``NAME.KEY=VALUE`` overrides; each goes to benchmark NAME.
        timeout_s: Wall-clock limit of one benchmark (a timeout counts as a failure).
        summary: Where to write the summary JSON (None: nowhere).
        cwd: The repository root the scripts run in.

    Returns:
        0 when every benchmark exited 0, else 1.

    Raises:
        SystemExit: (code 2) for an override naming no benchmark of ``benches``.

    """
    names = {b.name for b in benches}
    per: dict[str, list[str]] = {}
    for t in targets:
        name, dot, rest = t.partition(".")
        if not dot or name not in names or "=" not in rest:
            raise SystemExit(f"--target {t!r}: use NAME.KEY=VALUE with NAME one of "
                             f"{', '.join(sorted(names))}")
        per.setdefault(name, []).append(rest)
    start = time.time()
    results = [run_one(b, full, per.get(b.name, []), timeout_s, cwd) for b in benches]
    print_table(results)
    if summary is not None:
        payload = {
            "mode": "full" if full else "quick",
            "command": "python benchmarks/run_all.py " + " ".join(sys.argv[1:]),
            "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(start)),
            "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
            "total_s": sum(r.seconds for r in results),
            "passed": all(r.ok for r in results),
            "benchmarks": [{"name": r.name, "command": r.command, "ok": r.ok,
                            "returncode": r.returncode, "skipped": r.skipped,
                            "seconds": r.seconds,
                            "load_1m": list(r.load_1m), "key_figure": r.figure,
                            "target": r.target, "missed": r.missed} for r in results]}
        path = summary if summary.is_absolute() else cwd / summary
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(payload, indent=1) + "\n")
        print(f"wrote {summary}")
    return 0 if all(r.ok for r in results) else 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true",
                        help="documented settings; write the committed JSON under "
                             "benchmarks/data/")
    parser.add_argument("--only", default="", help="comma-separated benchmark names")
    parser.add_argument("--skip", default="", help="comma-separated benchmark names")
    parser.add_argument("--target", action="append", default=[], metavar="NAME.KEY=VALUE",
                        help="override one benchmark's target for this run")
    parser.add_argument("--timeout-s", type=float, default=1800.0,
                        help="wall-clock limit of one benchmark")
    parser.add_argument("--summary", default=f"{DATA}/bench_summary.json")
    args = parser.parse_args(argv)
    names = [b.name for b in BENCHMARKS]
    only = [n for n in args.only.split(",") if n]
    skip = [n for n in args.skip.split(",") if n]
    unknown = sorted(set(only + skip) - set(names))
    if unknown:
        parser.error(f"unknown benchmark(s) {unknown}; names: {', '.join(names)}")
    benches = [b for b in BENCHMARKS if (not only or b.name in only) and b.name not in skip]
    return run_all(benches, full=args.full, targets=args.target, timeout_s=args.timeout_s,
                   summary=Path(args.summary))


if __name__ == "__main__":
    sys.exit(main())
