"""Approximate top-K: how many rows a cheap variant must pass on for the expensive one to find its own top k.

A ranking query ("the k rows of these N that score highest in column c") can let a cheap variant score all N
rows and the most accurate variant re-score only the cheap one's top ``m = ceil(r * k)``: the answer is the
expensive variant's top k among those ``m`` (Willump's approximate top-K). Its *precision* is the share of the
expensive variant's own top k (over all N rows) that the answer holds. Because every row of the exact top k
that survives the cheap cut also ranks in the top k among the survivors (whatever beats it there beats it
overall), the precision of re-scoring ``m`` rows is simply the share of the exact top k within the cheap
variant's top ``m`` — one sort per sample gives the whole curve.

The ratio is chosen as Willump chooses it, on held-out rows and with resampling: draw ``samples`` queries from
the held-out scores; in each, find the fewest re-scored rows ``m`` that reach ``min_precision``; ``r`` is the
smallest ratio that is enough in at least ``required`` of the samples (99 of 100 by default). A drawn query
holds *distinct* rows, as a real query does: drawn with replacement, 1,000 rows from 169 held-out ones held each
row about six times, so a resampled top 10 was two or three rows and the cheap variant only had to rank those
high. r came out too small, and the zoo's k=10 answers held 0.87 of the exact top 10 while 0.99 was stated
(benchmarks/results/topk.json, session 6). So a query of ``rows`` rows is drawn as at most ``rows`` distinct rows
and at most half the held-out ones (subsamples must differ); with fewer than ``rows`` drawn, ``k`` is scaled by
the same share (the top ``k`` of ``rows`` is the same top quantile) and the re-scored count scaled back.

Everything here is pure numpy on score vectors (``infaas.topk_serving`` runs the variants); the r search for a
1,000-row query and 100 samples is one 1,000-row ``argsort`` per sample (13 ms of CPU here, measured).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

DEFAULT_MIN_PRECISION = 0.95
BOOTSTRAP_SAMPLES = 100
REQUIRED_SAMPLES = 99  # of BOOTSTRAP_SAMPLES: the share of resampled queries the chosen r must satisfy


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Positions of the ``k`` highest scores, best first; equal scores rank by position (the earlier first)."""
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    return order[:k]


def rescored_needed(cheap: np.ndarray, expensive: np.ndarray, k: int, min_precision: float) -> int:
    """The fewest rows of the cheap variant's ranking the expensive one must re-score so that its top ``k``
    among them holds at least ``min_precision`` of its own top ``k`` over all rows (``k`` at most)."""
    rows = len(cheap)
    cheap_rank = np.empty(rows, dtype=np.int64)
    cheap_rank[np.argsort(-np.asarray(cheap, dtype=np.float64), kind="stable")] = np.arange(rows)
    ranks = np.sort(cheap_rank[top_k(expensive, k)])  # where the exact top k sit in the cheap ranking
    hits = max(1, math.ceil(min_precision * k - 1e-9))  # exact rows the answer must hold
    return max(k, int(ranks[hits - 1]) + 1)


def precision(cheap: np.ndarray, expensive: np.ndarray, k: int, rescored: int) -> float:
    """The precision of re-scoring the cheap variant's top ``rescored`` rows: the share of the expensive
    variant's own top ``k`` that the approximate answer holds."""
    kept = top_k(cheap, rescored)
    answer = kept[top_k(np.asarray(expensive)[kept], k)]
    return len(np.intersect1d(answer, top_k(expensive, k))) / k


@dataclass(frozen=True)
class Resamples:
    """Resampled queries standing for a ``rows``-row query: ``drawn`` distinct held-out rows each, ranked for the
    top ``k`` (the query's k scaled by ``drawn / rows``)."""

    pairs: list[tuple[np.ndarray, np.ndarray]]
    k: int
    drawn: int
    rows: int

    def to_query(self, rescored: int) -> int:
        """Rows re-scored in a sample as rows re-scored in the query (rounded up)."""
        return min(self.rows, math.ceil(rescored * self.rows / self.drawn - 1e-9))

    def to_sample(self, rescored: int) -> int:
        """Rows re-scored in the query as rows re-scored in a sample (rounded down: the estimate errs low)."""
        return min(self.drawn, max(self.k, math.floor(rescored * self.drawn / self.rows + 1e-9)))


def _resamples(cheap: np.ndarray, expensive: np.ndarray, k: int, rows: int, samples: int, seed: int) -> Resamples:
    """``samples`` queries of distinct held-out rows standing for a query of ``rows`` rows and its ``k``."""
    held_out = len(cheap)
    drawn = max(1, min(rows, held_out // 2 if held_out > 1 else 1))
    scaled_k = min(drawn, max(1, round(k * drawn / rows)))
    rng = np.random.default_rng(seed)
    draws = [rng.choice(held_out, size=drawn, replace=False) for _ in range(samples)]
    return Resamples([(cheap[d], expensive[d]) for d in draws], scaled_k, drawn, rows)


@dataclass(frozen=True)
class Ratio:
    """The chosen ratio for one (k, N) and what it was chosen on."""

    k: int
    rows: int  # N of the resampled queries
    ratio: float  # r: re-score ceil(r * k) rows
    rescored: int  # ceil(r * k), at most ``rows``
    samples: int
    required: int


def choose_ratio(
    cheap: np.ndarray,
    expensive: np.ndarray,
    k: int,
    rows: int,
    min_precision: float = DEFAULT_MIN_PRECISION,
    *,
    samples: int = BOOTSTRAP_SAMPLES,
    required: int = REQUIRED_SAMPLES,
    seed: int = 0,
) -> Ratio:
    """The smallest r whose approximate top-``k`` of ``rows``-row queries reaches ``min_precision`` against the
    expensive variant's own top ``k`` in at least ``required`` of ``samples`` bootstrap resamples of the held-out
    scores (``cheap``, ``expensive``: one score per held-out row). Re-scoring every row always reaches it, so
    there is always an answer; whether it saves anything is the caller's question."""
    if not 1 <= k <= rows:
        raise ValueError(f"k must be in [1, rows], got k={k}, rows={rows}")
    if not 1 <= required <= samples:
        raise ValueError(f"required must be in [1, samples], got {required} of {samples}")
    if len(cheap) != len(expensive) or len(cheap) == 0:
        raise ValueError("cheap and expensive need one score per held-out row, and at least one row")
    drawn = _resamples(cheap, expensive, k, rows, samples, seed)
    needed = sorted(rescored_needed(c, e, drawn.k, min_precision) for c, e in drawn.pairs)
    # Enough for exactly ``required`` samples (and every sample needing fewer), as rows of the real query.
    rescored = max(k, drawn.to_query(needed[required - 1]))
    return Ratio(k, rows, rescored / k, rescored, samples, required)


def rescored_for(ratio: float, k: int, rows: int) -> int:
    """Rows to re-score for a query of ``rows`` rows and ``k``: ``ceil(r * k)``, within [k, rows]."""
    return min(rows, max(k, math.ceil(ratio * k - 1e-9)))


@dataclass(frozen=True)
class PrecisionEstimate:
    """The precision of a ratio on resampled queries of held-out rows (not the rows it was chosen on)."""

    mean: float
    low: float  # the (1 - required/samples) quantile: what all but the worst 1% of resampled queries reach
    share_meeting: float  # of the resamples, the share reaching the floor asked for


def estimate_precision(
    cheap: np.ndarray,
    expensive: np.ndarray,
    k: int,
    rows: int,
    ratio: float,
    min_precision: float = DEFAULT_MIN_PRECISION,
    *,
    samples: int = BOOTSTRAP_SAMPLES,
    required: int = REQUIRED_SAMPLES,
    seed: int = 1,
) -> PrecisionEstimate:
    """Bootstrap the precision ``ratio`` reaches on ``rows``-row queries drawn from these held-out scores."""
    drawn = _resamples(cheap, expensive, k, rows, samples, seed)
    m = drawn.to_sample(rescored_for(ratio, k, rows))
    values = np.array([precision(c, e, drawn.k, m) for c, e in drawn.pairs])
    low = float(np.sort(values)[samples - required]) if required < samples else float(values.min())
    return PrecisionEstimate(float(values.mean()), low, float(np.mean(values >= min_precision - 1e-9)))


def power_range(value: int) -> tuple[int, int]:
    """The power-of-two range ``[2^i, 2^(i+1) - 1]`` holding ``value`` (>= 1): one calibration serves the range."""
    low = 1 << (int(value).bit_length() - 1)
    return low, 2 * low - 1


def range_corners(k: int, rows: int) -> list[tuple[int, int]]:
    """The (k, N) corners of the ranges holding ``k`` and ``rows``, with k <= N: where a range's ratio is chosen
    (the largest of the corners' ratios serves the whole range)."""
    k_low, k_high = power_range(k)
    n_low, n_high = power_range(rows)
    corners = {(min(a, n), n) for a in (k_low, k_high) for n in (n_low, n_high)}
    return sorted(corners)


__all__ = [
    "BOOTSTRAP_SAMPLES",
    "DEFAULT_MIN_PRECISION",
    "REQUIRED_SAMPLES",
    "PrecisionEstimate",
    "Ratio",
    "Resamples",
    "choose_ratio",
    "estimate_precision",
    "power_range",
    "precision",
    "range_corners",
    "rescored_for",
    "rescored_needed",
    "top_k",
]
