"""A worker whose CPU quota is below its advertised cores (a ``docker run --cpus 0.5`` container advertising one
core) is judged by both levels against the CPU it really has, so the VM level adds a worker when such workers are
full. In the docker trace of session 7 the VM level read its 0.5-CPU containers against their profiles on the
unlimited host, saw them at 7-41% while they refused queries, and never added one."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from autoscaler import Autoscaler, model_level, vm_level
from autoscaler.policy_types import ClusterView, History, InstanceLoad, WorkerLoad
from infaas.config import Settings
from infaas.live_state import InstanceState, WorkerState
from infaas.services import Services, build_services
from tests.autoscaler.test_autoscaler_view import KEY, MODEL, loads, record
from tests.autoscaler.test_vm_level_sizing import CFG, OPTION  # 100 rows/s per one-core replica, no quota
from tests.factories import mlp_model, profiles, seed_model


def one_container(rate: float, share: float, now: float) -> ClusterView:
    """One one-core worker serving ``rate`` rows/s of the variant with one replica, at ``share`` of a core."""
    inst = InstanceLoad("w0", "m/v", 1, 0, rate, 12.0, 0.0, 0.0, cpu_share=share)
    return ClusterView(now, (WorkerLoad("w0", 1, 1000.0, 10.0, (inst,)),), {"m/v": OPTION}, max_workers=3)


def vm_actions(share: float, rate: float, periods: int = 3) -> list[str]:
    history, actions = History(), []
    for n in range(periods):
        plan = vm_level.decide(one_container(rate, share, 100.0 + 10.0 * n), history, CFG)
        history = plan.history
        actions += [a.action for a in plan.actions]
    return actions


def test_a_container_at_its_quota_is_overloaded_and_the_vm_level_adds_one() -> None:
    # 45 rows/s is 90% of what a replica serves on half a core, 45% of its profile on a whole one.
    assert vm_actions(share=0.5, rate=45.0) == ["add_worker"]
    assert vm_actions(share=1.0, rate=45.0) == []
    view = one_container(45.0, 0.5, 100.0)
    assert vm_level.busy_cores(view, view.workers[0], {}) == pytest.approx(0.9)


def test_the_model_level_reads_a_replica_on_half_a_core_at_half_its_profile() -> None:
    view = one_container(45.0, 0.5, 100.0)
    inst = view.workers[0].instances[0]
    assert inst.capacity(OPTION) == 50.0
    history, ups = History(), []
    for n in range(CFG.up_periods + 1):
        plan = model_level.decide(ClusterView(**{**view.__dict__, "now": 100.0 + n}), history, CFG)
        history = plan.history
        ups += [a.action for a in plan.actions if a.action in model_level.UP_ACTIONS] + list(plan.unmet)
    assert ups  # a replica more, or demand that fits nowhere (the worker's one core is held): either way, more
    whole = one_container(45.0, 1.0, 100.0)
    history, ups = History(), []
    for n in range(CFG.up_periods + 1):
        plan = model_level.decide(ClusterView(**{**whole.__dict__, "now": 100.0 + n}), history, CFG)
        history = plan.history
        ups += [a.action for a in plan.actions if a.action in model_level.UP_ACTIONS] + list(plan.unmet)
    assert ups == []


def test_a_quota_above_the_cores_counts_no_more_than_whole_cores() -> None:
    assert WorkerState("w", "x", cores=1, memory_budget_mb=1.0, cpus=0.5).cpu_share == 0.5
    assert WorkerState("w", "x", cores=2, memory_budget_mb=1.0, cpus=1.5).cpu_share == 0.75
    assert WorkerState("w", "x", cores=1, memory_budget_mb=1.0, cpus=4.0).cpu_share == 1.0
    assert WorkerState("w", "x", cores=2, memory_budget_mb=1.0).cpu_share == 1.0  # no quota


@pytest.fixture
def services(tmp_path: Path) -> Iterator[Services]:
    settings = Settings(
        home=tmp_path / "home", build_variants=False, autoscaler="dry-run", in_process_worker=False, worker_cores=1
    )
    built = build_services(settings, with_jobs=False)
    variants = {"fp32-t1": profiles({1: 20.0, 4: 40.0}, p99_factor=1.2, memory_mb=50.0)}  # 100 rows/s at batch 4
    seed_model(built, MODEL, mlp_model().SerializeToString(), task="classify", public=True, variants=variants)
    built.live.register_worker(
        WorkerState(id="wa", address="http://127.0.0.1:1", cores=1, memory_budget_mb=500, cpus=0.5)
    )
    built.live.register_worker(WorkerState(id="wb", address="http://127.0.0.1:2", cores=1, memory_budget_mb=500))
    for worker in ("wa", "wb"):
        built.live.set_instance(InstanceState(worker, KEY, 1, 50.0))
    yield built
    built.close()


def test_the_loop_passes_each_workers_quota_to_its_instances(services: Services) -> None:
    record(services, "wa", 25.0, 200)
    record(services, "wb", 25.0, 200)
    observed = loads(Autoscaler(services, stats_window_s=5.0).view())
    assert observed["wa"].cpu_share == 0.5 and observed["wb"].cpu_share == 1.0
