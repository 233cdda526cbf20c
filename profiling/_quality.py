"""Quality as a function of the share of traffic routed to the strong model.

A RouteLLM-style router scores each query with the strong model's win rate and sends the
queries scoring at or above a threshold to the strong model; the threshold that sends a share
``s`` is ``quantile(scores, 1 - s)``. The resulting quality is a curve ``Q(s)`` on [0, 1]:

* from per-query eval records (router score, quality of each model's answer), exactly: sort
  queries by score, descending; routing the top k of n gives
  ``Q(k / n) = mean(q_weak) + sum_{i <= k} (q_strong_i - q_weak_i) / n``.
  The optimizer uses the monotone envelope ``max_{s' <= s} Q(s')`` (a plan never needs to send
  more to the strong model than the share that reaches a quality); both are kept.
* by default, from published scores, as a piecewise-linear curve through the endpoints
  (share 0 = weak model alone, 1 = strong model alone) and the points the paper reports.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pyarrow as pa

from common.errors import BouteError

__all__ = ["QualityCurve", "default_quality_curve"]

FloatArray = npt.NDArray[np.float64]


class QualityError(BouteError, ValueError):
    """Quality curve inputs are invalid."""


@dataclass(frozen=True)
class QualityCurve:
    """A monotone non-decreasing quality curve, piecewise linear in the strong share.

    Attributes:
        shares: increasing knots in [0, 1], starting at 0 and ending at 1.
        quality: monotone envelope at the knots (what the optimizer uses).
        exact: the curve as measured (may dip when the strong model is worse on some queries).
        thresholds: router-score threshold giving each share (NaN for published curves).
        name, source: labels.

    """

    shares: tuple[float, ...]
    quality: tuple[float, ...]
    exact: tuple[float, ...]
    thresholds: tuple[float, ...]
    name: str
    source: str

    def __post_init__(self) -> None:
        s = np.asarray(self.shares)
        if len(s) < 2 or s[0] != 0.0 or s[-1] != 1.0 or np.any(np.diff(s) <= 0):
            raise QualityError(f"quality curve {self.name!r}: shares must increase from 0 to 1")
        if len(self.quality) != len(s) or np.any(np.diff(self.quality) < 0):
            raise QualityError(f"quality curve {self.name!r}: quality must be non-decreasing "
                               "with one value per share")

    def __call__(self, strong_share: float | FloatArray) -> FloatArray:
        """Quality at the given strong-model shares (vectorized; clipped to [0, 1])."""
        x = np.clip(np.asarray(strong_share, dtype=np.float64), 0.0, 1.0)
        return np.asarray(np.interp(x, self.shares, self.quality))

    def min_share_for(self, quality: float) -> float:
        """Smallest strong share reaching `quality`.

        Raises:
            QualityError: the strong model alone does not reach it.

        """
        q = np.asarray(self.quality)
        if quality > q[-1] + 1e-12:
            raise QualityError(f"quality={quality:g} is above what {self.name!r} can reach "
                               f"({q[-1]:g} with every query on the strong model)")
        if quality <= q[0]:
            return 0.0
        i = int(np.searchsorted(q, quality, side="left"))
        s0, s1, q0, q1 = self.shares[i - 1], self.shares[i], q[i - 1], q[i]
        return float(s1 if q1 == q0 else s0 + (quality - q0) * (s1 - s0) / (q1 - q0))

    def threshold_for(self, strong_share: float) -> float:
        """Router-score threshold sending `strong_share` to the strong model (NaN if unknown)."""
        return float(np.interp(strong_share, self.shares, self.thresholds))

    @classmethod
    def from_records(
        cls,
        router_score: FloatArray,
        quality_weak: FloatArray,
        quality_strong: FloatArray,
        *,
        name: str = "records",
    ) -> QualityCurve:
        """The exact curve from per-query eval records (see the module docstring).

        Args:
            router_score: ``(n,)`` strong-win-rate score of each query, in [0, 1].
            quality_weak: ``(n,)`` quality of the weak model's answer.
            quality_strong: ``(n,)`` quality of the strong model's answer.
            name: label of the curve.

        Raises:
            QualityError: empty, unequal lengths, or scores outside [0, 1].

        """
        score = np.asarray(router_score, dtype=np.float64)
        qw = np.asarray(quality_weak, dtype=np.float64)
        qs = np.asarray(quality_strong, dtype=np.float64)
        n = len(score)
        if n == 0 or len(qw) != n or len(qs) != n:
            raise QualityError("eval records: router_score, quality_weak and quality_strong "
                               f"must be non-empty and equally long (got {n}, {len(qw)}, "
                               f"{len(qs)})")
        if np.any((score < 0) | (score > 1)) or np.isnan(score).any():
            raise QualityError("eval records: router_score must lie in [0, 1]")
        order = np.argsort(-score, kind="stable")
        gain = np.concatenate([[0.0], np.cumsum(qs[order] - qw[order])]) / n
        exact = qw.mean() + gain
        shares = np.arange(n + 1) / n
        # Threshold for k queries routed: the k-th highest score (1 + tiny for k = 0).
        sorted_scores = score[order]
        thresholds = np.concatenate([[np.nextafter(1.0, 2.0)], sorted_scores])
        return cls(tuple(shares), tuple(np.maximum.accumulate(exact)), tuple(exact),
                   tuple(thresholds), name, f"{n} eval records")

    @classmethod
    def from_parquet(cls, path: str | Path, *, name: str | None = None) -> QualityCurve:
        """Read eval records from Parquet/CSV.

        The file has columns router_score, quality_weak and quality_strong.
        """
        import pyarrow.csv as pa_csv
        import pyarrow.parquet as pq

        p = Path(path)
        try:
            table = pq.read_table(p) if p.suffix == ".parquet" else pa_csv.read_csv(p)
        except (pa.ArrowInvalid, OSError) as exc:
            raise QualityError(f"eval records {str(p)!r}: cannot read "
                               f"({str(exc).splitlines()[0]})") from None
        need = ["router_score", "quality_weak", "quality_strong"]
        missing = [c for c in need if c not in table.column_names]
        if missing:
            raise QualityError(f"eval records {str(p)!r}: missing column(s) {missing}")
        cols = [table.column(c).to_numpy(zero_copy_only=False).astype(np.float64) for c in need]
        return cls.from_records(*cols, name=name or p.stem)


def _published(name: str, points: list[tuple[float, float]], source: str) -> QualityCurve:
    shares = tuple(p[0] for p in points)
    quality = tuple(p[1] for p in points)
    return QualityCurve(shares, quality, quality, tuple(np.nan for _ in points), name, source)


def default_quality_curve(task: str) -> QualityCurve:
    """Published curve of the Llama-3.1-8B / 70B pair on a task.

    * ``gsm8k``: 84.5 (8B) to 95.1 (70B), Meta's model card
      (benchmarks/data/reference/calibration.md s5); the interior points are the paper's chosen
      strong shares for accuracy 87 / 89 / 91 (26.55%, 56.05%, 70.06%; calibration.md s0), so
      the paper's targets need the paper's shares.
    * ``mtbench``: the paper's shares for 8.1 / 8.3 / 8.5 (19.42%, 38.83%, 58.25%) lie exactly on
      one line, 7.90 + 1.0304 s; its endpoints 7.90 (8B) and 8.93 (70B) are used. (Published
      single-model scores, 8.07 and 8.22, would make 8.3 and 8.5 unreachable.)

    Raises:
        QualityError: no default for the task (give eval records instead).

    """
    if task == "gsm8k":
        return _published("gsm8k", [(0.0, 84.5), (0.2655, 87.0), (0.5605, 89.0),
                                    (0.7006, 91.0), (1.0, 95.1)],
                          "Meta model card (84.5, 95.1) + BOute paper shares for 87/89/91")
    if task == "mtbench":
        slope = 0.2 / (0.3883 - 0.1942)
        base = 8.1 - slope * 0.1942
        return _published("mtbench", [(0.0, round(base, 4)), (1.0, round(base + slope, 4))],
                          "linear through the BOute paper's shares for 8.1/8.3/8.5")
    raise QualityError(f"task={task!r} has no default quality curve (gsm8k, mtbench); "
                       "give per-query eval records with --quality-records FILE")
