"""Online correction of the selector's latency estimates from what served queries actually took.

The selector's raw estimate for a placement is a profile (p99 at the query's batch, measured alone on a quiet
machine) plus modelled queueing. Neither sees the serving path around the worker (parsing, selection, dispatch,
the HTTP hop to a remote worker), nor a worker slower than the one the variant was profiled on (another machine,
co-located load), nor the queue model's own error. Before this module a 0.01 ms estimate was served in 0.34 ms
and called "meeting" a 0.01 ms budget. The engine now corrects every raw estimate as

    corrected = overhead + factor[(variant, worker)] × raw

* ``overhead`` is the serving path's typical time: the median of a query's actual latency minus what the worker
  reported (its queue plus service time), one value for this front-end, since the path does not depend on the
  variant;
* ``factor`` is a high quantile (``TAIL_QUANTILE``) of (actual − overhead) / raw, one per (variant, worker), so
  one slow worker never makes the same variant on another worker look slow.

A placement never observed (a variant not loaded on that worker yet, or loaded but not yet queried) has no
factor of its own. It starts from its worker's *prior*, not from the profile alone: before this prior, an
unobserved placement was corrected with factor 1 while the loaded ones on the same busy worker had learnt 50×
and more, so during a spike every unloaded variant looked fast, and the selector loaded 13 of them onto the
busy worker (``benchmarks/trace.py`` at 0.7× capacity: 13.35% of feasible queries missed, against 0.15% at 1×).
The prior is the larger of two tails, each learnt from every query the worker served:

* an additive ``excess``: actual − overhead − raw, in ms. Waiting for a core (or the interpreter) adds about
  the same time whatever the model; it is what a 0.01 ms model's "50×" really is (0.5 ms), and applied as a
  factor to a 2 ms model it would claim 100 ms;
* a multiplicative ``slowdown``: (actual − overhead) / raw, only from queries whose raw estimate is at least
  ``PRIOR_MIN_RAW_MS``, where the stretch of compute (a slower or shared CPU) dominates the wait: a worker
  twice as slow on its 10 ms models is believed twice as slow on a cold 10 ms model, which an additive
  excess learnt on them would put at +10 ms whatever the model's size.

So a cold placement on a busy worker is believed as slow as the worker has lately been, and a worker nobody
has observed yet is believed (a new worker is idle). Once observed, the placement's own factor takes over.

What has not been observed for ``STALE_S`` no longer speaks for now: a placement's factor, a worker's slowdown
and a worker's excess each *expire* when no query has updated them for that long; an expired tracker is read
as absent (a placement falls back to its worker's prior, a prior without a fresh slowdown to its excess, a
worker with nothing fresh to the raw estimate), and its next observation starts it afresh. Without this, a
placement whose learnt factor made it infeasible was never chosen, so never observed, so its factor never came
down (*frozen pessimism*, the mirror image of the prior's runaway): in a ``benchmarks/trace.py`` run at 0.7×
the large MLP's instance was served nothing from 23 s on and was unloaded at 38 s as idle, while 79% of the
accurate class was refused as at risk. The slowdown needs its own expiry: it is learnt only from ≥ 1 ms
models, on the example zoo often that one instance alone, so it froze with it. A stale estimate proven wrong
costs its first query (a restarted tracker starts at that query's ratio, so one slow observation makes it
pessimistic again): at most about one query per ``STALE_S`` per placement really slower than its worker's prior.

One tail per placement, not a tail of the path plus a tail of the worker's time: the two are correlated (both
stretch when the machine is busy), and summing two p99s promised almost nothing on a loaded two-core host (a
6 ms "overhead" for a path whose median was 0.3 ms; ``benchmarks/estimate_honesty.py``).

Both are tracked online in log space by stochastic approximation: each observation moves the tracked value up
by ``STEP × τ`` when it lies above it and down by ``STEP × (1 − τ)`` when below, so at rest a fraction τ of
observations lie below (τ = 0.5 for the overhead). Hence:

* robust: a lone observation moves the estimate by one fixed step however far off it is (a GC pause, a load
  that landed mid-query), where a mean is dragged by every outlier;
* forgetting: with a constant gain, old observations' weight decays geometrically, so a change is followed:
  a worker twice as slow is caught within 3 queries (steps double while observations keep landing above,
  ``_Quantile``), one twice as fast within ~350 (ln 2 / (STEP × (1 − τ))) — quick to believe bad news and
  slow to believe good, the honest direction for a latency promise;
* scale-free: steps are relative, so a 10 µs model and a 100 ms one converge equally fast.

Separately, each placement's *runs* are tracked (``observe_run``, ``run_ms``): the median ratio of the time its
worker reports running it (the session run alone: no queue, no serving path) to its profile at the run's batch.
The engine's event-loop rule reads that (``infaas.engine._inline_ms``), not the latency correction: the correction's
factor holds everything a query waited for beyond the overhead's median, including the thread pool's hop, so a
fast model sent to the pool once could learn a factor that kept it there (e.g. a 0.01 ms model that waited 1.5 ms
for a pool thread reads 150×, so 1.5 ms: "too slow for the loop"), while one that ran on the loop kept a small one:
two fixed points, one of the mechanisms found for the same command calibrating 650 or 2,155 q/s in session 7
(``benchmarks/trace.py``). A run's own time does not depend on which thread ran it, so the rule has one.

The correction only moves an estimate towards what was observed; it never touches what was observed. The report
keeps both errors (actual − raw, actual − corrected) and, for queries with a budget, the share of those promised
(estimate ≤ budget) that met it, raw and corrected, so the correction's effect is visible rather than assumed.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable
from functools import partial
from typing import NamedTuple

import numpy as np

TAIL_QUANTILE = 0.98  # τ: the estimate is meant to be a tail, which queries near their budget rely on
STEP = 0.1  # log-space gain: doubling is caught in 3 observations, halving in ~350 (module docstring)
_MAX_DOUBLINGS = 3  # a streak of misses moves up by at most 8 steps a query
_FLOOR_MS = 1e-3  # 1 µs: below timer resolution; keeps logarithms finite
# Raw estimates from which a worker's slowdown is learnt as a factor: below ~1 ms the wait for a core (a
# scheduler quantum, the interpreter) dominates the ratio (50× on 0.01-0.1 ms models in the 0.7× trace run).
PRIOR_MIN_RAW_MS = 1.0
# A tracker no query has updated for this long is read as absent (module docstring). Long against a placement
# in use (served at least every few seconds, even a 5%-share class at the trace's base rate), short against the
# autoscaler's idle unload (15 s in the trace, 120 s by default), so that a frozen placement is tried again
# before it is unloaded for idling.
STALE_S = 5.0
# A placement's typical run against its profile (``observe_run``): the median, what the event-loop rule plans with.
RUN_QUANTILE = 0.5
REPORT_SAMPLES = 4096  # recent queries the report's error percentiles are taken over
_log, _exp = math.log, math.exp

# What the selector calls: (variant key, worker id, raw estimate ms) -> corrected estimate ms.
Correction = Callable[[str, str, float], float]
Clock = Callable[[], float]  # seconds, monotonic


class _Quantile:
    """The ``quantile`` of a positive quantity, tracked in log space (see the module docstring).

    Consecutive observations above the estimate double the step each time (up to ``_MAX_DOUBLINGS``), never
    past the observation itself: one outlier still moves it one step, but a shift to a slower regime is caught
    in a few queries, not in ln(shift) / STEP. That matters most for placements chosen rarely, whose every
    query under a stale estimate is a broken promise.

    ``value`` is kept as a plain attribute: it is read once per placement on every query, updated once per query.
    ``seen_s`` is when it was last updated (``STALE_S``).
    """

    __slots__ = ("up", "down", "log_value", "value", "count", "streak", "seen_s")

    def __init__(self, quantile: float, first: float, now: float) -> None:
        self.up, self.down = STEP * quantile, STEP * (1.0 - quantile)
        self.log_value = math.log(max(first, _FLOOR_MS))
        self.value = math.exp(self.log_value)
        self.count = 1
        self.streak = 0  # observations above the estimate in a row, before this one
        self.seen_s = now

    def update(self, observed: float, now: float) -> None:
        # Plain float comparisons instead of max/min calls: twice per query (overhead and factor).
        self.seen_s = now
        log_observed = _log(observed if observed > _FLOOR_MS else _FLOOR_MS)
        log_value = self.log_value
        if log_observed > log_value:
            up = self.up
            streak = self.streak
            step = up * (1 << (streak if streak < _MAX_DOUBLINGS else _MAX_DOUBLINGS))
            gap = log_observed - log_value
            if gap < step:
                step = gap
            log_value += step if step > up else up
            self.streak = streak + 1
        else:
            log_value -= self.down
            self.streak = 0
        self.log_value = log_value
        self.value = _exp(log_value)
        self.count += 1


class _WorkerPrior:
    """What a worker's served queries say about a placement on it that has not been observed (module docstring).

    ``excess_ms`` and ``slowdown_value`` are the trackers' values, kept as plain attributes for ``correct``, and
    ``excess_s`` / ``slowdown_s`` when each was last updated (-inf: never).
    """

    __slots__ = ("excess", "slowdown", "excess_ms", "slowdown_value", "excess_s", "slowdown_s")

    def __init__(self) -> None:
        self.excess: _Quantile | None = None
        self.slowdown: _Quantile | None = None
        self.excess_ms = 0.0
        self.slowdown_value = 1.0
        self.excess_s = self.slowdown_s = -math.inf

    def update(self, raw_ms: float, worker_part_ms: float, now: float) -> None:
        """Account one query whose raw estimate was ``raw_ms`` and that took ``worker_part_ms`` beyond the overhead;
        a tracker expired at ``now`` starts again from it."""
        excess = worker_part_ms - raw_ms
        if self.excess is None or self.excess_s < now - STALE_S:
            self.excess = _Quantile(TAIL_QUANTILE, excess, now)
        else:
            self.excess.update(excess, now)
        self.excess_ms, self.excess_s = self.excess.value, now
        if raw_ms >= PRIOR_MIN_RAW_MS:
            ratio = worker_part_ms / raw_ms
            if self.slowdown is None or self.slowdown_s < now - STALE_S:
                self.slowdown = _Quantile(TAIL_QUANTILE, ratio, now)
            else:
                self.slowdown.update(ratio, now)
            self.slowdown_value, self.slowdown_s = self.slowdown.value, now

    def estimate(self, raw_ms: float, horizon: float) -> float:
        """The worker part of an unobserved placement's estimate (the caller adds the overhead), from what was
        updated after ``horizon`` (``now - STALE_S``): nothing fresh, the raw estimate."""
        if self.excess_s < horizon:  # every query the worker serves updates the excess: the worker went quiet
            return raw_ms
        waited = raw_ms + self.excess_ms
        if self.slowdown_s < horizon:
            return waited
        stretched = self.slowdown_value * raw_ms
        return stretched if stretched > waited else waited


class _Sample(NamedTuple):  # a tuple: one is made per query
    raw_ms: float
    corrected_ms: float  # by the correction in force when the query was observed
    actual_ms: float
    budget_ms: float | None


class Calibration:
    """Per-front-end estimate correction; thread-safe, O(1) per observation and per correction.

    ``clock`` (seconds, monotonic) dates observations and decides which trackers expired (``STALE_S``).
    """

    def __init__(self, clock: Clock = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._overhead: _Quantile | None = None
        self._overhead_ms = 0.0  # the tracker's value, read on every correction
        self._factors: dict[tuple[str, str], _Quantile] = {}
        self._priors: dict[str, _WorkerPrior] = {}
        self._runs: dict[tuple[str, str], _Quantile] = {}  # run time / profile, per placement (``observe_run``)
        self._samples: deque[_Sample] = deque(maxlen=REPORT_SAMPLES)
        self._observed = 0

    @property
    def overhead_ms(self) -> float:
        """The serving path's median time per query (0 until a query was observed)."""
        return self._overhead_ms

    def factor(self, key: str, worker: str) -> float:
        """How much slower than its raw estimate ``key`` runs on ``worker``, beyond the overhead, at the tail
        (1 until observed there: ``correct`` then uses the worker's prior)."""
        tracker = self._factors.get((key, worker))
        return tracker.value if tracker is not None else 1.0

    def correct(self, key: str, worker: str, raw_ms: float) -> float:
        """The corrected estimate for a raw one, now (a ``Correction``).

        An unobserved or expired placement gets its worker's prior; on a worker with nothing fresh, the raw estimate.
        """
        return self._corrected(self._clock(), key, worker, raw_ms)

    def correction(self) -> Correction:
        """``correct`` with the clock read once: what one selection uses, so that every placement it compares is
        judged at the same instant, by the reference selector and the fast one alike."""
        return partial(self._corrected, self._clock())

    def _corrected(self, now: float, key: str, worker: str, raw_ms: float) -> float:
        # Called per placement on every query: one dictionary look-up when the placement is fresh.
        horizon = now - STALE_S
        tracker = self._factors.get((key, worker))
        if tracker is not None and tracker.seen_s >= horizon:
            return self._overhead_ms + tracker.value * raw_ms
        prior = self._priors.get(worker)
        return self._overhead_ms + (raw_ms if prior is None else prior.estimate(raw_ms, horizon))

    def observe(
        self, key: str, worker: str, raw_ms: float, actual_ms: float, *, worker_ms: float, budget_ms: float | None
    ) -> None:
        """Account one query served by an instance that was already loaded.

        ``worker_ms`` is what the worker reported (queue + service); the rest of ``actual_ms`` is the serving path.
        Queries that loaded a variant are not observed: their time is a one-off load the profile measured.
        """
        placement = (key, worker)
        now = self._clock()
        with self._lock:
            # ``_corrected`` inlined (the placement is looked up once): this runs on every query.
            horizon = now - STALE_S
            tracker = self._factors.get(placement)
            if tracker is not None and tracker.seen_s < horizon:
                tracker = None  # expired: the estimate in force was the prior's, and this query starts it again
            prior = self._priors.get(worker)
            if tracker is not None:
                corrected_ms = self._overhead_ms + tracker.value * raw_ms
            else:
                corrected_ms = self._overhead_ms + (raw_ms if prior is None else prior.estimate(raw_ms, horizon))
            self._samples.append(_Sample(raw_ms, corrected_ms, actual_ms, budget_ms))
            self._observed += 1
            path_ms = actual_ms - worker_ms
            overhead = self._overhead
            if overhead is None:
                overhead = self._overhead = _Quantile(0.5, path_ms, now)
            else:
                overhead.update(path_ms, now)
            self._overhead_ms = overhead_ms = overhead.value
            worker_part_ms = actual_ms - overhead_ms
            ratio = worker_part_ms / (raw_ms if raw_ms > _FLOOR_MS else _FLOOR_MS)
            if tracker is None:
                self._factors[placement] = _Quantile(TAIL_QUANTILE, ratio, now)
            else:
                tracker.update(ratio, now)
            if prior is None:
                prior = self._priors[worker] = _WorkerPrior()
            prior.update(raw_ms, worker_part_ms, now)

    def observe_run(self, key: str, worker: str, profiled_ms: float, run_ms: float) -> None:
        """Account one model run of ``key`` on ``worker``: ``run_ms`` is what the worker reported the run took
        (``InferResult.service_ms``), ``profiled_ms`` the profile's typical time at the run's batch."""
        placement = (key, worker)
        now = self._clock()
        ratio = (run_ms if run_ms > _FLOOR_MS else _FLOOR_MS) / (profiled_ms if profiled_ms > _FLOOR_MS else _FLOOR_MS)
        with self._lock:
            tracker = self._runs.get(placement)
            if tracker is None or tracker.seen_s < now - STALE_S:
                self._runs[placement] = _Quantile(RUN_QUANTILE, ratio, now)
            else:
                tracker.update(ratio, now)

    def run_ms(self, key: str, worker: str, profiled_ms: float) -> float:
        """How long a run of ``key`` on ``worker`` profiled at ``profiled_ms`` takes there, typically: the profile
        times the placement's median observed ratio (``observe_run``); the profile itself until a run was observed
        there, or once none has been for ``STALE_S``."""
        tracker = self._runs.get((key, worker))
        if tracker is None or tracker.seen_s < self._clock() - STALE_S:
            return profiled_ms
        return tracker.value * profiled_ms

    def run_factors(self) -> dict[str, dict[str, float]]:
        """Per placement (``"model/variant on worker"``), its runs' median time over their profile, how many were
        observed and how long ago the last was (stale past ``STALE_S``): what the event-loop rule reads. Apart from
        ``report``, which ``/v1/stats`` shows to tenants: these keys name every variant served."""
        now = self._clock()
        with self._lock:
            runs = [(f"{key} on {worker}", t.value, t.count, now - t.seen_s) for (key, worker), t in self._runs.items()]
        return {k: {"factor": round(v, 4), "observed": n, "age_s": round(age, 1)} for k, v, n, age in sorted(runs)}

    def report(self) -> dict[str, object]:
        """Estimate error before and after correction over the recent queries, and the correction in force."""
        now = self._clock()
        with self._lock:
            samples = list(self._samples)
            factors = {
                f"{key} on {worker}": (t.value, t.count, now - t.seen_s) for (key, worker), t in self._factors.items()
            }
            priors = {w: (p.excess_ms, p.slowdown_value) for w, p in self._priors.items()}
            observed, overhead = self._observed, self.overhead_ms
        out: dict[str, object] = {
            "observed": observed,
            "window": len(samples),
            "tail_quantile": TAIL_QUANTILE,
            "stale_after_s": STALE_S,
            "overhead_ms": round(overhead, 4),
            "factors": {
                k: {"factor": round(v, 4), "observed": n, "age_s": round(age, 1)}  # expired past stale_after_s
                for k, (v, n, age) in sorted(factors.items())
            },
            "worker_priors": {
                w: {"excess_ms": round(e, 4), "slowdown": round(f, 4)} for w, (e, f) in sorted(priors.items())
            },
        }
        if not samples:
            return out
        raw, corrected, actual = np.array([s[:3] for s in samples], dtype=np.float64).T
        out["raw_error_ms"] = _percentiles(actual - raw)
        out["corrected_error_ms"] = _percentiles(actual - corrected)
        out["raw_promises"] = _promises(samples, lambda s: s.raw_ms)
        out["corrected_promises"] = _promises(samples, lambda s: s.corrected_ms)
        return out


def _percentiles(errors: np.ndarray) -> dict[str, float]:
    """p50 and p99 of actual − estimate: positive means the estimate was too low."""
    p50, p99 = np.percentile(errors, [50, 99])
    return {"p50": round(float(p50), 4), "p99": round(float(p99), 4)}


def _promises(samples: list[_Sample], estimate: Callable[[_Sample], float]) -> dict[str, object]:
    """Of the budgeted queries whose estimate was within budget (a promise), how many met the budget."""
    promised = [s for s in samples if s.budget_ms is not None and estimate(s) <= s.budget_ms]
    met = sum(1 for s in promised if s.budget_ms is not None and s.actual_ms <= s.budget_ms)
    return {"promised": len(promised), "met": met, "met_share": round(met / len(promised), 4) if promised else None}
