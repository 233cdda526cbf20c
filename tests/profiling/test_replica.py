from __future__ import annotations

import pytest

from common.errors import InfeasibleConfigError
from profiling import Catalog, EngineConfig, ReplicaModel
from tests.conftest import make_replica


@pytest.mark.parametrize(("model", "gpu", "tp"), [
    ("llama-3.1-8b", "H100", 1), ("llama-3.1-8b", "RTX-4090", 1),
    ("llama-3.1-70b", "H100", 4), ("llama-3.1-70b", "RTX-PRO-6000", 2),
])
def test_decode_is_no_faster_than_streaming_the_weights(
        catalog: Catalog, model: str, gpu: str, tp: int) -> None:
    r = make_replica(catalog, model, gpu, tp)
    g = catalog.gpu(gpu)
    bound_s = catalog.model(model).weight_bytes / tp / (g.memory_bandwidth_gbps * 1e9)
    t = r.decode_time_s(batch=1, context_tokens=100)
    assert t >= bound_s
    assert t < 2.0 * bound_s  # one request is memory bound: within 2x of the weight stream


@pytest.mark.parametrize("tokens", [512, 4096])
def test_prefill_is_no_faster_than_peak_compute(catalog: Catalog, tokens: int) -> None:
    r = make_replica(catalog, "llama-3.1-8b", "H100")
    flops = 2 * catalog.model("llama-3.1-8b").num_params * tokens
    assert r.prefill_time_s(tokens) >= flops / 989.4e12


def test_weights_per_gpu(catalog: Catalog) -> None:
    # 8.03e9 weights x 2 bytes = 14.96 GiB on one GPU; 70B at TP 4: 131.4 / 4 = 32.9 GiB.
    assert make_replica(catalog).memory.weights_gib == pytest.approx(14.96, abs=0.01)
    assert make_replica(catalog, "llama-3.1-70b", "H100", 4).memory.weights_gib == \
        pytest.approx(32.85, abs=0.01)


def test_70b_on_one_4090_is_infeasible_with_the_reason(catalog: Catalog) -> None:
    with pytest.raises(InfeasibleConfigError,
                       match=r"llama-3.1-70b on 1xRTX-4090.*does not fit: weights need 131.4 GiB "
                             r"per GPU.*use tp\*pp >= 8"):
        make_replica(catalog, "llama-3.1-70b", "RTX-4090")


def test_tp_beyond_a_node_is_infeasible(catalog: Catalog) -> None:
    with pytest.raises(InfeasibleConfigError, match=r"tp=16 exceeds gpus_per_node=8"):
        make_replica(catalog, "llama-3.1-70b", "H100", tp=16)


def test_tp_speeds_decode_and_pcie_all_reduce_costs_more(catalog: Catalog) -> None:
    one = make_replica(catalog, "llama-3.1-8b", "H100", 1).decode_time_s(8, 500)
    two = make_replica(catalog, "llama-3.1-8b", "H100", 2).decode_time_s(8, 500)
    assert two < one
    # Same model on PCIe cards: the all-reduce share of a TP-2 step is larger than on NVLink.
    pcie = make_replica(catalog, "llama-3.1-8b", "RTX-PRO-6000", 2)
    nvl = make_replica(catalog, "llama-3.1-8b", "H100", 2)
    assert pcie._ar_fixed_s > nvl._ar_fixed_s


def test_pipeline_does_not_cut_single_request_latency(catalog: Catalog) -> None:
    pp1 = make_replica(catalog, "llama-3.1-8b", "H100", 1, 1).decode_time_s(1, 100)
    pp2 = make_replica(catalog, "llama-3.1-8b", "H100", 1, 2).decode_time_s(1, 100)
    assert pp2 >= 0.95 * pp1


def test_eager_layer_overhead_costs_steps_with_prompt_tokens_only(catalog: Catalog) -> None:
    from dataclasses import replace

    from profiling._replica import engine_profile

    base = engine_profile("vllm")
    eager = replace(base, eager_layer_overhead_s=1e-3)
    model, gpu = catalog.model("llama-3.1-70b"), catalog.gpu("H100")
    a, b = ReplicaModel(model, gpu, 4, 1, base), ReplicaModel(model, gpu, 4, 1, eager)
    mixed = {"prefill_tokens": 256, "prefill_attn_work": 256 * 128.0, "prefill_kv_tokens": 256,
             "decode_seqs": 64, "decode_ctx_tokens": 64 * 500}
    # 80 layers x 1 ms on a step with a prompt chunk; nothing on a decode-only step
    assert b.step_time_s(**mixed) - a.step_time_s(**mixed) == pytest.approx(0.080)
    assert b.decode_time_s(64, 500) == a.decode_time_s(64, 500)



@pytest.mark.parametrize("field", ["step_overhead_s", "step_overhead_per_seq_s",
                                   "eager_layer_overhead_s", "frontend_latency_s"])
def test_negative_engine_time_is_rejected_with_its_name(field: str) -> None:
    with pytest.raises(ValueError, match=rf"engine 'vllm': {field}=-0.001 must be >= 0"):
        EngineConfig(**{field: -1e-3})  # type: ignore[arg-type]
