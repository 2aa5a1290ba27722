"""A placement never observed starts from its worker's prior (``infaas.calibration``), not from the bare profile.

The defect this guards against, seen in ``benchmarks/trace.py`` at 0.7× capacity: loaded placements on a busy
worker had learnt factors of 50× while every unobserved one was corrected with 1, so the selector escaped to
13 cold variants on that same busy worker during the spike.
"""

from __future__ import annotations

import math
import zlib

import numpy as np
import pytest

from infaas.calibration import PRIOR_MIN_RAW_MS, STEP, TAIL_QUANTILE, Calibration
from infaas.fast_selector import fast_select
from infaas.selector import Requirements, select
from tests.infaas.test_selector import P99, PRICES, candidate, live

OVERHEAD_MS = 0.2


def _serve(calibration: Calibration, key: str, worker: str, raw_ms: float, worker_ms: float, n: int) -> None:
    """``n`` queries of ``key`` on ``worker`` that the worker served in ``worker_ms`` (5% lognormal noise)."""
    rng = np.random.default_rng(zlib.crc32(repr((key, worker, raw_ms, worker_ms, n)).encode()))
    for _ in range(n):
        took = worker_ms * float(rng.lognormal(0.0, 0.05))
        calibration.observe(key, worker, raw_ms, took + OVERHEAD_MS, worker_ms=took, budget_ms=None)


def test_an_unobserved_placement_on_a_busy_worker_is_believed_as_slow_as_the_worker() -> None:
    calibration = Calibration()
    _serve(calibration, "m/loaded", "w1", 2.0, 1.6, 200)  # quiet: as profiled
    _serve(calibration, "m/loaded", "w1", 2.0, 100.0, 60)  # the spike: 50× its raw estimate
    # The loaded placement has learnt it; a variant never served on w1 is believed at least that slow.
    loaded = calibration.correct("m/loaded", "w1", 2.0)
    assert loaded > 90.0
    assert calibration.correct("m/cold", "w1", 2.0) >= 0.9 * loaded
    assert calibration.factor("m/cold", "w1") == 1.0  # its own factor is still unknown: the prior stands in
    # A worker nobody has observed is believed: a new worker is idle.
    assert calibration.correct("m/cold", "w2", 2.0) == pytest.approx(calibration.overhead_ms + 2.0)


def test_a_microsecond_model_teaches_a_wait_not_a_factor() -> None:
    calibration = Calibration()
    # 0.01 ms models served in 0.5 ms: a "50×" that is a half-millisecond wait for a core.
    _serve(calibration, "m/tiny", "w1", 0.01, 0.5, 300)
    assert calibration.factor("m/tiny", "w1") > 40
    cold = calibration.correct("m/big", "w1", 20.0) - calibration.overhead_ms
    assert 20.4 < cold < 21.0  # the wait added, not 50 × 20 ms = 1 s
    report = calibration.report()["worker_priors"]
    assert report == {"w1": {"excess_ms": pytest.approx(0.5, rel=0.15), "slowdown": 1.0}}  # type: ignore[comparison-overlap]


def test_a_uniformly_slower_worker_is_believed_slower_in_proportion() -> None:
    calibration = Calibration()
    # w1 runs its millisecond models twice as slowly as profiled (and its tiny ones wait 0.3 ms).
    for raw in (2.0, 5.0, 10.0):
        _serve(calibration, f"m/r{raw:g}", "w1", raw, 2.0 * raw, 100)
    _serve(calibration, "m/tiny", "w1", 0.01, 0.3, 100)
    assert min(2.0, 5.0, 10.0) >= PRIOR_MIN_RAW_MS  # they teach the factor; the tiny one does not
    # A cold 50 ms model: twice its raw estimate, where an additive excess learnt on 10 ms models would say +10 ms.
    cold = calibration.correct("m/cold", "w1", 50.0) - calibration.overhead_ms
    assert 95.0 < cold < 120.0  # the tail of 2× with 5% noise: ~2.2×


def test_the_prior_forgets_a_spike_once_the_worker_is_quiet_again() -> None:
    calibration = Calibration()
    _serve(calibration, "m/loaded", "w1", 2.0, 100.0, 60)
    assert calibration.correct("m/cold", "w1", 2.0) > 90.0
    # Good news is believed at the tail's slow pace, ln(drop) / (STEP × (1 − τ)) queries: here the ~100 ms
    # excess the spike taught, down to under 1 ms.
    quiet = math.ceil(math.log(100.0 / 1.0) / (STEP * (1 - TAIL_QUANTILE))) + 200
    _serve(calibration, "m/loaded", "w1", 2.0, 1.6, quiet)
    assert calibration.correct("m/cold", "w1", 2.0) < calibration.overhead_ms + 2.0 + 1.0


def test_an_observed_placement_follows_its_own_factor_not_the_prior() -> None:
    calibration = Calibration()
    _serve(calibration, "m/slow", "w1", 2.0, 40.0, 100)  # one placement is slow on w1 ...
    _serve(calibration, "m/fast", "w1", 2.0, 1.8, 100)  # ... another, served there too, is not
    assert calibration.correct("m/fast", "w1", 2.0) < 3.0
    assert calibration.correct("m/never", "w1", 2.0) > 30.0


# The selector with the calibration: two variants of one model, the cheaper one cold on the only worker.
LOADED = candidate("m", "loaded", {1: 2.0}, threads=4, load_ms=1.0)
COLD = candidate("m", "cold", {1: 2.0}, threads=1, load_ms=1.0)  # a quarter of the cores: cheaper, load included


@pytest.mark.parametrize("selector", [select, fast_select])
def test_the_selector_does_not_escape_a_busy_worker_to_a_cold_variant(selector) -> None:  # type: ignore[no-untyped-def]
    snapshot = live(loaded={"m/loaded": [("w1", 1)]})
    needs = Requirements(model="m", latency_ms=20.0)
    calibration = Calibration()
    _serve(calibration, "m/loaded", "w1", 2.0 * P99, 2.0, 200)
    quiet = selector(needs, [LOADED, COLD], snapshot, PRICES, (), calibration.correct)
    assert quiet.variant.name == "cold" and not quiet.loaded and not quiet.slo_at_risk  # a healthy worker loads it
    _serve(calibration, "m/loaded", "w1", 2.0 * P99, 120.0, 60)  # the spike: 50× on the loaded variant
    busy = selector(needs, [LOADED, COLD], snapshot, PRICES, (), calibration.correct)
    # Nothing meets 20 ms on this worker now, and the cold variant is not believed to: no load during the spike.
    assert busy.slo_at_risk and busy.variant.name == "loaded" and busy.estimated_ms > 100.0
