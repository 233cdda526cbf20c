"""Hardware profiles: measured GEMM, attention and bandwidth tables, and the stage-1 fit.

A hardware profile is a directory (``build/calibration/<device key>/`` by default) holding

* ``meta.json``: device name and key, the catalog GPU type it calibrates (``gpu_type``), the
  measured device's peaks when it has no spec sheet (the CPU), status (``complete`` or
  ``partial`` with the error), the command, torch version and date;
* ``gemm.csv``, ``attention.csv``, ``bandwidth.csv``: one row per measurement, with the
  columns of the committed H100 reference measurements (`GEMM_COLUMNS`, `ATTENTION_COLUMNS`,
  `BANDWIDTH_COLUMNS`; benchmarks/data/hardware/h100-sxm-reference/), so both feed the same
  fit.

The fit (`fit_efficiency`) turns the tables into the replica model's `Efficiency`:

    GEMM rows (F = 2 m n k FLOPs, Q = 2 (m k + k n + m n) bytes, measured t):
        t_hat = || F / (C e_c), Q / (B e_m) ||_p + tau       (the stage-1 roofline, p fixed)
        (e_c, e_m, tau) = argmin sum_i (log t_hat_i - log t_i)^2   (relative least squares)
    attention: e_a = median over the longest causal-prefill rows of achieved FLOP/s / C
        (the default backend, the one vLLM-like code paths get).

C and B are the spec-sheet peaks of the GPU type (catalog), or for a device without a spec
sheet (the CPU) the best GEMM FLOP/s and the best bandwidth measured (`device_gpu_type`).
The fitted tau is one kernel's fixed latency; the replica model charges
``kernels_per_layer * layers * tau`` per step.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from common.errors import ProfilerError

from ._catalog import GpuType
from ._replica import Efficiency, EngineConfig
from ._served import ServedCalibration

__all__ = [
    "ATTENTION_COLUMNS",
    "BANDWIDTH_COLUMNS",
    "DEFAULT_CALIBRATION_ROOT",
    "GEMM_COLUMNS",
    "SPEC_SHEET",
    "Calibration",
    "CsvAppender",
    "HardwareProfile",
    "device_gpu_type",
    "fit_efficiency",
    "load_hardware_profile",
    "resolve_calibration",
    "scan_hardware_profiles",
]

DEFAULT_CALIBRATION_ROOT = Path("build/calibration")

# Column order of the H100 kernel measurements (benchmarks/data/hardware/h100-sxm-reference/).
GEMM_COLUMNS = ("model", "layer", "tp", "m", "n", "k", "median_us", "tflops", "gbps", "min_us",
                "reps")
ATTENTION_COLUMNS = ("model", "tp", "phase", "batch", "q_len", "kv_len", "median_us", "backend",
                     "gqa_mode", "n_q_heads", "n_kv_heads", "tflops", "gbps", "kv_bytes",
                     "min_us", "reps")
BANDWIDTH_COLUMNS = ("test", "bytes_per_iter", "bytes_moved", "median_us", "min_us", "tb_per_s",
                     "reps", "note")
_TABLES = {"gemm": GEMM_COLUMNS, "attention": ATTENTION_COLUMNS, "bandwidth": BANDWIDTH_COLUMNS}

Row = dict[str, Any]


class CsvAppender:
    """Append rows to a CSV file one at a time, flushed, so a crash keeps what was measured.

    Args:
        path: the file; created with a header line if it does not exist or is empty.
        columns: the column order.

    """

    def __init__(self, path: Path, columns: Iterable[str]) -> None:
        self.path = path
        self.columns = tuple(columns)

    def append(self, row: Mapping[str, Any]) -> None:
        """Write one row (keys = columns) and flush it to disk."""
        new = not self.path.exists() or self.path.stat().st_size == 0
        with self.path.open("a", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=self.columns)
            if new:
                writer.writeheader()
            writer.writerow({c: _fmt(row[c]) for c in self.columns})


def _fmt(value: Any) -> Any:
    return f"{value:.6g}" if isinstance(value, float) else value


@dataclass(frozen=True)
class HardwareProfile:
    """A loaded hardware profile (see the module docstring for the files)."""

    path: Path
    meta: dict[str, Any]
    gemm: list[Row]
    attention: list[Row]
    bandwidth: list[Row]

    @property
    def gpu_type(self) -> str:
        """The catalog GPU type these measurements calibrate."""
        return str(self.meta.get("gpu_type") or self.meta.get("device_key") or self.path.name)


def _read_csv(path: Path) -> list[Row]:
    """The rows of a profile table; numbers parsed, other cells kept as strings.

    Raises:
        ProfilerError: the file is not UTF-8 text or not CSV.

    """
    if not path.is_file():
        return []
    rows: list[Row] = []
    try:
        with path.open(newline="", encoding="utf-8") as fh:
            for raw in csv.DictReader(fh):
                row: Row = {}
                for key, value in raw.items():
                    if not isinstance(key, str) or not isinstance(value, str):
                        continue        # a row with more or fewer cells than the header
                    try:
                        row[key] = float(value) if value else math.nan
                    except ValueError:
                        row[key] = value
                rows.append(row)
    except UnicodeDecodeError as exc:
        raise ProfilerError(f"hardware profile table {str(path)!r}: not UTF-8 text (byte "
                            f"{exc.object[exc.start]:#04x} at offset {exc.start}); re-run "
                            "`boute profile hardware`") from None
    except csv.Error as exc:
        raise ProfilerError(f"hardware profile table {str(path)!r}: not CSV ({exc}); re-run "
                            "`boute profile hardware`") from None
    return rows


def load_hardware_profile(path: str | Path) -> HardwareProfile:
    """Read a hardware profile directory.

    Args:
        path: a directory with ``gemm.csv`` (required), ``attention.csv``, ``bandwidth.csv``
            and ``meta.json`` (optional; without it the directory name is the GPU type).

    Raises:
        ProfilerError: the directory or its gemm.csv is missing, or meta.json is not JSON.

    """
    path = Path(path)
    if not (path / "gemm.csv").is_file():
        raise ProfilerError(f"hardware profile {str(path)!r}: no gemm.csv there; run "
                            "`boute profile hardware --out DIR` or pass the directory that "
                            "holds gemm.csv, attention.csv and bandwidth.csv")
    meta: dict[str, Any] = {}
    if (path / "meta.json").is_file():
        try:
            meta = json.loads((path / "meta.json").read_text(encoding="utf-8"))
        except ValueError as exc:           # JSONDecodeError, UnicodeDecodeError
            why = exc.msg if isinstance(exc, json.JSONDecodeError) else "not UTF-8"
            raise ProfilerError(f"hardware profile {str(path)!r}: meta.json is not valid JSON "
                                f"({why}); delete it or re-run the profiler") from None
        if not isinstance(meta, dict):
            raise ProfilerError(f"hardware profile {str(path)!r}: meta.json holds "
                                f"{type(meta).__name__}, expected a JSON object; delete it or "
                                "re-run the profiler")
        if not isinstance(meta.get("gpu_type", ""), str):
            raise ProfilerError(f"hardware profile {str(path)!r}: meta.json gpu_type="
                                f"{meta['gpu_type']!r} must be a catalog GPU type name")
    tables = {name: _read_csv(path / f"{name}.csv") for name in _TABLES}
    return HardwareProfile(path, meta, tables["gemm"], tables["attention"], tables["bandwidth"])


def device_gpu_type(profile: HardwareProfile) -> GpuType:
    """A catalog row for a device without a spec sheet (the CPU): its measured peaks.

    ``bf16_tflops`` = the best GEMM FLOP/s measured, ``memory_bandwidth_gbps`` = the best
    bandwidth test, ``memory_gib`` = meta ``memory_gib`` (the host memory), one device per
    node, no interconnect (link figures are placeholders that TP = 1 never uses), price 0.

    Raises:
        ProfilerError: the profile has no GEMM or no bandwidth rows.

    """
    if not profile.gemm or not profile.bandwidth:
        raise ProfilerError(f"hardware profile {str(profile.path)!r}: needs gemm.csv and "
                            "bandwidth.csv rows to derive the device's peaks; re-run "
                            "`boute profile hardware` to completion")
    tflops = max(float(r["tflops"]) for r in profile.gemm)
    bw_gbps = max(float(r["tb_per_s"]) for r in profile.bandwidth) * 1e3
    return GpuType(name=profile.gpu_type, memory_gib=float(profile.meta.get("memory_gib", 16.0)),
                   memory_bandwidth_gbps=bw_gbps, bf16_tflops=tflops, interconnect="pcie",
                   link_bandwidth_gbps=1.0, gpus_per_node=1, price_per_hour=0.0,
                   description=f"measured: {profile.meta.get('device_name', '?')}")


def _clip(x: float) -> float:
    return float(min(1.0, max(1e-4, x)))


def fit_efficiency(profile: HardwareProfile, gpu: GpuType,
                   base: Efficiency | None = None) -> Efficiency:
    """Fit the compute, memory and attention efficiencies and the kernel latency (see module).

    Args:
        profile: the measurements.
        gpu: the GPU type they were taken on (its spec-sheet peaks are the denominators).
        base: the factors the measurements do not determine (link, hop latencies, roofline
            sharpness) come from here; default `Efficiency()`.

    Returns:
        `base` with ``compute``, ``memory``, ``kernel_latency_s`` (and ``attention_compute``
        when there are prefill rows) replaced by the fitted values, each clipped to (0, 1].

    Raises:
        ProfilerError: fewer than 3 GEMM rows.

    """
    from scipy.optimize import least_squares

    base = base or Efficiency()
    rows = [r for r in profile.gemm if float(r["median_us"]) > 0]
    if len(rows) < 3:
        raise ProfilerError(f"hardware profile {str(profile.path)!r}: {len(rows)} GEMM rows, "
                            "the fit needs >= 3; re-run `boute profile hardware`")
    m, n, k = (np.array([float(r[c]) for r in rows]) for c in ("m", "n", "k"))
    t_s = np.array([float(r["median_us"]) for r in rows]) * 1e-6
    flops = 2.0 * m * n * k
    q_bytes = 2.0 * (m * k + k * n + m * n)  # bf16 operands and result
    peak_flops = gpu.bf16_tflops * 1e12
    peak_bps = gpu.memory_bandwidth_gbps * 1e9
    p = base.roofline_sharpness

    def predict(x: np.ndarray) -> np.ndarray:
        e_c, e_m, tau_us = x
        tc = flops / (peak_flops * e_c)
        tm = q_bytes / (peak_bps * e_m)
        return np.asarray((tc**p + tm**p) ** (1.0 / p) + tau_us * 1e-6)

    fit = least_squares(lambda x: np.log(predict(x)) - np.log(t_s),
                        x0=[base.compute, base.memory, base.kernel_latency_s * 1e6],
                        bounds=([1e-4, 1e-4, 0.0], [1.0, 1.0, 1e5]))
    e_c, e_m, tau_us = (float(v) for v in fit.x)
    attention = base.attention_compute
    prefill = [r for r in profile.attention if r.get("phase") == "prefill"
               and str(r.get("backend", "")).startswith("default")]
    if prefill:
        longest = max(float(r["q_len"]) for r in prefill)
        attention = _clip(statistics.median(float(r["tflops"]) for r in prefill
                                            if float(r["q_len"]) == longest) * 1e12 / peak_flops)
    return replace(base, compute=_clip(e_c), memory=_clip(e_m), attention_compute=attention,
                   kernel_latency_s=tau_us * 1e-6)


def fit_report(profile: HardwareProfile, gpu: GpuType, eff: Efficiency) -> dict[str, float]:
    """Median and worst |relative error| of the fitted roofline on the profile's GEMM rows."""
    errs = []
    p = eff.roofline_sharpness
    for r in profile.gemm:
        m, n, k = float(r["m"]), float(r["n"]), float(r["k"])
        tc = 2 * m * n * k / (gpu.bf16_tflops * 1e12 * eff.compute)
        tm = 2 * (m * k + k * n + m * n) / (gpu.memory_bandwidth_gbps * 1e9 * eff.memory)
        t_hat = (tc**p + tm**p) ** (1 / p) + eff.kernel_latency_s
        errs.append(abs(t_hat / (float(r["median_us"]) * 1e-6) - 1))
    return {"gemm_rows": float(len(errs)), "median_abs_rel_err": statistics.median(errs),
            "worst_abs_rel_err": max(errs)}


# -- calibration of the stage-1 model per GPU type ------------------------------------------------
SPEC_SHEET = "spec-sheet"
"""Efficiency source of a GPU type without a hardware profile: spec-sheet peaks, default factors."""

_GEMM_FIT_COLUMNS = ("m", "n", "k", "median_us")
# Bounds of a GEMM row: shapes up to 2^24 (100x the largest layer or batch measured, the
# 128k-vocabulary LM head), times up to 10^9 us (1000 s); FLOPs and bytes stay finite.
_GEMM_MAX = {"m": 2**24, "n": 2**24, "k": 2**24, "median_us": 10**9}
_PROFILE_FILES = ("meta.json", "gemm.csv", "attention.csv", "bandwidth.csv")


@dataclass(frozen=True)
class Calibration:
    """The replica model's `Efficiency` per GPU type and where each came from.

    Attributes:
        efficiency: GPU type -> the factors the stage-1 model uses for it.
        source: GPU type -> ``"spec-sheet"`` (`SPEC_SHEET`) or ``"profile:<directory>"``.
        profile_sha256: GPU type -> SHA-256 (16 hex digits) of the profile's files, for the
            GPU types calibrated from a profile.

    """

    efficiency: dict[str, Efficiency]
    source: dict[str, str]
    profile_sha256: dict[str, str]
    served: ServedCalibration | None = None
    """The served calibration applied on top (`profiling._served`), if any."""

    def for_gpu(self, gpu_type: str) -> Efficiency:
        """The efficiency of `gpu_type` (the default factors when it was not resolved)."""
        return self.efficiency.get(gpu_type) or Efficiency()

    def engine_for(self, model: str, gpu_type: str, tp: int, pp: int,
                   engine: EngineConfig) -> EngineConfig:
        """The engine of config (model, gpu_type, tp, pp).

        `engine` with the served calibration's overheads for it
        (`ServedCalibration.engine_for`); `engine` itself without a served calibration.
        """
        if self.served is None:
            return engine
        return self.served.engine_for(model, gpu_type, tp, pp, engine)

    def to_meta(self) -> dict[str, Any]:
        """JSON for the perf DB metadata, each keyed by GPU type.

        Keys: ``efficiency`` (the factors), ``efficiency_source`` and ``hardware_profiles``
        (path and content hash of the profiles used), and with a served calibration
        ``served_calibration`` (`ServedCalibration.to_meta`: label, sha256, path, window end).
        """
        out = {
            "efficiency": {g: asdict(e) for g, e in sorted(self.efficiency.items())},
            "efficiency_source": dict(sorted(self.source.items())),
            "hardware_profiles": {g: {"path": self.source[g].removeprefix("profile:"),
                                      "sha256": sha}
                                  for g, sha in sorted(self.profile_sha256.items())},
        }
        if self.served is not None:
            out["served_calibration"] = self.served.to_meta()
        return out


def _profile_sha256(path: Path) -> str:
    """SHA-256 (first 16 hex digits) over the profile's files (name + bytes, fixed order)."""
    digest = hashlib.sha256()
    for name in _PROFILE_FILES:
        if (path / name).is_file():
            digest.update(name.encode() + b"\0" + (path / name).read_bytes())
    return digest.hexdigest()[:16]


def _checked_profile(path: Path) -> HardwareProfile:
    """Load a profile and check that its GEMM rows can be fitted (>= 3 numeric rows).

    Raises:
        ProfilerError: missing gemm.csv, meta.json not JSON, missing or non-numeric GEMM
            columns, fewer than 3 rows.

    """
    profile = load_hardware_profile(path)
    fix = (f"re-run `boute profile hardware --out {path}` or remove that directory from the "
           "hardware profiles folder")
    for i, row in enumerate(profile.gemm, start=2):
        for col in _GEMM_FIT_COLUMNS:
            value = row.get(col)
            if not isinstance(value, float) or not 0 < value <= _GEMM_MAX[col]:
                raise ProfilerError(f"hardware profile {str(path)!r}: gemm.csv line {i} has "
                                    f"{col}={value!r}, expected a number in (0, "
                                    f"{_GEMM_MAX[col]}]; {fix}")
    for i, row in enumerate(profile.attention, start=2):
        if row.get("phase") != "prefill":
            continue
        for col in ("q_len", "tflops"):
            value = row.get(col)
            if not isinstance(value, float) or not 0 <= value < math.inf:
                raise ProfilerError(f"hardware profile {str(path)!r}: attention.csv line {i} "
                                    f"has {col}={value!r}, expected a number >= 0; {fix}")
    if len(profile.gemm) < 3:
        raise ProfilerError(f"hardware profile {str(path)!r}: gemm.csv has "
                            f"{len(profile.gemm)} rows, the fit needs >= 3; {fix}")
    return profile


def scan_hardware_profiles(root: str | Path) -> dict[str, HardwareProfile]:
    """Every hardware profile under `root`, checked, keyed by the GPU type it calibrates.

    `root` is either one profile directory (it holds ``gemm.csv`` or ``meta.json``) or a
    folder of them (``build/calibration/<device>/``, what `boute profile hardware` writes).
    With several profiles of one GPU type, the newest (meta ``date``) complete one wins. An
    empty folder gives no profiles (every GPU type keeps the spec-sheet roofline).

    Raises:
        ProfilerError: `root` is not a directory, or a profile under it is malformed (the
            message names the directory and the fix).

    """
    root = Path(root)
    if not root.is_dir():
        raise ProfilerError(f"hardware profiles {str(root)!r}: no such directory; pass the "
                            "folder `boute profile hardware` writes profiles into (default "
                            f"{DEFAULT_CALIBRATION_ROOT}) or one profile directory, e.g. "
                            "benchmarks/data/hardware/h100-sxm-reference")
    if (root / "gemm.csv").exists() or (root / "meta.json").exists():
        dirs = [root]
    else:
        dirs = sorted(d for d in root.iterdir() if d.is_dir() and (
            (d / "gemm.csv").exists() or (d / "meta.json").exists()))
    ranked: dict[str, tuple[tuple[bool, str, str], HardwareProfile]] = {}
    for d in dirs:
        profile = _checked_profile(d)
        rank = (profile.meta.get("status", "complete") == "complete",
                str(profile.meta.get("date", "")), str(d))
        if profile.gpu_type not in ranked or rank > ranked[profile.gpu_type][0]:
            ranked[profile.gpu_type] = (rank, profile)
    return {gpu_type: profile for gpu_type, (_, profile) in ranked.items()}


def resolve_calibration(gpus: Sequence[GpuType], root: str | Path | None,
                        base: Efficiency | None = None,
                        served: ServedCalibration | None = None) -> Calibration:
    """The stage-1 model's efficiency per GPU type: fitted on a profile, else the spec sheet.

    Args:
        gpus: the GPU types to resolve.
        root: hardware profiles folder or one profile directory (`scan_hardware_profiles`);
            None looks nowhere: every GPU type gets `base` (the spec-sheet roofline).
        base: the factors a profile does not determine, and those of GPU types without one;
            default `Efficiency()`.
        served: a served calibration: its GPU types get its fitted efficiency (its scale
            times the base it was fitted on) and source ``served:<window>``; its configs,
            its engine overheads (`Calibration.engine_for`).

    Raises:
        ProfilerError: `root` is missing or holds a malformed profile.

    """
    base = base or Efficiency()
    profiles = scan_hardware_profiles(root) if root is not None else {}
    efficiency: dict[str, Efficiency] = {}
    source: dict[str, str] = {}
    sha: dict[str, str] = {}
    for gpu in gpus:
        profile = profiles.get(gpu.name)
        if profile is None:
            efficiency[gpu.name], source[gpu.name] = base, SPEC_SHEET
            continue
        efficiency[gpu.name] = fit_efficiency(profile, gpu, base)
        source[gpu.name] = f"profile:{profile.path}"
        sha[gpu.name] = _profile_sha256(profile.path)
    if served is not None:
        for gpu in gpus:
            if gpu.name in served.gpus:
                # The served fit carries the base it scaled: a profile is not used on top.
                efficiency[gpu.name] = served.efficiency(gpu.name, efficiency[gpu.name])
                source[gpu.name] = served.label
                sha.pop(gpu.name, None)
    return Calibration(efficiency, source, sha, served)
