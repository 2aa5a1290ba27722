"""The trace benchmark's bookkeeping (``benchmarks/trace.py``): what it counts as missed, rejected and infeasible,
how it calibrates the load, and who sends a burst. The replay itself runs against fake clients here; the
benchmark's numbers come from running it (``python -m benchmarks.trace``), never from a test."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import numpy as np
import pytest

from benchmarks import trace
from benchmarks.trace import Arrival, Outcome, QueryClass, Run, Shape
from infaas.fair_share import OverFairShare
from infaas.selector import Achievable, Infeasible

BEST = Achievable(latency_ms=50.0, accuracy=0.9, cost=1e-6)


def _outcome(status: str, cls: str = "c", retry_after: bool = False) -> Outcome:
    accuracy = 0.9 if status in {"ok", "late", "below-floor"} else None
    return Outcome(0.0, cls, cls, 1.0, status, accuracy, "m/v", retry_after, "why" if status == "rejected" else "")


def test_rejections_are_counted_apart_from_misses() -> None:
    group = [
        *[_outcome("ok")] * 6,
        _outcome("late"),
        _outcome("timed-out"),
        _outcome("rejected", retry_after=True),
        _outcome("rejected"),
        _outcome("shed", retry_after=True),
    ]
    counts = trace.tally(group, duration=2.0)
    assert counts["queries"] == 11
    assert counts["in_time"] == 6
    assert counts["missed"] == 2  # late and timed out; the rejections and the shed query are not misses
    assert counts["rejected"] == 2
    assert counts["rejected_with_retry_after"] == 1
    assert counts["shed"] == 1
    assert counts["miss_rate"] == pytest.approx(2 / 11, abs=1e-4)
    assert counts["reject_rate"] == pytest.approx(2 / 11, abs=1e-4)
    assert counts["shed_rate"] == pytest.approx(1 / 11, abs=1e-4)
    assert counts["goodput_qps"] == pytest.approx(3.0)
    assert counts["why_not_served"] == {"why": {"count": 2, "example": "why"}}


def test_infeasible_classes_are_kept_out_of_the_feasible_miss_rate() -> None:
    run = Run("infaas", 1.0)
    for o in [_outcome("ok", "a"), _outcome("late", "a"), _outcome("rejected", "strict"), _outcome("ok", "b")]:
        run.add(o)
    summary = run.summary(1.0, {"cpu-core": 0.048}, infeasible={"strict"})
    assert summary["feasible"]["queries"] == 3
    assert summary["feasible"]["missed"] == 1
    assert summary["infeasible"] == {**summary["infeasible"], "queries": 1, "rejected": 1}
    assert summary["by_class"]["strict"]["feasible"] is False
    assert summary["fairness"]["in_time_share_by_class"] == {"a": 0.5, "b": 1.0}


def test_the_timeline_puts_each_outcome_in_its_bucket_by_class_and_kind() -> None:
    def at(t: float, status: str, cls: str, lag: float = 0.0) -> Outcome:
        return Outcome(t, cls, cls, 1.0, status, None, "m/v", sent_lag_ms=lag)

    group = [at(0.5, "ok", "a", 2.0), at(4.9, "late", "a"), at(5.0, "timed-out", "b", 11.0), at(12.0, "rejected", "a")]
    assert trace.timeline(group) == [
        {"t_s": 0.0, "queries": 2, "not_ok": {"a": {"late": 1}}, "max_sent_lag_ms": 2.0},
        {"t_s": 5.0, "queries": 1, "not_ok": {"b": {"timed-out": 1}}, "max_sent_lag_ms": 11.0},
        {"t_s": 10.0, "queries": 1, "not_ok": {"a": {"rejected": 1}}, "max_sent_lag_ms": 0.0},
    ]


def test_jain_index_is_one_when_equal_and_one_over_n_when_one_gets_all() -> None:
    assert trace.jain_index([0.7, 0.7, 0.7]) == pytest.approx(1.0)
    assert trace.jain_index([1.0, 0.0, 0.0, 0.0]) == pytest.approx(0.25)
    assert trace.jain_index([]) is None


def test_replay_sorts_each_answer_into_its_outcome() -> None:
    classes = {
        "ok": QueryClass("ok", 1.0, 10_000.0, 0.5, 2),
        "late": QueryClass("late", 1.0, 20.0, 0.5, 2),
        "low": QueryClass("low", 1.0, 10_000.0, 0.95, 2),
        "busy": QueryClass("busy", 1.0, 10_000.0, 0.5, 2, "reject"),
        "never": QueryClass("never", 1.0, 10_000.0, 0.5, 2, "reject"),
        "broken": QueryClass("broken", 1.0, 10_000.0, 0.5, 2),
        "heavy": QueryClass("heavy", 1.0, 10_000.0, 0.5, 2),
    }

    async def serve(arrival: Arrival, x: np.ndarray, deadline: float) -> tuple[str, float | None]:
        name = arrival.cls.name
        if name == "late":
            await asyncio.sleep(0.2)
        if name == "busy":
            raise Infeasible("latency_ms 1", BEST, retry_after_s=1.0)
        if name == "never":
            raise Infeasible("latency_ms 1", BEST)
        if name == "broken":
            raise RuntimeError("worker went away")
        if name == "heavy":
            raise OverFairShare("over its share", retry_after_s=1.0)
        return "m/v", 0.9

    run = Run("fake", 1.0)
    arrivals = [Arrival(0.01 * i, cls, 0) for i, cls in enumerate(classes.values())]
    trace.replay(arrivals, np.zeros((4, 1), np.float32), serve, run, lambda: (1, 1))
    by_class = {o.cls: o for o in run.outcomes}
    assert by_class["ok"].status == "ok"
    assert by_class["late"].status in {"late", "timed-out"}  # timed out if the replay itself lagged 20 ms
    assert by_class["low"].status == "below-floor"
    assert (by_class["busy"].status, by_class["busy"].retry_after) == ("rejected", True)
    assert (by_class["never"].status, by_class["never"].retry_after) == ("rejected", False)
    assert by_class["broken"].status == "failed"
    assert (by_class["heavy"].status, by_class["heavy"].retry_after) == ("shed", True)
    assert "worker went away" in by_class["broken"].reason


def test_a_burst_comes_from_its_own_tenant_and_only_during_the_spike() -> None:
    classes = [QueryClass("cheap", 0.5, 50.0, 0.0, 1), QueryClass("accurate", 0.5, 100.0, 0.9, 1)]
    shape = Shape(
        duration=20.0, base=20.0, step=40.0, spike=200.0, spike_from=0.45, spike_to=0.6, burst_class="accurate"
    )
    arrivals = trace.make_trace(classes, shape, samples=100, seed=3)
    burst = [a for a in arrivals if a.who == "accurate-burst"]
    assert burst, "the spike's extra queries must come from the bursting tenant"
    assert all(a.cls.name == "accurate" and shape.in_spike(a.at_s) for a in burst)
    steady = [a for a in arrivals if shape.in_spike(a.at_s) and not a.tenant]
    assert {a.cls.name for a in steady} == {"cheap", "accurate"}  # the steady traffic keeps its mix
    assert len(burst) > len(steady)  # 160 of the spike's 200 q/s


def test_capacity_is_the_median_of_repeated_staircases() -> None:
    # A deployment that keeps 99% of queries in time up to a threshold that drifts between staircases (a
    # staircase ends when a rate fails twice in a row after a pass).
    thresholds = iter([100.0, 104.0, 96.0, 120.0, 101.0])
    state = {"threshold": 300.0, "passed": False, "failed": False}

    def measure(rate: float) -> dict:
        in_time = 1.0 if rate <= state["threshold"] else 0.9
        if in_time >= 0.99:
            state["passed"], state["failed"] = True, False
        elif state["passed"] and state["failed"]:
            state["threshold"], state["passed"], state["failed"] = next(thresholds, 100.0), False, False
        else:
            state["failed"] = True
        return {"qps": rate, "in_time": in_time}

    result = trace.capacity(measure, repeats=5, start_qps=20.0, target=0.99)
    stairs = result["staircases_qps"]
    assert len(stairs) == 5 and None not in stairs
    for capacity, threshold in zip(stairs, [100.0, 104.0, 96.0, 120.0, 101.0], strict=True):
        assert threshold / trace.STAIR_STEP < capacity <= threshold  # the last step under the threshold
    assert result["capacity_qps"] == pytest.approx(float(np.median(stairs)), abs=0.1)
    assert (result["min_qps"], result["max_qps"]) == (min(stairs), max(stairs))
    # The coarse staircase brackets (not counted): ×1.5 from 20 q/s past 300.
    assert result["coarse"]["capacity_qps"] <= 300.0 < result["coarse"]["capacity_qps"] * trace.COARSE_STEP
    assert all(len(s["windows"]) >= 2 for s in result["staircases"])  # every window is kept


def test_a_staircase_still_passing_at_its_last_window_is_a_lower_bound_not_a_capacity() -> None:
    # A noisy rate (two windows in a row) brackets the capacity far too low (coarse: 30 q/s); the deployment holds up
    # to 400 q/s.
    noisy = iter([0.98, 0.98])

    def measure(rate: float) -> dict:
        if 40.0 < rate < 50.0:
            return {"qps": rate, "in_time": next(noisy, 1.0)}
        return {"qps": rate, "in_time": 1.0 if rate <= 400.0 else 0.5}

    result = trace.capacity(measure, repeats=5, start_qps=20.0, target=0.99)
    assert result["coarse"]["capacity_qps"] == 30.0
    # The fine staircases climb until they fail, however far below they start; none reports where it stopped.
    assert 400.0 / trace.STAIR_STEP < result["capacity_qps"] <= 400.0
    assert all(s is None or s > 400.0 / trace.STAIR_STEP for s in result["staircases_qps"])


def test_a_staircase_whose_first_window_fails_starts_lower() -> None:
    def measure(rate: float) -> dict:
        return {"qps": rate, "in_time": 1.0 if rate <= 15.0 else 0.5}

    result = trace.capacity(measure, repeats=5, start_qps=100.0, target=0.99)
    assert 15.0 / trace.STAIR_STEP < result["capacity_qps"] <= 15.0


def test_a_window_with_too_few_queries_never_passes_and_the_staircase_climbs() -> None:
    def measure(rate: float) -> dict:
        return {"qps": rate, "queries": int(rate), "in_time": 1.0 if rate <= 300.0 else 0.5}

    result = trace.capacity(measure, repeats=5, start_qps=20.0, target=0.99)
    first = result["coarse"]["windows"][0]
    assert first["queries"] < trace.MIN_WINDOW_QUERIES
    assert 300.0 / trace.STAIR_STEP < result["capacity_qps"] <= 300.0


def test_calibration_windows_are_open_loop_and_count_refusals_as_late(monkeypatch: pytest.MonkeyPatch) -> None:
    classes = [QueryClass("a", 0.5, 1000.0, 0.0, 1, "reject"), QueryClass("b", 0.5, 1000.0, 0.0, 1)]

    async def serve(arrival: Arrival, x: np.ndarray, deadline: float) -> tuple[str, float | None]:
        if arrival.cls.name == "a":
            raise Infeasible("latency_ms 1000", BEST, retry_after_s=1.0)
        return "m/b", 1.0

    monkeypatch.setattr(trace, "STAIR_PAUSE_S", 0.0)
    monkeypatch.setattr(trace, "MAX_STAIRS", 2)
    result = trace.calibrate(
        serve, classes, np.zeros((10, 1), np.float32), repeats=5, window_s=0.5, start_qps=400.0, target=0.99
    )
    # Half the queries are refused at every rate: no window is 99% in time, so no capacity is found.
    assert result["capacity_qps"] == 0.0 and result["staircases_qps"] == [None] * 5
    first = result["coarse"]["windows"][0]
    assert first["qps"] == 400.0 and first["queries"] > 100
    assert 0.3 < first["in_time"] < 0.7


def test_a_class_is_infeasible_only_if_every_probe_was_refused() -> None:
    classes = [QueryClass("never", 1.0, 10.0, 0.99, 1), QueryClass("once", 1.0, 10.0, 0.9, 1)]
    calls = {"once": 0}

    async def serve(arrival: Arrival, x: np.ndarray, deadline: float) -> tuple[str, float | None]:
        assert arrival.cls.on_infeasible == "reject"
        if arrival.cls.name == "never":
            raise Infeasible("latency_ms 10", BEST)
        calls["once"] += 1
        if calls["once"] == 1:
            raise Infeasible("latency_ms 10", BEST, retry_after_s=1.0)
        return "m/v", 0.95

    infeasible = trace.find_infeasible(serve, classes, np.zeros((4, 1), np.float32))
    assert list(infeasible) == ["never"]
    assert "no placement meets latency_ms 10" in infeasible["never"]


def test_a_class_out_of_reach_only_while_cold_is_feasible() -> None:
    # Nothing is loaded on the idle system: the class's variant loads in 50 ms, runs in 2 ms, budget 10 ms.
    classes = [QueryClass("tight", 1.0, 10.0, 0.9, 1, "reject")]
    loaded = []

    async def serve(arrival: Arrival, x: np.ndarray, deadline: float) -> tuple[str, float | None]:
        estimate_ms = 2.0 if loaded else 52.0
        if estimate_ms > (deadline - time.monotonic()) * 1000.0:
            raise Infeasible("latency_ms 10", BEST)
        loaded.append(True)
        return "m/v", 0.95

    assert trace.find_infeasible(serve, classes, np.zeros((4, 1), np.float32)) == {}
    assert loaded  # the 10 s query loaded it; the probes then met 10 ms


def test_the_plot_is_drawn_from_the_report(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    summary = {
        "feasible": {"miss_rate": 0.01},
        "cost_usd": 0.001,
        "by_class": {"a": {"miss_rate": 0.1, "reject_rate": 0.2}},
    }
    report = {
        "levels": {"0.7": {"setups": {"infaas": summary}}, "1.5": {"setups": {"infaas": summary}}},
        "trace": {"classes": [{"name": "a"}, {"name": "b"}]},
        "infeasible_classes": {"b": "no placement meets"},
        "calibration": {"capacity_qps": 100.0},
        "burst": {
            "level": 1.5,
            "burst_class": "a",
            "infaas": {"fairness": {"in_time_share_by_tenant": {"a": 0.9, "a-burst": 0.3}}},
            "infaas_without_fair_share": {"fairness": {"in_time_share_by_tenant": {"a": 0.5, "a-burst": 0.6}}},
        },
    }
    out = tmp_path / "trace.png"
    trace.plot(report, out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_bar_follows_a_noisy_baseline_but_never_below_ninety_percent() -> None:
    def jittery(rate: float) -> dict:  # 2.5% late at any load (timer jitter), 20% past 200 q/s
        return {"qps": rate, "queries": 1000, "in_time": 0.975 if rate <= 200.0 else 0.8}

    result = trace.capacity(jittery, repeats=5, start_qps=20.0, target=0.99)
    assert result["in_time_bar"] == pytest.approx(0.965)
    assert 200.0 / trace.STAIR_STEP < result["capacity_qps"] <= 200.0

    def refusing(rate: float) -> dict:  # half refused at any load: never a capacity
        return {"qps": rate, "queries": 1000, "in_time": 0.5}

    result = trace.capacity(refusing, repeats=5, start_qps=20.0, target=0.99)
    assert result["in_time_bar"] == trace.LOWEST_BAR and result["capacity_qps"] == 0.0


def test_the_replay_sends_each_query_at_its_time_while_earlier_ones_are_still_being_served() -> None:
    # 40 queries 5 ms apart, each taking 200 ms: a client that waited for an answer before sending the next would
    # start the last one ~8 s late (timed out against its 1 s budget); an open-loop client starts each on time.
    cls = QueryClass("slow", 1.0, 1000.0, 0.0, 1)
    started: list[float] = []

    async def serve(arrival: Arrival, x: np.ndarray, deadline: float) -> tuple[str, float | None]:
        started.append(time.monotonic())
        await asyncio.sleep(0.2)
        return "m/v", 1.0

    run = Run("fake", 1.0)
    trace.replay(
        [Arrival(0.005 * i, cls, 0) for i in range(40)], np.zeros((4, 1), np.float32), serve, run, lambda: (1, 1)
    )
    assert [o.status for o in run.outcomes] == ["ok"] * 40
    assert max(o.latency_ms for o in run.outcomes) < 600.0
    assert max(started) - min(started) < 0.195 + 0.3  # all sent within the trace's 195 ms (plus scheduling slack)


def test_one_noisy_first_window_does_not_walk_the_staircase_down() -> None:
    # The deployment holds 100 q/s; the very first window of the coarse staircase (at 20 q/s) is unlucky once.
    noisy = iter([0.97])
    seen: list[float] = []

    def measure(rate: float) -> dict:
        seen.append(rate)
        if len(seen) == 2:  # the window after the baseline
            return {"qps": rate, "in_time": next(noisy)}
        return {"qps": rate, "in_time": 1.0 if rate <= 100.0 else 0.5}

    result = trace.capacity(measure, repeats=5, start_qps=20.0, target=0.99)
    assert seen[1] == seen[2] == 20.0  # measured again at the same rate, not lower
    assert 100.0 / trace.STAIR_STEP < result["capacity_qps"] <= 100.0


def test_each_calibration_window_starts_from_the_deployment_the_runs_start_from() -> None:
    """``start_state``: what an earlier window loaded is unloaded, the engine's learnt state is new, and the warm-up
    loads again what the runs start with (before, a variant an overloaded window loaded stayed for every later one,
    and the staircases measured whichever deployment the first overload left)."""
    from types import SimpleNamespace

    unloaded: list[tuple[str, str]] = []

    class Client:
        def __init__(self, worker: str) -> None:
            self.worker = worker

        def unload(self, key: str) -> bool:
            unloaded.append((self.worker, key))
            return True

    instances = [SimpleNamespace(worker_id="w1", variant_key="m/a"), SimpleNamespace(worker_id="w2", variant_key="m/b")]
    old_calibration, old_fair_share = object(), object()
    engine = SimpleNamespace(
        live=SimpleNamespace(instances=lambda: list(instances)),
        workers=SimpleNamespace(get=lambda worker: Client(worker)),
        calibration=old_calibration,
        fair_share=old_fair_share,
    )
    warmed: list[str] = []

    async def serve(arrival: Arrival, x: np.ndarray, deadline: float) -> tuple[str, float | None]:
        assert unloaded, "the warm-up runs after the unloads"
        warmed.append(arrival.cls.name)
        return "m/a", 1.0

    classes = [QueryClass("a", 0.5, 10.0, 0.0, 1), QueryClass("b", 0.5, 10.0, 0.0, 1)]
    trace.start_state(SimpleNamespace(engine=engine), serve, classes, np.zeros((4, 1), np.float32))
    assert unloaded == [("w1", "m/a"), ("w2", "m/b")]
    assert engine.calibration is not old_calibration and engine.fair_share is not old_fair_share
    assert sorted(set(warmed)) == ["a", "b"]


def test_one_stalled_window_after_a_pass_does_not_end_the_staircase() -> None:
    """A failing window is measured again at its rate; only a second failure ends the staircase (one stall of a busy
    host fails a window at any load: session 8's staircases ended at 25.8-36 q/s, and the 1.5x trace at 47 q/s then
    missed nothing). Fails with a staircase that ends at its first failure after a pass."""
    stalls = iter([0.95])

    def measure(rate: float) -> dict:
        if 100.0 < rate <= 400.0:
            return {"qps": rate, "queries": 500, "in_time": next(stalls, 1.0)}
        return {"qps": rate, "queries": 500, "in_time": 1.0 if rate <= 400.0 else 0.5}

    result = trace.capacity(measure, repeats=5, start_qps=20.0, target=0.99)
    assert 400.0 / trace.STAIR_STEP < result["capacity_qps"] <= 400.0
    assert len(result["baseline_windows"]) == trace.BASELINE_WINDOWS


def test_the_bar_is_the_median_of_the_baseline_windows() -> None:
    """One lucky low-load window no longer sets a 99% bar that the host's jitter fails at every rate."""
    shares = iter([1.0, 0.97, 0.975])

    def measure(rate: float) -> dict:
        if rate == 20.0:
            return {"qps": rate, "queries": 500, "in_time": next(shares, 0.975)}
        return {"qps": rate, "queries": 500, "in_time": 0.975 if rate <= 200.0 else 0.8}

    result = trace.capacity(measure, repeats=5, start_qps=20.0, target=0.99)
    assert result["in_time_bar"] == pytest.approx(0.965)
    assert 200.0 / trace.STAIR_STEP < result["capacity_qps"] <= 200.0
