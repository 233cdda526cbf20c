from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from common.errors import ScenarioError
from profiling import Catalog, list_presets, load_scenario
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


# -- the same catalog GPU offered twice (`gpu:`), e.g. on demand and spot ----------------------
SPOT = """
name: spot
gpus:
  H100: {count: 32}
  H100-spot: {gpu: H100, count: 64, price_per_hour: 1.35}
  RTX-4090-cheap: {gpu: RTX-4090, count: 8}
"""


def test_alias_offer_is_its_catalog_gpu_renamed_at_its_price(tmp_path: Path,
                                                              catalog: Catalog) -> None:
    scenario = load_scenario(write_scenario(tmp_path, SPOT))
    scenario.check_catalog(catalog)
    offered = scenario.offered_gpus(catalog)
    assert list(offered) == ["H100", "H100-spot", "RTX-4090-cheap"]
    assert offered["H100"] == catalog.gpu("H100")
    # Same silicon as the H100 row; only the name and the price (override) differ.
    assert offered["H100-spot"] == replace(catalog.gpu("H100"), name="H100-spot",
                                           price_per_hour=1.35)
    # No price given: the catalog GPU's ($0.59/h, gpus.yaml).
    assert offered["RTX-4090-cheap"].price_per_hour == 0.59
    assert scenario.catalog_gpu("H100-spot") == "H100"
    assert scenario.catalog_gpu("H100") == "H100"
    # The perf DB sweeps each catalog GPU once, up to the largest offer of it: 64 = max(32, 64).
    assert scenario.profile_spec().gpus == {"H100": 64, "RTX-4090": 8}


@pytest.mark.parametrize(("gpus", "message"), [
    ("H100-spot: {gpu: B200, count: 8}",
     r"scenario 'spot': gpus\.H100-spot\.gpu: gpu='B200' is not in the catalog; known GPU "
     r"types: .*H100"),
    ("H100-spot: {count: 8}",
     r"gpus: gpu='H100-spot' is not in the catalog; .*; or, for another name of a catalog "
     r"GPU, set gpus\.H100-spot\.gpu"),
    ("A100-80G: {gpu: H100, count: 8}",
     r"gpus\.A100-80G\.gpu='H100': the key 'A100-80G' is itself a catalog GPU type, so it "
     r"cannot rent 'H100'; give this offer a name of its own \(e\.g\. 'H100-spot'\)"),
])
def test_bad_alias_is_named(tmp_path: Path, catalog: Catalog, gpus: str, message: str) -> None:
    scenario = load_scenario(write_scenario(tmp_path, f"name: spot\ngpus: {{{gpus}}}"))
    with pytest.raises(ScenarioError, match=message):
        scenario.check_catalog(catalog)


def test_alias_equal_to_its_own_gpu_is_fine(tmp_path: Path, catalog: Catalog) -> None:
    scenario = load_scenario(write_scenario(tmp_path, "gpus: {H100: {gpu: H100, count: 4}}"))
    assert scenario.offered_gpus(catalog) == {"H100": catalog.gpu("H100")}


def test_empty_alias_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ScenarioError, match=r"gpus\.H100-spot\.gpu=''"):
        load_scenario(write_scenario(tmp_path, "gpus: {H100-spot: {gpu: '', count: 4}}"))
