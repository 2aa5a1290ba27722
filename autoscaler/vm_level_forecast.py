"""The demand the VM level sizes a step for: what the fleet will need when the workers it asks for now take queries.

A worker asked for now takes queries one provider start-up later (``PolicyConfig.vm_startup_s``: 30-90 s in
``benchmarks/fleet_sim.py``, minutes for a cloud VM). Sized for the demand of the period it was asked in, a step on a
rising ramp arrives short: on fleet_sim's 720 s day the morning's demand triples in the minute a worker takes to
start. The expected need is therefore the need now or, when higher, the robust trend of the last start-up's samples
carried one start-up ahead.

The trend is Theil-Sen (the median of the pairwise slopes; the level the median of the samples carried along it):
one odd sample (a 10 s burst, a failure's dip) does not tilt it, where a least-squares line reads a burst at the end
of the window as a ramp. A falling trend is not carried: a step is never sized below the need now.

Measured on fleet_sim's 720 s day at a 1,000-worker peak (seeds 1/2/3; misses of feasible queries, cost against
static provisioning for the peak), with ``fleet_sim.fleet_policy``'s lifetime and scale-down threshold: the need now
alone 5.8/2.7/2.7% at 0.87/0.51/0.50x (seed 1 ran to ``max_workers``); with this expected need 1.6/2.0/1.9% at
0.62/0.64/0.61x. Carried the shortest start-up (30 s) ahead instead of the mean: 1.4/2.3% at 0.60/0.71x (seeds 1/2).
At a 60-worker peak: need now 3.6/6.3/6.9% at 0.65/0.95/0.89x, expected 2.2/4.9/5.2% at 0.71/0.89/0.93x. Dropped:
the robust level alone, bursts left out of the step (60-worker peak: 5.5% at 0.68x, seed 1: the convex morning ramp
read as it had been a minute before); the least need over half a start-up, its trend carried (5.7-8.2%); the trend of
the need's logarithm (the early ramp's growth carried a start-up ahead ran the fleet to ``max_workers``: 2.8% at
1.14x); the windowed rate instead of the last second's (4.1/5.6/6.3%).
"""

from __future__ import annotations

from collections.abc import Sequence
from statistics import median


def trend(samples: Sequence[tuple[float, float]]) -> tuple[float, float]:
    """The robust level at the last sample's time and the slope per second of ``(time, value)`` samples.

    Theil-Sen: the slope is the median of the slopes between every pair of samples taken at different times, the
    level the median of each sample carried to the last time along it. One sample: its value, slope 0. Pure.
    """
    if not samples:
        raise ValueError("trend of no samples: pass at least the current one")
    last = samples[-1][0]
    slopes = [(y2 - y1) / (t2 - t1) for i, (t1, y1) in enumerate(samples) for t2, y2 in samples[i + 1 :] if t2 != t1]
    slope = median(slopes) if slopes else 0.0
    level = median(y + slope * (last - t) for t, y in samples)
    return level, slope


def expected_need(samples: Sequence[tuple[float, float]], lead_s: float) -> float:
    """The need ``lead_s`` after the last of ``(time, need)`` samples (ascending times): the last need, or the trend
    of the samples within ``lead_s`` of it carried ``lead_s`` ahead when that is higher. Pure."""
    if lead_s < 0:
        raise ValueError(f"lead_s must be >= 0, got {lead_s:g}")
    if not samples:
        raise ValueError("expected_need of no samples: pass at least the current one")
    now, need = samples[-1]
    level, slope = trend([s for s in samples if s[0] >= now - lead_s])
    return max(need, level + max(slope, 0.0) * lead_s)
