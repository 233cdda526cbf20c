from __future__ import annotations

import json
from pathlib import Path

import pytest

from common.errors import CatalogError
from profiling import Catalog, load_catalog, load_hf_config, parallel_configs


def test_embedded_catalog_has_the_required_gpus(catalog: Catalog) -> None:
    required = {"H100", "RTX-PRO-6000", "RTX-5090", "RTX-4090", "A100-80G", "A100-40G", "L40S",
                "H100-PCIe", "H200"}
    assert required <= set(catalog.gpus)
    assert catalog.gpu("H100").price_per_hour == 2.69  # the paper's example price


@pytest.mark.parametrize(("model", "params"), [
    # Published parameter counts of the HF checkpoints.
    ("llama-3.1-8b", 8_030_261_248),
    ("llama-3.1-70b", 70_553_706_496),
    ("llama-3.1-405b", 405_853_388_800),
])
def test_parameter_counts_match_the_checkpoints(catalog: Catalog, model: str, params: int) -> None:
    assert catalog.model(model).num_params == params


@pytest.mark.parametrize(("tp", "pp", "expected"), [
    (1, 1, 2 * 8 * 128 * 2 * 32),   # K and V, 8 KV heads, head_dim 128, bf16, 32 layers
    (2, 1, 2 * 4 * 128 * 2 * 32),
    (16, 1, 2 * 1 * 128 * 2 * 32),  # tp > kv heads: one replicated KV head per GPU
    (1, 2, 2 * 8 * 128 * 2 * 16),
])
def test_kv_bytes_per_token(catalog: Catalog, tp: int, pp: int, expected: int) -> None:
    assert catalog.model("llama-3.1-8b").kv_bytes_per_token(tp, pp) == expected


def test_negative_memory_is_rejected_with_field_and_value(tmp_path: Path) -> None:
    bad = tmp_path / "gpus.yaml"
    bad.write_text("- {name: X1, memory_gib: -1, memory_bandwidth_gbps: 100, bf16_tflops: 10,"
                   " interconnect: pcie, link_bandwidth_gbps: 16, gpus_per_node: 8,"
                   " price_per_hour: 1}\n")
    with pytest.raises(CatalogError, match=r"gpu 'X1': memory_gib=-1 must be a number > 0"):
        load_catalog([bad])


def test_unknown_field_and_unknown_name(tmp_path: Path, catalog: Catalog) -> None:
    bad = tmp_path / "gpus.yaml"
    bad.write_text("- {name: X1, memory_gb: 10}\n")
    with pytest.raises(CatalogError, match=r"unknown field\(s\) \['memory_gb'\]"):
        load_catalog([bad])
    with pytest.raises(CatalogError, match=r"gpu='B200' is not in the catalog; known GPU types"):
        catalog.gpu("B200")


def test_user_file_overrides_an_entry(tmp_path: Path) -> None:
    override = tmp_path / "gpus.yaml"
    override.write_text("- {name: RTX-4090, memory_gib: 24, memory_bandwidth_gbps: 1008,"
                        " bf16_tflops: 165.2, interconnect: pcie, link_bandwidth_gbps: 32,"
                        " gpus_per_node: 8, price_per_hour: 0.25}\n")
    assert load_catalog([override]).gpu("RTX-4090").price_per_hour == 0.25


def test_hf_config_loading(tmp_path: Path) -> None:
    model_dir = tmp_path / "tiny-llama"
    model_dir.mkdir()
    (model_dir / "config.json").write_text(json.dumps({
        "num_hidden_layers": 2, "hidden_size": 128, "num_attention_heads": 4,
        "num_key_value_heads": 2, "intermediate_size": 256, "vocab_size": 4096,
        "torch_dtype": "bfloat16", "max_position_embeddings": 2048}))
    arch = load_hf_config(model_dir / "config.json")
    assert (arch.name, arch.head_dim, arch.num_kv_heads) == ("tiny-llama", 32, 2)
    # Directory names resolve through the catalog too.
    assert load_catalog().model(str(model_dir)).num_layers == 2
    (model_dir / "config.json").write_text(json.dumps({"hidden_size": 8}))
    with pytest.raises(CatalogError, match=r"missing key\(s\) \['num_hidden_layers'"):
        load_hf_config(model_dir / "config.json")


def test_parallel_configs() -> None:
    assert parallel_configs(8, 8) == [(1, 1), (1, 2), (1, 4), (1, 8), (2, 1), (2, 2), (2, 4),
                                      (4, 1), (4, 2), (8, 1)]
    assert parallel_configs(8, 2) == [(1, 1), (1, 2), (2, 1)]
