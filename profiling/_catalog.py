"""GPU and model catalogs: frozen, validated rows loaded from YAML or Hugging Face config.json.

The embedded catalogs live in `profiling/data/{gpus,models}.yaml` (shipped as package data).
Users extend or override them with their own YAML files of the same shape; every entry is
validated in `__post_init__` and an error names the entry, the field, the value and the rule.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import MISSING, dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml

from common.errors import CatalogError
from common.textfile import read_utf8

__all__ = [
    "ENGINE_START_S",
    "Catalog",
    "GpuType",
    "ModelArch",
    "cold_start_s",
    "load_catalog",
    "load_hf_config",
]

Interconnect = Literal["nvlink", "pcie"]
_GIB = 1024**3


# Upper bounds of catalog numbers: far above any real part (the largest GPU has 288 GiB,
# 8 TB/s and ~2.5 PFLOP/s dense; the largest open models have 126 layers, hidden size 16384,
# a 256k vocabulary and 10M-token contexts), low enough that sizes in bytes and FLOPs stay
# exact integers and finite floats. A value beyond one is a typo or a unit mix-up.
_MAX_GPU = {"memory_gib": 1e6, "memory_bandwidth_gbps": 1e6, "bf16_tflops": 1e6,
            "link_bandwidth_gbps": 1e6, "gpus_per_node": 1024, "price_per_hour": 1e4,
            "weight_load_gbps": 1e4, "network_gbps": 1e5}
DEFAULT_WEIGHT_LOAD_GBPS = 2.0
"""Weights read from a node's local NVMe through safetensors memory maps, GB/s: vLLM loads
Llama-70B's 140 GB in under 30 s at best (~4.7 GB/s) and far slower from network volumes
(20 GB in 142 s, 0.14 GB/s); benchmarks/data/reference/README.md, "Cold starts"."""
DEFAULT_NETWORK_GBPS = 12.5
"""A node's network to other nodes, GB/s, when its catalog entry names none: one 100 Gb/s
NIC (a common rented PCIe server; an assumption, set ``network_gbps`` for your nodes)."""
ENGINE_START_S = 60.0
"""vLLM start-up besides the weights: torch.compile (~39 s measured), CUDA graph capture,
memory profiling and warm-up (same source)."""
_MAX_MODEL = {"num_layers": 10_000, "hidden_size": 2**20, "num_heads": 2**16,
              "num_kv_heads": 2**16, "head_dim": 2**16, "intermediate_size": 2**20,
              "vocab_size": 2**24, "dtype_bytes": 8, "max_position_embeddings": 2**30}


def _require_positive(owner: str, name: str, value: float, *, integer: bool = False,
                      maximum: float = math.inf, allow_zero: bool = False) -> None:
    """Check ``0 < value <= maximum`` (``0 <= value`` with `allow_zero`), an int if `integer`.

    Raises:
        CatalogError: naming `owner`, the field, the value and the rule.

    """
    low = ">= 0" if allow_zero else "> 0"
    bound = f"{maximum:g}" if isinstance(maximum, float) else str(maximum)
    rule = (f"an integer {low}" if integer else f"a number {low}") + (
        f" and <= {bound}" if math.isfinite(maximum) else "")
    if isinstance(value, bool) or not isinstance(value, int if integer else int | float):
        raise CatalogError(f"{owner}: {name}={value!r} must be {rule}")
    ok = value >= 0 if allow_zero else value > 0
    if not (ok and value <= maximum and math.isfinite(value)):
        raise CatalogError(f"{owner}: {name}={value!r} must be {rule}")


@dataclass(frozen=True)
class GpuType:
    """One GPU type on offer.

    Attributes:
        name: catalog key, e.g. ``"H100"``; also the base of its Ray resource name.
        memory_gib: device memory in GiB.
        memory_bandwidth_gbps: spec-sheet memory bandwidth, GB/s.
        bf16_tflops: dense BF16 tensor throughput with FP32 accumulate, TFLOP/s.
        interconnect: ``"nvlink"`` or ``"pcie"`` between GPUs of one node.
        link_bandwidth_gbps: GPU-to-GPU bandwidth per direction inside a node, GB/s.
        gpus_per_node: GPUs in one server; tensor parallelism stays inside a node.
        price_per_hour: rental price of one GPU, $/hour.
        description: free text.
        weight_load_gbps: how fast a node of this type reads model weights from its storage
            into its GPUs, GB/s (a new replica's cold start, `cold_start_s`); not part of the
            perf DB's fingerprint (no latency depends on it).
        network_gbps: the node's network bandwidth to other nodes, GB/s per direction, all its
            NICs together (e.g. 8 x 400 Gb/s = 400 GB/s on a DGX H100): the link of a
            prefill/decode KV transfer between nodes (`profiling.kv_link`); not part of the
            perf DB's fingerprint (no co-located replica's latency depends on it).

    """

    name: str
    memory_gib: float
    memory_bandwidth_gbps: float
    bf16_tflops: float
    interconnect: Interconnect
    link_bandwidth_gbps: float
    gpus_per_node: int
    price_per_hour: float
    description: str = ""
    weight_load_gbps: float = DEFAULT_WEIGHT_LOAD_GBPS
    network_gbps: float = DEFAULT_NETWORK_GBPS

    def __post_init__(self) -> None:
        owner = f"gpu {self.name!r}"
        if not isinstance(self.name, str) or not self.name:
            raise CatalogError(f"gpu entry: name={self.name!r} must be a non-empty string")
        for attr in ("memory_gib", "memory_bandwidth_gbps", "bf16_tflops", "link_bandwidth_gbps"):
            _require_positive(owner, attr, getattr(self, attr), maximum=_MAX_GPU[attr])
        _require_positive(owner, "gpus_per_node", self.gpus_per_node, integer=True,
                          maximum=_MAX_GPU["gpus_per_node"])
        _require_positive(owner, "price_per_hour", self.price_per_hour, allow_zero=True,
                          maximum=_MAX_GPU["price_per_hour"])
        _require_positive(owner, "weight_load_gbps", self.weight_load_gbps,
                          maximum=_MAX_GPU["weight_load_gbps"])
        _require_positive(owner, "network_gbps", self.network_gbps,
                          maximum=_MAX_GPU["network_gbps"])
        if not isinstance(self.description, str):
            raise CatalogError(f"{owner}: description={self.description!r} must be a string")
        if self.interconnect not in ("nvlink", "pcie"):
            raise CatalogError(
                f"{owner}: interconnect={self.interconnect!r} must be 'nvlink' or 'pcie'"
            )

    @property
    def memory_bytes(self) -> float:
        """Device memory in bytes."""
        return self.memory_gib * _GIB


@dataclass(frozen=True)
class ModelArch:
    """A decoder-only transformer (Llama-style: GQA attention, gated MLP).

    Attributes:
        name: catalog key, e.g. ``"llama-3.1-8b"``.
        num_layers, hidden_size, num_heads, num_kv_heads, head_dim, intermediate_size,
        vocab_size: the architecture, as in the model's config.json.
        tie_word_embeddings: whether the LM head shares the embedding matrix.
        dtype_bytes: bytes per weight and per KV element (2 for bf16/fp16).
        max_position_embeddings: the longest context the model supports.
        hf_id: Hugging Face repository or local directory to load real weights from.

    """

    name: str
    num_layers: int
    hidden_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    tie_word_embeddings: bool = False
    dtype_bytes: int = 2
    max_position_embeddings: int = 8192
    hf_id: str = ""

    def __post_init__(self) -> None:
        owner = f"model {self.name!r}"
        if not isinstance(self.name, str) or not self.name:
            raise CatalogError(f"model entry: name={self.name!r} must be a non-empty string")
        for attr in (
            "num_layers",
            "hidden_size",
            "num_heads",
            "num_kv_heads",
            "head_dim",
            "intermediate_size",
            "vocab_size",
            "dtype_bytes",
            "max_position_embeddings",
        ):
            _require_positive(owner, attr, getattr(self, attr), integer=True,
                              maximum=_MAX_MODEL[attr])
        if not isinstance(self.tie_word_embeddings, bool):
            raise CatalogError(f"{owner}: tie_word_embeddings={self.tie_word_embeddings!r} "
                               "must be true or false")
        if not isinstance(self.hf_id, str):
            raise CatalogError(f"{owner}: hf_id={self.hf_id!r} must be a string (a Hugging "
                               "Face id or a local directory)")
        if self.num_heads % self.num_kv_heads:
            raise CatalogError(
                f"{owner}: num_heads={self.num_heads} must be a multiple of "
                f"num_kv_heads={self.num_kv_heads}"
            )

    # Parameter counts (Llama): q, o are h x (heads*hd); k, v are h x (kv*hd);
    # gate, up, down are h x inter; two RMSNorm vectors per layer.
    @property
    def params_per_layer(self) -> int:
        """Weights of one transformer layer (attention + MLP + norms)."""
        h = self.hidden_size
        q_o = 2 * h * self.num_heads * self.head_dim
        k_v = 2 * h * self.num_kv_heads * self.head_dim
        mlp = 3 * h * self.intermediate_size
        return q_o + k_v + mlp + 2 * h

    @property
    def embedding_params(self) -> int:
        """Input embedding matrix (vocab x hidden)."""
        return self.vocab_size * self.hidden_size

    @property
    def lm_head_params(self) -> int:
        """Output projection; 0 extra weights when tied to the embedding."""
        return 0 if self.tie_word_embeddings else self.vocab_size * self.hidden_size

    @property
    def num_params(self) -> int:
        """All weights: layers + embedding + LM head + final norm."""
        return (
            self.num_layers * self.params_per_layer
            + self.embedding_params
            + self.lm_head_params
            + self.hidden_size
        )

    @property
    def weight_bytes(self) -> int:
        """Bytes of all weights at `dtype_bytes` per weight."""
        return self.num_params * self.dtype_bytes

    def kv_bytes_per_token(self, tp: int = 1, pp: int = 1) -> int:
        """KV-cache bytes one token occupies on one GPU of a TP x PP replica.

        ``2 (K and V) * ceil(kv_heads / tp) * head_dim * dtype_bytes * ceil(layers / pp)``;
        with tp > kv_heads each GPU keeps a replica of one KV head (vLLM's behaviour).
        """
        kv_heads_per_gpu = -(-self.num_kv_heads // tp)
        layers_per_stage = -(-self.num_layers // pp)
        return 2 * kv_heads_per_gpu * self.head_dim * self.dtype_bytes * layers_per_stage


_GpuMap = dict[str, GpuType]
_ModelMap = dict[str, ModelArch]


@dataclass(frozen=True)
class Catalog:
    """GPU types and model architectures by name; lookups raise a helpful error."""

    gpus: Mapping[str, GpuType] = field(default_factory=dict)
    models: Mapping[str, ModelArch] = field(default_factory=dict)

    def gpu(self, name: str) -> GpuType:
        """Return the GPU type called `name`.

        Raises:
            CatalogError: the name is unknown; the message lists the known names.

        """
        try:
            return self.gpus[name]
        except KeyError:
            known = ", ".join(sorted(self.gpus))
            raise CatalogError(
                f"gpu={name!r} is not in the catalog; known GPU types: {known} "
                "(add your own with --gpu-catalog FILE.yaml)"
            ) from None

    def model(self, name: str) -> ModelArch:
        """Return the model called `name` (a catalog key, or a directory with a config.json).

        Raises:
            CatalogError: the name is unknown; the message lists the known names.

        """
        if name in self.models:
            return self.models[name]
        path = Path(name)
        if (path / "config.json").is_file():
            return load_hf_config(path / "config.json", name=name)
        known = ", ".join(sorted(self.models))
        raise CatalogError(
            f"model={name!r} is not in the catalog and is not a directory with a config.json; "
            f"known models: {known} (add your own with --model-catalog FILE.yaml)"
        )

    def fingerprint_payload(self) -> dict[str, Any]:
        """A JSON-ready description of every entry (used to fingerprint derived data)."""
        return {
            "gpus": {k: _asdict(v) for k, v in sorted(self.gpus.items())},
            "models": {k: _asdict(v) for k, v in sorted(self.models.items())},
        }


def _asdict(row: GpuType | ModelArch) -> dict[str, Any]:
    return {f.name: getattr(row, f.name) for f in fields(row)
            if f.name not in ("description", "weight_load_gbps", "network_gbps")}


def cold_start_s(model: ModelArch, gpu: GpuType) -> float:
    """Seconds from starting a replica of `model` on `gpu` to its first request.

    ``ENGINE_START_S + weight_bytes / (weight_load_gbps 1e9)``: one node reads the whole
    model (every TP/PP shard) from its storage; the engine's own start-up comes on top.
    """
    return ENGINE_START_S + model.weight_bytes / (gpu.weight_load_gbps * 1e9)


def _read_yaml_list(text: str, source: str) -> list[dict[str, Any]]:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise CatalogError(f"{source}: not valid YAML ({exc.__class__.__name__})") from None
    if not isinstance(data, list) or not all(isinstance(d, dict) for d in data):
        raise CatalogError(f"{source}: expected a YAML list of mappings, one per entry")
    return data


def _build_rows(cls: type[Any], entries: Iterable[dict[str, Any]], source: str) -> list[Any]:
    allowed = {f.name for f in fields(cls)}
    rows = []
    for entry in entries:
        name = entry.get("name", "?")
        unknown = sorted(str(k) for k in set(entry) - allowed)
        if unknown:
            raise CatalogError(
                f"{source}: entry {name!r} has unknown field(s) {unknown}; "
                f"allowed: {sorted(allowed)}"
            )
        try:
            rows.append(cls(**{k: v for k, v in entry.items() if k in allowed}))
        except TypeError as exc:        # a required field is missing
            missing = sorted(f.name for f in fields(cls) if f.name not in entry
                             and f.default is MISSING)
            raise CatalogError(f"{source}: entry {name!r} lacks required field(s) {missing}; "
                               "add them to the file" if missing else
                               f"{source}: entry {name!r}: {exc}") from None
        except CatalogError as exc:
            raise CatalogError(f"{source}: {exc}; fix the entry in that file") from None
    return rows


def _read_user_text(path: Path, what: str) -> str:
    """The UTF-8 text of a user file.

    Raises:
        CatalogError: the file cannot be read or is not UTF-8; the message names `what`.

    """
    return read_utf8(path, f"{what} {str(path)!r}", CatalogError)


def load_catalog(
    gpu_files: Iterable[str | Path] = (), model_files: Iterable[str | Path] = ()
) -> Catalog:
    """Load the embedded catalogs, then let each user file add or override entries by name.

    Args:
        gpu_files: YAML files, each a list of GPU entries (fields of `GpuType`).
        model_files: YAML files, each a list of model entries (fields of `ModelArch`).

    Returns:
        The merged catalog.

    Raises:
        CatalogError: a file is missing or malformed, or an entry breaks a rule.

    """
    data = resources.files("profiling") / "data"
    gpus: _GpuMap = {}
    models: _ModelMap = {}
    sources: list[tuple[str, str, bool]] = [
        ((data / "gpus.yaml").read_text(), "embedded gpus.yaml", True),
        ((data / "models.yaml").read_text(), "embedded models.yaml", False),
    ]
    for path, is_gpu in [(p, True) for p in gpu_files] + [(p, False) for p in model_files]:
        what = "GPU catalog file" if is_gpu else "model catalog file"
        sources.append((_read_user_text(Path(path), what), f"{what} {str(path)!r}", is_gpu))
    for text, source, is_gpu in sources:
        entries = _read_yaml_list(text, source)
        if is_gpu:
            gpus.update({g.name: g for g in _build_rows(GpuType, entries, source)})
        else:
            models.update({m.name: m for m in _build_rows(ModelArch, entries, source)})
    return Catalog(gpus=gpus, models=models)


_DTYPE_BYTES = {"bfloat16": 2, "float16": 2, "float32": 4, "float8": 1}
# config.json key -> `ModelArch` field (for the bounds of `_MAX_MODEL`)
_HF_FIELDS = {"num_hidden_layers": "num_layers", "num_attention_heads": "num_heads",
              "num_key_value_heads": "num_kv_heads"}


def load_hf_config(path: str | Path, *, name: str | None = None) -> ModelArch:
    """Build a `ModelArch` from a Hugging Face ``config.json`` (Llama, Mistral, Qwen2 style).

    Args:
        path: the config.json file.
        name: catalog name; defaults to the parent directory's name.

    Raises:
        CatalogError: the file is missing, not JSON, or lacks a required key.

    """
    path = Path(path)
    where = f"model config {str(path)!r}"
    try:
        cfg = json.loads(_read_user_text(path, "model config"))
    except json.JSONDecodeError as exc:
        raise CatalogError(f"{where}: not valid JSON ({exc.msg} at line {exc.lineno}); fix "
                           "the file") from None
    if not isinstance(cfg, dict):
        raise CatalogError(f"{where}: expected a JSON object (a Hugging Face config.json)")
    required = ["num_hidden_layers", "hidden_size", "num_attention_heads", "intermediate_size",
                "vocab_size"]
    missing = [k for k in required if k not in cfg]
    if missing:
        raise CatalogError(f"{where}: missing key(s) {missing}; a Llama-style config.json "
                           f"has all of {required}")
    ints: dict[str, int] = {}
    for key, default in [*((k, None) for k in required), ("num_key_value_heads", None),
                         ("head_dim", None), ("max_position_embeddings", 8192)]:
        value: Any = cfg.get(key)
        if value is None and key not in required:   # optional: absent or null
            if default is None:
                continue
            value = default
        field_name = _HF_FIELDS.get(key, key)
        if isinstance(value, float) and value.is_integer() and abs(value) <= 2**53:
            value = int(value)      # 4096.0 -> 4096 (exact below 2^53)
        try:
            _require_positive(where, key, value, integer=True, maximum=_MAX_MODEL[field_name])
        except CatalogError as exc:
            raise CatalogError(f"{exc}; fix config.json") from None
        ints[key] = value
    heads = ints["num_attention_heads"]
    dtype = str(cfg.get("torch_dtype") or cfg.get("dtype") or "bfloat16")
    tie = cfg.get("tie_word_embeddings", False)
    if not isinstance(tie, bool):
        raise CatalogError(f"{where}: tie_word_embeddings={tie!r} must be true or false; fix "
                           "config.json")
    try:
        return ModelArch(
            name=name or path.parent.name,
            num_layers=ints["num_hidden_layers"],
            hidden_size=ints["hidden_size"],
            num_heads=heads,
            num_kv_heads=ints.get("num_key_value_heads", heads),
            head_dim=ints.get("head_dim") or max(1, ints["hidden_size"] // heads),
            intermediate_size=ints["intermediate_size"],
            vocab_size=ints["vocab_size"],
            tie_word_embeddings=tie,
            dtype_bytes=_DTYPE_BYTES.get(dtype, 2),
            max_position_embeddings=ints["max_position_embeddings"],
            hf_id=str(path.parent),
        )
    except CatalogError as exc:
        raise CatalogError(f"{where}: {exc}; fix config.json") from None
