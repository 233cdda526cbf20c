"""Offers under another name (``H100-spot: {gpu: H100}``) serve: their own nodes, H100 engines."""

from __future__ import annotations

from app.main import Stack, plan_specs, stack_config
from tuning import Plan


def _plan() -> Plan:
    return Plan.from_dict({
        "routing": {"strong_share": 0.4, "threshold": 0.5},
        "groups": [
            {"model": "llama-3.1-70b", "gpu": "H100", "tp": 4, "pp": 1, "replicas": 1,
             "share": 0.5},
            {"model": "llama-3.1-70b", "gpu": "H100-spot", "tp": 4, "pp": 1, "replicas": 2,
             "share": 0.5},
            {"model": "llama-3.1-8b", "gpu": "RTX-4090", "tp": 1, "pp": 1, "replicas": 1,
             "share": 1.0}],
        "scenario": {"name": "spot", "models": {"weak": "llama-3.1-8b",
                                                "strong": "llama-3.1-70b"},
                     "spec": {"gpus": {
            "H100": {"count": 8}, "H100-spot": {"gpu": "H100", "count": 8,
                                                "price_per_hour": 1.35},
            "RTX-4090": {"count": 8}}}}})


def test_a_spot_offer_is_placed_on_its_own_nodes_with_h100_engines() -> None:
    plan = _plan()
    assert plan.catalog_gpu("H100-spot") == "H100"
    assert plan.catalog_gpu("RTX-4090") == "RTX-4090"
    specs = {s.gpu: s for s in plan_specs(plan, backend="emulated")}
    spot = specs["H100-spot"]
    # Spot nodes declare gpu_type_H100-spot; the replica is an H100 (8 per node, TP4 packs).
    assert spot.bundles == [{"GPU": 1.0, "gpu_type_H100-spot": 1.0}] * 4
    assert spot.catalog_gpu == "H100" and spot.strategy == "STRICT_PACK"
    assert specs["H100"].catalog_gpu == "H100"
    config = stack_config(plan, Stack(backend="emulated"))
    groups = {a["name"]: a["args"]["group"] for a in config["applications"][1:]}
    spot_args = next(g for g in groups.values() if g["gpu"] == "H100-spot")
    assert spot_args["device_gpu"] == "H100"
    assert all("device_gpu" not in g for g in groups.values() if g["gpu"] != "H100-spot")
