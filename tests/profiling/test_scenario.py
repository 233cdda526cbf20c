from __future__ import annotations

from pathlib import Path

import pytest

from boute.errors import ScenarioError
from profiling import list_presets, load_scenario
from tests.conftest import write_scenario


def test_presets() -> None:
    assert {"paper-gsm8k", "paper-mtbench"} <= set(list_presets())
    s = load_scenario("paper-gsm8k")
    assert s.budget_per_hour == 30 and s.workload.rate_rps == 100
    # The mtbench preset runs 20 req/s with 2x the paper's P95 targets (see its header).
    s = load_scenario("paper-mtbench")
    assert s.budget_per_hour == 30 and s.workload.rate_rps == 20
    assert [(t.quality, t.p95_s) for t in s.targets] == [(8.1, 20), (8.5, 30)]
    assert set(s.gpus) == {"H100", "RTX-PRO-6000", "RTX-5090", "RTX-4090"}
    assert load_scenario().name == "paper-gsm8k"


@pytest.mark.parametrize(("text", "message"), [
    ("gpus: {H100: {count: -1}}", r"gpus\.H100\.count=-1: Input should be greater than or "
                                  r"equal to 1"),
    ("gpus: {H100: {count: 8}}\nbudget_per_hour: 0", r"budget_per_hour=0: Input should be "
                                                      r"greater than 0"),
    ("gpus: {H100: {count: 8}}\nbugdet: 3", r"bugdet=3: Extra inputs are not permitted"),
    ("gpus: {H100: {count: 8}}\nworkload: {shape: imagenet}", r"workload.shape='imagenet' is "
                                                               r"unknown"),
])
def test_bad_fields_are_named(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ScenarioError, match=message):
        load_scenario(write_scenario(tmp_path, text))


def test_unknown_preset() -> None:
    with pytest.raises(ScenarioError, match=r"scenario='paper-x' is neither a file nor a preset"):
        load_scenario("paper-x")
