import tomllib
from pathlib import Path

import pytest
import yaml

from placement import gpu_type_from_name, gpu_type_of, node_resources
from placement._specs import PlacementError

REPO = Path(__file__).resolve().parents[2]


def _validate(config: dict) -> None:
    """What `ray up` does with the file before launching anything."""
    import copy

    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(copy.deepcopy(config)))


def test_cluster_yaml_has_a_node_type_per_gpu_type_and_passes_rays_schema() -> None:
    config = yaml.safe_load((REPO / "cluster.yaml").read_text())
    _validate(config)                             # raises on a schema violation
    types = config["available_node_types"]
    gpu_types = {}
    for name, node in types.items():
        res = node["resources"]
        declared = {gpu_type_of(k): v for k, v in res.items() if gpu_type_of(k)}
        if res.get("GPU", 0):
            # one GPU type per node type, counted per GPU as an integer (Ray's schema)
            ((gpu, count),) = declared.items()
            assert count == res["GPU"] and isinstance(count, int), name
            assert node["min_workers"] <= node["max_workers"]
            gpu_types[gpu] = node["node_config"]["InstanceType"]
        else:
            assert not declared and name == config["head_node_type"]
    # H100-spot: an offer under another name (`gpu: H100`), on its own spot nodes.
    assert gpu_types == {"H100": "p5.48xlarge", "RTX-PRO-6000": "g7e.48xlarge",
                         "H100-spot": "p5.48xlarge"}
    assert types["gpu-h100-spot"]["node_config"]["InstanceMarketOptions"] == {
        "MarketType": "spot"}
    assert any("make setup" in c for c in config["setup_commands"])
    broken = {**config, "available_node_types": {**types, "gpu-h100": {
        **types["gpu-h100"], "resources": {"GPU": 8, "gpu_type_H100": 8.5}}}}
    with pytest.raises(Exception, match=r"8\.5 is not of type 'integer'"):
        _validate(broken)


def test_onprem_cluster_yaml_passes_rays_schema() -> None:
    config = yaml.safe_load((REPO / "cluster-onprem.yaml").read_text())
    _validate(config)
    assert config["provider"]["type"] == "local"
    starts = config["head_start_ray_commands"] + config["worker_start_ray_commands"]
    assert sum("boute node-resources" in c for c in starts) == 2
    broken = {**config, "provider": {**config["provider"], "worker_ips": "10.0.0.11"}}
    with pytest.raises(Exception, match=r"'10\.0\.0\.11' is not of type 'array'"):
        _validate(broken)


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


@pytest.mark.parametrize("name", ["cluster.yaml", "cluster-onprem.yaml"])
def test_every_ray_start_runs_serve_in_high_throughput_mode(name: str) -> None:
    from placement import HAPROXY_BINARY_ENV, HIGH_THROUGHPUT_ENV

    config = yaml.safe_load((REPO / name).read_text())
    starts = [c for key in ("head_start_ray_commands", "worker_start_ray_commands")
              for c in config[key] if "ray start" in c]
    assert len(starts) == 2
    for command in starts:
        exports = command.split("ray start")[0]  # set before Ray starts, read by every process
        for var, value in HIGH_THROUGHPUT_ENV.items():
            assert f"{var}={value}" in exports, (name, command)
        # HAProxy runs through the hardening wrapper, which `make setup` installs in the venv
        assert f"{HAPROXY_BINARY_ENV}=$HOME/boute/.venv/bin/boute-haproxy" in exports
        # Ray's metrics on a port chosen deliberately (opened between the nodes only)
        assert "--metrics-export-port=8080" in command.split("ray start")[1]
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["boute-haproxy"] == "placement._haproxy:main"


@pytest.mark.parametrize("name", ["cluster.yaml", "cluster-onprem.yaml"])
def test_every_node_runs_ray_with_token_auth(name: str) -> None:
    text = (REPO / name).read_text()
    config = yaml.safe_load(text)
    starts = [c for key in ("head_start_ray_commands", "worker_start_ray_commands")
              for c in config[key] if "ray start" in c]
    assert len(starts) == 2
    for command in starts:            # read by every Ray process the node starts
        assert "export RAY_AUTH_MODE=token;" in command.split("ray start")[0], (name, command)
    # one token, generated once where `ray up` runs, shipped to Ray's default path on each node
    assert "ray get-auth-token --generate" in text
    assert config["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"
    setup = config["setup_commands"]
    assert setup[0] == "chmod 600 ~/.ray/auth_token"
    # login shells (`ray attach`, `ray exec`): `boute deploy`, `ray job submit` send the token
    assert any("echo 'export RAY_AUTH_MODE=token' >> ~/.bashrc" in c for c in setup)
    assert "disabled" not in text
    # ports bound deliberately: the dashboard on the head's loopback (SSH-forwarded), Serve's
    # ingress on every interface of the head, set explicitly
    (head,) = [c for c in config["head_start_ray_commands"] if "ray start" in c]
    assert "--dashboard-host=127.0.0.1" in head and "0.0.0.0" not in head
    assert "--address auto" in text and "--host 0.0.0.0" in text
