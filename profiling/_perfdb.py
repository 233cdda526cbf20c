"""Performance DB: (model, GPU, TP, PP, rate) -> latency quantiles, throughput, saturation.

Built by sweeping every feasible replica config of a scenario over a grid of per-replica
request rates with the stage-2 simulator, stored as Parquet (pyarrow) with the schema below,
and looked up vectorized with linear interpolation in rate.

Parquet schema (one row per config x rate):
    model: string, gpu: string, tp: int16, pp: int16, num_gpus: int16,
    price_per_hour: float64        $/h of one replica (num_gpus x GPU price)
    rate_rps: float64              offered request rate to this replica
    capacity_rps: float64          closed-loop capacity of the config (same for all its rows)
    saturated: bool                rate >= 98% of capacity, or a growing backlog
    latency_mean_s: float64        end-to-end latency mean (+inf when saturated)
    latency_quantiles_s: list<float64>   at the levels in metadata["quantiles"]
    latency_p50_s, latency_p95_s, latency_p99_s, ttft_p50_s, ttft_p95_s, tpot_p50_s,
    tpot_p95_s: float64            convenience columns
    throughput_rps, throughput_tok_s: float64
    kv_capacity_tokens: int64
Schema metadata key ``boute`` holds JSON: schema_version, quantiles, scenario, catalog and
trace fingerprints (a DB built from other inputs is detected as stale), engine, the
efficiency per GPU type with its source (``efficiency``, ``efficiency_source``:
``spec-sheet``, ``profile:<dir>`` or ``served:<window>``, ``hardware_profiles``: path and
content hash; ``served_calibration``: label, sha256 and path of a served calibration, whose
engine overheads the swept configs also use; a DB built with other efficiencies or another
served calibration is stale too), infeasible configs with their reasons, build time; for a
workload whose requests share prefixes, ``prefix_cache``: the block size, the routing the
rows assume and each config's prefix-cache hit rate at each unsaturated rate (the rows' latency
and capacity are those of replicas with the cache).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from tqdm import tqdm

from common.errors import InfeasibleConfigError, PerfDBError, StaleDBError

from ._arrivals import Traffic
from ._catalog import Catalog
from ._hardware import Calibration, resolve_calibration
from ._prefix_cache import BLOCK_TOKENS
from ._replica import Efficiency, EngineConfig, ReplicaModel, parallel_configs
from ._scenario import ProfileSpec
from ._served import load_served_calibration
from ._simulator import QUANTILES
from ._sweep import ConfigMapper, SweepJob, process_mapper
from ._workload import Trace

__all__ = ["PERFDB_SCHEMA", "ConfigKey", "PerfDB", "build_perfdb", "mixture_quantile",
           "spec_calibration"]

SCHEMA_VERSION = 1
ConfigKey = tuple[str, str, int, int]  # (model, gpu, tp, pp)
FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]

PERFDB_SCHEMA = pa.schema([
    ("model", pa.string()), ("gpu", pa.string()), ("tp", pa.int16()), ("pp", pa.int16()),
    ("num_gpus", pa.int16()), ("price_per_hour", pa.float64()), ("rate_rps", pa.float64()),
    ("capacity_rps", pa.float64()), ("saturated", pa.bool_()), ("latency_mean_s", pa.float64()),
    ("latency_quantiles_s", pa.list_(pa.float64())),
    ("latency_p50_s", pa.float64()), ("latency_p95_s", pa.float64()),
    ("latency_p99_s", pa.float64()), ("ttft_p50_s", pa.float64()), ("ttft_p95_s", pa.float64()),
    ("tpot_p50_s", pa.float64()), ("tpot_p95_s", pa.float64()),
    ("throughput_rps", pa.float64()), ("throughput_tok_s", pa.float64()),
    ("kv_capacity_tokens", pa.int64()),
])


def fingerprint(payload: Any) -> str:
    """Short SHA-256 of a JSON-serializable payload."""
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def spec_calibration(
    spec: ProfileSpec,
    catalog: Catalog,
    *,
    hardware_profiles: str | Path | None = None,
    efficiency: Efficiency | None = None,
    served_calibration: str | Path | None = None,
) -> Calibration:
    """The efficiency of each GPU type of `spec` (see `profiling._hardware.resolve_calibration`).

    Args:
        spec: the scenario's profiling view (its GPU types; its ``profile.hardware_profiles``).
        catalog: GPU catalog (spec-sheet peaks).
        hardware_profiles: folder of hardware profiles, or one profile directory; overrides
            the scenario's field. None and no scenario field: the spec-sheet roofline for all.
        efficiency: base factors (default `Efficiency()`).
        served_calibration: a served calibration file (`profiling._served`); overrides the
            scenario's ``profile.served_calibration``. None and no scenario field: none.

    Raises:
        CatalogError: a GPU type of the spec is not in the catalog.
        ProfilerError: the profiles folder is missing or holds a malformed profile, or the
            served calibration file is unreadable.

    """
    root = hardware_profiles if hardware_profiles is not None else spec.hardware_profiles
    served_path = (served_calibration if served_calibration is not None
                   else getattr(spec, "served_calibration", None))
    served = load_served_calibration(served_path) if served_path else None
    return resolve_calibration([catalog.gpu(g) for g in spec.gpus], root, efficiency, served)


def build_perfdb(
    spec: ProfileSpec,
    catalog: Catalog,
    *,
    engine: EngineConfig | None = None,
    efficiency: Efficiency | None = None,
    hardware_profiles: str | Path | None = None,
    calibration: Calibration | None = None,
    workers: int | None = None,
    map_configs: ConfigMapper | None = None,
    progress: bool = True,
) -> PerfDB:
    """Sweep every feasible (model, GPU, TP, PP) of `spec` over a rate grid.

    TP is a power of two inside a node; TP x PP is at most the GPUs on offer of that type.
    Infeasible configs (memory) are kept in the metadata with their reasons.

    Args:
        spec: GPUs, models, trace and grid size (from a scenario).
        catalog: GPU and model catalogs.
        engine: engine settings (default: current vLLM).
        efficiency: achieved-efficiency factors of GPU types without a hardware profile, and
            the base of fitted ones (default: `Efficiency()`).
        hardware_profiles: folder of hardware profiles (`spec_calibration`); default: the
            scenario's ``profile.hardware_profiles``, else none (spec-sheet roofline).
        calibration: an already resolved calibration (`spec_calibration`); replaces
            `efficiency` and `hardware_profiles`.
        workers: local processes to sweep in (default: all cores); ignored with
            `map_configs`.
        map_configs: runs the sweeps (a `ConfigMapper`, e.g. ``placement.ray_config_mapper``
            for Ray tasks on a cluster); default: `workers` local processes. The DB's rows
            are the same whichever mapper ran them (only the ``build_seconds`` and
            ``created_utc`` metadata differ between builds).
        progress: draw a progress bar on stderr (one step per config as it finishes).

    Raises:
        CatalogError: a GPU or model of the spec is not in the catalog.
        ProfilerError: the hardware profiles folder is missing or holds a malformed profile.
        PerfDBError: `map_configs` yielded another number of results than configs.

    """
    engine = engine or EngineConfig()
    if calibration is None:
        calibration = spec_calibration(spec, catalog, hardware_profiles=hardware_profiles,
                                       efficiency=efficiency)
    base = spec.base_trace()
    traffic = spec.traffic()
    jobs, infeasible = _sweep_jobs(spec, catalog, engine, calibration)
    if map_configs is None:
        map_configs = process_mapper(workers or os.cpu_count() or 1)
    start = time.perf_counter()
    rows = _sweep_rows(jobs, traffic, map_configs, progress)
    table = pa.Table.from_pylist(rows, schema=PERFDB_SCHEMA)
    meta = _build_meta(spec, catalog, base, engine, calibration, infeasible, start_s=start)
    meta["arrival"] = traffic.describe()
    hit_rates = _hit_rates(rows)
    if hit_rates:
        meta["prefix_cache"] = {"block_tokens": BLOCK_TOKENS,
                                "routing": meta["arrival"].get("routing", "affinity"),
                                "hit_rate": hit_rates}
    return PerfDB(table.replace_schema_metadata({"boute": json.dumps(meta)}))


def _hit_rates(rows: list[dict[str, Any]]) -> dict[str, list[list[float]]]:
    """``{"model/gpu/tp/pp": [[rate_rps, hit rate], ...]}`` of the rows that report one."""
    out: dict[str, list[list[float]]] = {}
    for r in rows:
        if "prefix_hit_rate" in r:
            key = f"{r['model']}/{r['gpu']}/{r['tp']}/{r['pp']}"
            out.setdefault(key, []).append([r["rate_rps"], round(r["prefix_hit_rate"], 6)])
    return out


def _sweep_jobs(spec: ProfileSpec, catalog: Catalog, engine: EngineConfig,
                calibration: Calibration) -> tuple[list[SweepJob], list[dict[str, Any]]]:
    """One sweep per feasible (GPU, model, TP, PP) of `spec`, and the infeasible ones.

    Configs come per GPU type, then model, then `parallel_configs` order. A config whose
    `ReplicaModel` raises `InfeasibleConfigError` (memory) is listed with its reason
    (``model``, ``gpu``, ``tp``, ``pp``, ``reason``) instead of swept.
    """
    jobs: list[SweepJob] = []
    infeasible: list[dict[str, Any]] = []
    models = [catalog.model(m) for m in spec.models]
    for gpu_name, count in spec.gpus.items():
        gpu = catalog.gpu(gpu_name)
        efficiency = calibration.for_gpu(gpu.name)
        for model in models:
            for tp, pp in parallel_configs(gpu.gpus_per_node, count):
                try:
                    ReplicaModel(model, gpu, tp, pp, engine, efficiency)
                except InfeasibleConfigError as exc:
                    infeasible.append({"model": model.name, "gpu": gpu.name, "tp": tp, "pp": pp,
                                       "reason": exc.reason})
                    continue
                jobs.append(SweepJob(model, gpu, tp, pp,
                                     calibration.engine_for(model.name, gpu.name, tp, pp, engine),
                                     efficiency, spec.num_rates))
    return jobs, infeasible


def _sweep_rows(jobs: list[SweepJob], traffic: Traffic, map_configs: ConfigMapper,
                progress: bool) -> list[dict[str, Any]]:
    """Every job's rows through `map_configs`, sorted by (model, gpu, tp, pp, rate).

    Raises:
        PerfDBError: `map_configs` yielded another number of results than jobs.

    """
    rows: list[dict[str, Any]] = []
    done = 0
    with tqdm(total=len(jobs), desc="perf DB", unit="config", disable=not progress) as bar:
        for result in map_configs(jobs, traffic):
            rows.extend(result)
            done += 1
            bar.update()
    if done != len(jobs):
        raise PerfDBError(f"the config mapper returned {done} results for {len(jobs)} configs; "
                          "it must yield one list of rows per config")
    rows.sort(key=lambda r: (r["model"], r["gpu"], r["tp"], r["pp"], r["rate_rps"]))
    return rows


def _build_meta(spec: ProfileSpec, catalog: Catalog, base: Trace, engine: EngineConfig,
                calibration: Calibration, infeasible: list[dict[str, Any]], *,
                start_s: float) -> dict[str, Any]:
    """The DB's ``boute`` metadata: what it was built from (module docstring).

    ``build_seconds`` counts from `start_s` (a ``time.perf_counter`` reading) to now.
    """
    return {
        "schema_version": SCHEMA_VERSION,
        "quantiles": list(QUANTILES),
        "scenario": spec.name,
        "catalog_fingerprint": fingerprint(catalog.fingerprint_payload()),
        "trace_fingerprint": base.fingerprint(),
        "trace": base.summary(),
        "engine": asdict(engine),
        **calibration.to_meta(),
        "num_requests": len(base),
        "infeasible": infeasible,
        "build_seconds": time.perf_counter() - start_s,
        "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def _checked_table(table: pa.Table) -> tuple[pa.Table, dict[str, Any]]:
    """`table` with the module's column types, and its parsed ``boute`` metadata.

    Raises:
        PerfDBError: a missing column, a column of another type or with nulls, metadata
            missing or not a JSON object with ``quantiles`` levels in (0, 1), or quantile
            lists of another length (the message names which).

    """
    missing = [f.name for f in PERFDB_SCHEMA if f.name not in table.column_names]
    raw = (table.schema.metadata or {}).get(b"boute")
    if missing or raw is None:
        raise PerfDBError(f"lacks {missing or 'its boute metadata'} (not a perf DB?)")
    try:
        meta = json.loads(raw)
    except ValueError:
        raise PerfDBError("its boute metadata is not JSON") from None
    if not isinstance(meta, dict):
        raise PerfDBError(f"its boute metadata holds {type(meta).__name__}, expected a JSON "
                          "object")
    levels = meta.get("quantiles")
    if not (isinstance(levels, list) and levels and all(
            isinstance(q, int | float) and not isinstance(q, bool) and 0 < q < 1
            for q in levels)):
        raise PerfDBError(f"metadata quantiles={levels!r} must be a list of levels in (0, 1)")
    columns = []
    for f in PERFDB_SCHEMA:
        col = table.column(f.name)
        try:
            col = col.cast(f.type)
        except pa.ArrowException:
            raise PerfDBError(f"column {f.name!r} has type {col.type}, expected {f.type}"
                              ) from None
        if col.null_count:
            raise PerfDBError(f"column {f.name!r} has {col.null_count} null value(s)")
        columns.append(col)
    lengths = pc.list_value_length(columns[PERFDB_SCHEMA.get_field_index("latency_quantiles_s")])
    if len(lengths) and (pc.min(lengths).as_py() != len(levels)
                         or pc.max(lengths).as_py() != len(levels)):
        raise PerfDBError(f"column 'latency_quantiles_s' holds lists of another length than "
                          f"the {len(levels)} quantile levels of its metadata")
    checked = pa.Table.from_arrays(columns, schema=PERFDB_SCHEMA)
    return checked.replace_schema_metadata(table.schema.metadata), meta


class PerfDB:
    """A loaded performance DB with vectorized lookups.

    Args:
        table: a table with the module's schema and ``boute`` metadata.

    Raises:
        PerfDBError: the table lacks columns or metadata.

    """

    def __init__(self, table: pa.Table) -> None:
        table, self.meta = _checked_table(table)
        self.table = table
        self.quantile_levels = np.asarray(self.meta["quantiles"], dtype=np.float64)
        cols = {name: table.column(name).to_numpy(zero_copy_only=False)
                for name in ("model", "gpu", "tp", "pp", "rate_rps", "capacity_rps",
                             "saturated", "latency_mean_s", "price_per_hour", "ttft_p95_s",
                             "tpot_p95_s")}
        keys = list(zip(cols["model"].tolist(), cols["gpu"].tolist(), cols["tp"].tolist(),
                        cols["pp"].tolist(), strict=True))
        self.keys: list[ConfigKey] = sorted(set(keys))
        self.index: dict[ConfigKey, int] = {k: i for i, k in enumerate(self.keys)}
        c, q = len(self.keys), len(self.quantile_levels)
        counts = np.bincount([self.index[k] for k in keys], minlength=c)
        r = int(counts.max()) if c else 0
        self.rates = np.full((c, r), np.inf)
        self.quantiles = np.full((c, r, q), np.inf)
        self.mean = np.full((c, r), np.inf)
        # TTFT / TPOT P95 per row (NaN TPOT: every output one token long, no decode step)
        self.ttft_p95 = np.full((c, r), np.inf)
        self.tpot_p95 = np.full((c, r), np.inf)
        self.saturated = np.ones((c, r), dtype=bool)
        self.capacity = np.zeros(c)
        self.price_per_hour = np.zeros(c)
        quant = np.asarray(table.column("latency_quantiles_s").to_pylist(), dtype=np.float64)
        fill = np.zeros(c, dtype=np.int64)
        order = np.lexsort((cols["rate_rps"], [self.index[k] for k in keys]))
        for row in order:
            ci = self.index[keys[row]]
            j = fill[ci]
            fill[ci] += 1
            self.rates[ci, j] = cols["rate_rps"][row]
            self.quantiles[ci, j] = quant[row]
            self.mean[ci, j] = cols["latency_mean_s"][row]
            self.ttft_p95[ci, j] = cols["ttft_p95_s"][row]
            self.tpot_p95[ci, j] = cols["tpot_p95_s"][row]
            self.saturated[ci, j] = cols["saturated"][row]
            self.capacity[ci] = cols["capacity_rps"][row]
            self.price_per_hour[ci] = cols["price_per_hour"][row]

    # -- persistence ------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write the DB as Parquet (parent folders are created)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(self.table, path)
        return path

    @classmethod
    def load(
        cls,
        path: str | Path,
        *,
        catalog: Catalog | None = None,
        trace: Trace | None = None,
        calibration: Calibration | None = None,
        arrival: dict[str, Any] | None = None,
    ) -> PerfDB:
        """Read a DB; with `catalog`/`trace`/`calibration`/`arrival` given, check its inputs.

        `arrival` is the traffic's ``describe()``; a DB from before arrival models was built
        on renewal traffic.

        Raises:
            PerfDBError: missing, unreadable or corrupt file.
            StaleDBError: built from another catalog, trace or arrival model, or with other
                efficiency factors for one of `calibration`'s GPU types; rebuild it.

        """
        path = Path(path)
        if not path.is_file():
            raise PerfDBError(f"perf DB {str(path)!r} does not exist; build it with "
                              f"`boute profile --out {path}`")
        try:
            table = pq.read_table(path)
        except (pa.ArrowException, OSError) as exc:
            first = (str(exc).splitlines() or [type(exc).__name__])[0]
            raise PerfDBError(f"perf DB {str(path)!r} is not a readable Parquet file "
                              f"({first}); rebuild it with `boute profile --out {path}`"
                              ) from None
        try:
            db = cls(table)
        except PerfDBError as exc:
            raise PerfDBError(f"perf DB {str(path)!r}: {exc}; rebuild it with `boute profile "
                              f"--out {path}`") from None
        if not db.keys:
            raise PerfDBError(f"perf DB {str(path)!r} has no rows (every config of its "
                              "scenario infeasible, or a cut-short file); check the scenario's "
                              f"GPUs and models, then rebuild it with `boute profile --out {path}`")
        if db.meta.get("schema_version") != SCHEMA_VERSION:
            raise StaleDBError(f"perf DB {str(path)!r}: schema_version="
                               f"{db.meta.get('schema_version')!r}, expected {SCHEMA_VERSION}; "
                               "rebuild it with `boute profile`")
        checks: list[tuple[str, Any]] = []
        if catalog is not None:
            checks.append(("catalog_fingerprint", fingerprint(catalog.fingerprint_payload())))
        if trace is not None:
            checks.append(("trace_fingerprint", trace.fingerprint()))
        if arrival is not None:
            renewal = arrival.get("model") in ("poisson", "gamma", "trace-head")
            checks.append(("arrival", arrival))
            if renewal and "arrival" not in db.meta:
                checks.pop()
        for key, expected in checks:
            if db.meta.get(key) != expected:
                raise StaleDBError(
                    f"perf DB {str(path)!r} is stale: {key}={db.meta.get(key)!r} but the current "
                    f"inputs give {expected!r}; rebuild it with `boute profile --out {path}`")
        if calibration is not None:
            db._check_calibration(path, calibration)
        return db

    def _check_calibration(self, path: Path, calibration: Calibration) -> None:
        """Raise StaleDBError unless every GPU type of `calibration` was swept with its factors.

        DBs written before per-GPU efficiencies hold one flat ``efficiency`` dict for all GPU
        types, from the spec sheet.
        """
        built = self.meta.get("efficiency") or {}
        sources = self.meta.get("efficiency_source") or {}
        was_served = (self.meta.get("served_calibration") or {}).get("sha256")
        now_served = None if calibration.served is None else calibration.served.sha256
        if was_served != now_served:
            raise StaleDBError(
                f"perf DB {str(path)!r} is stale: it was built with served calibration "
                f"{was_served or 'none'}, the current inputs give {now_served or 'none'}; "
                f"rebuild it with `boute profile --out {path}` (same --scenario and "
                "--calibration)")
        flat = not any(isinstance(v, dict) for v in built.values())
        for gpu, eff in sorted(calibration.efficiency.items()):
            used = (built if flat else built.get(gpu)) or {}
            now = asdict(eff)
            if used == now:
                continue
            was = "spec-sheet" if flat else sources.get(gpu, "absent")
            changed = ", ".join(f"{k} {used.get(k, 'absent')!r} -> {now.get(k, 'absent')!r}"
                                for k in sorted(set(used) | set(now))
                                if used.get(k) != now.get(k))
            raise StaleDBError(
                f"perf DB {str(path)!r} is stale: {gpu}'s efficiency came from {was} when it "
                f"was built, the current inputs give {calibration.source[gpu]} ({changed}); "
                f"rebuild it with `boute profile --out {path}` (same --scenario and "
                "--hardware-profiles)")

    # -- lookups ----------------------------------------------------------------------------
    def config_index(self, keys: Iterable[ConfigKey]) -> IntArray:
        """Row indices of configs in the lookup arrays.

        Raises:
            PerfDBError: a config is not in the DB (infeasible, or outside the scenario).

        """
        out = []
        for key in keys:
            if key not in self.index:
                raise PerfDBError(f"perf DB has no rows for model={key[0]!r} gpu={key[1]!r} "
                                  f"tp={key[2]} pp={key[3]}; it is infeasible or outside the "
                                  "scenario the DB was built for")
            out.append(self.index[key])
        return np.asarray(out, dtype=np.int64)

    def lookup(
        self, config: IntArray, rate_rps: FloatArray
    ) -> tuple[FloatArray, FloatArray, BoolArray]:
        """Interpolate latency quantiles and mean at per-replica rates, vectorized.

        Args:
            config: ``(N,)`` config indices (see `config_index`).
            rate_rps: ``(N,)`` request rates per replica; below the grid the lowest-rate row is
                used (latency cannot fall further), above the last unsaturated rate the result
                is saturated.

        Returns:
            ``(N, Q)`` quantiles (seconds, +inf when saturated), ``(N,)`` means, ``(N,)``
            saturation flags.

        """
        config = np.asarray(config, dtype=np.int64)
        lo, hi, w, sat = self._bracket(config, rate_rps)
        q_lo, q_hi = self.quantiles[config, lo], self.quantiles[config, hi]
        m_lo, m_hi = self.mean[config, lo], self.mean[config, hi]
        use_hi = (w > 0)[:, None]
        with np.errstate(invalid="ignore"):
            quant = np.where(use_hi, (1 - w)[:, None] * q_lo + w[:, None] * q_hi, q_lo)
            mean = np.where(w > 0, (1 - w) * m_lo + w * m_hi, m_lo)
        quant[sat] = np.inf
        mean[sat] = np.inf
        return quant, mean, sat

    def token_p95(self, config: IntArray, rate_rps: FloatArray) -> tuple[FloatArray, FloatArray]:
        """TTFT and TPOT P95 at per-replica rates, interpolated in rate as `lookup` does.

        Returns:
            ``(N,)`` TTFT P95 and ``(N,)`` TPOT P95, seconds (+inf when saturated; a NaN TPOT
            means outputs of one token, no decode step to time).

        """
        config = np.asarray(config, dtype=np.int64)
        lo, hi, w, sat = self._bracket(config, rate_rps)
        out = []
        for col in (self.ttft_p95, self.tpot_p95):
            a, b = col[config, lo], col[config, hi]
            with np.errstate(invalid="ignore"):
                v = np.where(w > 0, (1 - w) * a + w * b, a)
            out.append(np.where(sat, np.inf, v))
        return out[0], out[1]

    def _bracket(self, config: IntArray, rate_rps: FloatArray
                 ) -> tuple[IntArray, IntArray, FloatArray, BoolArray]:
        """Grid rows around each rate (``lo``, ``hi``), the weight of ``hi``, saturation."""
        rate = np.asarray(rate_rps, dtype=np.float64)
        grid = self.rates[config]                                   # (N, R)
        hi = (grid < rate[:, None]).sum(axis=1)
        last = grid.shape[1] - 1
        hi = np.minimum(hi, last)
        lo = np.maximum(hi - 1, 0)
        r_lo = np.take_along_axis(grid, lo[:, None], 1)[:, 0]
        r_hi = np.take_along_axis(grid, hi[:, None], 1)[:, 0]
        span = r_hi - r_lo
        with np.errstate(invalid="ignore", divide="ignore"):
            w = np.where((span > 0) & np.isfinite(span), (rate - r_lo) / span, 0.0)
        w = np.clip(w, 0.0, 1.0)
        s_lo, s_hi = self.saturated[config, lo], self.saturated[config, hi]
        beyond = rate > r_hi                                        # past the grid
        sat = s_lo | (s_hi & (w > 0)) | beyond
        return lo, hi, w, sat

    def max_rate_under(self, config: int, p95_s: float) -> float:
        """Highest grid rate of a config whose P95 latency is at most `p95_s` (0 if none)."""
        p95 = np.array([np.interp(0.95, self.quantile_levels, q) for q in self.quantiles[config]])
        ok = (p95 <= p95_s) & ~self.saturated[config]
        return float(self.rates[config][ok].max()) if ok.any() else 0.0


def mixture_quantile(
    quantiles: FloatArray, weights: FloatArray, levels: Sequence[float], p: float = 0.95,
    iters: int = 48,
) -> FloatArray:
    """The `p`-quantile of mixtures of latency distributions, vectorized over a batch.

    Each component g has CDF F_g, known through its quantiles (linear between levels, 0 at
    latency 0, 1 past the last level). The mixture CDF is ``F(x) = sum_g w_g F_g(x)`` with
    ``sum_g w_g = 1``; we solve ``F(x) = p`` by bisection on x (F is monotone).

    Args:
        quantiles: ``(..., G, Q)`` latency quantiles of G components at `levels`.
        weights: ``(..., G)`` traffic shares (rows are normalized; 0 drops a component).
        levels: the Q quantile levels, increasing in (0, 1).
        p: the mixture quantile to compute.
        iters: bisection steps (48 gives ~1e-14 relative precision).

    Returns:
        ``(...)`` latencies; +inf when a component with weight > 0 is saturated (+inf).

    """
    qs = np.asarray(quantiles, dtype=np.float64)
    w = np.asarray(weights, dtype=np.float64)
    w = w / w.sum(axis=-1, keepdims=True)
    lv = np.concatenate([[0.0], np.asarray(levels, dtype=np.float64), [1.0]])
    active = w > 0
    bad = np.any(active & ~np.all(np.isfinite(qs), axis=-1), axis=-1)
    safe = np.where(np.isfinite(qs), qs, 0.0)
    # Knots: 0 at x = 0, the table, and 1 at the last quantile plus a small margin.
    knots = np.concatenate([np.zeros((*qs.shape[:-1], 1)), safe,
                            safe[..., -1:] * 1.0 + 1e-9], axis=-1)
    lo = np.zeros(qs.shape[:-2])
    hi = np.max(np.where(active, knots[..., -1], 0.0), axis=-1)

    def cdf(x: FloatArray) -> FloatArray:
        xb = x[..., None, None]
        idx = np.clip((knots <= xb).sum(axis=-1) - 1, 0, knots.shape[-1] - 2)
        k0 = np.take_along_axis(knots, idx[..., None], -1)[..., 0]
        k1 = np.take_along_axis(knots, idx[..., None] + 1, -1)[..., 0]
        f = lv[idx] + (lv[idx + 1] - lv[idx]) * np.clip(
            (x[..., None] - k0) / np.maximum(k1 - k0, 1e-300), 0.0, 1.0)
        f = np.where(x[..., None] >= knots[..., -1], 1.0, f)
        return np.asarray((w * f).sum(axis=-1))

    for _ in range(iters):
        mid = 0.5 * (lo + hi)
        below = cdf(mid) < p
        lo = np.where(below, mid, lo)
        hi = np.where(below, hi, mid)
    out = 0.5 * (lo + hi)
    return np.where(bad, np.inf, out)
