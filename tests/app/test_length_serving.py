"""Length classes end to end: a split plan served on a local fake cluster (emulated engines).

Llama-3.1-8B on the deliberately slow EDU-GPU cards (`benchmarks/data/ladder/gpus.yaml`),
gsm8k-shaped traffic at 6 req/s, split at 160 tokens of prompt + max_tokens: one group serves
the short requests, another the long ones. The bench sends each request with ``max_tokens``
= its trace output length, as the plan assumes; the router must send every short request to
the short group and every long one to the long group, in the plan's proportions, at the
predicted P95.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.app import free_port

REPO = Path(__file__).resolve().parents[2]
CATALOG = REPO / "benchmarks" / "data" / "ladder" / "gpus.yaml"
SCENARIO = """
name: lengths-serve
gpus:
  EDU-GPU: {count: 8}
  EDU-GPU-XL: {count: 8}
models: [llama-3.1-8b]
task: gsm8k
workload: {shape: gsm8k, rate_rps: 6}
budget_per_hour: 200
p95_ceiling_s: 120
length_classes: {threshold_tokens: [160]}
profile: {num_rates: 8, num_requests: 300}
"""
P95_S = 10.0
TAU = 160


def _split_plan(tmp: Path):
    """The cheapest plan with the split forced (the planner alone would keep one group)."""
    from profiling import load_catalog
    from tuning import Goal, PlanOptions, choose_plan, planning_problem

    (tmp / "s.yaml").write_text(SCENARIO)
    pr = planning_problem(str(tmp / "s.yaml"), db=str(tmp / "db.parquet"), threshold_tokens=TAU,
                          gpu_catalog=[str(CATALOG)], progress=False)
    goal = Goal("min-cost", None, P95_S)
    chosen = choose_plan(pr, goal, PlanOptions(), catalog=load_catalog([str(CATALOG)]))
    assert chosen.plan is not None and chosen.held.holds
    return chosen.plan


@pytest.mark.heavy
@pytest.mark.latency
def test_short_and_long_requests_are_served_by_their_own_groups(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import ray
    from ray import serve

    from app.deploy import deploy_plan
    from app.request_log import read_log
    from boute.bench import run_bench, workload_requests
    from placement import local_cluster

    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    plan = _split_plan(tmp_path)
    lc = plan.routing.length_classes
    assert lc is not None and {g.length_class for g in plan.groups} == {"short", "long"}
    log_dir = tmp_path / "log"
    cluster = local_cluster({"EDU-GPU": 8, "EDU-GPU-XL": 8}, {"EDU-GPU": 4, "EDU-GPU-XL": 8},
                            temp_dir=REPO / "build" / "ray-tmp-length", dashboard_port=free_port())
    try:
        url = deploy_plan(plan, backend="emulated", gpu_catalog=[str(CATALOG)],
                          port=free_port(), proxy_location="HeadOnly", log_dir=str(log_dir),
                          log_rotate_s=3.0)
        result = run_bench(url, workload_requests([("default", "gsm8k", 6.0)],
                                                  duration_s=100, seed=1))
        summary = result.summary()
    finally:
        serve.shutdown()
        ray.shutdown()
        cluster.shutdown()
    assert summary["requests"] >= 500 and summary["ok"] == summary["requests"], summary
    log = read_log(log_dir).to_pylist()
    assert len(log) == summary["requests"]
    # Every request went to its own class's group, classed by prompt + max_tokens.
    for row in log:
        want = "short" if row["prompt_tokens"] + row["output_tokens"] <= TAU else "long"
        assert row["length_class"] == want, row
        assert row["group"].endswith(f"-{want}"), row
    short = sum(r["length_class"] == "short" for r in log) / len(log)
    assert abs(short - lc.shares["default"][0]) <= 0.05, (short, lc.shares)
    predicted = plan.predicted.system_p95_s
    measured = summary["e2e_s"]["p95"]
    print({"short_share": short, "planned": lc.shares, "p95_s": measured,
           "predicted_p95_s": predicted, "requests": summary["requests"],
           "groups": [g.name for g in plan.groups]})
    assert abs(measured - predicted) <= 0.2 * predicted, (measured, predicted)
