"""What the control loop observes: per-instance statistics from live state, and queries that were infeasible
when selected kept apart from the misses capacity fixes. Real catalog and live state, hand-made records; the
policies then decide from the view, so a wrong observation shows up as a wrong action."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from autoscaler import Autoscaler, model_level
from autoscaler.policy_types import ClusterView, History, InstanceLoad, PolicyConfig
from infaas.config import Settings
from infaas.live_state import InstanceState, QueryRecord, WorkerState
from infaas.services import Services, build_services
from tests.factories import mlp_model, profiles, seed_model

MODEL = "m"
KEY = f"{MODEL}/fp32-t1"
CFG = PolicyConfig()


@pytest.fixture
def services(tmp_path: Path) -> Iterator[Services]:
    settings = Settings(
        home=tmp_path / "home", build_variants=False, autoscaler="dry-run", in_process_worker=False, worker_cores=2
    )
    built = build_services(settings, with_jobs=False)
    # One replica: 20 ms at batch 1 (50/s), 40 ms at batch 4 (100/s, within half a 100 ms budget).
    variants = {"fp32-t1": profiles({1: 20.0, 4: 40.0}, p99_factor=1.2, memory_mb=50.0)}
    seed_model(built, MODEL, mlp_model().SerializeToString(), task="classify", public=True, variants=variants)
    for worker in ("wa", "wb"):
        built.live.register_worker(WorkerState(id=worker, address="http://127.0.0.1:1", cores=2, memory_budget_mb=500))
        built.live.set_instance(InstanceState(worker, KEY, 1, 50.0))
    yield built
    built.close()


def record(
    services: Services, worker: str, actual_ms: float, count: int, infeasible: bool = False, min_fidelity: float = 0.0
) -> None:
    """``count`` queries with a 100 ms budget served on ``worker`` in ``actual_ms``, evenly over the last 4.5 s (the
    windowed rate and the last second's rate, which scaling up also reads, nearly agree; the 0.5 s margin keeps every
    record inside the 5 s window when the host stalls between recording and reading: a 4.9 s spread read 38.8/s)."""
    now = time.time()
    for n in range(count):
        services.live.record_query(
            QueryRecord(
                at=now - n * 4.5 / max(count, 1),
                tenant="t",
                model=MODEL,
                variant="fp32-t1",
                worker=worker,
                batch=1,
                latency_ms=100.0,
                min_accuracy=0.0,
                max_cost=None,
                estimated_ms=24.0,
                actual_ms=actual_ms,
                queue_ms=0.0,
                cost=1e-9,
                slo_at_risk=infeasible,
                reason="r",
                infeasible=infeasible,
                min_fidelity=min_fidelity,
            )  # fmt: skip
        )


def loads(view: ClusterView) -> dict[str, InstanceLoad]:
    return {i.worker_id: i for w in view.workers for i in w.instances}


def scale_ups(scaler: Autoscaler, periods: int) -> list[str]:
    """The targets the model level scales up over ``periods`` periods of the same observed load."""
    history, targets = History(), []
    view = scaler.view()
    for n in range(periods):
        plan = model_level.decide(ClusterView(**{**view.__dict__, "now": 100.0 + n}), history, CFG)
        history = plan.history
        targets += [a.target for a in plan.actions if a.action in model_level.UP_ACTIONS]
    return targets


def test_one_slow_worker_scales_only_its_own_instance(services: Services) -> None:
    record(services, "wa", 25.0, 200)  # 40/s each over the 5 s window: 0.4 of one replica's 100/s
    record(services, "wb", 300.0, 200)  # same rate, but every query misses on this worker
    scaler = Autoscaler(services, stats_window_s=5.0)
    observed = loads(scaler.view())
    assert observed["wa"].p99_ms == pytest.approx(25.0) and observed["wa"].slo_miss_rate == 0.0
    assert observed["wb"].p99_ms == pytest.approx(300.0) and observed["wb"].slo_miss_rate == 1.0
    # Each instance's own 40/s (per-variant statistics would read 80/s on both). Within 10%: a stall of the host
    # between recording and reading drops the oldest records from the 5 s window (38.6/s read once in CI at nice 10).
    assert observed["wa"].rate_per_s == pytest.approx(40.0, rel=0.1)
    assert observed["wb"].rate_per_s == pytest.approx(40.0, rel=0.1)
    assert set(scale_ups(scaler, CFG.up_periods + 1)) == {f"wb/{KEY}"}


def test_infeasible_queries_do_not_add_replicas(services: Services) -> None:
    record(services, "wa", 300.0, 200, infeasible=True)  # misses no placement could avoid, at 0.4 utilization
    scaler = Autoscaler(services, stats_window_s=5.0)
    observed = loads(scaler.view())["wa"]
    assert observed.slo_miss_rate == 0.0 and observed.infeasible_rate == 1.0 and observed.rate_per_s > 0
    assert scale_ups(scaler, CFG.up_periods + 3) == []
    record(services, "wa", 300.0, 200)  # the same misses of feasible queries do
    assert scale_ups(scaler, CFG.up_periods + 1) == [f"wa/{KEY}"]


def test_the_strictest_recent_fidelity_floor_reaches_the_policies(services: Services) -> None:
    record(services, "wa", 25.0, 5, min_fidelity=0.97)
    record(services, "wa", 25.0, 5, min_fidelity=0.5)
    record(services, "wb", 25.0, 5)
    observed = loads(Autoscaler(services, stats_window_s=5.0).view())
    # Per variant, like the accuracy floor: the selector may send those queries to any of its instances.
    assert observed["wa"].fidelity_floor == 0.97 == observed["wb"].fidelity_floor
