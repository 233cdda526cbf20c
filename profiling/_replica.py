"""Stage 1: one replica (model, GPU type, TP, PP) — memory fit and the time of one engine step.

Notation (per GPU of the last pipeline stage, which also holds the LM head):
    L  = ceil(layers / pp)             layers per stage
    W  = (L * P_layer + V * h) / tp * b  weight bytes read per step (b = dtype bytes)
    F  = 2 * L * P_layer / tp           linear FLOPs per token;  F_lm = 2 * V * h / tp per sample
    k  = kv_bytes_per_token(tp, pp)     KV bytes per cached token
One step processes ``T`` tokens (prefill chunks + one per decoding sequence) and takes

    t_stage = || (F T + F_lm S) / (C e_c), (W + a T) / (B e_m) ||_p     linear layers (roofline)
            + 4 (H / tp) d L A / (C e_a) + k (K_dec + K_pre) / (B e_m)  attention
            + n_k L tau                                                 kernel latencies
            + [tp > 1] 2 L (alpha_tp + 2 (tp-1)/tp * T h b / (X e_x))   TP all-reduce (ring)
    t_step  = pp * t_stage(T / pp, ...) + (pp - 1) * hand-off + o_0 + o_1 * n_seqs
              + [prompt tokens in the step] o_e * layers                  eager launches

with ||a, b||_p = (a^p + b^p)^(1/p) a smooth roofline; C, B, X the spec-sheet compute, memory
and link bandwidths; e_c, e_m, e_a, e_x the achieved fractions (`Efficiency`); A = sum over
prefill chunks of c (s + c / 2) the causal attention work; K_dec the decode sequences' context
tokens; S the sampled sequences; o_0, o_1 the engine's CPU overhead per step and per scheduled
sequence, o_e per layer of a step run without CUDA graphs (`EngineConfig`).
The pipeline term treats a PP replica as pp micro-batches in flight: at low load a token still
crosses all stages (no latency gain), at high load the stages overlap (pp-fold throughput).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from common.errors import InfeasibleConfigError

from ._catalog import GpuType, ModelArch

__all__ = [
    "ENGINE_PROFILES",
    "Efficiency",
    "EngineConfig",
    "MemoryPlan",
    "ReplicaModel",
    "parallel_configs",
]

_GIB = 1024**3


@dataclass(frozen=True)
class Efficiency:
    """Achieved fractions of spec-sheet peaks and fixed latencies (physical, GPU-independent).

    Set by hand against the H100 kernel measurements in
    benchmarks/data/hardware/h100-sxm-reference/ (GEMM, attention, bandwidth) and checked
    against the vLLM rows of benchmarks/data/reference/vllm_runs.csv (calibration.md section 3
    there) by ``benchmarks/calibration.py``. They carry over to GPUs without measurements
    because each one is a ratio to that GPU's own spec sheet (or a fixed latency).
    """

    compute: float = 0.72
    """Large-GEMM TFLOP/s over dense peak (H100 gemm.csv, M >= 1024: 690-770 of 989)."""
    memory: float = 0.85
    """Streamed bytes/s over spec bandwidth (H100 bandwidth.csv: read 3.08 of 3.35 TB/s;
    weight-streaming GEMMs reach ~0.8)."""
    attention_compute: float = 0.45
    """Causal prefill attention TFLOP/s over peak (H100 attention.csv, flash/cuDNN, long seqs)."""
    roofline_sharpness: float = 3.0
    """p of the smooth roofline ``(t_c^p + t_m^p)^(1/p)``: near the ridge a real GEMM is slower
    than ``max(t_c, t_m)`` (H100 gemm.csv at M = 256: 1.3-1.7x the hard roofline; p = 3 gives
    1.26x at the ridge and < 2% away from it)."""
    kernel_latency_s: float = 5e-6
    """Fixed cost per kernel (launch tail, ramp-up): small GEMMs take ~30 us for ~17 us of bytes."""
    kernels_per_layer: int = 6
    """qkv, attention, o, gate_up, down, fused norms."""
    link: float = 0.7
    """All-reduce bus bandwidth over the link's spec bandwidth per direction (NCCL ring)."""
    allreduce_base_s: float = 6e-6
    """Fixed cost of one all-reduce call."""
    hop_latency_nvlink_s: float = 1.5e-6
    """Per ring hop on NVLink."""
    hop_latency_pcie_s: float = 6e-6
    """Per ring hop on PCIe (GeForce cards have no P2P: staged through host memory)."""

    def __post_init__(self) -> None:
        for name in ("compute", "memory", "attention_compute", "link"):
            value = getattr(self, name)
            if not 0 < value <= 1:
                raise ValueError(f"Efficiency.{name}={value!r} must be in (0, 1]")


@dataclass(frozen=True)
class EngineConfig:
    """The serving engine's scheduler and cache settings (vLLM's names) and CPU overhead."""

    name: str = "vllm"
    max_num_seqs: int = 256
    """Most sequences scheduled in one step."""
    max_num_batched_tokens: int = 8192
    """Token budget of one step (prefill chunks + decodes)."""
    enable_chunked_prefill: bool = True
    """True: vLLM v1 (decodes first, prompts chunked into the leftover budget).
    False: vLLM v0 (a step is either whole prompts only, prioritized, or decodes only)."""
    gpu_memory_utilization: float = 0.90
    """Fraction of device memory vLLM may use (weights + activations + KV cache)."""
    max_model_len: int = 8192
    """Longest sequence; the KV cache must hold at least one of these."""
    step_overhead_s: float = 1.5e-3
    """CPU time per step (scheduling, sampling, output processing) not hidden by the GPU."""
    step_overhead_per_seq_s: float = 5e-6
    """Extra CPU time per scheduled sequence per step."""
    eager_layer_overhead_s: float = 0.0
    """CPU time per decoder layer of a step with prompt tokens, when such steps run without
    CUDA graphs (Python kernel launches). vLLM <= 0.6 captured graphs for decode-only batches
    only, so its mixed steps ran eagerly; vLLM v1 captures mixed batches too (0)."""
    frontend_latency_s: float = 0.0
    """Time a request spends outside the engine loop when nothing else competes for the
    front-end: API server / HTTP, tokenization, hand-off to the engine core, the way back of
    the outputs. Added once to TTFT and end-to-end latency, not to TPOT."""
    runtime_reserve_gib: float = 1.5
    """CUDA context, CUDA graphs and NCCL buffers per GPU, outside the KV cache."""

    def __post_init__(self) -> None:
        if self.max_num_seqs < 1 or self.max_num_batched_tokens < 1 or self.max_model_len < 1:
            raise ValueError(f"engine {self.name!r}: max_num_seqs, max_num_batched_tokens and "
                             "max_model_len must be >= 1")
        if not 0 < self.gpu_memory_utilization <= 1:
            raise ValueError(f"engine {self.name!r}: gpu_memory_utilization="
                             f"{self.gpu_memory_utilization!r} must be in (0, 1]")
        for name in ("step_overhead_s", "step_overhead_per_seq_s", "eager_layer_overhead_s",
                     "frontend_latency_s"):
            value = getattr(self, name)
            if not value >= 0:
                raise ValueError(f"engine {self.name!r}: {name}={value!r} must be >= 0 seconds")


# Engine generations. The default is current vLLM (v1 scheduler, chunked prefill, async
# output processing); the others reproduce the engines of the public measurements in
# benchmarks/data/reference/calibration.md section 3 (LambdaLabsML, Sept 2024). The legacy
# single-step engines were CPU bound (the source reports ~60% GPU power on v0.5.4); their
# per-sequence overheads are set so the 8B rows' throughput matches (benchmarks/calibration.py).
ENGINE_PROFILES: dict[str, EngineConfig] = {
    "vllm": EngineConfig(),
    # v0.6.0, num-scheduler-steps 10: CPU work amortized over 10 steps; no chunked prefill;
    # token budget = max_model_len = 2048 in those runs.
    "vllm-0.6-multistep": EngineConfig(
        name="vllm-0.6-multistep", max_num_seqs=256, max_num_batched_tokens=2048,
        enable_chunked_prefill=False, max_model_len=2048, gpu_memory_utilization=0.95,
        step_overhead_s=1.5e-3, step_overhead_per_seq_s=5e-6),
    # v0.6.0, single-step scheduling: CPU bound at large batch.
    "vllm-0.6": EngineConfig(
        name="vllm-0.6", max_num_seqs=256, max_num_batched_tokens=2048,
        enable_chunked_prefill=False, max_model_len=2048, gpu_memory_utilization=0.95,
        step_overhead_s=3e-3, step_overhead_per_seq_s=150e-6),
    # v0.5.4 with chunked prefill (the runs' setting): synchronous output processing, and
    # nearly every step mixes prompt chunks with decodes, so runs without CUDA graphs. Its
    # three CPU constants are fitted on its own two rows (8B TP1 and 70B TP4, 5000 prompts):
    # the per-layer term is what makes 80-layer 70B steps slower than 32-layer 8B ones.
    "vllm-0.5": EngineConfig(
        name="vllm-0.5", max_num_seqs=256, max_num_batched_tokens=512,
        enable_chunked_prefill=True, max_model_len=2048, gpu_memory_utilization=0.95,
        step_overhead_s=2e-3, step_overhead_per_seq_s=100e-6, eager_layer_overhead_s=0.8e-3),
}


@dataclass(frozen=True)
class MemoryPlan:
    """Per-GPU memory of a replica (the most loaded pipeline stage)."""

    usable_gib: float
    weights_gib: float
    activation_gib: float
    reserve_gib: float
    kv_gib: float
    kv_bytes_per_token: int
    kv_capacity_tokens: int


def parallel_configs(gpus_per_node: int, max_gpus: int) -> list[tuple[int, int]]:
    """All (tp, pp) with tp a power of two <= gpus_per_node and tp * pp <= max_gpus."""
    out = []
    tp = 1
    while tp <= gpus_per_node:
        pp = 1
        while tp * pp <= max_gpus:
            out.append((tp, pp))
            pp *= 2
        tp *= 2
    return out


class ReplicaModel:
    """Memory fit and step-time model of one replica; see the module docstring for the math.

    Args:
        model: the architecture.
        gpu: the GPU type (every GPU of the replica is of this type).
        tp: tensor-parallel degree (a power of two inside one node).
        pp: pipeline-parallel degree.
        engine: scheduler/cache settings and CPU overhead.
        efficiency: achieved fractions of the GPU's peaks.

    Raises:
        InfeasibleConfigError: TP/PP invalid for the node, or the weights plus a KV cache for
            one `max_model_len` sequence do not fit in memory; the reason says how to fix it.

    """

    def __init__(
        self,
        model: ModelArch,
        gpu: GpuType,
        tp: int = 1,
        pp: int = 1,
        engine: EngineConfig | None = None,
        efficiency: Efficiency | None = None,
    ) -> None:
        self.model = model
        self.gpu = gpu
        self.tp = tp
        self.pp = pp
        self.engine = engine or ENGINE_PROFILES["vllm"]
        self.efficiency = efficiency or Efficiency()
        label = f"{model.name} on {tp * pp}x{gpu.name} (tp={tp}, pp={pp})"
        self.label = label
        if tp < 1 or tp & (tp - 1):
            raise InfeasibleConfigError(f"{label}: tp={tp} must be a power of two >= 1")
        if pp < 1:
            raise InfeasibleConfigError(f"{label}: pp={pp} must be >= 1")
        if tp > gpu.gpus_per_node:
            raise InfeasibleConfigError(
                f"{label}: tp={tp} exceeds gpus_per_node={gpu.gpus_per_node}; tensor "
                "parallelism stays inside one node, use pp for more GPUs")
        if model.num_heads % tp:
            raise InfeasibleConfigError(f"{label}: num_heads={model.num_heads} is not divisible "
                                        f"by tp={tp}")
        if pp > model.num_layers:
            raise InfeasibleConfigError(f"{label}: pp={pp} exceeds num_layers={model.num_layers}")
        self.memory = self._plan_memory()
        self._precompute()

    # -- memory ------------------------------------------------------------------------------
    def _plan_memory(self) -> MemoryPlan:
        m, g, e, tp, pp = self.model, self.gpu, self.engine, self.tp, self.pp
        layers = -(-m.num_layers // pp)
        b = m.dtype_bytes
        # The stage holding both embedding and LM head (pp = 1) or the heavier of the two.
        head = m.embedding_params + m.lm_head_params if pp == 1 else m.embedding_params
        weights = (layers * m.params_per_layer + head) / tp * b
        # Peak activations of a max_num_batched_tokens forward pass: the MLP intermediates
        # (2 * inter / tp) plus a few hidden-size buffers, and fp32 logits of sampled rows.
        tokens = e.max_num_batched_tokens
        act = tokens * (2 * m.intermediate_size / tp + 4 * m.hidden_size) * b
        act += min(e.max_num_seqs, tokens) * m.vocab_size / tp * 4
        usable = g.memory_bytes * e.gpu_memory_utilization
        reserve = e.runtime_reserve_gib * _GIB
        kv = usable - weights - act - reserve
        per_token = m.kv_bytes_per_token(tp, pp)
        capacity = max(0, int(kv // per_token))
        plan = MemoryPlan(usable / _GIB, weights / _GIB, act / _GIB, reserve / _GIB,
                          max(kv, 0.0) / _GIB, per_token, capacity)
        if capacity < e.max_model_len:
            need = math.ceil(m.weight_bytes / (usable - act - reserve)) if usable > act + reserve \
                else math.inf
            hint = (f"use tp*pp >= {need}" if math.isfinite(need) else "use a bigger GPU")
            if kv <= 0:
                why = (f"weights need {weights / _GIB:.1f} GiB per GPU but only "
                       f"{(usable - act - reserve) / _GIB:.1f} GiB is usable "
                       f"({g.memory_gib:g} GiB x {e.gpu_memory_utilization:.2f} - activations "
                       f"and runtime)")
            else:
                why = (f"KV cache holds {capacity} tokens, less than max_model_len="
                       f"{e.max_model_len}")
            raise InfeasibleConfigError(f"{self.label} does not fit: {why}; {hint}")
        return plan

    # -- timing ------------------------------------------------------------------------------
    def _precompute(self) -> None:
        m, g, eff, tp, pp = self.model, self.gpu, self.efficiency, self.tp, self.pp
        layers = -(-m.num_layers // pp)
        b = m.dtype_bytes
        h = m.hidden_size
        self._layers = layers
        self._sharpness = eff.roofline_sharpness
        self._inv_compute = 1.0 / (g.bf16_tflops * 1e12 * eff.compute)
        self._inv_mem = 1.0 / (g.memory_bandwidth_gbps * 1e9 * eff.memory)
        self._inv_attn = 1.0 / (g.bf16_tflops * 1e12 * eff.attention_compute)
        self._weight_bytes = (layers * m.params_per_layer + m.vocab_size * h) / tp * b
        self._flops_per_token = 2.0 * layers * m.params_per_layer / tp
        self._flops_per_sample = 2.0 * m.vocab_size * h / tp
        # Activation traffic per token: hidden in/out of each GEMM and the MLP intermediates.
        self._act_bytes_per_token = layers * b * (6 * h + 3 * m.intermediate_size / tp)
        self._attn_flops_per_work = 4.0 * (m.num_heads / tp) * m.head_dim * layers
        self._kv_bytes_per_token = m.kv_bytes_per_token(tp, pp)
        self._kernel_s = eff.kernels_per_layer * layers * eff.kernel_latency_s
        self._eager_s = self.engine.eager_layer_overhead_s * m.num_layers
        hop = eff.hop_latency_nvlink_s if g.interconnect == "nvlink" else eff.hop_latency_pcie_s
        link_bps = g.link_bandwidth_gbps * 1e9 * eff.link
        if tp > 1:
            alpha = eff.allreduce_base_s + 2 * (tp - 1) * hop
            self._ar_fixed_s = 2 * layers * alpha
            self._ar_per_token_s = 2 * layers * 2 * (tp - 1) / tp * h * b / link_bps
        else:
            self._ar_fixed_s = self._ar_per_token_s = 0.0
        # Pipeline hand-off: one send of the hidden states per stage boundary.
        self._pp_fixed_s = (pp - 1) * (eff.allreduce_base_s + hop)
        self._pp_per_token_s = (pp - 1) * h * b / link_bps

    def step_time_s(
        self,
        prefill_tokens: float = 0.0,
        prefill_attn_work: float = 0.0,
        prefill_kv_tokens: float = 0.0,
        decode_seqs: float = 0.0,
        decode_ctx_tokens: float = 0.0,
        sampled_seqs: float | None = None,
    ) -> float:
        """Time of one engine step, seconds.

        Args:
            prefill_tokens: prompt tokens computed this step (sum of chunk lengths c).
            prefill_attn_work: sum over chunks of c * (s + c / 2), s = tokens already cached.
            prefill_kv_tokens: sum over chunks of s + c (KV read and written by the chunks).
            decode_seqs: sequences decoding one token each.
            decode_ctx_tokens: their total context length (KV tokens read).
            sampled_seqs: sequences that sample a token (default: decodes, plus none for
                prefill chunks; pass the completed prompts to count their first token).

        Returns:
            Seconds for the step, including the engine's CPU overhead.

        """
        pp = self.pp
        sampled = decode_seqs if sampled_seqs is None else sampled_seqs
        tokens = (prefill_tokens + decode_seqs) / pp
        t_compute = ((self._flops_per_token * tokens + self._flops_per_sample * sampled / pp)
                     * self._inv_compute)
        t_memory = (self._weight_bytes + self._act_bytes_per_token * tokens) * self._inv_mem
        p = self._sharpness
        linear: float = (t_compute**p + t_memory**p) ** (1.0 / p)
        attention = (self._attn_flops_per_work * prefill_attn_work / pp * self._inv_attn
                     + self._kv_bytes_per_token * (decode_ctx_tokens + prefill_kv_tokens) / pp
                     * self._inv_mem)
        stage = (linear + attention + self._kernel_s + self._ar_fixed_s
                 + self._ar_per_token_s * tokens)
        handoff = self._pp_fixed_s + self._pp_per_token_s * tokens
        seqs = decode_seqs + (1.0 if prefill_tokens > 0 and sampled_seqs is None else 0.0)
        overhead = self.engine.step_overhead_s + self.engine.step_overhead_per_seq_s * max(
            seqs, sampled)
        if prefill_tokens > 0:
            overhead += self._eager_s
        return pp * stage + handoff + overhead

    def prefill_time_s(self, input_tokens: int) -> float:
        """One whole prompt prefilled alone (the first token's compute time)."""
        return self.step_time_s(prefill_tokens=input_tokens,
                                prefill_attn_work=input_tokens * input_tokens / 2.0,
                                prefill_kv_tokens=input_tokens, sampled_seqs=1)

    def decode_time_s(self, batch: int, context_tokens: int) -> float:
        """One decode step of `batch` sequences, each with `context_tokens` cached tokens."""
        return self.step_time_s(decode_seqs=batch, decode_ctx_tokens=batch * context_tokens)

    @property
    def num_gpus(self) -> int:
        """GPUs one replica occupies (tp * pp)."""
        return self.tp * self.pp

    @property
    def price_per_hour(self) -> float:
        """Rental price of one replica, $/hour."""
        return self.num_gpus * self.gpu.price_per_hour


def engine_profile(name: str, **overrides: object) -> EngineConfig:
    """A named engine profile with some fields replaced.

    Raises:
        KeyError: unknown profile name (the message lists the known ones).

    """
    if name not in ENGINE_PROFILES:
        raise KeyError(f"engine profile {name!r} is unknown; known: {sorted(ENGINE_PROFILES)}")
    return replace(ENGINE_PROFILES[name], **overrides)  # type: ignore[arg-type]
