"""Perf DB build time and vectorized lookup throughput on the default scenario.

    python benchmarks/perfdb.py [--scenario paper-gsm8k] [--json build/perfdb_bench.json]

Builds the scenario's DB (4 GPU types, 2 models, every feasible TP/PP, 32 rates each) with
all cores, then times `PerfDB.lookup` on 1,000,000 random (config, rate) queries and
`mixture_quantile` on 100,000 random 4-group mixtures. Targets: build <= 60 s on a 2-core
machine, >= 100,000 lookups/s.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

from profiling import build_perfdb, load_catalog, load_scenario, mixture_quantile


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenario", default="paper-gsm8k")
    parser.add_argument("--json", default="build/perfdb_bench.json")
    args = parser.parse_args()
    scenario = load_scenario(args.scenario)
    t0 = time.perf_counter()
    db = build_perfdb(scenario.profile_spec(), load_catalog(), progress=True)
    build_s = time.perf_counter() - t0
    rng = np.random.default_rng(0)
    n = 1_000_000
    cfg = rng.integers(0, len(db.keys), n)
    rate = rng.uniform(0, 1, n) * db.capacity[cfg]
    db.lookup(cfg[:1000], rate[:1000])  # warm-up
    t0 = time.perf_counter()
    quant, _, _ = db.lookup(cfg, rate)
    lookup_s = time.perf_counter() - t0
    m = 100_000
    groups = quant[: m * 4].reshape(m, 4, -1)
    weights = rng.dirichlet(np.ones(4), m)
    t0 = time.perf_counter()
    mixture_quantile(groups, weights, db.quantile_levels, 0.95)
    mix_s = time.perf_counter() - t0
    result = {
        "scenario": scenario.name, "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "configs": len(db.keys), "rows": db.table.num_rows,
        "infeasible": len(db.meta["infeasible"]), "build_s": build_s,
        "lookups": n, "lookups_per_s": n / lookup_s,
        "mixtures": m, "mixtures_per_s": m / mix_s,
    }
    print(f"{'metric':<28}{'value':>16}{'target':>12}")
    print(f"{'configs x rates (rows)':<28}{db.table.num_rows:>16,}")
    print(f"{'build time':<28}{build_s:>15.1f}s{'<= 60 s':>12}")
    print(f"{'lookups per second':<28}{n / lookup_s:>16,.0f}{'>= 100,000':>12}")
    print(f"{'4-group P95 mixtures per s':<28}{m / mix_s:>16,.0f}")
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    return 0 if build_s <= 60 and n / lookup_s >= 100_000 else 1


if __name__ == "__main__":
    sys.exit(main())
