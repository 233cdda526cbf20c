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

import itertools
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pyarrow as pa

from common.errors import BouteError

__all__ = ["PUBLISHED_SCORES", "CascadeQuality", "QualityCurve", "default_quality_curve"]

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
        p = Path(path)
        cols = _columns(_read_table(p), p, PAIR_COLUMNS)
        return cls.from_records(*cols, name=name or p.stem)


PAIR_COLUMNS = ["router_score", "quality_weak", "quality_strong"]


def _read_table(p: Path) -> pa.Table:
    """The eval records of a Parquet or CSV file.

    Raises:
        QualityError: the file cannot be read.

    """
    import pyarrow.csv as pa_csv
    import pyarrow.parquet as pq

    try:
        return pq.read_table(p) if p.suffix == ".parquet" else pa_csv.read_csv(p)
    except (pa.ArrowInvalid, OSError) as exc:
        raise QualityError(f"eval records {str(p)!r}: cannot read "
                           f"({str(exc).splitlines()[0]})") from None


def _columns(table: pa.Table, p: Path, need: list[str], hint: str = "") -> list[FloatArray]:
    """The `need` columns of `table` as float arrays.

    Raises:
        QualityError: naming the missing columns (and `hint`).

    """
    missing = [c for c in need if c not in table.column_names]
    if missing:
        raise QualityError(f"eval records {str(p)!r}: missing column(s) {missing}{hint}")
    return [table.column(c).to_numpy(zero_copy_only=False).astype(np.float64) for c in need]


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


# -- ladders of K models ------------------------------------------------------------------------
PUBLISHED_SCORES: dict[str, dict[str, float]] = {
    # Meta's Llama 3.1 model card, GSM-8K (CoT) 8-shot em_maj1@1 (calibration.md s5).
    "gsm8k": {"llama-3.1-8b": 84.5, "llama-3.1-70b": 95.1, "llama-3.1-405b": 96.8},
    # The paper-implied endpoints of the mtbench curve (8B 7.90, 70B 8.93, see
    # `default_quality_curve`); 405B: 70B's 8.93 plus the published 405B - 70B gap under one
    # judge (8.49 - 8.22, GPT-4-Turbo judge, NVIDIA's Nemotron card; calibration.md s5).
    "mtbench": {"llama-3.1-8b": 7.9, "llama-3.1-70b": 8.93, "llama-3.1-405b": 9.2},
}


@dataclass(frozen=True)
class CascadeQuality:
    """Quality of a score-ordered cascade over K models, as a function of the routing shares.

    The router scores each query with a difficulty score; K - 1 ordered thresholds send the
    easiest queries to the smallest model and the hardest to the largest. Routing is described
    by the *tail shares* ``S_k = sum_{j >= k} s_j`` (k = 2..K): the share of queries sent to
    model k or a larger one, ``1 >= S_2 >= ... >= S_K >= 0``. Two ways to get quality:

    * ``records``: exactly, from per-query eval records. With queries sorted by score,
      descending, and ``P_k(t)`` the sum of model k's quality over the first t of them
      (linear between integers), ``Q(S) = sum_k (P_k(n S_k) - P_k(n S_{k+1})) / n`` with
      ``S_1 = 1``, ``S_{K+1} = 0``.
    * ``published``: from one published score per model, ``q_1 <= ... <= q_K``, and the task's
      pairwise routing curve ``Q_2`` (`default_quality_curve`) as the shape of every step of
      the ladder: ``Q(S) = q_1 + sum_{k>=2} (q_k - q_{k-1}) g(S_k)``, with
      ``g(s) = (Q_2(s) - Q_2(0)) / (Q_2(1) - Q_2(0))``: sending the hardest share S_k of
      queries up from model k-1 to model k gains the fraction ``g(S_k)`` of their quality gap,
      as routing does between the task's pair. Monotone in every S_k (g is), and with two
      models it is the pair's curve itself (`pair`).

    Attributes:
        models: the ladder, smallest first.
        name, source: labels.

    """

    models: tuple[str, ...]
    name: str
    source: str
    scores: tuple[float, ...] = ()
    shape: QualityCurve | None = None
    pair: QualityCurve | None = None
    sorted_scores: tuple[float, ...] = ()
    prefix: tuple[tuple[float, ...], ...] = ()

    @property
    def num_models(self) -> int:
        """K."""
        return len(self.models)

    def __call__(self, tails: FloatArray) -> FloatArray:
        """Quality at tail shares ``(..., K - 1)`` (clipped to [0, 1] and made decreasing)."""
        t = np.clip(np.asarray(tails, dtype=np.float64), 0.0, 1.0)
        if self.pair is not None:
            return self.pair(t[..., 0])
        t = np.minimum.accumulate(t, axis=-1)
        if self.shape is not None:
            q = np.full(t.shape[:-1], self.scores[0])
            for k in range(1, self.num_models):
                q = q + (self.scores[k] - self.scores[k - 1]) * self.shape(t[..., k - 1])
            return q
        n = len(self.sorted_scores)
        idx = np.arange(n + 1, dtype=np.float64)
        bounds = np.concatenate([np.ones((*t.shape[:-1], 1)), t,
                                 np.zeros((*t.shape[:-1], 1))], axis=-1) * n
        q = np.zeros(t.shape[:-1])
        for k in range(self.num_models):
            p = np.asarray(self.prefix[k])
            q = q + np.interp(bounds[..., k], idx, p) - np.interp(bounds[..., k + 1], idx, p)
        return q / n

    def of_shares(self, shares: FloatArray) -> FloatArray:
        """Quality at per-model shares ``(..., K)`` (smallest model first)."""
        s = np.asarray(shares, dtype=np.float64)
        tails = np.cumsum(s[..., ::-1], axis=-1)[..., ::-1][..., 1:]
        return self(tails)

    @property
    def lowest(self) -> float:
        """Quality with every query on the smallest model."""
        return float(self(np.zeros(self.num_models - 1)))

    @property
    def highest(self) -> float:
        """Quality with every query on the largest model."""
        return float(self(np.ones(self.num_models - 1)))

    def thresholds_for(self, tails: FloatArray) -> tuple[float, ...]:
        """Router-score thresholds ``(t_2, ..., t_K)`` giving tail shares S (NaN if unknown).

        A query with score >= ``t_k`` goes to model k or above: ``t_k`` is the score of the
        ``n S_k``-th hardest query.
        """
        t = np.asarray(tails, dtype=np.float64)
        if self.pair is not None:
            return (self.pair.threshold_for(float(t[0])),)
        if not self.sorted_scores:
            return tuple(math.nan for _ in t)
        ss = np.concatenate([[np.nextafter(1.0, 2.0)], np.asarray(self.sorted_scores)])
        n = len(self.sorted_scores)
        return tuple(float(np.interp(v * n, np.arange(n + 1), ss)) for v in t)

    @classmethod
    def of_pair(cls, curve: QualityCurve, models: tuple[str, str]) -> CascadeQuality:
        """Two models: the pair's curve as it is."""
        return cls(models, curve.name, curve.source, pair=curve)

    @classmethod
    def published(cls, task: str, models: tuple[str, ...],
                  scores: dict[str, float] | None = None) -> CascadeQuality:
        """From per-model scores (`PUBLISHED_SCORES`, or `scores` first) and the task's shape.

        Raises:
            QualityError: a model has no score on the task, or the scores decrease along the
                ladder (order the models by capability, or give eval records).

        """
        known = {**PUBLISHED_SCORES.get(task, {}), **(scores or {})}
        missing = [m for m in models if m not in known]
        if missing:
            raise QualityError(f"task={task!r} has no published score for {missing}; give "
                               f"`scores: {{{missing[0]}: ...}}` in the workload, or "
                               "per-query eval records (quality_records)")
        q = tuple(float(known[m]) for m in models)
        if any(b < a for a, b in itertools.pairwise(q)):
            raise QualityError(f"task={task!r}: scores {dict(zip(models, q, strict=True))} "
                               "decrease along the ladder; list models smallest first")
        base = default_quality_curve(task)
        lo, hi = base.quality[0], base.quality[-1]
        shape = QualityCurve(base.shares, tuple((v - lo) / (hi - lo) for v in base.quality),
                             tuple((v - lo) / (hi - lo) for v in base.exact),
                             base.thresholds, f"{task}-shape", base.source)
        return cls(models, task, f"published scores {dict(zip(models, q, strict=True))}; "
                   f"shape of {base.source}", scores=q, shape=shape)

    @classmethod
    def from_records(cls, router_score: FloatArray, quality: FloatArray,
                     models: tuple[str, ...], *, name: str = "records") -> CascadeQuality:
        """Exact cascade quality from eval records (``quality``: ``(n, K)``, smallest first).

        Raises:
            QualityError: empty, mismatched shapes or scores outside [0, 1].

        """
        score = np.asarray(router_score, dtype=np.float64)
        q = np.asarray(quality, dtype=np.float64)
        n = len(score)
        if n == 0 or q.shape != (n, len(models)):
            raise QualityError(f"eval records: {n} scores and quality of shape {q.shape}; "
                               f"need one quality column per model ({len(models)})")
        if np.isnan(score).any() or np.any((score < 0) | (score > 1)):
            raise QualityError("eval records: router_score must lie in [0, 1]")
        order = np.argsort(-score, kind="stable")
        prefix = tuple(tuple(np.concatenate([[0.0], np.cumsum(q[order, k])]))
                       for k in range(len(models)))
        return cls(models, name, f"{n} eval records", sorted_scores=tuple(score[order]),
                   prefix=prefix)

    @classmethod
    def from_file(cls, path: str | Path, models: tuple[str, ...]) -> CascadeQuality:
        """Eval records from Parquet/CSV: ``router_score`` and ``quality_<model>`` per model.

        With two models, ``quality_weak`` / ``quality_strong`` also work (and give the pair's
        monotone curve, `QualityCurve.from_parquet`).

        Raises:
            QualityError: unreadable file or a missing column (named).

        """
        p = Path(path)
        table = _read_table(p)
        if len(models) == 2 and set(PAIR_COLUMNS[1:]) <= set(table.column_names):
            pair = QualityCurve.from_records(*_columns(table, p, PAIR_COLUMNS), name=p.stem)
            return cls.of_pair(pair, (models[0], models[1]))
        arr = _columns(table, p, ["router_score"] + [f"quality_{m}" for m in models],
                       " (one quality_<model> column per model of the ladder)")
        return cls.from_records(arr[0], np.stack(arr[1:], axis=1), models, name=p.stem)
