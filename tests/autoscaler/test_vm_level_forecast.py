"""The VM level sizes a step for the demand one worker start-up ahead, read from a robust trend (found by
benchmarks/fleet_sim.py: workers start in 30-90 s, longer than a compressed day's ramps), and drains an underloaded
fleet while workers are still starting."""

from dataclasses import replace

import pytest

from autoscaler import vm_level
from autoscaler.policy_types import History, PolicyConfig
from autoscaler.vm_level_forecast import expected_need, trend
from tests.autoscaler.test_vm_level_sizing import fleet

AHEAD = PolicyConfig(vm_startup_s=60.0)


def test_a_straight_ramp_is_read_exactly() -> None:
    ramp = [(t, 10.0 + 0.5 * t) for t in range(0, 130, 10)]
    assert trend(ramp) == pytest.approx((70.0, 0.5))
    assert expected_need(ramp, 60.0) == pytest.approx(100.0)  # 70 now, +0.5/s for 60 s
    assert expected_need(ramp, 0.0) == pytest.approx(70.0)
    assert trend([(5.0, 3.0)]) == (3.0, 0.0)


def test_a_step_is_never_sized_below_the_need_now() -> None:
    fall = [(t, 100.0 - 0.5 * t) for t in range(0, 130, 10)]
    assert expected_need(fall, 60.0) == pytest.approx(40.0)  # a falling trend is not carried
    # A noisy plateau's median trend is flat: the need now, not a ramp read from the last sample's dip or rise.
    plateau = [(float(t), 100.0 + (5.0 if t % 20 else -5.0)) for t in range(0, 130, 10)]
    assert expected_need(plateau, 60.0) == pytest.approx(95.0)


def test_a_burst_is_the_need_now_not_a_trend() -> None:
    # 100 cores steady for 2 minutes, the last two samples a burst at twice that: the trend stays level at 100 (a
    # least-squares line reads the burst as a ramp of +0.6 cores/s and the level as 152), so a step is sized for
    # the burst's 200 now and not for 200 carried up a ramp for another minute.
    steady = [(float(t), 100.0) for t in range(0, 110, 10)]
    burst = [*steady, (110.0, 200.0), (120.0, 200.0)]
    assert trend(burst) == (100.0, 0.0)
    assert trend(burst[-7:]) == (100.0, 0.0)  # the last start-up's samples, as the VM level reads them
    assert expected_need(burst, 60.0) == 200.0


def test_bad_input_says_what_to_fix() -> None:
    with pytest.raises(ValueError, match="at least the current one"):
        trend([])
    with pytest.raises(ValueError, match="lead_s must be >= 0"):
        expected_need([(0.0, 1.0)], -1.0)


def _periods(rate_at, config: PolicyConfig, periods: int, workers: int = 20, start: float = 0.0):  # type: ignore[no-untyped-def]
    """Run the VM level each 10 s with every worker at ``rate_at(now)`` rows/s; the actions and the last history."""
    history, actions = History(), []
    for n in range(periods):
        now = start + 10.0 * n
        plan = vm_level.decide(fleet(rate_at(now), now, workers=workers), history, config)
        history = plan.history
        actions.extend(plan.actions)
    return actions, history


def test_a_ramp_is_met_one_start_up_ahead_before_it_overloads() -> None:
    # 20 workers of 2 cores, 2 replicas of 100 rows/s each: 60 rows/s a worker is 0.6 busy cores... rising by 1 rows/s
    # a second per worker. At 100 s each worker is at 160 rows/s (1.6 cores, 0.8: not yet over high_utilization) and
    # in 60 s it will be at 220 rows/s: 44 cores, 37 workers at 0.6 of 2 cores.
    ramp = lambda now: 60.0 + now  # noqa: E731
    actions, history = _periods(ramp, AHEAD, 11)
    adds = [a for a in actions if a.action == "add_worker"]
    assert adds, "the ramp was not met ahead"
    first = adds[0]
    assert first.inputs["utilization"] < AHEAD.high_utilization  # before the cluster read as overloaded
    assert "one start-up (60 s) ahead" in first.reason
    assert first.inputs["expected_need_cores"] > first.inputs["need_cores"]
    # Without the start-up known the same ramp adds nothing until it overloads.
    assert not [a for a in _periods(ramp, PolicyConfig(), 11)[0] if a.action == "add_worker"]
    # The trend is read over the last start-up: older samples are forgotten.
    assert [t for t, _cores in history.demand] == [float(t) for t in range(40, 110, 10)]


def test_a_steady_load_in_band_adds_nothing_ahead() -> None:
    # 0.5 utilization for two minutes: no trend, nothing expected beyond target: no step, no drain.
    actions, history = _periods(lambda now: 100.0, AHEAD, 12)
    assert actions == []
    assert history.demand[-1] == (110.0, 20.0)


def test_no_worker_is_drained_that_the_rising_trend_needs_within_a_start_up() -> None:
    # 20 workers rising from 0.13 to 0.25 utilization in 20 s: underloaded for three periods, and with the start-up
    # unknown drained to what runs the load now below target. One start-up ahead the trend needs 24.4 busy cores,
    # over 0.6 of the 38 that would stay: nothing is drained.
    rising = lambda now: 26.0 + 1.2 * now  # noqa: E731
    drains = lambda cfg: [a for a in _periods(rising, cfg, 6)[0] if a.action == "drain_worker"]  # noqa: E731
    assert drains(replace(PolicyConfig(), vm_min_lifetime_s=0.0))
    assert not drains(replace(AHEAD, vm_min_lifetime_s=0.0))


def test_an_underloaded_fleet_drains_while_workers_are_still_starting() -> None:
    # 20 workers at 0.1 utilization and 5 more starting (asked for before the load fell): the idle ones are drained
    # now, not once the last has started. Billed by the second, waiting for them kept the whole fleet paid for.
    history, drains = History(), []
    for n in range(4):
        plan = vm_level.decide(fleet(20.0, 100.0 + 10.0 * n, workers=20, pending=5), history, AHEAD)
        history = plan.history
        drains.extend(a for a in plan.actions if a.action == "drain_worker")
    assert len(drains) == 10
