"""Calibration from served traffic: recovery of known parameters, and prediction elsewhere.

For each GPU type a "true" deployment differs from the offline model (the catalog's spec
sheet, default `Efficiency` and engine overheads) by a known efficiency scale, per-step
engine overhead and serving-stack latency (`TRUTH`). Two groups per GPU type (8B TP1 and
70B TP4, ShareGPT-like lengths) serve one window at one rate each; their request log is the
true model's replay with 3% lognormal jitter per latency (`synthetic_group`). `fit_served`
fits the window (`boute calibrate` does the same on a real log). Then every group is
predicted at ANOTHER rate and ANOTHER length mix (GSM8K-like at 3x the rate, MT-Bench-like at
half the rate) by the fitted model and by the offline one, against the truth.

    python benchmarks/calibrate.py [--requests 400] [--bootstrap 8] [--json F.json]
                                   [--target KEY=VALUE]

Targets (`TARGETS`): the worst |relative error| of held-out P95 and mean latency after
calibration <= 25% (the issue's bar), and every fitted efficiency scale within 10% of the
truth. Prints the parameter table (truth, fit, bootstrap p05-p95) and the held-out table
(truth, offline error, calibrated error); writes JSON; exits 1 when a target is missed.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _targets import Target, add_target_argument, check, passed, print_checks, resolve

from profiling import (
    Efficiency,
    EngineConfig,
    ReplicaModel,
    generate_trace,
    load_catalog,
    scale_efficiency,
    simulate,
)
from profiling.measure import fit_served, synthetic_group

DATA = Path(__file__).resolve().parent / "data"
TARGETS = {
    "heldout_p95_worst": Target("<=", 0.25, "", "worst |P95 error| at held-out rate and mix, "
                                "calibrated"),
    "heldout_mean_worst": Target("<=", 0.25, "", "worst |mean error| at held-out rate and "
                                 "mix, calibrated"),
    "scale_worst": Target("<=", 0.10, "", "worst |fitted / true efficiency scale - 1|"),
}
# GPU type -> (efficiency scale, step overhead s, front-end latency s) of the "true" deployment.
TRUTH = {"H100": (0.70, 4.5e-3, 0.040), "A100-80G": (0.80, 3.0e-3, 0.025)}
# (model, tp, calibration rate req/s): the window's groups on every GPU type.
GROUPS = (("llama-3.1-8b", 1, 8.0), ("llama-3.1-70b", 4, 2.0))
# Held-out loads: (shape, rate as a multiple of the calibration rate).
HELD_OUT = (("gsm8k", 3.0), ("mtbench", 0.5))


def replica(model: str, gpu: str, tp: int, truth: tuple[float, float, float] | None
            ) -> ReplicaModel:
    """The true model of a config (`truth` given) or the offline one (None)."""
    cat = load_catalog()
    if truth is None:
        return ReplicaModel(cat.model(model), cat.gpu(gpu), tp, 1)
    scale, step_s, front_s = truth
    engine = replace(EngineConfig(), step_overhead_s=step_s, frontend_latency_s=front_s)
    return ReplicaModel(cat.model(model), cat.gpu(gpu), tp, 1, engine,
                        scale_efficiency(Efficiency(), scale))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=400, help="requests per group")
    parser.add_argument("--bootstrap", type=int, default=8)
    parser.add_argument("--json", default=str(DATA / "calibrate.json"))
    add_target_argument(parser, TARGETS)
    args = parser.parse_args(argv)
    targets = resolve(TARGETS, args.target)
    start = time.perf_counter()
    groups = []
    for i, (gpu, truth) in enumerate(TRUTH.items()):
        for j, (model, tp, rate) in enumerate(GROUPS):
            trace = generate_trace("sharegpt", rate_rps=rate, num_requests=args.requests,
                                   seed=10 * i + j)
            groups.append(synthetic_group(replica(model, gpu, tp, truth), trace,
                                          seed=10 * i + j))
    t_fit = time.perf_counter()
    cal = fit_served(groups, bootstrap=args.bootstrap)
    fit_s = time.perf_counter() - t_fit
    params: list[dict[str, Any]] = []
    print(f"{'GPU':<10}{'param':<20}{'truth':>9}{'fit':>9}{'p05':>9}{'p95':>9}{'err':>8}")
    for gpu, (scale, step_s, front_s) in TRUTH.items():
        row = cal.gpus[gpu]
        params.append({"gpu": gpu, "param": "efficiency_scale", "truth": scale,
                       "fit": row["scale"], "p05": row["scale_p05"], "p95": row["scale_p95"]})
        for g in (g for g in cal.groups if g.gpu == gpu):
            for name, true in (("step_overhead_s", step_s), ("frontend_latency_s", front_s)):
                lo, hi = g.spread[name]
                params.append({"gpu": gpu, "group": f"{g.model}-tp{g.tp}", "param": name,
                               "truth": true, "fit": getattr(g, name), "p05": lo, "p95": hi})
    for p in params:
        p["rel_err"] = p["fit"] / p["truth"] - 1
        label = p["param"] if "group" not in p else f"{p['param'][:9]} {p['group'][10:]}"
        print(f"{p['gpu']:<10}{label:<20}{p['truth']:>9.4g}{p['fit']:>9.4g}{p['p05']:>9.4g}"
              f"{p['p95']:>9.4g}{p['rel_err']:>+8.1%}")
    rows = []
    print(f"\n{'group':<30}{'held-out':<16}{'true P95':>9}{'offline':>9}{'calib.':>9}"
          f"{'true mean':>10}{'offline':>9}{'calib.':>9}")
    for g in cal.groups:
        truth = TRUTH[g.gpu]
        fitted = ReplicaModel(load_catalog().model(g.model), load_catalog().gpu(g.gpu), g.tp,
                              g.pp, cal.engine_for(g.model, g.gpu, g.tp, g.pp, EngineConfig()),
                              cal.efficiency(g.gpu, Efficiency()))
        for shape, factor in HELD_OUT:
            rate = g.rate_rps * factor
            trace = generate_trace(shape, rate_rps=rate, num_requests=args.requests, seed=99)
            res = {k: simulate(r, trace, capacity=math.inf) for k, r in (
                ("truth", replica(g.model, g.gpu, g.tp, truth)),
                ("offline", replica(g.model, g.gpu, g.tp, None)), ("calibrated", fitted))}
            p95 = {k: float(np.quantile(r.latency_s, 0.95)) for k, r in res.items()}
            mean = {k: float(np.mean(r.latency_s)) for k, r in res.items()}
            row = {"group": f"{g.model}-{g.gpu}-tp{g.tp}", "shape": shape, "rate_rps": rate,
                   "p95_s": p95, "mean_s": mean,
                   "p95_err": {k: p95[k] / p95["truth"] - 1 for k in ("offline", "calibrated")},
                   "mean_err": {k: mean[k] / mean["truth"] - 1 for k in ("offline",
                                                                         "calibrated")}}
            rows.append(row)
            print(f"{row['group']:<30}{f'{shape} {rate:.2g}/s':<16}{p95['truth']:>9.2f}"
                  f"{row['p95_err']['offline']:>+9.0%}{row['p95_err']['calibrated']:>+9.0%}"
                  f"{mean['truth']:>10.2f}{row['mean_err']['offline']:>+9.0%}"
                  f"{row['mean_err']['calibrated']:>+9.0%}")
    measured = {
        "heldout_p95_worst": max(abs(r["p95_err"]["calibrated"]) for r in rows),
        "heldout_mean_worst": max(abs(r["mean_err"]["calibrated"]) for r in rows),
        "scale_worst": max(abs(p["rel_err"]) for p in params if p["param"] ==
                           "efficiency_scale")}
    offline_worst = max(abs(r["p95_err"]["offline"]) for r in rows)
    print(f"\nfit: {fit_s:.1f} s for {len(groups)} groups x {args.requests} requests "
          f"({cal.fit['replays']} replays; bootstrap {args.bootstrap}: "
          f"{cal.fit['bootstrap_seconds']:.1f} s of it); offline model's worst held-out P95 "
          f"error {offline_worst:.0%}")
    checks = check(targets, measured)
    print_checks(checks)
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "requests_per_group": args.requests, "bootstrap": args.bootstrap,
        "truth": {g: dict(zip(("efficiency_scale", "step_overhead_s", "frontend_latency_s"),
                              t, strict=True)) for g, t in TRUTH.items()},
        "params": params, "held_out": rows, "fit_seconds": fit_s, "fit": cal.fit,
        "offline_p95_worst": offline_worst, "fidelity_on_window": {
            f"{g.model}-{g.gpu}-tp{g.tp}": g.fidelity for g in cal.groups},
        "seconds": time.perf_counter() - start, "targets": checks}, indent=2))
    print(f"{time.perf_counter() - start:.1f} s; wrote {out}")
    return 0 if passed(checks) else 1


if __name__ == "__main__":
    sys.exit(main())
