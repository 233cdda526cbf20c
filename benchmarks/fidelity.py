"""Fidelity report: the replica model's predictions against every measurement we have.

Rows (one per measured point), each predicted twice:

* BEFORE calibration: spec-sheet peaks with the default `Efficiency` and the default engine
  overheads (for a CPU, whose "spec sheet" is its measured peaks, the same defaults);
* AFTER calibration: efficiencies fitted (`fit_efficiency`) on the hardware profile of that
  device type (benchmarks/data/hardware/*), and for engine profiles the
  engine overheads and front-end latency fitted (`fit_engine_overhead`) on that device's
  calibration runs (``role: calibration``), never on the judged points.

Sources: (A) benchmarks/data/reference/vllm_runs.csv (calibration.md section 3 there: public
vLLM runs; H100 rows are calibrated with the committed H100 kernel measurements, A100 rows
have no hardware profile and stay as before); (B) every committed engine profile
(benchmarks/data/engine-profiles/*.jsonl) that is not a calibration run. Only committed data
is read, so the report is the same on every checkout; ``--include-build`` adds what
`boute profile hardware` / `boute profile engine` left under build/calibration/ and
build/engine-profiles/ (committed profiles win for a GPU type that has both).

    python benchmarks/fidelity.py [--seeds 4] [--json F.json] [--plot F.png]
                                  [--include-build] [--target KEY=VALUE]

Targets (`TARGETS`, after calibration): engine profiles' median |relative error| <= 15% on
TPOT and on throughput (held-out points), and the public runs' median throughput error <= 20%.
Prints the table and the median / worst |relative error| of TPOT, TTFT and throughput before
and after calibration; writes JSON and a predicted-vs-measured plot; exits 1 when a target is
missed.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _targets import Target, add_target_argument, check, passed, print_checks, resolve
from calibration import ROWS, predict, ttft_medians

from profiling import (
    HardwareProfile,
    device_gpu_type,
    fit_efficiency,
    load_catalog,
    load_hardware_profile,
)
from profiling.measure import (
    EngineProfile,
    calibrate_replicas,
    compare_points,
    error_summary,
    load_engine_profile,
)

DATA = Path(__file__).resolve().parent / "data"
HW_DIRS = [DATA / "hardware"]
ENGINE_DIRS = [DATA / "engine-profiles"]
BUILD_HW_DIRS = [Path("build/calibration")]
BUILD_ENGINE_DIRS = [Path("build/engine-profiles")]
KEYS = ("tpot_ms", "ttft_ms", "throughput_tok_s")
# vllm_runs.csv (calibration.md s3b): median TTFT (ms) of the rows that report one.
TTFT_MS = ttft_medians()
TARGETS = {
    "engine_tpot_median": Target("<=", 0.15, "", "engine profiles after calibration, TPOT "
                                 "median |rel err|"),
    "engine_tput_median": Target("<=", 0.15, "", "engine profiles after calibration, "
                                 "throughput median |rel err|"),
    "public_tput_median": Target("<=", 0.20, "", "public vLLM runs after calibration, "
                                 "throughput median |rel err|"),
}


def hardware_profiles(dirs: list[Path] = HW_DIRS) -> dict[str, HardwareProfile]:
    """Every hardware profile under ``dirs`` by GPU type (the first directory listed wins)."""
    out: dict[str, HardwareProfile] = {}
    for root in dirs:
        for meta in sorted(root.glob("*/meta.json")):
            prof = load_hardware_profile(meta.parent)
            if prof.meta.get("status") == "complete":
                out.setdefault(prof.gpu_type, prof)
    return out


def _row(source: str, point: str, role: str, meas: dict[str, float], before: dict[str, float],
         after: dict[str, float]) -> dict[str, Any]:
    row: dict[str, Any] = {"source": source, "point": point, "role": role}
    for key in KEYS:
        m = meas.get(key)
        if m is None:
            continue
        row[f"{key}_measured"] = m
        row[f"{key}_before"] = before[key]
        row[f"{key}_after"] = after[key]
        row[f"{key}_rel_err_before"] = before[key] / m - 1
        row[f"{key}_rel_err_after"] = after[key] / m - 1
    return row


def calibration_md_rows(hw: dict[str, HardwareProfile], seeds: int) -> list[dict[str, Any]]:
    """Section A: the measured vLLM rows of vllm_runs.csv (calibration.md s3)."""
    catalog = load_catalog()
    rows = []
    for r in ROWS:
        prof = hw.get(r.gpu)
        eff = fit_efficiency(prof, catalog.gpu(r.gpu)) if prof is not None else None
        b_tput, b_tpot, b_ttft = predict(r, seeds)
        a_tput, a_tpot, a_ttft = predict(r, seeds, eff) if eff else (b_tput, b_tpot, b_ttft)
        inconsistent = r.inconsistency()
        meas = {"throughput_tok_s": r.tput_tok_s}
        if not inconsistent:        # latencies that contradict the throughput are not scored
            meas["tpot_ms"] = r.tpot_ms
        if r.name in TTFT_MS:
            meas["ttft_ms"] = TTFT_MS[r.name]
        note = f"after = {prof.path.name}" if prof else "no hardware profile"
        rows.append(_row("calibration.md s3", r.name,
                         note + ("; TPOT not scored (Little's law)" if inconsistent else ""),
                         meas,
                         {"tpot_ms": b_tpot, "ttft_ms": b_ttft, "throughput_tok_s": b_tput},
                         {"tpot_ms": a_tpot, "ttft_ms": a_ttft, "throughput_tok_s": a_tput}))
    return rows


def engine_profile_rows(hw: dict[str, HardwareProfile], dirs: list[Path] = ENGINE_DIRS
                        ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Section B: every non-calibration engine profile; also what was fitted on what."""
    catalog = load_catalog()
    profiles: list[EngineProfile] = []
    for root in dirs:
        profiles += [load_engine_profile(p) for p in sorted(root.glob("*.jsonl"))]
    rows, fits = [], []
    for prof in profiles:
        if prof.meta.get("role") == "calibration" or not prof.points:
            continue
        gpu_type = str(prof.meta.get("gpu_type"))
        hardware = hw.get(gpu_type)
        if gpu_type in catalog.gpus:
            gpu = catalog.gpu(gpu_type)
        elif hardware is not None:
            gpu = device_gpu_type(hardware)
        else:
            print(f"skip {prof.path}: no catalog entry or hardware profile for {gpu_type!r}",
                  file=sys.stderr)
            continue
        calib = [c for c in profiles if c.meta.get("role") == "calibration"
                 and c.meta.get("gpu_type") == gpu_type and c.meta["arch"] == prof.meta["arch"]]
        reps = calibrate_replicas(prof, gpu, hardware, calib)
        fits.append({"profile": str(prof.path), **reps.fitted_on})
        before = compare_points(reps.before, prof.points, source=prof.path.name)
        after = compare_points(reps.after, prof.points, source=prof.path.name)
        for b, a in zip(before, after, strict=True):
            meas = {k: b[f"{k}_measured"] for k in KEYS}
            rows.append(_row(prof.path.name, b["point"], "held-out", meas,
                             {k: b[f"{k}_predicted"] for k in KEYS},
                             {k: a[f"{k}_predicted"] for k in KEYS}))
    return rows, fits


def summarize(rows: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, float]]]:
    """Median / worst |rel err| per metric, before and after."""
    out = {}
    for when in ("before", "after"):
        renamed = [{f"{k}_rel_err": r[f"{k}_rel_err_{when}"] for k in KEYS
                    if f"{k}_rel_err_{when}" in r} for r in rows]
        out[when] = error_summary(renamed, KEYS)
    return out


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    """Predicted vs measured, one panel per metric; hollow = before, filled = after."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.8))
    for ax, key in zip(axes, KEYS, strict=True):
        for source, color in (("calibration.md s3", "tab:blue"), ("engine", "tab:orange")):
            sel = [r for r in rows if f"{key}_measured" in r
                   and (r["source"] == source) == (source == "calibration.md s3")]
            if not sel:
                continue
            meas = [r[f"{key}_measured"] for r in sel]
            ax.scatter(meas, [r[f"{key}_before"] for r in sel], facecolors="none",
                       edgecolors=color, label=f"{source} before")
            ax.scatter(meas, [r[f"{key}_after"] for r in sel], color=color,
                       label=f"{source} after")
        lo, hi = ax.get_xlim()[0], ax.get_xlim()[1]
        lo = min(lo, ax.get_ylim()[0])
        hi = max(hi, ax.get_ylim()[1])
        xs = [max(lo, 1e-3), hi]
        ax.plot(xs, xs, "k-", lw=0.8)
        ax.fill_between(xs, [x * 0.8 for x in xs], [x * 1.2 for x in xs], color="gray",
                        alpha=0.15, label="+-20%")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(f"measured {key}")
        ax.set_ylabel(f"predicted {key}")
        ax.set_title(key)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--json", default="build/fidelity.json")
    parser.add_argument("--plot", default="build/fidelity.png")
    parser.add_argument("--include-build", action="store_true",
                        help="also read build/calibration/ and build/engine-profiles/ "
                             "(local profiles, not committed)")
    add_target_argument(parser, TARGETS)
    args = parser.parse_args()
    targets = resolve(TARGETS, args.target)
    start = time.perf_counter()
    extra = args.include_build
    hw = hardware_profiles(HW_DIRS + (BUILD_HW_DIRS if extra else []))
    rows_a = calibration_md_rows(hw, args.seeds)
    rows_b, fits = engine_profile_rows(hw, ENGINE_DIRS + (BUILD_ENGINE_DIRS if extra else []))
    rows = rows_a + rows_b
    head = (f"{'source':<28}{'point':<30}" + "".join(
        f"{k[:10]:>11}{'before':>9}{'after':>9}" for k in KEYS))
    print(head)
    print("-" * len(head))
    for r in rows:
        cells = []
        for k in KEYS:
            if f"{k}_measured" in r:
                cells.append(f"{r[f'{k}_measured']:>11.4g}{r[f'{k}_rel_err_before']:>+9.1%}"
                             f"{r[f'{k}_rel_err_after']:>+9.1%}")
            else:
                cells.append(f"{'-':>11}{'':>9}{'':>9}")
        print(f"{r['source'][:27]:<28}{r['point'][:29]:<30}" + "".join(cells))
    print("-" * len(head))
    summaries = {"calibration.md": summarize(rows_a), "engine profiles": summarize(rows_b),
                 "all": summarize(rows)}
    for name, summ in summaries.items():
        for when in ("before", "after"):
            print(f"{name:<16}{when:<7}" + "   ".join(
                f"{k} median {v['median_abs']:.1%} worst {v['worst_abs']:.1%} (n={v['n']:.0f})"
                for k, v in summ[when].items()))
    for f in fits:
        print(f"fitted for {f['profile']}: efficiencies from {f['efficiency_from']}; engine "
              f"overhead {f['step_overhead_s'] * 1e3:.2f} ms/step + "
              f"{f['step_overhead_per_seq_s'] * 1e6:.0f} us/seq, front-end "
              f"{f['frontend_latency_s'] * 1e3:.1f} ms/request from {f['overhead_from']}")
    after_b, after_a = summaries["engine profiles"]["after"], summaries["calibration.md"]["after"]
    checks = check(targets, {
        "engine_tpot_median": after_b.get("tpot_ms", {}).get("median_abs"),
        "engine_tput_median": after_b.get("throughput_tok_s", {}).get("median_abs"),
        "public_tput_median": after_a.get("throughput_tok_s", {}).get("median_abs")})
    print_checks(checks)
    plot(rows, Path(args.plot))
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"seeds": args.seeds, "include_build": extra, "rows": rows,
                               "summary": summaries, "fits": fits,
                               "hardware_profiles": {k: str(v.path) for k, v in hw.items()},
                               "targets": checks}, indent=2))
    print(f"{time.perf_counter() - start:.1f} s; wrote {out} and {args.plot}")
    return 0 if passed(checks) else 1


if __name__ == "__main__":
    sys.exit(main())
