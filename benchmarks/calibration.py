"""Predicted vs measured: `boute simulate`'s model against the public vLLM runs.

Every measured vLLM row of benchmarks/data/reference/vllm_runs.csv (calibration.md section 3
in the same folder: LambdaLabsML vllm-benchmark, Sept 2024, one source URL per row): ShareGPT
prompts sent all at once (request_rate=inf), the engine generation of the run (engine
profiles in profiling/_replica.py), BF16. For each row we simulate the same number of prompts
with ShareGPT-shaped lengths, averaged over seeds (the runs' exact prompts are not
published), and compare the median TPOT and the output throughput.

    python benchmarks/calibration.py [--seeds 8] [--json build/calibration.json]
                                     [--target KEY=VALUE]

Targets (`TARGETS`): median |relative error| <= 15% and worst <= 40%, for the throughput of
every row and the TPOT of every row whose latencies fit its own throughput (Little's law,
`Row.inconsistency`). Prints a table and the errors; writes JSON; exits 1 when a target is
missed.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from profiling import (
    Efficiency,
    EngineConfig,
    ReplicaModel,
    engine_profile,
    generate_trace,
    load_catalog,
    simulate,
)

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _targets import Target, add_target_argument, check, passed, print_checks, resolve

RUNS_CSV = Path(__file__).resolve().parent / "data" / "reference" / "vllm_runs.csv"
TARGETS = {
    "tput_median": Target("<=", 0.15, "", "throughput, median |rel err| (14 rows)"),
    "tput_worst": Target("<=", 0.40, "", "throughput, worst |rel err|"),
    "tpot_median": Target("<=", 0.15, "", "TPOT, median |rel err| (consistent rows)"),
    "tpot_worst": Target("<=", 0.40, "", "TPOT, worst |rel err|"),
}


@dataclass(frozen=True)
class Row:
    """One measured run."""

    name: str
    model: str
    gpu: str
    tp: int
    prompts: int
    engine: str
    max_num_seqs: int
    tput_tok_s: float
    tpot_ms: float
    itl_ms: float | None = None
    """Median inter-token latency as published (per streamed chunk), where given."""
    chunk_tokens: int = 1
    """Tokens per streamed chunk (num-scheduler-steps)."""

    def inconsistency(self) -> str | None:
        """Why the row's TPOT/ITL cannot come with its own throughput, or None.

        Little's law: at most ``max_num_seqs`` requests are past their first token and
        decoding (no preemption at these lengths), so the mean gap between a request's chunks
        is at most ``chunk_tokens * max_num_seqs / throughput``; a median is at most twice a
        mean of non-negative values (half of them are >= the median). A published median ITL
        above ``2 * chunk_tokens * max_num_seqs / throughput`` therefore needs more requests
        in flight than the engine can run: the row's latencies are not those of the engine
        that produced its throughput (e.g. client or API-server lag), and no engine model
        can match both.
        """
        if self.itl_ms is None:
            return None
        bound_ms = 2e3 * self.chunk_tokens * self.max_num_seqs / self.tput_tok_s
        if self.itl_ms <= bound_ms:
            return None
        return (f"median ITL {self.itl_ms:g} ms > {bound_ms:.1f} ms = 2 x {self.max_num_seqs} "
                f"seqs / {self.tput_tok_s:g} tok/s (Little's law)")


def load_rows(path: Path = RUNS_CSV) -> list[Row]:
    """The measured runs of ``path`` (vllm_runs.csv: one row per run, with its source URL).

    The prompt_N runs used max-num-seqs 1024 and v0.6 multi-step (ITL ~ 10 x TPOT); TPOT and
    ITL are the published medians (LambdaLabsML benchmark_v0.md; v0.5.4 ran with chunked
    prefill, v0.6.0 without). An empty ``itl_ms`` cell means not published.
    """
    with path.open(newline="") as f:
        return [Row(r["name"], r["model"], r["gpu"], int(r["tp"]), int(r["prompts"]),
                    r["engine"], int(r["max_num_seqs"]), float(r["tput_tok_s"]),
                    float(r["tpot_ms"]), float(r["itl_ms"]) if r["itl_ms"] else None,
                    int(r["chunk_tokens"]))
                for r in csv.DictReader(f)]


def ttft_medians(path: Path = RUNS_CSV) -> dict[str, float]:
    """Median TTFT (ms) by run name, for the runs of ``path`` that publish one."""
    with path.open(newline="") as f:
        return {r["name"]: float(r["ttft_median_ms"]) for r in csv.DictReader(f)
                if r["ttft_median_ms"]}


ROWS = load_rows()


def predict(row: Row, seeds: int, efficiency: Efficiency | None = None,
            engine: EngineConfig | None = None) -> tuple[float, float, float]:
    """Mean over seeds of (output tok/s, median TPOT ms, median TTFT ms) for the row.

    ``engine`` replaces the row's engine profile (``row.engine`` with the row's
    ``max_num_seqs``), e.g. with fitted overheads (benchmarks/heldout_public.py).
    """
    catalog = load_catalog()
    engine = engine or engine_profile(row.engine, max_num_seqs=row.max_num_seqs)
    replica = ReplicaModel(catalog.model(row.model), catalog.gpu(row.gpu), row.tp, 1, engine,
                           efficiency)
    tputs, tpots, ttfts = [], [], []
    for seed in range(seeds if row.prompts < 1000 else 1):
        trace = generate_trace("sharegpt", rate_rps=float("inf"), num_requests=row.prompts,
                               seed=seed)
        res = simulate(replica, trace, capacity=float("inf"))
        tputs.append(res.throughput_tok_s)
        tpots.append(float(np.nanmedian(res.tpot_s)) * 1e3)
        ttfts.append(float(np.median(res.ttft_s)) * 1e3)
    return statistics.fmean(tputs), statistics.fmean(tpots), statistics.fmean(ttfts)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=8)
    parser.add_argument("--json", default="build/calibration.json")
    add_target_argument(parser, TARGETS)
    args = parser.parse_args()
    targets = resolve(TARGETS, args.target)
    start = time.perf_counter()
    results = []
    header = (f"{'run':<32}{'engine':<20}{'tok/s meas':>11}{'pred':>9}{'err':>8}"
              f"{'TPOT meas':>11}{'pred':>8}{'err':>8}")
    print(header)
    print("-" * len(header))
    for row in ROWS:
        tput, tpot, _ = predict(row, args.seeds)
        e_tput = tput / row.tput_tok_s - 1
        e_tpot = tpot / row.tpot_ms - 1
        why = row.inconsistency()
        results.append({"run": row.name, "engine": row.engine, "measured_tok_s": row.tput_tok_s,
                        "predicted_tok_s": tput, "tput_rel_err": e_tput,
                        "measured_tpot_ms": row.tpot_ms, "predicted_tpot_ms": tpot,
                        "tpot_rel_err": e_tpot, "latency_inconsistent": why})
        print(f"{row.name:<32}{row.engine:<20}{row.tput_tok_s:>11.1f}{tput:>9.1f}{e_tput:>+8.1%}"
              f"{row.tpot_ms:>11.2f}{tpot:>8.2f}{e_tpot:>+8.1%}{' *' if why else ''}")
    # Scored: every throughput; the TPOT of rows whose latencies fit their own throughput.
    summary: dict[str, dict[str, float]] = {}
    for key in ("tput_rel_err", "tpot_rel_err"):
        for scope in ("all", "scored"):
            errs = [abs(r[key]) for r in results if scope == "all" or key == "tput_rel_err"
                    or not r["latency_inconsistent"]]
            summary[f"{key}_{scope}"] = {"median_abs": statistics.median(errs),
                                         "worst_abs": max(errs), "rows": len(errs)}
    print("-" * len(header))
    for r in results:
        if r["latency_inconsistent"]:
            print(f"* {r['run']}: not scored on TPOT: {r['latency_inconsistent']}")
    for key, label in (("tput_rel_err", "throughput"), ("tpot_rel_err", "TPOT")):
        for scope in ("all", "scored"):
            s = summary[f"{key}_{scope}"]
            print(f"{label:<11}{scope:>7} ({s['rows']:>2.0f} rows) median |rel err| "
                  f"{s['median_abs']:6.1%}   worst {s['worst_abs']:6.1%}"
                  + ("   (scored)" if scope == "scored" else ""))
    tput, tpot = summary["tput_rel_err_scored"], summary["tpot_rel_err_scored"]
    rows = check(targets, {"tput_median": tput["median_abs"], "tput_worst": tput["worst_abs"],
                           "tpot_median": tpot["median_abs"], "tpot_worst": tpot["worst_abs"]})
    print_checks(rows)
    print(f"{time.perf_counter() - start:.1f} s")
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"source": str(RUNS_CSV.relative_to(RUNS_CSV.parents[3])),
                               "seeds": args.seeds, "rows": results, "summary": summary,
                               "targets": rows}, indent=2))
    return 0 if passed(rows) else 1


if __name__ == "__main__":
    sys.exit(main())
