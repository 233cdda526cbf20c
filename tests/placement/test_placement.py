from pathlib import Path

import pytest

from placement import (
    PlacementError,
    check_fit,
    gpu_counts_in,
    gpu_resource,
    gpu_type_of,
    gpu_types_in,
    group_specs,
)
from tuning import Group, Plan, Routing

PLAN = Plan(Routing(0.3), (
    Group("llama-3.1-8b", "RTX-4090", 1, 1, 3, 1.0),
    Group("llama-3.1-70b", "H100", 4, 1, 2, 0.75),
    Group("llama-3.1-70b", "RTX-PRO-6000", 4, 2, 1, 0.25),
))
SOURCES = {"llama-3.1-8b": "meta-llama/Llama-3.1-8B-Instruct",
           "llama-3.1-70b": "meta-llama/Llama-3.1-70B-Instruct"}
NODES = {"H100": 8, "RTX-PRO-6000": 4, "RTX-4090": 8}


def test_resource_names_round_trip() -> None:
    assert gpu_resource("RTX-4090") == "gpu_type_RTX-4090"
    assert gpu_type_of("gpu_type_RTX-4090") == "RTX-4090"
    assert gpu_type_of("GPU") is None
    with pytest.raises(ValueError, match="cannot name a Ray resource"):
        gpu_resource("RTX 4090")


def test_specs_bundles_and_llm_config() -> None:
    small, big, split = group_specs(PLAN, sources=SOURCES, gpus_per_node=NODES)
    assert [s.name for s in (small, big, split)] == [
        "llama-3.1-8b-RTX-4090-tp1pp1", "llama-3.1-70b-H100-tp4pp1",
        "llama-3.1-70b-RTX-PRO-6000-tp4pp2"]
    assert big.bundles == [{"GPU": 1.0, "gpu_type_H100": 1.0}] * 4
    assert big.strategy == "STRICT_PACK"
    assert split.strategy == "PACK" and len(split.bundles) == 8      # 8 GPUs > 4 per node
    cfg = big.llm_config()
    assert cfg["engine_kwargs"] == {"tensor_parallel_size": 4, "pipeline_parallel_size": 1}
    assert cfg["deployment_config"] == {"num_replicas": 2}
    assert cfg["model_loading_config"] == {"model_id": "llama-3.1-70b",
                                           "model_source": SOURCES["llama-3.1-70b"]}
    assert cfg["placement_group_config"]["strategy"] == "STRICT_PACK"


def test_spec_errors_name_the_field() -> None:
    with pytest.raises(PlacementError, match=r"groups\[0\]\.model='llama-3.1-8b' has no weights"):
        group_specs(PLAN, sources={}, gpus_per_node=NODES)
    with pytest.raises(PlacementError, match=r"groups\[1\]: tp=4 exceeds the 2 GPUs"):
        group_specs(PLAN, sources=SOURCES, gpus_per_node={**NODES, "H100": 2})


def test_fit_names_the_shortfall_per_gpu_type() -> None:
    specs = group_specs(PLAN, sources=SOURCES, gpus_per_node=NODES)
    h100 = {"GPU": 8, "gpu_type_H100": 8}
    pro = {"GPU": 4, "gpu_type_RTX-PRO-6000": 4}
    rtx = {"GPU": 8, "gpu_type_RTX-4090": 8}
    assert check_fit(specs, [h100, pro, pro, rtx]) == []
    assert gpu_types_in([h100, pro, rtx]) == NODES
    # Largest node per type vs the whole cluster: two 4-GPU PRO nodes are 4 per node, 8 in all.
    assert gpu_types_in([h100, pro, pro, rtx]) == NODES
    assert gpu_counts_in([h100, pro, pro, rtx]) == {"H100": 8, "RTX-PRO-6000": 8, "RTX-4090": 8}
    # One PRO node short: 8 needed, 4 there.
    (short,) = check_fit(specs, [h100, pro, rtx])
    assert (short.gpu, short.needed, short.available) == ("RTX-PRO-6000", 8, 4)
    assert "add 4 RTX-PRO-6000 GPU(s)" in str(short)
    # Enough H100s in total, but split 4+2+2: the second TP4 replica has no node.
    split = [{"GPU": 4, "gpu_type_H100": 4}, {"GPU": 2, "gpu_type_H100": 2},
             {"GPU": 2, "gpu_type_H100": 2}]
    (short,) = check_fit(specs, [*split, pro, pro, rtx])
    assert short.gpu == "H100" and "needs 4 H100 GPUs on one node" in short.detail


def test_ray_temp_dir_keeps_short_paths_and_shortens_deep_ones(tmp_path: Path) -> None:
    import tempfile

    from placement import ray_temp_dir
    from placement._local import MAX_RAY_TEMP_CHARS

    # /tmp/tmp.AJ4t8oGw4H/build/ray-tmp-chaos (38 chars) put Ray's dash_MetricsHead socket at
    # 108 bytes, one past the AF_UNIX limit: the dashboard failed to start.
    deep = tmp_path / ("d" * 40) / "build" / "ray-tmp"
    got = ray_temp_dir(deep)
    assert got.parent == Path("/tmp") and got.name.startswith("boute-ray-")
    assert len(str(got)) <= MAX_RAY_TEMP_CHARS and got.is_dir()
    assert ray_temp_dir(deep) == got                 # the same stand-in every time
    short = Path(tempfile.mkdtemp(prefix="b", dir="/tmp"))     # /tmp/bXXXXXXXX
    try:
        assert ray_temp_dir(short) == short         # short enough: kept
    finally:
        short.rmdir()
    assert ray_temp_dir(deep.parent / "other") != got
