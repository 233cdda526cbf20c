"""Prefill/decode disaggregation: the KV transfer, and a pool pair simulated end to end.

A disaggregated group of one model is a *prefill pool* (``n_p`` replicas of one config) and a
*decode pool* (``n_d`` replicas of another, possibly on another GPU type), as vLLM serves them
with a KV connector (NIXL) behind its P/D proxy: the proxy sends each request to a prefill
instance with ``max_tokens = 1``, the decode instance pulls the prompt's KV, then generates
the whole answer, which the client streams from it.

Notation: request i arrives at a_i with p_i prompt and o_i output tokens; b the model's dtype
bytes, L its layers, H_kv its KV heads, d its head dim.

* **KV bytes**: ``B_i = 2 (K and V) L H_kv d b p_i`` (`kv_transfer_bytes`); Llama-3.1-70B:
  ``2 x 80 x 8 x 128 x 2 = 327,680`` bytes a token, 655 MB for a 2,000-token prompt.
* **Link** (`kv_link`): inside one node (same GPU type, the prefill and the decode replica's
  GPUs fit one node) each of the ``min(g_p, g_d)`` GPU pairs sends its shard over the node's
  GPU link (NVLink or PCIe): ``beta = min(g_p, g_d) X e_x``; between nodes each replica gets
  its GPUs' part of its node's network, ``beta = min(g_p N_p / G_p, g_d N_d / G_d) e_n``
  (g GPUs per replica, G per node, N the node's `GpuType.network_gbps`). A transfer of B bytes
  takes ``t_kv = ell + B / beta`` (ell: the connector's fixed latency, `KV_LINK_LATENCY_S`).
* **Prefill pool**: request i goes to prefill replica ``i mod n_p`` (the proxy's round robin),
  which serves it as a one-token request with the full token budget per step
  (`profiling._simulator`); its prompt is done at f_i.
* **Transfer**, overlapped with the next prefills as vLLM's connectors do: the engine goes on
  at once; the transfers of one prefill replica share its link, first done first sent:
  ``s_i = max(f_i, e_prev)``, ``e_i = s_i + B_i / beta``, the KV is ready at ``r_i = e_i + ell``.
* **Decode pool**: requests go round robin, in order of r_i, to the decode replicas, which
  admit a request when its whole context fits their KV cache (``max_num_seqs``, the 1%
  watermark, recompute preemption: `BatchScheduler`); its first ``p_i - 1`` tokens' KV is
  present (`RemoteKv`), so admission computes one token (the last prompt token, as vLLM does
  for a full cache hit) and samples the first output token; the batch is otherwise decodes.
  A preempted request is recomputed on the decode instance.
* **Latencies** (frontend latency D once): ``TTFT_i = F1_i - a_i + D`` with F1_i the decode
  instance's first token, ``TPOT_i = (F_i - F1_i) / (o_i - 1)``, latency ``F_i - a_i + D``.

The co-located model is the special case without transfer: both must agree where they must
(``tests/profiling/test_disagg.py``): a one-token prefill-only replica is the co-located
replica's prompt phase, and with an infinitely fast link the pool pair's throughput is
``min(n_p mu_p, n_d mu_d)``, mu the prefill-only and decode-only capacities.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import numpy.typing as npt

from ._catalog import ModelArch
from ._replica import ReplicaModel
from ._simulator import _backlog_grows, _fit_lengths, _serve
from ._workload import Trace

__all__ = [
    "KV_LINK_LATENCY_S",
    "NETWORK_EFFICIENCY",
    "KvLink",
    "PdResult",
    "RemoteKv",
    "decode_capacity_rps",
    "decode_only",
    "kv_link",
    "kv_ready_s",
    "kv_transfer_bytes",
    "prefill_capacity_rps",
    "prefill_only",
    "simulate_pd",
]

FloatArray = npt.NDArray[np.float64]

KV_LINK_LATENCY_S = 2e-3
"""Fixed cost of one KV transfer, s: the connector's control round trip (the decode side asks
for the blocks, the prefill side frees them when read) on top of the RDMA reads, which start
in ~10 us. An assumption of this model (vLLM's NIXL connector publishes no figure); at 2 ms it
is small next to a prefill of a few hundred tokens and to the transfer of a long prompt."""
NETWORK_EFFICIENCY = 0.8
"""Achieved fraction of a node's network line rate for large RDMA reads (UCX/NIXL over
InfiniBand or RoCE; an assumption, between NCCL's ~0.7 bus bandwidth and ~0.9 for bulk reads)."""

LinkKind = Literal["intra-node", "network", "ideal"]


@dataclass(frozen=True)
class KvLink:
    """The link a prefill replica sends its requests' KV over, to a decode replica.

    Attributes:
        bandwidth_bytes_per_s: beta, achieved bytes/s of one transfer (inf: instantaneous).
        latency_s: ell, fixed seconds per transfer.
        kind: ``intra-node`` (GPU link), ``network`` (between nodes) or ``ideal``.

    """

    bandwidth_bytes_per_s: float
    latency_s: float = KV_LINK_LATENCY_S
    kind: LinkKind = "network"

    def __post_init__(self) -> None:
        if not self.bandwidth_bytes_per_s > 0:
            raise ValueError(f"KvLink: bandwidth_bytes_per_s={self.bandwidth_bytes_per_s!r} "
                             "must be > 0")
        if not (self.latency_s >= 0 and math.isfinite(self.latency_s)):
            raise ValueError(f"KvLink: latency_s={self.latency_s!r} must be >= 0 seconds")

    @classmethod
    def ideal(cls) -> KvLink:
        """An infinitely fast link: no bandwidth limit, no latency."""
        return cls(math.inf, 0.0, "ideal")

    def wire_s(self, nbytes: float) -> float:
        """Seconds the link is busy sending `nbytes`: ``B / beta``."""
        beta = self.bandwidth_bytes_per_s
        return 0.0 if math.isinf(beta) else nbytes / beta

    def transfer_s(self, nbytes: float) -> float:
        """``t_kv = ell + B / beta``, seconds, for one transfer alone on the link."""
        return self.latency_s + self.wire_s(nbytes)


def kv_transfer_bytes(model: ModelArch, prompt_tokens: int | float) -> float:
    """Bytes of a prompt's KV cache: ``2 L H_kv d b p`` (all layers, all KV heads).

    Whatever the TP/PP of either pool the whole cache crosses once (each shard once).
    """
    return float(model.kv_bytes_per_token(1, 1)) * prompt_tokens


def kv_link(prefill: ReplicaModel, decode: ReplicaModel, *, same_node: bool | None = None,
            latency_s: float = KV_LINK_LATENCY_S) -> KvLink:
    """The link between a prefill replica and a decode replica (module docstring).

    Args:
        prefill: the prefill replica.
        decode: the decode replica.
        same_node: whether they share a node; None: when both are of one GPU type and their
            GPUs fit one node (``g_p + g_d <= G``), as a placement that packs each decode
            replica next to its prefill replicas can do.
        latency_s: ell, seconds per transfer.

    Raises:
        ValueError: `same_node` for replicas of two GPU types.

    """
    gp, gd = prefill.gpu, decode.gpu
    np_gpus, nd_gpus = prefill.num_gpus, decode.num_gpus
    if same_node is None:
        same_node = gp.name == gd.name and np_gpus + nd_gpus <= gp.gpus_per_node
    if same_node:
        if gp.name != gd.name:
            raise ValueError(f"same_node=True: {gp.name} and {gd.name} GPUs are never in one "
                             "node of the catalog")
        beta = min(np_gpus, nd_gpus) * gp.link_bandwidth_gbps * 1e9 * prefill.efficiency.link
        return KvLink(beta, latency_s, "intra-node")
    share_p = np_gpus / gp.gpus_per_node * gp.network_gbps
    share_d = nd_gpus / gd.gpus_per_node * gd.network_gbps
    return KvLink(min(share_p, share_d) * 1e9 * NETWORK_EFFICIENCY, latency_s, "network")


class RemoteKv:
    """A decode instance's KV received from the prefill pool (a `KvCache` for the scheduler).

    At a request's first admission all its prompt tokens but the last are present
    (``p - 1``: vLLM recomputes the last token of a fully cached prompt, which samples the
    first output token); after a preemption nothing is (the recompute is local).
    """

    def __init__(self) -> None:
        self._admitted: set[int] = set()

    def cached_tokens(self, rid: int, prompt_tokens: int) -> int:
        """``p - 1`` at the first admission, else 0."""
        return 0 if rid in self._admitted else max(0, prompt_tokens - 1)

    def admit(self, rid: int, prompt_tokens: int) -> int:
        """Record the admission; returns the tokens present."""
        hit = self.cached_tokens(rid, prompt_tokens)
        self._admitted.add(rid)
        return hit

    def computed(self, rid: int, context_tokens: int) -> None:
        """Nothing to record."""

    def release(self, rid: int, context_tokens: int) -> None:
        """Nothing to record: the KV lives in the scheduler's accounting."""

    def fit(self, free_tokens: int) -> None:
        """Nothing is cached beyond the running requests."""


@dataclass(frozen=True)
class PdResult:
    """Outcome of one pool pair serving a trace (`simulate_pd`).

    Attributes:
        ttft_s, tpot_s, latency_s: per completed request, as the client sees them.
        prefill_s: arrival to prompt done on the prefill pool, per completed request.
        kv_wait_s: prompt done to KV ready on the decode pool (link queue + transfer).
        duration_s: first arrival to last completion.
        output_tokens, completed, offered: run totals.
        saturated: a pool's backlog grew without bound (offered rate above its capacity).
        preemptions: decode-pool recompute preemptions.

    """

    ttft_s: FloatArray
    tpot_s: FloatArray
    latency_s: FloatArray
    prefill_s: FloatArray
    kv_wait_s: FloatArray
    duration_s: float
    output_tokens: int
    completed: int
    offered: int
    saturated: bool
    preemptions: int
    extra: dict[str, float] = field(default_factory=dict)

    @property
    def throughput_rps(self) -> float:
        """Completed requests per second over the run."""
        return self.completed / self.duration_s if self.duration_s > 0 else 0.0

    def p95(self, what: Literal["ttft", "tpot", "latency"]) -> float:
        """P95 of TTFT, TPOT (1-token answers left out) or latency; inf when saturated."""
        arr = {"ttft": self.ttft_s, "tpot": self.tpot_s, "latency": self.latency_s}[what]
        arr = arr[~np.isnan(arr)]
        if self.saturated or self.completed < self.offered:
            return math.inf
        return float(np.quantile(arr, 0.95)) if arr.size else 0.0


def _prefill_times(replica: ReplicaModel, arrivals: list[float], plen: list[int]
                   ) -> tuple[list[float], bool]:
    """Prompt-done times of one prefill-only replica (one-token requests), and saturation."""
    tl = _serve(replica, arrivals, plen, [1] * len(plen), concurrency=None,
                stop_when_saturated=False)
    done = tl.first_token_s
    grows = len(arrivals) > 20 and _backlog_grows(np.asarray(arrivals), np.asarray(done))
    return done, grows


def _decode_times(replica: ReplicaModel, ready: list[float], plen: list[int], out: list[int]
                  ) -> tuple[list[float], list[float], bool, int]:
    """First-token and finish times on one decode-only replica, saturation, preemptions."""
    tl = _serve(replica, ready, plen, out, concurrency=None, stop_when_saturated=False,
                cache=RemoteKv())
    grows = len(ready) > 20 and _backlog_grows(np.asarray(ready), np.asarray(tl.finish_s))
    return tl.first_token_s, tl.finish_s, grows, tl.preemptions


def simulate_pd(prefill: ReplicaModel, decode: ReplicaModel, trace: Trace, *,
                n_prefill: int = 1, n_decode: int = 1, link: KvLink | None = None) -> PdResult:
    """Serve `trace` on ``n_prefill`` prefill and ``n_decode`` decode replicas (module docstring).

    Args:
        prefill: the prefill pool's replica config.
        decode: the decode pool's replica config (the same model).
        trace: arrivals and lengths (open loop); lengths are fitted to the decode replica
            (prompt + output within its KV cache and ``max_model_len``) and prompts to the
            prefill replica's.
        n_prefill: replicas of the prefill pool (>= 1).
        n_decode: replicas of the decode pool (>= 1).
        link: the KV link of every prefill replica (default `kv_link` of the two).

    Returns:
        Per-request latencies and totals (`PdResult`).

    Raises:
        ValueError: pools of two models, or fewer than one replica in a pool.

    """
    if prefill.model.name != decode.model.name:
        raise ValueError(f"prefill pool serves {prefill.model.name}, decode pool "
                         f"{decode.model.name}: a disaggregated group serves one model")
    if n_prefill < 1 or n_decode < 1:
        raise ValueError(f"{n_prefill=} and {n_decode=} must be >= 1 replica")
    link = link or kv_link(prefill, decode)
    n = len(trace)
    arr = trace.arrival_s.tolist()
    plen, out = _fit_lengths(decode, trace.input_tokens.tolist(), trace.output_tokens.tolist())
    p_limit = min(prefill.memory.kv_capacity_tokens, prefill.engine.max_model_len) - 1
    plen = [min(p, p_limit) for p in plen]
    kv_per_token = kv_transfer_bytes(prefill.model, 1)
    saturated = False
    # Prefill pool, round robin; each replica's transfers queue on its link (FCFS).
    ready = [math.nan] * n
    done_all = [math.nan] * n
    for j in range(n_prefill):
        idx = list(range(j, n, n_prefill))
        if not idx:
            continue
        done, grows = _prefill_times(prefill, [arr[i] for i in idx], [plen[i] for i in idx])
        saturated |= grows
        ready_j = kv_ready_s(done, [kv_per_token * plen[i] for i in idx], link)
        for k, i in enumerate(idx):
            done_all[i] = done[k]
            ready[i] = ready_j[k]
    # Decode pool, round robin in order of KV readiness.
    order = sorted(range(n), key=lambda i: ready[i])
    first = [math.nan] * n
    finish = [math.nan] * n
    preemptions = 0
    for j in range(n_decode):
        idx = order[j::n_decode]
        if not idx:
            continue
        f1, fin, grows, pre = _decode_times(decode, [ready[i] for i in idx],
                                            [plen[i] for i in idx], [out[i] for i in idx])
        saturated |= grows
        preemptions += pre
        for k, i in enumerate(idx):
            first[i], finish[i] = f1[k], fin[k]
    fe = decode.engine.frontend_latency_s
    a = np.asarray(arr)
    fin_a = np.asarray(finish) + fe
    first_a = np.asarray(first) + fe
    mask = ~np.isnan(fin_a)
    o = np.asarray(out, dtype=np.float64)[mask]
    with np.errstate(invalid="ignore", divide="ignore"):
        tpot = np.where(o > 1, (fin_a - first_a)[mask] / (o - 1), np.nan)
    done_a = np.asarray(done_all)
    completed = int(mask.sum())
    if n > 20 and completed == n:
        saturated |= _backlog_grows(a, fin_a)
    duration = float(fin_a[mask].max() - a.min()) if completed else 0.0
    return PdResult(
        ttft_s=(first_a - a)[mask], tpot_s=tpot, latency_s=(fin_a - a)[mask],
        prefill_s=(done_a - a)[mask], kv_wait_s=(np.asarray(ready) - done_a)[mask],
        duration_s=duration, output_tokens=int(o.sum()), completed=completed, offered=n,
        saturated=saturated, preemptions=preemptions,
        extra={"link_bytes_per_s": link.bandwidth_bytes_per_s, "link_latency_s": link.latency_s})


def kv_ready_s(done_s: Sequence[float], nbytes: Sequence[float], link: KvLink) -> list[float]:
    """When each request's KV is ready on the decode side, one prefill replica's link (FIFO).

    In order of prompt completion f_i: ``s_i = max(f_i, e_prev)``, ``e_i = s_i + B_i / beta``,
    ready at ``e_i + ell`` (module docstring). NaN completions (never done) stay NaN.

    Args:
        done_s: f_i, prompt-done times, s.
        nbytes: B_i, KV bytes of each request.
        link: the replica's link.

    """
    ready = [math.nan] * len(done_s)
    link_free = -math.inf
    for k in sorted((k for k in range(len(done_s)) if not math.isnan(done_s[k])),
                    key=lambda k: done_s[k]):
        start = max(done_s[k], link_free)
        link_free = start + link.wire_s(nbytes[k])
        ready[k] = link_free + link.latency_s
    return ready


def prefill_capacity_rps(replica: ReplicaModel, trace: Trace) -> float:
    """Prompts per second one prefill-only replica sustains on `trace`'s prompt lengths.

    Every prompt arrives at t = 0 (at least ``4 max_num_seqs`` of them, the lengths cycled);
    capacity is the completion rate between the first and the last 10% of completions.
    """
    c = replica.engine.max_num_seqs
    n = max(len(trace), 4 * c)
    plen = np.resize(trace.input_tokens, n).tolist()
    plen, _ = _fit_lengths(replica, plen, [1] * n)
    done = np.sort(np.asarray(_serve(replica, [0.0] * n, plen, [1] * n, concurrency=None,
                                     stop_when_saturated=False).first_token_s))
    lo, hi = n // 10, n - n // 10 - 1
    span = done[hi] - done[lo]
    return float((hi - lo) / span) if span > 0 else math.inf


def decode_capacity_rps(replica: ReplicaModel, trace: Trace) -> float:
    """Requests per second one decode-only replica sustains on `trace`'s lengths.

    A closed loop of ``max_num_seqs`` clients whose KV is already present (`RemoteKv`),
    at least ``4 max_num_seqs`` requests; the completion rate in steady state, between the
    c-th and the (n - c)-th completion (as `profiling.capacity_rps`).
    """
    c = replica.engine.max_num_seqs
    n = max(len(trace), 4 * c)
    plen, out = _fit_lengths(replica, np.resize(trace.input_tokens, n).tolist(),
                             np.resize(trace.output_tokens, n).tolist())
    tl = _serve(replica, [0.0] * n, plen, out, concurrency=c, stop_when_saturated=False,
                cache=RemoteKv())
    finish = np.sort(np.asarray(tl.finish_s))
    span = finish[n - c - 1] - finish[c - 1]
    return float((n - 2 * c) / span) if span > 0 else math.inf


def prefill_only(replica: ReplicaModel, trace: Trace) -> tuple[FloatArray, bool]:
    """One prefill-only replica serving `trace` (open loop): per-request prompt latency, s.

    Returns:
        ``(f_i - a_i, saturated)``: arrival to prompt done of every request (NaN: never
        done, the run stopped saturated), and whether the backlog grew without bound.

    """
    arr = trace.arrival_s.tolist()
    plen, _ = _fit_lengths(replica, trace.input_tokens.tolist(), [1] * len(arr))
    tl = _serve(replica, arr, plen, [1] * len(arr), concurrency=None, stop_when_saturated=True)
    done = np.asarray(tl.first_token_s)
    saturated = tl.saturated or tl.completed < len(arr) or (
        len(arr) > 20 and _backlog_grows(np.asarray(arr), done))
    return done - np.asarray(arr), bool(saturated)


def decode_only(replica: ReplicaModel, trace: Trace) -> tuple[FloatArray, FloatArray, bool]:
    """One decode-only replica serving `trace`, its requests' KV ready at their arrival.

    Returns:
        ``(admission delay, TPOT, saturated)``: per request, KV ready to first token (s) and
        ``(F - F1) / (o - 1)`` (NaN for one-token answers), and whether the backlog grew.

    """
    arr = trace.arrival_s.tolist()
    plen, out = _fit_lengths(replica, trace.input_tokens.tolist(), trace.output_tokens.tolist())
    tl = _serve(replica, arr, plen, out, concurrency=None, stop_when_saturated=True,
                cache=RemoteKv())
    first = np.asarray(tl.first_token_s)
    fin = np.asarray(tl.finish_s)
    o = np.asarray(out, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        tpot = np.where(o > 1, (fin - first) / (o - 1), np.nan)
    saturated = tl.saturated or tl.completed < len(arr) or (
        len(arr) > 20 and _backlog_grows(np.asarray(arr), fin))
    return first - np.asarray(arr), tpot, bool(saturated)
