"""P/D disaggregation: the cheapest plan meeting (quality, TTFT P95, TPOT P95), with and without.

From prefill-heavy to decode-heavy traffic, on two GPU pools. Issue 28, items 2-3.

    python benchmarks/pd_disagg.py [--json build/pd_disagg.json] [--no-copy]
        [--requests 800] [--check-requests 2000] [--pools paper,mixed]
        [--workloads code,conv,mtbench] [--target KEY=VALUE]

Workloads (lengths log-normal, Poisson arrivals):

* ``code``: prefill heavy, the Azure LLM inference trace's coding requests as Splitwise
  characterizes them (prompt median ~1,500 tokens, answer median ~13; we use mean / median
  2,048 / 1,500 and 28 / 13);
* ``conv``: the same trace's conversation requests (prompt ~1,020, answer ~129; mean / median
  1,155 / 1,020 and 211 / 129);
* ``mtbench``: decode heavy, MT-Bench-like (`profiling.TRACE_SHAPES`).

Pools: ``paper`` (the paper's H100, RTX PRO 6000, RTX 5090, RTX 4090, 8 each, $30/h) and
``mixed`` (those plus A100-80G, L40S, H100-PCIe, H200, 8 each, $60/h). Quality: the
Llama-3.1-8B / 70B pair's published curve (gsm8k 89 for code and conv, as a stand-in; mtbench
8.3), which fixes the strong share s; the 70B model gets ``s lambda``. Targets: TTFT P95 1.5 s,
TPOT P95 50 ms. For each (pool, workload) `tuning.PdPlanner` plans min-cost co-located only
and with pool pairs; each chosen plan is re-simulated on fresh traffic (another seed,
`tuning.check_pd_plan`). The ablation lists, per GPU type, TFLOPS / $, bandwidth / $ and KV
cache / $, and which types the prefill and decode pools landed on.

Targets (`TARGETS`): on every pool the prefill-heavy workload costs at least 20% less with
disaggregation; no plan with pool pairs costs more than the co-located one; every chosen plan
holds its targets on fresh traffic.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from _results import write_results
from _targets import Target, add_target_argument, check, passed, print_checks, resolve

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

TARGETS = {
    "code_saving_pct_min": Target(">=", 20.0, "%", "lowest cost saving of disaggregation on the "
                                  "prefill-heavy workload over the pools"),
    "dearer_with_pd": Target("<=", 0, "", "cases where the plan with pool pairs costs more"),
    "plans_not_holding": Target("<=", 0, "", "chosen plans missing a target on fresh traffic"),
}
TTFT_P95_S, TPOT_P95_S = 1.5, 0.05
PAPER = ("H100", "RTX-PRO-6000", "RTX-5090", "RTX-4090")
POOLS: dict[str, tuple[tuple[str, ...], float]] = {
    "paper": (PAPER, 30.0),
    "mixed": ((*PAPER, "A100-80G", "L40S", "H100-PCIe", "H200"), 60.0),
}
# name: (prompt mean, median, cap), (answer mean, median, cap), task, quality, rate per pool
WORKLOADS: dict[str, dict[str, Any]] = {
    "code": {"prompt": (2048, 1500, 7000), "answer": (28, 13, 400), "task": "gsm8k",
             "quality": 89.0, "rate": {"paper": 4.0, "mixed": 8.0}},
    "conv": {"prompt": (1155, 1020, 6000), "answer": (211, 129, 1500), "task": "gsm8k",
             "quality": 89.0, "rate": {"paper": 6.0, "mixed": 12.0}},
    "mtbench": {"shape": "mtbench", "task": "mtbench", "quality": 8.3,
                "rate": {"paper": 10.0, "mixed": 20.0}},
}
MODELS = ("llama-3.1-8b", "llama-3.1-70b")


def _lengths(rng: np.random.Generator, spec: tuple[float, float, int], n: int) -> Any:
    mean, median, cap = spec
    sigma = math.sqrt(2.0 * math.log(mean / median))
    return np.clip(np.rint(median * np.exp(sigma * rng.standard_normal(n))), 1, cap
                   ).astype(np.int64)


def trace(workload: str, n: int, seed: int, rate: float = 1.0) -> Any:
    """A Poisson trace of `workload` at `rate` req/s."""
    from profiling import Trace, generate_trace

    w = WORKLOADS[workload]
    if "shape" in w:
        return generate_trace(w["shape"], rate_rps=rate, num_requests=n, seed=seed)
    rng = np.random.default_rng(seed)
    prompts, answers = _lengths(rng, w["prompt"], n), _lengths(rng, w["answer"], n)
    gaps = rng.exponential(1.0 / rate, n)
    gaps[0] = 0.0
    return Trace(np.cumsum(gaps), prompts, answers, None, name=workload)


def _groups(choice: Any) -> list[str]:
    return [f"{g.replicas}x {g.model.split('-')[-1]} {g.gpu} tp{g.tp}"
            + ("" if g.role is None else f" [{g.role}]") for g in choice.groups]


def per_dollar(catalog: Any, gpus: tuple[str, ...]) -> list[dict[str, Any]]:
    """Per GPU type: TFLOPS / $, GB/s / $, and KV GiB / $ of an 8B replica (TP1 when it fits)."""
    from profiling import ReplicaModel

    rows = []
    for name in gpus:
        g = catalog.gpu(name)
        kv_gib = math.nan
        with contextlib.suppress(Exception):     # 8B does not fit one GPU of this type
            kv_gib = ReplicaModel(catalog.model(MODELS[0]), g, 1).memory.kv_gib
        rows.append({"gpu": name, "price_per_hour": g.price_per_hour,
                     "tflops_per_dollar": g.bf16_tflops / g.price_per_hour,
                     "gbps_per_dollar": g.memory_bandwidth_gbps / g.price_per_hour,
                     "kv_gib_per_dollar_8b": kv_gib / g.price_per_hour,
                     "network_gbps_per_gpu": g.network_gbps / g.gpus_per_node})
    return rows


def run_case(catalog: Any, pool: str, workload: str, args: argparse.Namespace) -> dict[str, Any]:
    """Plan one (pool, workload) with and without pool pairs; re-simulate both plans."""
    from profiling import default_quality_curve
    from tuning import PdOffer, PdPlanner, check_pd_plan

    gpus, budget = POOLS[pool]
    w = WORKLOADS[workload]
    rate = w["rate"][pool]
    share = default_quality_curve(w["task"]).min_share_for(w["quality"])
    rates = {MODELS[0]: (1 - share) * rate, MODELS[1]: share * rate}
    offers = [PdOffer(g, 8, catalog.gpu(g).price_per_hour) for g in gpus]
    t0 = time.perf_counter()
    planner = PdPlanner(catalog, offers, trace(workload, args.requests, seed=0),
                        ttft_p95_s=TTFT_P95_S, tpot_p95_s=TPOT_P95_S, models=MODELS)
    row: dict[str, Any] = {"pool": pool, "workload": workload, "rate_rps": rate,
                           "strong_share": share, "budget_per_hour": budget}
    seeds = iter(range(100, 10_000))
    for label, dis in (("colocated", False), ("disaggregated", True)):
        try:
            choice = planner.plan(rates, budget_per_hour=budget, disaggregate=dis,
                                  strong_share=share)
        except Exception as exc:            # infeasible within stock / budget / targets
            row[label] = {"cost_per_hour": None, "why": str(exc)}
            continue
        fresh = check_pd_plan(planner, choice, lambda r: trace(
            workload, args.check_requests, seed=next(seeds), rate=r))
        row[label] = {"cost_per_hour": choice.cost_per_hour, "groups": _groups(choice),
                      "disaggregated": list(choice.disaggregated),
                      "decode_fraction": choice.decode_fraction,
                      "gpus": choice.gpus_by_type(),
                      "pools": [{"model": g.model, "gpu": g.gpu, "tp": g.tp, "role": g.role,
                                 "replicas": g.replicas} for g in choice.groups],
                      **fresh}
    co, pd = row["colocated"].get("cost_per_hour"), row["disaggregated"].get("cost_per_hour")
    row["saving_pct"] = (100.0 * (co - pd) / co if co is not None and pd is not None
                         else None)
    row["seconds"] = round(time.perf_counter() - t0, 1)
    return row


def _fmt(v: Any, fmt: str) -> str:
    return "-" if v is None else format(v, fmt)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", default="build/pd_disagg.json")
    p.add_argument("--pools", default=",".join(POOLS))
    p.add_argument("--workloads", default=",".join(WORKLOADS))
    p.add_argument("--requests", type=int, default=800, help="requests of the planning trace")
    p.add_argument("--check-requests", type=int, default=2000,
                   help="requests of each fresh trace")
    p.add_argument("--no-copy", action="store_true",
                   help="do not copy the JSON to benchmarks/data/")
    add_target_argument(p, TARGETS)
    args = p.parse_args()
    from profiling import load_catalog

    catalog = load_catalog()
    rows = []
    print(f"targets: TTFT P95 <= {TTFT_P95_S} s, TPOT P95 <= {TPOT_P95_S * 1e3:.0f} ms\n")
    print(f"{'pool':<7}{'workload':<9}{'req/s':>6}{'co $/h':>8}{'P/D $/h':>9}{'saving':>8}"
          f"{'TTFT95':>8}{'TPOT95':>8}{'holds':>7}{'s':>6}  plan with P/D")
    for pool in args.pools.split(","):
        for workload in args.workloads.split(","):
            r = run_case(catalog, pool, workload, args)
            rows.append(r)
            d = r["disaggregated"]
            print(f"{pool:<7}{workload:<9}{r['rate_rps']:>6.1f}"
                  f"{_fmt(r['colocated'].get('cost_per_hour'), '.2f'):>8}"
                  f"{_fmt(d.get('cost_per_hour'), '.2f'):>9}"
                  f"{_fmt(r['saving_pct'], '.1f'):>7}%"
                  f"{_fmt(d.get('worst_ttft_p95_s'), '.3f'):>8}"
                  f"{_fmt(None if d.get('worst_tpot_p95_s') is None else 1e3 * d['worst_tpot_p95_s'], '.1f'):>8}"  # noqa: E501
                  f"{d.get('holds')!s:>7}{r['seconds']:>6.0f}  {'; '.join(d.get('groups', []))}")
            if r["colocated"].get("cost_per_hour") is not None:
                print(f"{'':<22}co-located plan: {'; '.join(r['colocated']['groups'])} "
                      f"(holds {r['colocated']['holds']})")
    gpus = tuple(dict.fromkeys(g for pool in args.pools.split(",") for g in POOLS[pool][0]))
    ablation = per_dollar(catalog, gpus)
    landed: dict[str, dict[str, int]] = {}
    for r in rows:
        for g in r["disaggregated"].get("pools", []):
            role = g["role"] or "co-located"
            landed.setdefault(g["gpu"], {}).setdefault(role, 0)
            landed[g["gpu"]][role] += g["tp"] * g["replicas"]
    print(f"\n{'gpu':<14}{'$/h':>6}{'TFLOPS/$':>10}{'GB/s/$':>8}{'KV GiB/$':>10}"
          f"{'net GB/s/GPU':>13}  GPUs in the P/D plans (by role)")
    for a in ablation:
        print(f"{a['gpu']:<14}{a['price_per_hour']:>6.2f}{a['tflops_per_dollar']:>10.0f}"
              f"{a['gbps_per_dollar']:>8.0f}{a['kv_gib_per_dollar_8b']:>10.1f}"
              f"{a['network_gbps_per_gpu']:>13.2f}  {landed.get(a['gpu'], {})}")
    savings = [r["saving_pct"] for r in rows if r["workload"] == "code"]
    code_min = (min(savings) if savings and all(s is not None for s in savings) else None)
    dearer = sum(1 for r in rows if r["saving_pct"] is not None and r["saving_pct"] < -1e-9)
    not_holding = sum(1 for r in rows for k in ("colocated", "disaggregated")
                      if r[k].get("holds") is False)
    measured: dict[str, float | None] = {"code_saving_pct_min": code_min,
                                         "dearer_with_pd": dearer,
                                         "plans_not_holding": not_holding}
    rows_checked = check(resolve(TARGETS, args.target), measured, {})
    print_checks(rows_checked)
    payload = {"ttft_p95_s": TTFT_P95_S, "tpot_p95_s": TPOT_P95_S,
               "requests": args.requests, "check_requests": args.check_requests,
               "cases": rows, "ablation": ablation, "landed": landed,
               "targets": rows_checked}
    write_results(payload, args.json, None if args.no_copy else "pd_disagg.json")
    return 0 if passed(rows_checked) else 1


if __name__ == "__main__":
    sys.exit(main())
