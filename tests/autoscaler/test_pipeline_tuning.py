"""A stored pipeline plan carried out through the autoscaler, then resized by the tuner (issue 17, points 4 and 5),
in-process end to end: real QueryEngine, LocalWorker, ONNX Runtime and decisions table; the profiles are
hand-made so the plan needs batching and replicas on any machine."""

from __future__ import annotations

import io
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from autoscaler import Autoscaler, PolicyConfig
from autoscaler.pipeline_apply import PipelineScaler, spread_to
from autoscaler.policy_types import Action
from autoscaler.providers.inprocess import InProcessProvider
from infaas.config import Settings
from infaas.engine import Query
from infaas.pipelines.registry import plan_pipeline, register_pipeline
from infaas.pipelines.serving import serve_pipeline
from infaas.pipelines.spec import parse_spec
from infaas.selector import Requirements
from infaas.services import Services, build_services
from tests.factories import TASK, mlp_model, profiles, seed_model

RATE = 100.0  # planned arrivals per second


def _validation(rows: int = 400) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, x=np.random.default_rng(3).normal(size=(rows, 8)).astype(np.float32))
    return buffer.getvalue()


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[tuple[Services, Autoscaler]]:
    settings = Settings(
        home=tmp_path / "home",
        build_variants=False,
        autoscaler="on",
        idle_unload_s=0.0,  # the model level would unload any idle instance at once: it must leave planned ones
        worker_cores=64,
        worker_memory_mb=4000.0,
    )
    services = build_services(settings, with_jobs=False)
    # 10 ms alone, 14 ms for 4, 40 ms for 16: at 100/s one replica at batch 1 is saturated.
    curve = {1: 10.0, 4: 14.0, 16: 40.0}
    for name, seed in (("filter", 0), ("wide", 2)):
        seed_model(
            services,
            name,
            mlp_model(seed=seed).SerializeToString(),
            task=TASK,
            validation=_validation() if name == "filter" else None,
            variants={"cpu-fp32": profiles(curve, p99_factor=1.2), "cpu-slow": profiles({1: 30.0}, p99_factor=1.2)},
        )
    services.start_serving()
    scaler = Autoscaler(services, config=PolicyConfig(idle_unload_s=0.0, cooldown_s=0.0))
    yield services, scaler
    scaler.stop(stop_workers=False)
    services.close()


def _definition() -> dict[str, Any]:
    return {
        "name": "cascade",
        "p99_ms": 80,
        "inputs": [{"name": "image", "dtype": "float32", "shape": [-1, 8]}],
        "stages": [{"name": "f", "model": "filter"}, {"name": "w", "model": "wide"}],
        "edges": [
            {"from": "input.image", "to": "f.x"},
            {"from": "input.image", "to": "w.x"},
            {"from": "f.y", "to": "w", "when": {"class": 1, "above": 0.2}},
        ],
        "arrivals": {"rate_per_s": RATE, "burstiness": 1, "duration_s": 30},
    }


def _loaded(services: Services) -> dict[str, tuple[int, int]]:
    """variant key -> (replicas, batch cap) on the in-process worker."""
    local = services.engine.workers.local
    assert local is not None
    return {i.variant_key: (i.replicas, i.max_batch) for i in local.status().instances}


def test_the_plan_is_applied_kept_from_the_model_level_and_tuned_to_a_burst(
    cluster: tuple[Services, Autoscaler],
) -> None:
    services, scaler = cluster
    info, _spec = register_pipeline(services, _definition(), "local", lambda _m: True)
    plan = plan_pipeline(services, info, lambda _m: True).plan
    assert plan is not None and plan["feasible"]
    planned = {f"{s['model']}/{s['variant']}": (s["replicas"], s["batch"]) for s in plan["stages"].values()}
    assert set(planned) == {"filter/cpu-fp32", "wide/cpu-fp32"}  # the fast variants: the slow ones cannot keep up
    # Not what an instance does by itself (one replica, batches up to its best profiled batch, 16).
    assert any(replicas > 1 or batch != 16 for replicas, batch in planned.values()), planned

    assert scaler.lead()
    actions = scaler.step_model()
    assert sorted((a.action, a.target) for a in actions) == [("apply_plan", "cascade/f"), ("apply_plan", "cascade/w")]
    assert {k: v for k, v in _loaded(services).items() if k in planned} == planned
    recorded = services.metadata.list_decisions(level="pipeline")
    assert {d.target for d in recorded if d.action == "apply_plan"} == {"cascade/f", "cascade/w"}
    assert all(d.outcome and "replica(s)" in d.outcome for d in recorded)

    # A query is served by the planned variants, and its arrival is written to live state for the tuner.
    spec = parse_spec(info.spec)
    x = np.random.default_rng(1).normal(size=(8, 8)).astype(np.float32)
    answer = serve_pipeline(services.engine, spec, plan, {"image": x}, lambda _m: True, "local")
    assert {s["variant"] for s in answer.stages.values() if "variant" in s} == {"cpu-fp32"}
    assert len(services.live.pipeline_arrivals("cascade", time.time() - 60.0)) == 1

    # Idle instances, idle_unload_s 0: the model level would unload them; planned ones are not its to touch.
    for _ in range(2):
        assert not [a for a in scaler.step_model() if a.target.endswith("cpu-fp32")]
    assert {k: v for k, v in _loaded(services).items() if k in planned} == planned

    # A burst: 1,000 arrivals over the last second, 10x the planned rate, written as any front end writes them.
    now = time.time()
    for i in range(1000):
        services.live.record_pipeline_arrival("cascade", now - 1.0 + i / 1000.0)
    actions = scaler.step_model()
    ups = {a.target: a for a in actions if a.action == "tune_up"}
    assert set(ups) == {"cascade/f", "cascade/w"}
    for action in ups.values():
        assert action.count > planned[action.variant][0]
        assert action.inputs["exceeded_windows"] and action.inputs["rate_per_s"] > RATE
    loaded = _loaded(services)
    assert {k: loaded[k][0] for k in planned} == {a.variant: a.count for a in ups.values()}
    assert {k: loaded[k][1] for k in planned} == {k: b for k, (_r, b) in planned.items()}  # the batch cap stays
    tuned = [d for d in services.metadata.list_decisions(level="pipeline") if d.action == "tune_up"]
    assert len(tuned) == 2 and all("rate_per_s" in d.inputs and "scale_factor" in d.inputs for d in tuned)


def test_a_pinned_query_is_served_by_its_variant_while_it_is_ready(cluster: tuple[Services, Autoscaler]) -> None:
    services, _scaler = cluster
    x = np.zeros((1, 8), dtype=np.float32)
    engine = services.engine
    assert engine.infer(Query(Requirements(model="filter"), {"x": x})).served_by.variant == "cpu-fp32"
    pinned = Query(Requirements(model="filter"), {"x": x}, variants=frozenset({"filter/cpu-slow"}))
    assert engine.infer(pinned).served_by.variant == "cpu-slow"
    gone = Query(Requirements(model="filter"), {"x": x}, variants=frozenset({"filter/deleted"}))
    assert engine.infer(gone).served_by.variant == "cpu-fp32"  # not ready: the selector chooses as usual


def test_a_stage_s_replicas_are_spread_over_the_workers_with_room(cluster: tuple[Services, Autoscaler]) -> None:
    services, scaler = cluster
    provider = InProcessProvider(services.store, services.live, memory_budget_mb=4000.0, cores=64)
    services.engine.workers.add(provider.connect(provider.start_worker()))
    try:
        info, _spec = register_pipeline(services, _definition(), "local", lambda _m: True)
        plan = plan_pipeline(services, info, lambda _m: True).plan
        assert plan is not None and plan["feasible"]
        assert scaler.lead()
        scaler.step_model()
        now = time.time()
        for i in range(1000):  # 10x the planned rate: every stage is tuned up to several replicas
            services.live.record_pipeline_arrival("cascade", now - 1.0 + i / 1000.0)
        ups = {a.variant: a.count for a in scaler.step_model() if a.action == "tune_up"}
        assert ups and all(count >= 2 for count in ups.values()), ups
        for key, count in ups.items():
            per_worker = {i.worker_id: i.replicas for i in services.live.snapshot().instances.get(key, ())}
            assert set(per_worker) == {"local", "inproc-1"} and sum(per_worker.values()) == count, per_worker
            assert max(per_worker.values()) - min(per_worker.values()) <= 1, per_worker
        tuned = [d for d in services.metadata.list_decisions(level="pipeline") if d.action == "tune_up"]
        assert all("on local" in (d.outcome or "") and "on inproc-1" in (d.outcome or "") for d in tuned)

        # Down to one replica: taken off the worker holding the most, then one instance unloaded, one kept.
        key = next(iter(ups))
        model = services.metadata.get_model(key.split("/")[0])
        assert model is not None
        variant = next(v for v in model.variants if v.key == key)
        outcome = PipelineScaler(services).execute(Action("pipeline", "tune_down", "cascade/x", "test", {}), variant)
        (left,) = services.live.snapshot().instances.get(key, ())
        assert left.replicas == 1 and outcome.startswith(f"1 replica(s): 1 on {left.worker_id}"), outcome
    finally:
        provider.stop_worker("inproc-1")
        services.engine.workers.remove("inproc-1")


def test_spread_to_fills_the_worker_holding_the_fewest_with_room() -> None:
    free = {"a": 500.0, "b": 300.0, "c": 50.0}
    assert spread_to({}, free, 100.0) == "a"  # none held: the most free memory
    assert spread_to({"a": 1}, free, 100.0) == "b"
    assert spread_to({"a": 1, "b": 1}, free, 100.0) == "a"  # c has no room for one more
    assert spread_to({"a": 1, "b": 1}, {"a": 50.0, "b": 60.0}, 100.0) == "b"  # none has room: the most free
