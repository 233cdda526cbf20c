from pathlib import Path

import pytest

from profiling import Catalog, build_perfdb, load_scenario
from tuning import Problem, load_problem

# Two GPU types, both models, a light load: small enough to build in seconds, rich enough that
# routing, heterogeneity and the budget all matter.
SMALL = """
name: small
gpus:
  H100: {count: 4}
  RTX-4090: {count: 4}
models: {weak: llama-3.1-8b, strong: llama-3.1-70b}
task: gsm8k
workload: {shape: gsm8k, rate_rps: 20}
budget_per_hour: 14
targets:
  - {quality: 87, p95_s: 8}
profile: {num_rates: 8, num_requests: 200}
"""


@pytest.fixture(scope="session")
def small_problem(catalog: Catalog, tmp_path_factory: pytest.TempPathFactory) -> Problem:
    path = Path(tmp_path_factory.mktemp("sc")) / "small.yaml"
    path.write_text(SMALL)
    scenario = load_scenario(path)
    db = build_perfdb(scenario.profile_spec(), catalog, workers=2)
    db.save(path.with_suffix(".parquet"))
    return load_problem(scenario, db, catalog)
