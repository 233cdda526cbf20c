"""Two models and one workload plan exactly as before ladders existed.

`tests/data/pair_golden.json` holds the paper presets' exact Pareto fronts (P95, quality, $/h
of every front plan) and Table 3 (`boute compare`'s costs per system and target), written by
the code of commit 3ad5a8e, before K models and several workloads went in (issue 17).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tuning import Goal, planning_problem, search
from tuning._reproduce import compare_targets

GOLDEN = json.loads((Path(__file__).parents[1] / "data" / "pair_golden.json").read_text())


@pytest.mark.parametrize("scenario", ["paper-gsm8k", "paper-mtbench"])
def test_paper_presets_are_unchanged(scenario: str) -> None:
    pr = planning_problem(scenario, progress=False)
    res = search(pr, Goal("pareto"), solver="exact")
    f = res.front_mask(pr)
    front = sorted(zip(res.metrics.p95_s[f].tolist(), res.metrics.quality[f].tolist(),
                       res.metrics.cost_per_hour[f].tolist(), strict=True))
    assert [list(p) for p in front] == GOLDEN[scenario]["front"]
    table3 = [[c.quality, c.p95_s, c.cost_per_hour] for c in compare_targets(
        pr, [(t.single_quality, t.p95_s) for t in pr.scenario.targets], solver="exact")]
    assert table3 == GOLDEN[scenario]["table3"]
