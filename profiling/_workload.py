"""Workload traces: arrivals and token lengths, generators, file loaders, rate scaling.

A trace is four aligned columns: ``arrival_s`` (seconds, non-decreasing), ``input_tokens`` and
``output_tokens`` (integers >= 1), and an optional ``prompt`` text; optionally also what its
requests share (``prefix_id``, ``prefix_tokens``, ``session_id``, ``turn``:
`profiling._sharing.Sharing`), which the simulator's prefix cache uses. Generators draw lengths
from log-normal distributions matched to the mean and median measured on the real data sets
(benchmarks/data/reference/calibration.md section 4): for a log-normal with median ``m`` and mean
``mu``, ``sigma = sqrt(2 ln(mu / m))``.

Arrivals are Poisson (exponential gaps, coefficient of variation 1); bursty at the scale of
single gaps: gamma gaps with shape ``k = 1 / cv^2`` and scale ``1 / (rate * k)``, so the mean
rate is kept and ``cv > 1`` clusters requests in bursts; or *modulated*: a Poisson process whose
rate changes every minute, ``rate * m_k`` in minute k with ``m_k`` gamma-distributed of mean 1
and coefficient of variation ``minute_cv`` (shape ``1 / cv^2``, scale ``cv^2``; cv = 1 lets a
minute fall silent, as production traces do), independent from minute to minute: the
minute-scale swings of production traffic.
"""

from __future__ import annotations

import hashlib
import json
import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.json as pa_json
import pyarrow.parquet as pq

from common.errors import TraceError

from ._sharing import SHARING_COLUMNS, Sharing, reuse_potential

__all__ = [
    "TRACE_SHAPES",
    "LengthDist",
    "TimeUnit",
    "Trace",
    "TraceReport",
    "TraceShape",
    "daily_curve",
    "generate_trace",
    "load_trace",
    "read_trace",
]

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
ArrivalProcess = Literal["poisson", "gamma", "modulated"]
_COLUMNS = ("arrival_s", "input_tokens", "output_tokens")
BURST_WINDOWS_S = (1.0, 10.0, 60.0)
"""Time scales at which `Trace.burstiness` reports the spread of request counts."""
MAX_TOKENS = 2**30
"""Longest request length a trace may hold: 100x the longest context of any model (10M)."""


@dataclass(frozen=True)
class Trace:
    """An immutable workload trace; columns are numpy arrays of equal length.

    Raises:
        TraceError: lengths < 1, negative or unsorted arrivals, or columns of unequal length.

    """

    arrival_s: FloatArray
    input_tokens: IntArray
    output_tokens: IntArray
    prompts: tuple[str, ...] | None = None
    name: str = "trace"
    sharing: Sharing | None = None
    """What the requests share (system prompts, conversations); None: nothing."""

    def __post_init__(self) -> None:
        n = len(self.arrival_s)
        if self.sharing is not None:
            if len(self.sharing) != n:
                raise TraceError(f"trace {self.name!r}: sharing columns have "
                                 f"{len(self.sharing)} rows, expected {n}")
            over = np.flatnonzero(self.sharing.prefix_tokens > self.input_tokens)
            if over.size:
                i = int(over[0])
                raise TraceError(f"trace {self.name!r}: prefix_tokens="
                                 f"{int(self.sharing.prefix_tokens[i])} at row {i} exceeds its "
                                 f"input_tokens={int(self.input_tokens[i])}; a shared system "
                                 "prompt is part of the prompt")
        if len(self.input_tokens) != n or len(self.output_tokens) != n:
            raise TraceError(
                f"trace {self.name!r}: columns have unequal lengths (arrival_s={n}, "
                f"input_tokens={len(self.input_tokens)}, output_tokens={len(self.output_tokens)})"
            )
        if self.prompts is not None and len(self.prompts) != n:
            raise TraceError(f"trace {self.name!r}: prompt column has {len(self.prompts)} rows, "
                             f"expected {n}")
        if n == 0:
            raise TraceError(f"trace {self.name!r}: no requests")
        for col in ("input_tokens", "output_tokens"):
            arr = getattr(self, col)
            bad = np.flatnonzero(arr < 1)
            if bad.size:
                raise TraceError(f"trace {self.name!r}: {col}={int(arr[bad[0]])} at row "
                                 f"{int(bad[0])} must be >= 1 token")
        if not np.all(np.isfinite(self.arrival_s)) or self.arrival_s[0] < 0:
            raise TraceError(f"trace {self.name!r}: arrival_s must be finite and >= 0")
        drops = np.flatnonzero(np.diff(self.arrival_s) < 0)
        if drops.size:
            i = int(drops[0]) + 1
            raise TraceError(
                f"trace {self.name!r}: arrival_s is not sorted: row {i} has "
                f"arrival_s={self.arrival_s[i]:g} < {self.arrival_s[i - 1]:g} at row {i - 1} "
                "(sort the file by arrival time)"
            )
        for col in _COLUMNS:
            getattr(self, col).setflags(write=False)

    def __len__(self) -> int:
        return len(self.arrival_s)

    @property
    def duration_s(self) -> float:
        """Time from the first to the last arrival."""
        return float(self.arrival_s[-1] - self.arrival_s[0])

    @property
    def rate_rps(self) -> float:
        """Mean arrival rate: (n - 1) / duration; infinite when all arrive at once."""
        return (len(self) - 1) / self.duration_s if self.duration_s > 0 else math.inf

    def in_length_span(self, lo: int, hi: int) -> npt.NDArray[np.bool_]:
        """Requests with ``lo < input + output tokens <= hi`` (a length class's)."""
        total = self.input_tokens + self.output_tokens
        return np.asarray((total > lo) & (total <= hi))

    def scaled_to(self, rate_rps: float) -> Trace:
        """The same requests with arrival times stretched so the mean rate is `rate_rps`.

        Raises:
            TraceError: `rate_rps` is not > 0, or the trace has no duration to scale.

        """
        if not rate_rps > 0:
            raise TraceError(f"rate_rps={rate_rps!r} must be > 0")
        if self.duration_s <= 0:
            raise TraceError(f"trace {self.name!r}: all requests arrive at once; cannot scale")
        factor = self.rate_rps / rate_rps
        start = self.arrival_s[0]
        arrivals = (self.arrival_s - start) * factor
        return Trace(arrivals, self.input_tokens, self.output_tokens, self.prompts, self.name,
                     self.sharing)

    def head(self, n: int) -> Trace:
        """The first `n` requests."""
        prompts = None if self.prompts is None else self.prompts[:n]
        return Trace(self.arrival_s[:n], self.input_tokens[:n], self.output_tokens[:n], prompts,
                     self.name, None if self.sharing is None else self.sharing.take(
                         np.arange(min(n, len(self)))))

    def take(self, idx: IntArray, arrival_s: FloatArray | None = None,
             name: str | None = None) -> Trace:
        """The requests `idx` (in that order, sharing columns kept), at `arrival_s` if given.

        Args:
            idx: ``(M,)`` row indices.
            arrival_s: ``(M,)`` new arrival times (default: the rows' own).
            name: the new trace's name (default: this one's).

        """
        idx = np.asarray(idx, dtype=np.int64)
        return Trace(self.arrival_s[idx] if arrival_s is None else arrival_s,
                     self.input_tokens[idx], self.output_tokens[idx],
                     None if self.prompts is None else tuple(self.prompts[i] for i in idx),
                     self.name if name is None else name,
                     None if self.sharing is None else self.sharing.take(idx))

    def without_sharing(self) -> Trace:
        """The same requests with no sharing columns (as served without a prefix cache)."""
        return Trace(self.arrival_s, self.input_tokens, self.output_tokens, self.prompts,
                     self.name)

    def prefix_reuse(self) -> dict[str, float] | None:
        """`profiling._sharing.reuse_potential` of this trace; None without sharing columns."""
        if self.sharing is None:
            return None
        return reuse_potential(self.input_tokens, self.output_tokens, self.sharing)

    def save(self, path: str | Path) -> Path:
        """Write the trace in the format its suffix names; returns the path.

        ``.parquet``, ``.csv`` or ``.jsonl`` (one JSON object per request), with the columns
        ``arrival_s``, ``input_tokens``, ``output_tokens`` (and ``prompt`` when the trace has
        prompts); `load_trace` reads each back.

        Raises:
            TraceError: any other suffix (named, with the ones supported).

        """
        path = Path(path)
        suffix = path.suffix.lower()
        if suffix not in _WRITERS:
            raise TraceError(f"trace file {str(path)!r}: cannot write format {suffix!r}; "
                             f"use one of {', '.join(_WRITERS)}")
        cols: dict[str, Any] = {"arrival_s": self.arrival_s, "input_tokens": self.input_tokens,
                                "output_tokens": self.output_tokens}
        if self.prompts is not None:
            cols["prompt"] = list(self.prompts)
        if self.sharing is not None:
            cols.update({c: getattr(self.sharing, c) for c in SHARING_COLUMNS})
        path.parent.mkdir(parents=True, exist_ok=True)
        _WRITERS[suffix](pa.table(cols), path)
        return path

    def fingerprint(self) -> str:
        """A short hash of the columns (lengths and arrivals, and sharing) identifying it.

        A trace without sharing columns hashes its three columns alone (as before they
        existed).
        """
        h = hashlib.sha256()
        for col in _COLUMNS:
            h.update(np.ascontiguousarray(getattr(self, col)).tobytes())
        if self.sharing is not None:
            for col in SHARING_COLUMNS:
                h.update(np.ascontiguousarray(getattr(self.sharing, col)).tobytes())
        return h.hexdigest()[:16]

    def summary(self) -> dict[str, float]:
        """Count, rate, duration and length statistics (mean / p50 / p90 / p99 / max)."""
        out: dict[str, float] = {
            "requests": float(len(self)),
            "duration_s": self.duration_s,
            "rate_rps": self.rate_rps,
        }
        gaps = np.diff(self.arrival_s)
        if gaps.size > 1 and gaps.mean() > 0:
            out["interarrival_cv"] = float(gaps.std() / gaps.mean())
        for col in ("input_tokens", "output_tokens"):
            arr = getattr(self, col)
            out[f"{col}_mean"] = float(arr.mean())
            for q in (50, 90, 99):
                out[f"{col}_p{q}"] = float(np.percentile(arr, q))
            out[f"{col}_max"] = float(arr.max())
        reuse = self.prefix_reuse()
        if reuse is not None:
            out["prefix_reuse"] = reuse["potential"]
        return out

    def window_counts(self, window_s: float) -> IntArray:
        """Requests arriving in each full window ``[k W, (k + 1) W)`` from the first arrival."""
        full = int(self.duration_s // window_s)
        rel = self.arrival_s - self.arrival_s[0]
        idx = (rel // window_s).astype(np.int64)
        return np.bincount(idx[idx < full], minlength=full).astype(np.int64)

    def burstiness(self, windows_s: tuple[float, ...] = BURST_WINDOWS_S) -> dict[str, float]:
        """How bursty the arrivals are at several time scales.

        ``count_cv_<W>s``: coefficient of variation (std / mean) of the request counts per
        full W-second window (Poisson arrivals give ``1 / sqrt(rate W)``; more is burstier);
        ``minute_peak_to_mean`` and ``minute_trough_to_mean``: the busiest and quietest full
        minute's count over the mean minute. A scale with fewer than 3 full windows is left
        out.
        """
        out: dict[str, float] = {}
        for w in windows_s:
            counts = self.window_counts(w)
            if counts.size >= 3 and counts.mean() > 0:
                out[f"count_cv_{w:g}s"] = float(counts.std() / counts.mean())
                if w == 60.0:
                    out["minute_peak_to_mean"] = float(counts.max() / counts.mean())
                    out["minute_trough_to_mean"] = float(counts.min() / counts.mean())
        return out

    def format_summary(self) -> str:
        """`summary()` as a small aligned table."""
        s = self.summary()
        lines = [f"trace {self.name}: {int(s['requests'])} requests over {s['duration_s']:.1f} s "
                 f"({s['rate_rps']:.2f} req/s"
                 + (f", inter-arrival CV {s['interarrival_cv']:.2f})" if "interarrival_cv" in s
                    else ")"),
                 f"{'tokens':<8}{'mean':>9}{'p50':>8}{'p90':>8}{'p99':>8}{'max':>8}"]
        for col, label in (("input_tokens", "input"), ("output_tokens", "output")):
            lines.append(f"{label:<8}{s[col + '_mean']:>9.1f}{s[col + '_p50']:>8.0f}"
                         f"{s[col + '_p90']:>8.0f}{s[col + '_p99']:>8.0f}{s[col + '_max']:>8.0f}")
        return "\n".join(lines)


@dataclass(frozen=True)
class LengthDist:
    """A log-normal token-length distribution given by its mean and median, clipped."""

    mean: float
    median: float
    max_tokens: int

    def sample(self, rng: np.random.Generator, n: int) -> IntArray:
        """Draw `n` lengths: ``round(median * exp(sigma * z))`` clipped to [1, max_tokens]."""
        sigma = math.sqrt(2.0 * math.log(self.mean / self.median))
        draws = self.median * np.exp(sigma * rng.standard_normal(n))
        return np.clip(np.rint(draws), 1, self.max_tokens).astype(np.int64)


@dataclass(frozen=True)
class TraceShape:
    """A data set's request shape: a mixture of (weight, input, output) length components."""

    name: str
    components: tuple[tuple[float, LengthDist, LengthDist], ...]
    source: str


# Lengths measured with the Llama-3 tokenizer (benchmarks/data/reference/calibration.md section 4).
TRACE_SHAPES: dict[str, TraceShape] = {
    # Zero-shot chat-template prompts 69 / 65; answers: 8B-class CoT responses 103.3 / 95
    # (Mixtral proxy), clipped at the longest reference answers.
    "gsm8k": TraceShape(
        "gsm8k",
        ((1.0, LengthDist(69.0, 65.0, 512), LengthDist(103.3, 95.0, 1024)),),
        "calibration.md s4: GSM8K prompt 69/65 (template), 8B-class response 103.3/95",
    ),
    # Two turns, equally likely: turn 1 = question with template 75.7 / 48, answer 435.3 / 385;
    # turn 2 = prompt with history 543.7 / 482.5, answer 535.4 / 505. FastChat max_new_tokens 2048.
    "mtbench": TraceShape(
        "mtbench",
        (
            (0.5, LengthDist(75.7, 48.0, 1024), LengthDist(435.3, 385.0, 2048)),
            (0.5, LengthDist(543.7, 482.5, 4096), LengthDist(535.4, 505.0, 2048)),
        ),
        "calibration.md s4: MT-Bench Llama-3.1-8B answers, turn 1 and turn 2 with history",
    ),
    # ShareGPT conversations as sampled by vLLM's benchmark_serving (the calibration rows of
    # section 3): heavy-tailed, mean ~ 2x median; capped so prompt + output <= 2048 tokens.
    "sharegpt": TraceShape(
        "sharegpt",
        ((1.0, LengthDist(220.0, 110.0, 1024), LengthDist(200.0, 100.0, 1024)),),
        "vLLM benchmark_serving ShareGPT sampling, Llama-3 tokenizer (approximate)",
    ),
}


def generate_trace(
    shape: str,
    *,
    rate_rps: float,
    num_requests: int,
    arrival: ArrivalProcess = "poisson",
    burstiness_cv: float = 1.0,
    minute_cv: float = 0.5,
    daily_profile: Sequence[float] | None = None,
    seed: int = 0,
) -> Trace:
    """Generate a synthetic trace shaped like a data set.

    Args:
        shape: a key of `TRACE_SHAPES` (``gsm8k``, ``mtbench``, ``sharegpt``).
        rate_rps: mean arrival rate, requests/s; ``math.inf`` puts every arrival at t = 0.
        num_requests: number of requests (>= 1).
        arrival: ``poisson`` or ``gamma`` inter-arrival times, or ``modulated`` (a Poisson
            process whose rate is redrawn every minute; module docstring).
        burstiness_cv: coefficient of variation of the gamma gaps (1 = Poisson).
        minute_cv: coefficient of variation of the per-minute rate of ``modulated``.
        daily_profile: ``poisson`` or ``modulated`` arrivals whose rate follows a day: the
            relative rate at evenly spaced times from midnight (linear in between, mean 1
            over the day, `daily_curve`), times `rate_rps` (the day's mean); the trace
            starts at midnight.
        seed: random seed; the same arguments give the same trace.

    Raises:
        TraceError: unknown shape or non-positive rate/count/cv.

    """
    if shape not in TRACE_SHAPES:
        raise TraceError(f"trace shape={shape!r} is unknown; choose one of "
                         f"{sorted(TRACE_SHAPES)} or load a file with --trace")
    if not rate_rps > 0:
        raise TraceError(f"rate_rps={rate_rps!r} must be > 0")
    if num_requests < 1:
        raise TraceError(f"num_requests={num_requests!r} must be >= 1")
    if not burstiness_cv > 0:
        raise TraceError(f"burstiness_cv={burstiness_cv!r} must be > 0")
    if not minute_cv >= 0:
        raise TraceError(f"minute_cv={minute_cv!r} must be >= 0")
    rng = np.random.default_rng(seed)
    spec = TRACE_SHAPES[shape]
    weights = np.array([c[0] for c in spec.components])
    which = rng.choice(len(weights), size=num_requests, p=weights / weights.sum())
    inputs = np.empty(num_requests, dtype=np.int64)
    outputs = np.empty(num_requests, dtype=np.int64)
    for i, (_, in_dist, out_dist) in enumerate(spec.components):
        mask = which == i
        inputs[mask] = in_dist.sample(rng, int(mask.sum()))
        outputs[mask] = out_dist.sample(rng, int(mask.sum()))
    if math.isinf(rate_rps):
        arrivals = np.zeros(num_requests)
    else:
        if arrival == "poisson" and daily_profile is None:
            gaps = rng.exponential(1.0 / rate_rps, size=num_requests)
        elif arrival == "gamma":
            k = 1.0 / burstiness_cv**2
            gaps = rng.gamma(k, 1.0 / (rate_rps * k), size=num_requests)
        elif arrival == "modulated" or daily_profile is not None:
            cv = minute_cv if arrival == "modulated" else 0.0
            if arrival not in ("poisson", "modulated"):
                raise TraceError(f"arrival={arrival!r}: a daily profile modulates poisson or "
                                 "modulated arrivals")
            curve = None if daily_profile is None else daily_curve(daily_profile)
            gaps = np.diff(_modulated(rng, rate_rps, num_requests, cv, curve), prepend=0.0)
        else:
            raise TraceError(f"arrival={arrival!r} must be 'poisson', 'gamma' or 'modulated'")
        gaps[0] = 0.0
        arrivals = np.cumsum(gaps)
    return Trace(arrivals, inputs, outputs, None, name=f"{shape}-{arrival}")


MINUTE_S = 60.0


def daily_curve(profile: Sequence[float]) -> FloatArray:
    """A day's relative rate per minute (1,440 values, mean 1) from evenly spaced points.

    Point i of ``n`` is the rate at ``i * 24 h / n`` after midnight; linear in between and
    from the last point back to the first at midnight.

    Raises:
        TraceError: an empty profile, a negative value, or all zeros.

    """
    prof = np.asarray(profile, dtype=np.float64)
    if prof.size == 0 or np.any(prof < 0) or not prof.sum() > 0:
        raise TraceError(f"daily_profile={list(profile)} must list relative rates >= 0, not "
                         "all 0")
    day = 1440
    knots = np.arange(prof.size + 1) * day / prof.size
    curve = np.interp(np.arange(day, dtype=np.float64), knots, np.append(prof, prof[0]))
    return np.asarray(curve / curve.mean(), dtype=np.float64)


def _modulated(rng: np.random.Generator, rate_rps: float, n: int, minute_cv: float,
               curve: FloatArray | None = None) -> FloatArray:
    """`n` arrival times of a Poisson process of rate ``rate_rps * m_k`` in minute k.

    With `curve` (a day's relative rate per minute, `daily_curve`), ``m_k`` is also
    multiplied by ``curve[k mod 1440]``.

    Time change: unit-rate Poisson points ``E_i`` mapped through the inverse of the
    cumulative intensity ``Lambda(t) = rate * integral_0^t m``, piecewise linear over minutes.
    """
    unit = np.cumsum(rng.exponential(1.0, size=n))

    def levels(start: int, k: int) -> FloatArray:
        out = np.ones(k)
        if minute_cv > 0:
            shape = 1.0 / minute_cv**2
            out = rng.gamma(shape, 1.0 / shape, size=k)
        if curve is not None:
            out = out * curve[np.arange(start, start + k) % len(curve)]
        return out

    minutes = int(unit[-1] / (rate_rps * MINUTE_S)) + 1
    first = levels(0, 2 * minutes + 8)
    cum = np.concatenate([[0.0], np.cumsum(first) * rate_rps * MINUTE_S])
    while cum[-1] < unit[-1]:                     # a quiet draw: more minutes
        more = levels(len(cum) - 1, minutes + 8)
        cum = np.concatenate([cum, cum[-1] + np.cumsum(more) * rate_rps * MINUTE_S])
    knots = np.arange(len(cum)) * MINUTE_S
    return np.asarray(np.interp(unit, cum, knots), dtype=np.float64)


def _write_jsonl(table: pa.Table, path: Path) -> None:
    """One JSON object per row (pyarrow reads JSON lines but does not write them)."""
    with path.open("w", encoding="utf-8") as out:
        for row in table.to_pylist():
            out.write(json.dumps(row, ensure_ascii=False) + "\n")


_WRITERS: dict[str, Callable[[pa.Table, Path], None]] = {
    ".parquet": lambda table, path: pq.write_table(table, path),
    ".csv": lambda table, path: pa_csv.write_csv(table, path),
    ".jsonl": _write_jsonl,
}


def _read_table(path: Path) -> pa.Table:
    suffix = path.suffix.lower()
    try:
        if suffix == ".parquet":
            return pq.read_table(path)
        if suffix == ".csv":
            return pa_csv.read_csv(path)
        if suffix in (".jsonl", ".json"):
            return pa_json.read_json(path)
    except (pa.ArrowException, OSError) as exc:
        first = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise TraceError(f"trace file {str(path)!r}: cannot read as {suffix[1:]} ({first}); "
                         "check the file's format and encoding (UTF-8)") from None
    raise TraceError(f"trace file {str(path)!r}: unknown format {suffix!r}; "
                     "use .csv, .jsonl or .parquet")


def _is_number(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return True


TimeUnit = Literal["auto", "s", "ms", "us", "ns"]
_UNIT_S: dict[str, float] = {"s": 1.0, "ms": 1e-3, "us": 1e-6, "ns": 1e-9}
# Epoch clocks by magnitude: 1e9 s is 2001-09-09; the same instant is 1e12 ms, 1e15 us, 1e18 ns.
# A clock at or past 1e9 is read as an epoch: seconds below 1e11 (year 5138), milliseconds
# below 1e14, microseconds below 1e17, nanoseconds beyond.
_EPOCH_MIN = 1e9
_EPOCH_UNITS = ((1e11, "s"), (1e14, "ms"), (1e17, "us"), (math.inf, "ns"))


@dataclass(frozen=True)
class TraceReport:
    """What `read_trace` found in a file and did about it (shown by ``boute trace``).

    Attributes:
        time_format: how the arrival column was read: ``seconds``, ``<unit> (given)``,
            ``epoch seconds``/``milliseconds``/``microseconds``/``nanoseconds`` (detected by
            magnitude), ``timestamps`` (an Arrow/Parquet/pandas datetime column) or
            ``ISO datetime strings``.
        start: the first arrival as an ISO UTC datetime when the clock was absolute.
        sorted_rows: rows that were out of arrival order (the trace is sorted, stably).
        zero_input_rows, zero_output_rows: rows with 0 prompt / output tokens, counted as 1
            token (a request that arrived and was answered with nothing still costs a
            prefill and one step of its replica).

    """

    time_format: str
    start: str | None = None
    sorted_rows: int = 0
    zero_input_rows: int = 0
    zero_output_rows: int = 0

    def notes(self) -> list[str]:
        """One line per thing the loader detected or changed."""
        out = [f"arrival column read as {self.time_format}"
               + (f", first request at {self.start}" if self.start else "")]
        if self.sorted_rows:
            out.append(f"{self.sorted_rows} row(s) out of arrival order: sorted by arrival")
        for col, n in (("input_tokens", self.zero_input_rows),
                       ("output_tokens", self.zero_output_rows)):
            if n:
                out.append(f"{n} row(s) with {col}=0: counted as 1 token")
        return out


def _arrival_seconds(col: pa.ChunkedArray, where: str, time_unit: TimeUnit
                     ) -> tuple[FloatArray, str, str | None]:
    """The arrival column as float seconds, how it was read, and its absolute start (if any).

    Timestamps (Arrow ``timestamp``/``date``; ISO strings) become seconds since the epoch;
    numbers are seconds, or the `time_unit` given, or an epoch clock detected by magnitude.
    """
    if pa.types.is_timestamp(col.type) or pa.types.is_date(col.type):
        ns = pc.cast(pc.cast(col, pa.timestamp("ns")), pa.int64()).to_numpy(
            zero_copy_only=False)
        return _absolute(ns, col, where, "timestamps")
    if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
        values = col.to_pylist()
        if not any(v is not None and _is_number(v) for v in values[:1]):
            return _absolute(_parse_iso(values, where), col, where, "ISO datetime strings")
    if pa.types.is_boolean(col.type):
        raise TraceError(f"{where} must be numbers or datetimes, row 0 holds "
                         f"{col[0].as_py()!r}")
    try:
        arr = pc.cast(col, pa.float64()).to_numpy(zero_copy_only=False)
    except pa.ArrowException:
        row, value = next(((i, v) for i, v in enumerate(col.to_pylist()) if not _is_number(v)),
                          (0, col[0].as_py()))
        raise TraceError(f"{where} must be numbers or datetimes, row {row} holds {value!r}"
                         ) from None
    arr = np.asarray(arr, dtype=np.float64)
    if np.isnan(arr).any():
        raise TraceError(f"{where} is empty at row {int(np.flatnonzero(np.isnan(arr))[0])}")
    if time_unit != "auto":
        return arr * _UNIT_S[time_unit], f"{time_unit} (given)", None
    first = float(np.nanmin(arr)) if arr.size else 0.0
    if first < _EPOCH_MIN:
        return arr, "seconds", None
    unit = next(u for bound, u in _EPOCH_UNITS if first < bound)
    names = {"s": "seconds", "ms": "milliseconds", "us": "microseconds", "ns": "nanoseconds"}
    seconds = arr * _UNIT_S[unit]
    start = np.datetime64(round(float(seconds.min()) * 1e6), "us")
    return seconds, f"epoch {names[unit]}", f"{start}Z"


def _parse_iso(values: list[Any], where: str) -> npt.NDArray[np.int64]:
    """ISO 8601 strings as epoch nanoseconds (UTC; offsets applied, naive read as UTC)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")     # numpy warns on (and mis-stores) offsets
            return np.array(values, dtype="datetime64[ns]").astype(np.int64)
    except (ValueError, TypeError, UserWarning, DeprecationWarning):
        pass                               # offsets, odd spellings: one by one below
    out = np.empty(len(values), dtype=np.int64)
    for i, v in enumerate(values):
        try:
            d = datetime.fromisoformat(str(v))
        except (TypeError, ValueError):
            raise TraceError(f"{where} must be numbers or datetimes, row {i} holds {v!r} "
                             "(use ISO 8601, e.g. 2023-11-16 18:17:03.98)") from None
        if d.tzinfo is None:
            d = d.replace(tzinfo=UTC)
        out[i] = round(d.timestamp() * 1e9)
    return out


def _absolute(ns: npt.NDArray[np.int64], col: pa.ChunkedArray, where: str, how: str
              ) -> tuple[FloatArray, str, str | None]:
    if col.null_count:
        row = next(i for i, v in enumerate(col.to_pylist()) if v is None)
        raise TraceError(f"{where} is empty at row {row}")
    ns = np.asarray(ns, dtype=np.int64)
    first = int(ns.min())
    start = f"{np.datetime64(first, 'ns').astype('datetime64[us]')}Z"
    return (ns - first).astype(np.float64) / 1e9, how, start


def load_trace(
    path: str | Path,
    *,
    columns: Mapping[str, str] | None = None,
    time_unit: TimeUnit = "auto",
) -> Trace:
    """Load a trace from CSV, JSONL or Parquet (`read_trace` without its report)."""
    return read_trace(path, columns=columns, time_unit=time_unit)[0]


def read_trace(
    path: str | Path,
    *,
    columns: Mapping[str, str] | None = None,
    time_unit: TimeUnit = "auto",
) -> tuple[Trace, TraceReport]:
    """Load a trace from CSV, JSONL or Parquet, as users' logs hold it.

    The arrival column may be seconds (any origin), an epoch clock in s/ms/us/ns (detected
    by magnitude, or named by `time_unit`), Arrow/Parquet/pandas timestamps, or ISO 8601
    strings; arrivals become seconds after the first request. Rows out of arrival order are
    sorted (stably); rows with 0 prompt or output tokens count as 1 token. The report says
    which of these applied.

    Args:
        path: the file; the format follows its suffix.
        columns: maps our column names (``arrival_s``, ``input_tokens``, ``output_tokens``,
            ``prompt``, and the optional sharing columns ``prefix_id``, ``prefix_tokens``,
            ``session_id``, ``turn``) to the file's, e.g. ``{"arrival_s": "TIMESTAMP"}``.
        time_unit: unit of a numeric arrival column: ``auto`` (seconds, or an epoch clock by
            magnitude), ``s``, ``ms``, ``us`` or ``ns``.

    Raises:
        TraceError: unreadable file, missing column, or invalid values (the message names the
            column, the row and the value).

    """
    path = Path(path)
    if not path.is_file():
        raise TraceError(f"trace file {str(path)!r} does not exist")
    if time_unit not in ("auto", *_UNIT_S):
        raise TraceError(f"time_unit={time_unit!r} must be one of auto, {', '.join(_UNIT_S)}")
    table = _read_table(path)
    mapping = {c: c for c in (*_COLUMNS, "prompt", *SHARING_COLUMNS)}
    mapping.update(columns or {})
    missing = [f"{ours} (file column {mapping[ours]!r})" for ours in _COLUMNS
               if mapping[ours] not in table.column_names]
    if missing:
        raise TraceError(
            f"trace file {str(path)!r}: missing column(s) {', '.join(missing)}; the file has "
            f"{table.column_names} (map them with --columns ours=theirs,...)"
        )

    if table.num_rows == 0:
        raise TraceError(f"trace file {str(path)!r}: no rows (a header only?); a trace needs "
                         "at least one request")

    def numeric(ours: str) -> npt.NDArray[np.float64]:
        col = table.column(mapping[ours])
        try:
            if pa.types.is_boolean(col.type):
                raise pa.ArrowInvalid("boolean")
            arr = pc.cast(col, pa.float64()).to_numpy(zero_copy_only=False)
        except pa.ArrowException:
            row, value = next(((i, v) for i, v in enumerate(col.to_pylist())
                               if not _is_number(v)), (0, col[0].as_py()))
            raise TraceError(f"trace file {str(path)!r}: column {mapping[ours]!r} must be "
                             f"numeric, row {row} holds {value!r}") from None
        if np.isnan(arr).any():
            row = int(np.flatnonzero(np.isnan(arr))[0])
            raise TraceError(f"trace file {str(path)!r}: column {mapping[ours]!r} is empty at "
                             f"row {row}")
        return np.asarray(arr, dtype=np.float64)

    where = f"trace file {str(path)!r}: column {mapping['arrival_s']!r}"
    arrivals, time_format, start = _arrival_seconds(table.column(mapping["arrival_s"]), where,
                                                    time_unit)
    bad = np.flatnonzero(~np.isfinite(arrivals))
    if bad.size:
        raise TraceError(f"trace file {str(path)!r}: arrival_s={arrivals[bad[0]]:g} at row "
                         f"{int(bad[0])} must be a finite number of seconds")
    lengths = {c: numeric(c) for c in ("input_tokens", "output_tokens")}
    for col, arr in lengths.items():
        bad = np.flatnonzero((arr < 0) | (arr > MAX_TOKENS) | (arr != np.rint(arr)))
        if bad.size:
            raise TraceError(f"trace file {str(path)!r}: {col}={arr[bad[0]]:g} at row "
                             f"{int(bad[0])} must be an integer >= 0 and <= {MAX_TOKENS} "
                             "(0 counts as 1)")
    zeros = {c: int((arr == 0).sum()) for c, arr in lengths.items()}
    prompts = None
    if mapping["prompt"] in table.column_names:
        prompts = tuple(str(p) for p in table.column(mapping["prompt"]).to_pylist())
    sharing = _read_sharing(table, mapping, numeric, str(path))
    order = np.argsort(arrivals, kind="stable")
    moved = int((order != np.arange(len(order))).sum())
    if moved:
        arrivals = arrivals[order]
        lengths = {c: arr[order] for c, arr in lengths.items()}
        prompts = None if prompts is None else tuple(prompts[i] for i in order)
        sharing = None if sharing is None else sharing.take(order)
    trace = Trace(
        arrivals - arrivals[0],  # relative to the first request (absolute clocks are fine)
        np.maximum(lengths["input_tokens"], 1).astype(np.int64),
        np.maximum(lengths["output_tokens"], 1).astype(np.int64),
        prompts,
        name=path.stem,
        sharing=sharing,
    )
    return trace, TraceReport(time_format, start, moved, zeros["input_tokens"],
                              zeros["output_tokens"])


def _read_sharing(table: pa.Table, mapping: Mapping[str, str],
                  numeric: Callable[[str], FloatArray], where: str) -> Sharing | None:
    """The file's sharing columns (`profiling._sharing`), None when it has none.

    Missing ones of a file that has some take their "none" value (-1 ids, 0 tokens, turn 0).

    Raises:
        TraceError: a non-integer value, or values breaking `Sharing`'s rules.

    """
    present = [c for c in SHARING_COLUMNS if mapping[c] in table.column_names]
    if not present:
        return None
    n = table.num_rows
    cols: dict[str, IntArray] = {"prefix_id": np.full(n, -1, dtype=np.int64),
                                 "prefix_tokens": np.zeros(n, dtype=np.int64),
                                 "session_id": np.full(n, -1, dtype=np.int64),
                                 "turn": np.zeros(n, dtype=np.int64)}
    for c in present:
        arr = numeric(c)
        bad = np.flatnonzero(arr != np.rint(arr))
        if bad.size:
            raise TraceError(f"trace file {where!r}: {c}={arr[bad[0]]:g} at row {int(bad[0])} "
                             "must be an integer")
        cols[c] = arr.astype(np.int64)
    try:
        return Sharing(**cols)
    except TraceError as exc:
        raise TraceError(f"trace file {where!r}: {exc}") from None
