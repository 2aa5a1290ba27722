"""The docker trace's capacity (``benchmarks.trace_docker.cpu_capacity``): the rate at which one container's CPU
quota is used up, fitted from windows below saturation, not the rate the 10 ms class's tail allows. Pure: windows
come from a model container (a fixed CPU cost per query run, an idle cost, a quota), not from Docker."""

from __future__ import annotations

import pytest

from benchmarks.trace_docker import CPU_STOP, CPU_WINDOWS, cpu_capacity, saturation_rate


def container(cpu_ms: float, idle_cpus: float, cpus: float, refused: float = 0.0):
    """A model container: each query run costs ``cpu_ms``; ``refused`` of the offered ones never run."""
    offered: list[float] = []

    def measure(rate: float) -> dict:
        offered.append(rate)
        seconds = 4.0
        ran = round(rate * seconds * (1.0 - refused))
        used = min(cpus * seconds, (ran * cpu_ms / 1000.0) + idle_cpus * seconds)
        return {"qps": rate, "ran": ran, "seconds": seconds, "cpu_s": used, "quota_used": used / (seconds * cpus)}

    return measure, offered


def test_the_fit_finds_the_rate_that_uses_the_quota() -> None:
    measure, offered = container(cpu_ms=5.0, idle_cpus=0.02, cpus=0.5)
    result = cpu_capacity(measure, cpus=0.5, start_qps=10.0, repeats=5)
    # (0.5 - 0.02) CPU / 5 ms a query = 96 q/s.
    assert result["capacity_qps"] == pytest.approx(96.0, abs=1.0)
    assert result["staircases_qps"] == [result["capacity_qps"]] * 5
    stair = result["staircases"][0]
    assert stair["cpu_ms_per_query"] == pytest.approx(5.0, rel=0.02) and stair["idle_cpus"] == pytest.approx(
        0.02, abs=0.005
    )
    # Each staircase stops at the first window that used CPU_STOP of the quota: 10, 15, 22.5, 33.75, 50.6, 75.9 q/s.
    assert [w["quota_used"] >= CPU_STOP for w in stair["windows"]] == [False] * 5 + [True]
    assert offered[:6] == pytest.approx([10.0, 15.0, 22.5, 33.75, 50.625, 75.9375])


def test_refused_queries_are_not_counted_as_work_the_container_did() -> None:
    # The capacity is in queries run; a front-end refusing half of them does not halve what a query costs.
    measure, _ = container(cpu_ms=5.0, idle_cpus=0.0, cpus=0.5, refused=0.5)
    assert cpu_capacity(measure, cpus=0.5, start_qps=10.0, repeats=5)["capacity_qps"] == pytest.approx(100.0, abs=1.0)


def test_a_staircase_that_never_saturates_stops_after_its_windows() -> None:
    measure, offered = container(cpu_ms=0.01, idle_cpus=0.0, cpus=0.5)
    cpu_capacity(measure, cpus=0.5, start_qps=10.0, repeats=5)
    assert len(offered) == 5 * CPU_WINDOWS


def test_a_fit_that_is_not_a_cost_per_query_falls_back_to_the_line_through_the_origin() -> None:
    falling = [{"ran": 100, "seconds": 4.0, "cpu_s": 1.0}, {"ran": 300, "seconds": 4.0, "cpu_s": 0.9}]  # slope < 0
    assert saturation_rate(falling, 0.5) == {"capacity_qps": 105.3, "cpu_ms_per_query": 4.75, "idle_cpus": 0.0}
    below_zero = [{"ran": 100, "seconds": 4.0, "cpu_s": 0.2}, {"ran": 200, "seconds": 4.0, "cpu_s": 0.8}]  # idle < 0
    assert saturation_rate(below_zero, 0.5) == {"capacity_qps": 150.0, "cpu_ms_per_query": 3.333, "idle_cpus": 0.0}
    one_rate = saturation_rate([{"ran": 200, "seconds": 4.0, "cpu_s": 1.0}], 0.5)
    assert one_rate == {"capacity_qps": 100.0, "cpu_ms_per_query": 5.0, "idle_cpus": 0.0}


def test_nothing_run_is_an_error_not_a_capacity() -> None:
    with pytest.raises(ValueError, match="no calibration window ran queries"):
        saturation_rate([{"ran": 0, "seconds": 4.0, "cpu_s": 0.1}], 0.5)
