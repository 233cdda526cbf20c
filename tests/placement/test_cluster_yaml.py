from pathlib import Path

import pytest
import yaml

from placement import gpu_type_from_name, node_resources
from placement._specs import PlacementError

REPO = Path(__file__).resolve().parents[2]


def test_cluster_yaml_passes_rays_schema() -> None:
    import copy

    from ray.autoscaler._private.util import prepare_config, validate_config

    def validate(config: dict) -> None:           # what `ray up` does with the file
        validate_config(prepare_config(copy.deepcopy(config)))

    config = yaml.safe_load((REPO / "cluster.yaml").read_text())
    validate(config)                              # raises on a schema violation
    assert config["provider"]["type"] == "local"
    starts = config["head_start_ray_commands"] + config["worker_start_ray_commands"]
    assert sum("boute node-resources" in c for c in starts) == 2
    broken = {**config, "provider": {**config["provider"], "worker_ips": "10.0.0.11"}}
    with pytest.raises(Exception, match=r"'10\.0\.0\.11' is not of type 'array'"):
        validate(broken)


@pytest.mark.parametrize(("name", "gpu"), [
    ("NVIDIA H100 80GB HBM3", "H100"),
    ("NVIDIA H100 PCIe", "H100-PCIe"),
    ("NVIDIA H200", "H200"),
    ("NVIDIA A100-SXM4-80GB", "A100-80G"),
    ("NVIDIA A100-SXM4-40GB", "A100-40G"),
    ("NVIDIA L40S", "L40S"),
    ("NVIDIA RTX PRO 6000 Blackwell Server Edition", "RTX-PRO-6000"),
    ("NVIDIA GeForce RTX 5090", "RTX-5090"),
    ("NVIDIA GeForce RTX 4090", "RTX-4090"),
    ("Tesla T4", None),
])
def test_device_names_map_to_catalog_types(name: str, gpu: str | None) -> None:
    assert gpu_type_from_name(name) == gpu


def test_node_resources_count_per_type() -> None:
    assert node_resources(["NVIDIA GeForce RTX 4090"] * 8) == {"gpu_type_RTX-4090": 8}
    assert node_resources([]) == {}
    with pytest.raises(PlacementError, match="'Tesla T4' is not a known type; pass --gpu-type"):
        node_resources(["Tesla T4"])
    assert node_resources(["Tesla T4"] * 2, override="L40S") == {"gpu_type_L40S": 2}
