"""Online estimate correction (``infaas.calibration``) on synthetic query streams with known truth."""

from __future__ import annotations

import math

import numpy as np
import pytest

from infaas.calibration import STEP, TAIL_QUANTILE, Calibration

KEY = "m/v"


def _stream(
    calibration: Calibration,
    rng: np.random.Generator,
    n: int,
    *,
    worker: str = "w1",
    slowdown: float = 1.0,
    overhead_ms: float = 0.3,
    budget_ms: float | None = None,
) -> list[tuple[float, float]]:
    """Observe ``n`` queries whose worker time is ``slowdown`` × a raw estimate (with 10% lognormal noise) and whose
    serving path adds ``overhead_ms`` (noisy too); returns each query's (estimate in force before it, actual)."""
    seen = []
    for _ in range(n):
        raw = float(rng.uniform(1.0, 10.0))
        worker_ms = slowdown * raw * 0.8 * float(rng.lognormal(0.0, 0.1))
        actual = worker_ms + overhead_ms * float(rng.lognormal(0.0, 0.1))
        seen.append((calibration.correct(KEY, worker, raw), actual))
        calibration.observe(KEY, worker, raw, actual, worker_ms=worker_ms, budget_ms=budget_ms)
    return seen


def _exceeded(seen: list[tuple[float, float]]) -> float:
    """Share of queries that took longer than their estimate."""
    return sum(1 for estimate, actual in seen if actual > estimate) / len(seen)


def test_untrained_correction_is_the_identity() -> None:
    calibration = Calibration()
    assert calibration.correct(KEY, "w1", 4.0) == 4.0
    assert calibration.report()["observed"] == 0


def test_a_constant_serving_overhead_is_learned_and_added() -> None:
    calibration, rng = Calibration(), np.random.default_rng(0)
    first = _stream(calibration, rng, 50, overhead_ms=2.0)
    settled = _stream(calibration, rng, 500, overhead_ms=2.0)
    # The 2 ms path's median (10% noise); its tail is the factor's to cover.
    assert calibration.overhead_ms == pytest.approx(2.0, rel=0.1)
    # Converged: about the tail quantile's share of queries exceed the estimate, and estimates are not inflated.
    assert _exceeded(settled) <= 2 * (1 - TAIL_QUANTILE) + 0.01
    assert np.median([e - a for e, a in settled]) < 0.25 * np.median([a for _, a in settled])
    assert _exceeded(first) > _exceeded(settled)


def test_a_slow_worker_is_slow_only_on_that_worker() -> None:
    calibration, rng = Calibration(), np.random.default_rng(1)
    for _ in range(300):  # interleaved: w2 runs the same variant twice as slowly
        _stream(calibration, rng, 1, worker="w1")
        _stream(calibration, rng, 1, worker="w2", slowdown=2.0)
    alone, rng = Calibration(), np.random.default_rng(1)
    for _ in range(300):
        _stream(alone, rng, 1, worker="w1")
        rng.uniform(), rng.lognormal(), rng.lognormal()  # keep w1's draws identical to the interleaved run
    ratio = calibration.factor(KEY, "w2") / calibration.factor(KEY, "w1")
    assert 1.6 < ratio < 2.5
    # w1's correction is what it would be had w2 never existed (up to the shared overhead's jitter).
    assert calibration.factor(KEY, "w1") == pytest.approx(alone.factor(KEY, "w1"), rel=0.1)
    assert calibration.correct(KEY, "w1", 5.0) < calibration.correct(KEY, "w2", 5.0)
    # An unobserved variant has no factor of its own; its estimate starts from its worker's prior: slow on w2 only.
    assert calibration.factor("m/other", "w2") == 1.0
    assert calibration.correct("m/other", "w2", 5.0) > 1.5 * calibration.correct("m/other", "w1", 5.0)


def test_a_step_change_is_followed_both_ways() -> None:
    calibration, rng = Calibration(), np.random.default_rng(2)
    _stream(calibration, rng, 300)
    before = calibration.factor(KEY, "w1")
    # The worker becomes three times slower: caught within a few dozen queries.
    slower = _stream(calibration, rng, 60, slowdown=3.0)
    assert _exceeded(slower[30:]) <= 0.1
    assert calibration.factor(KEY, "w1") == pytest.approx(3 * before, rel=0.25)
    # And back: good news is believed more slowly (a tail needs evidence), within a few hundred queries.
    upper_bound_queries = math.ceil(math.log(3.0) / (STEP * (1 - TAIL_QUANTILE))) + 100
    _stream(calibration, rng, upper_bound_queries)
    assert calibration.factor(KEY, "w1") == pytest.approx(before, rel=0.25)


def test_a_streak_of_misses_accelerates_without_passing_what_was_observed() -> None:
    calibration, rng = Calibration(), np.random.default_rng(5)
    _stream(calibration, rng, 300)
    before = calibration.factor(KEY, "w1")
    # Four queries in a row at 8× the tail: one step each would take ln 8 / (STEP τ) ≈ 21 queries.
    for _ in range(4):
        raw = 5.0
        actual = calibration.overhead_ms + 8 * before * raw
        calibration.observe(KEY, "w1", raw, actual, worker_ms=actual - calibration.overhead_ms, budget_ms=None)
    after = calibration.factor(KEY, "w1")
    assert after > 4 * before  # steps of 1, 2, 4 and 8 × STEP τ: e^(15 × 0.098) ≈ 4.4
    assert after <= 8 * before * 1.01  # never past the observations themselves


def test_one_outlier_moves_the_correction_by_one_step_only() -> None:
    calibration, rng = Calibration(), np.random.default_rng(3)
    _stream(calibration, rng, 200)
    calibration.observe(KEY, "w1", 5.0, 0.2, worker_ms=0.1, budget_ms=None)  # below both: no streak in progress
    before = calibration.factor(KEY, "w1"), calibration.overhead_ms
    calibration.observe(KEY, "w1", 5.0, 5_000.0, worker_ms=4_000.0, budget_ms=None)  # a 1000× pause
    after = calibration.factor(KEY, "w1"), calibration.overhead_ms
    assert after[0] == pytest.approx(before[0] * math.exp(STEP * TAIL_QUANTILE))
    assert after[1] == pytest.approx(before[1] * math.exp(STEP * 0.5))  # the overhead is a median


def test_the_report_shows_the_error_and_promises_kept_before_and_after() -> None:
    calibration, rng = Calibration(), np.random.default_rng(4)
    # Raw estimates are 0.8 × the worker time only on average and miss the 2 ms path: budgets 3 ms above raw.
    _stream(calibration, rng, 1000, slowdown=1.3, overhead_ms=2.0, budget_ms=9.0)
    report = calibration.report()
    assert report["observed"] == 1000 and report["window"] == 1000
    raw_err, corrected_err = report["raw_error_ms"], report["corrected_error_ms"]
    assert isinstance(raw_err, dict) and isinstance(corrected_err, dict)
    assert raw_err["p50"] > 2.0  # actual − raw: the path and the slowdown, unseen by the profile
    # A tail estimate: the typical query beats it, and only the slowest few percent reach it.
    assert corrected_err["p50"] < 0 and abs(corrected_err["p99"]) < raw_err["p99"] / 4
    raw_kept, corrected_kept = report["raw_promises"], report["corrected_promises"]
    assert isinstance(raw_kept, dict) and isinstance(corrected_kept, dict)
    assert raw_kept["met_share"] < 0.9 < corrected_kept["met_share"]
    assert corrected_kept["promised"] < raw_kept["promised"]  # it promises less, and keeps what it promises
    assert report["factors"] == {
        f"{KEY} on w1": {
            "factor": pytest.approx(calibration.factor(KEY, "w1"), abs=1e-4),
            "observed": 1000,
            "age_s": pytest.approx(0.0, abs=0.5),  # just observed: not expired (``STALE_S``)
        }
    }
