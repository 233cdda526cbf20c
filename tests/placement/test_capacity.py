"""What an autoscaling cluster may hold: the fit check of `boute deploy` and `serve run` counts
the nodes cluster.yaml lets the autoscaler launch, not only those up now."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]


def test_cluster_yaml_node_types_are_what_its_autoscaler_may_launch() -> None:
    from placement import gpu_counts_in, nodes_of_node_types

    types = yaml.safe_load((REPO / "cluster.yaml").read_text())["available_node_types"]
    nodes = nodes_of_node_types(types)
    # head: max_workers 0 (it is the head); every GPU type: max_workers nodes of its resources
    want = {name: spec["max_workers"] for name, spec in types.items()}
    assert len(nodes) == sum(want.values())
    counts = gpu_counts_in(nodes)
    for spec in types.values():
        for key, per_node in spec["resources"].items():
            if key.startswith("gpu_type_"):
                assert counts[key.removeprefix("gpu_type_")] >= per_node * spec["max_workers"]
    assert counts["H100"] >= 16       # gpu-h100: 2 nodes of 8 (plus the spot type's own key)


def test_node_types_without_resources_or_workers_add_nothing() -> None:
    from placement import nodes_of_node_types

    assert nodes_of_node_types({"a": {"resources": {"GPU": 8}, "max_workers": 0},
                                "b": {"max_workers": 3},
                                "c": {"resources": {"GPU": 2, "gpu_type_L4": 2},
                                      "max_workers": 2}}) == [
        {"GPU": 2.0, "gpu_type_L4": 2.0}, {"GPU": 2.0, "gpu_type_L4": 2.0}]


def test_launchable_nodes_read_the_bootstrap_config_of_ray_up(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import ray

    from placement import launchable_nodes

    def no_gcs() -> None:
        raise RuntimeError("not connected")

    monkeypatch.setattr(ray._private.state.state, "get_cluster_config", no_gcs)
    assert launchable_nodes(str(tmp_path / "missing.yaml")) == []
    config = tmp_path / "ray_bootstrap_config.yaml"
    config.write_text("available_node_types:\n  gpu:\n    resources: {GPU: 4, "
                      "gpu_type_A100: 4}\n    max_workers: 1\n")
    assert launchable_nodes(str(config)) == [{"GPU": 4.0, "gpu_type_A100": 4.0}]
    config.write_text(": not yaml : [")
    assert launchable_nodes(str(config)) == []


def test_a_plan_waits_for_the_autoscaler_rather_than_failing(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A `ray up` cluster with no GPU worker up yet: the plan fits what it may launch."""
    import placement._cluster as cluster
    from placement import GroupSpec, capacity_nodes, check_fit

    head = {"CPU": 16.0}
    monkeypatch.setattr(cluster, "live_nodes", lambda: [head])
    monkeypatch.setattr(cluster, "launchable_nodes",
                        lambda bootstrap_config=cluster.BOOTSTRAP_CONFIG: [
                            {"GPU": 8.0, "gpu_type_H100": 8.0}] * 2)
    nodes = capacity_nodes()
    assert nodes[0] == head and len(nodes) == 3
    def spec(replicas: int) -> GroupSpec:
        return GroupSpec(name="g", model="m", source="m", gpu="H100", tp=4, pp=1,
                         replicas=replicas, share=1.0, strategy="STRICT_PACK")

    assert check_fit([spec(4)], nodes) == []               # 16 H100s launchable
    short = check_fit([spec(5)], nodes)
    assert [(s.needed, s.available) for s in short] == [(20, 16)]
