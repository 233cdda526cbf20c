"""Predicted vs measured: `boute simulate`'s model against calibration.md section 3.

Every measured vLLM row of ../shared/reference/calibration.md section 3 (LambdaLabsML
vllm-benchmark, Sept 2024): ShareGPT prompts sent all at once (request_rate=inf), the engine
generation of the run (engine profiles in profiling/_replica.py), BF16. For each row we
simulate the same number of prompts with ShareGPT-shaped lengths, averaged over seeds (the
runs' exact prompts are not published), and compare the median TPOT and the output throughput.

    python benchmarks/calibration.py [--seeds 8] [--json build/calibration.json]

Prints a table and the median / worst absolute relative errors; writes JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from profiling import Efficiency, ReplicaModel, generate_trace, load_catalog, simulate
from profiling._replica import engine_profile


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


# calibration.md s3b; prompt_N runs used max-num-seqs 1024 and v0.6 multi-step (ITL ~ 10 x TPOT).
# TPOT and ITL are the published medians (LambdaLabsML benchmark_v0.md; v0.5.4 ran with
# chunked prefill, v0.6.0 without).
ROWS = [
    Row("8B 1xH100 N=10", "llama-3.1-8b", "H100", 1, 10, "vllm-0.6-multistep", 1024, 347.9, 7.56),
    Row("8B 1xH100 N=320", "llama-3.1-8b", "H100", 1, 320, "vllm-0.6-multistep", 1024, 6027,
        20.0),
    Row("8B 1xA100 N=10", "llama-3.1-8b", "A100-80G", 1, 10, "vllm-0.6-multistep", 1024, 226.5,
        12.0),
    Row("70B 2xH100 N=10", "llama-3.1-70b", "H100", 2, 10, "vllm-0.6-multistep", 1024, 97.8, 29.5),
    Row("70B 4xH100 N=10", "llama-3.1-70b", "H100", 4, 10, "vllm-0.6-multistep", 1024, 160.0,
        18.1),
    Row("70B 8xH100 N=10", "llama-3.1-70b", "H100", 8, 10, "vllm-0.6-multistep", 1024, 238.4,
        12.2),
    Row("70B 2xA100 N=10", "llama-3.1-70b", "A100-80G", 2, 10, "vllm-0.6-multistep", 1024, 58.4,
        50.9),
    Row("70B 4xH100 N=320", "llama-3.1-70b", "H100", 4, 320, "vllm-0.6-multistep", 1024, 2445,
        39.1),
    Row("8B 1xH100 N=5000 v0.5.4", "llama-3.1-8b", "H100", 1, 5000, "vllm-0.5", 256, 3032.04,
        64.06, 48.28),
    Row("8B 1xH100 N=5000 v0.6 step1", "llama-3.1-8b", "H100", 1, 5000, "vllm-0.6", 256,
        3958.40, 196.24, 179.17),
    Row("8B 1xH100 N=5000 v0.6 step10", "llama-3.1-8b", "H100", 1, 5000, "vllm-0.6-multistep",
        256, 8088.35, 25.57, 243.76, 10),
    Row("70B 4xH100 N=5000 v0.5.4", "llama-3.1-70b", "H100", 4, 5000, "vllm-0.5", 256, 1491.93,
        125.78, 74.22),
    Row("70B 4xH100 N=5000 v0.6 step1", "llama-3.1-70b", "H100", 4, 5000, "vllm-0.6", 256,
        2291.0, 102.99, 63.54),
    Row("70B 4xH100 N=5000 v0.6 step10", "llama-3.1-70b", "H100", 4, 5000, "vllm-0.6-multistep",
        256, 3542.88, 61.10, 574.07, 10),
]


def predict(row: Row, seeds: int, efficiency: Efficiency | None = None
            ) -> tuple[float, float, float]:
    """Mean over seeds of (output tok/s, median TPOT ms, median TTFT ms) for the row."""
    catalog = load_catalog()
    engine = engine_profile(row.engine, max_num_seqs=row.max_num_seqs)
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
    args = parser.parse_args()
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
                  + ("   (targets: <= 15%, <= 40%)" if scope == "scored" else ""))
    print(f"{time.perf_counter() - start:.1f} s")
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"rows": results, "summary": summary}, indent=2))
    ok = all(v["median_abs"] <= 0.15 and v["worst_abs"] <= 0.40
             for k, v in summary.items() if k.endswith("_scored"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
