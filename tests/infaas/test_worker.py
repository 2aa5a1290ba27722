"""Worker and instance: outputs equal raw ONNX Runtime, adaptive batching, slack flush, memory budget."""

from __future__ import annotations

import threading
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from infaas.catalog import VariantInfo
from infaas.live_state import MemoryLiveState
from infaas.model_store import LocalModelStore
from infaas.runtime import warm_up
from infaas.selector import ProfileCurve
from infaas.worker import Instance, LocalWorker, OutOfMemory
from tests.factories import GatedSession, linear_model, profiles, queue_behind_gate, variant_info


def variant(name: str, artifact_key: str, memory_mb: float = 10.0) -> VariantInfo:
    """A ready variant of the tiny model, profiled at batch 1 and 4."""
    return variant_info("tiny", name, profiles({1: 1.0, 4: 2.0}, memory_mb=memory_mb), artifact_key=artifact_key)


@pytest.fixture()
def raw_session() -> ort.InferenceSession:
    return ort.InferenceSession(linear_model(), providers=["CPUExecutionProvider"])


def _curve(latencies: dict[int, float]) -> ProfileCurve:
    return ProfileCurve.of(replace(variant("v", "k"), profiles=profiles(latencies)))


def test_batching_gathers_concurrent_requests_up_to_best_batch(raw_session: ort.InferenceSession) -> None:
    gated = GatedSession(raw_session)
    # Best throughput at batch 4: 4 rows / 2 ms beats 1 / 1 ms and 8 / 8 ms.
    instance = Instance("tiny/v", lambda: gated, _curve({1: 1.0, 4: 2.0, 8: 8.0}))
    assert instance.max_batch == 4
    rng = np.random.default_rng(1)
    first_x = rng.standard_normal((1, 4)).astype(np.float32)
    xs = [rng.standard_normal((2 if i == 1 else 1, 4)).astype(np.float32) for i in range(6)]
    results: dict[int, object] = {}
    threads = queue_behind_gate(
        instance,
        gated,
        lambda: results.setdefault(-1, instance.infer({"x": first_x})),
        [lambda i=i: results.setdefault(i, instance.infer({"x": xs[i]})) for i in range(6)],
    )
    assert instance.outstanding == 7
    gated.release(threads)
    # 7 queued rows (one request has 2): first run takes 4 rows (requests 0,1,2), the rest follow.
    assert gated.batches[0] == 1
    assert gated.batches[1] == 4
    assert sum(gated.batches[1:]) == 7
    for i, x in enumerate(xs):
        expected = raw_session.run(None, {"x": x})[0]
        np.testing.assert_allclose(results[i].outputs["y"], expected, rtol=1e-6)  # type: ignore[attr-defined]
    assert results[0].batch == 4 and results[0].queue_ms > 0  # type: ignore[attr-defined]
    assert instance.outstanding == 0
    instance.close()


def test_batch_dependent_variants_never_share_a_run(raw_session: ort.InferenceSession) -> None:
    gated = GatedSession(raw_session)
    instance = Instance("tiny/v", lambda: gated, _curve({1: 1.0, 4: 2.0}), batch_invariant=False)
    assert instance.max_batch == 1
    x = np.ones((1, 4), np.float32)
    gated.release(
        queue_behind_gate(instance, gated, lambda: instance.infer({"x": x}), [lambda: instance.infer({"x": x})] * 3)
    )
    assert gated.batches == [1, 1, 1, 1]  # three requests were waiting together, yet each ran alone
    instance.close()


def test_variants_profiled_batch_dependent_are_served_batch_independently(store: LocalModelStore) -> None:
    """The profile, not the kind, says so (the profiler measures it: dynamic INT8 is batch-dependent)."""
    worker = LocalWorker("w1", store, MemoryLiveState(), memory_budget_mb=100, cores=2)
    worker.start()
    base = variant("v", "models/tiny/v/model.onnx")
    dynamic = replace(base, profiles=tuple(replace(p, batch_invariant=False) for p in base.profiles))
    assert not worker._load(dynamic).batchable
    assert worker._load(variant("w", "models/tiny/v/model.onnx")).batchable
    worker.stop()


def _queued_behind_blocker(instance: Instance, gated: GatedSession, deadline: float | None) -> object:
    """Occupy the only replica, queue one request, release, and return the queued request's result."""
    x = np.ones((1, 4), np.float32)
    out: list[object] = []
    queued = [lambda: out.append(instance.infer({"x": x}, deadline))]
    gated.release(queue_behind_gate(instance, gated, lambda: instance.infer({"x": x}), queued))
    return out[0]


# Best throughput at batch 8 (100/s), so a lone queued request waits for company: at most one
# best-batch service time (80 ms), less when its deadline's slack runs out first.
SLOW_TO_FILL = {1: 20.0, 2: 25.0, 8: 80.0}


def test_slack_bound_flush_waits_for_more_but_meets_the_deadline(raw_session: ort.InferenceSession) -> None:
    gated = GatedSession(raw_session)
    instance = Instance("tiny/v", lambda: gated, _curve(SLOW_TO_FILL))
    assert instance.max_batch == 8
    deadline = time.monotonic() + 0.08
    result = _queued_behind_blocker(instance, gated, deadline)
    # Flushed when slack ran out: deadline − 25 ms estimated service ≈ 55 ms after queueing, not 80.
    assert 30 < result.queue_ms < 75  # type: ignore[attr-defined]
    assert time.monotonic() < deadline + 0.05
    assert result.batch == 1  # type: ignore[attr-defined]
    instance.close()


def test_without_deadline_the_wait_is_capped_at_one_batch_service_time(raw_session: ort.InferenceSession) -> None:
    gated = GatedSession(raw_session)
    instance = Instance("tiny/v", lambda: gated, _curve(SLOW_TO_FILL))
    result = _queued_behind_blocker(instance, gated, None)
    assert 70 < result.queue_ms < 200  # type: ignore[attr-defined]
    instance.close()


def test_idle_instance_runs_on_the_callers_thread(raw_session: ort.InferenceSession) -> None:
    seen: list[str] = []

    class Recording(GatedSession):
        def run(self, names, feeds):  # type: ignore[no-untyped-def]
            seen.append(threading.current_thread().name)
            return self.session.run(names, feeds)

    instance = Instance("tiny/v", lambda: Recording(raw_session), _curve({1: 1.0}))
    result = instance.infer({"x": np.zeros((3, 4), np.float32)})
    assert seen == [threading.current_thread().name]
    assert result.queue_ms == 0 and result.batch == 3
    instance.close()


@pytest.fixture()
def store(tmp_path: Path) -> LocalModelStore:
    store = LocalModelStore(tmp_path / "models")
    store.put_bytes("models/tiny/v/model.onnx", linear_model())
    store.put_bytes("models/tiny/w/model.onnx", linear_model(seed=1))
    return store


def test_local_worker_outputs_equal_raw_session(store: LocalModelStore, raw_session: ort.InferenceSession) -> None:
    live = MemoryLiveState()
    worker = LocalWorker("w1", store, live, memory_budget_mb=100, cores=2, heartbeat_s=0.05)
    worker.start()
    try:
        x = np.random.default_rng(3).standard_normal((5, 4)).astype(np.float32)
        result = worker.infer(variant("v", "models/tiny/v/model.onnx"), {"x": x}, None)
        np.testing.assert_array_equal(result.outputs["y"], raw_session.run(None, {"x": x})[0])
        assert [i.variant_key for i in live.instances("w1")] == ["tiny/v"]
        assert live.snapshot().depth("w1", "tiny/v") == 0
        time.sleep(0.12)
        assert live.workers()[0].memory_used_mb == 10.0
    finally:
        worker.stop()
    assert live.workers() == []


def test_memory_budget_evicts_least_recently_used_idle_instance(store: LocalModelStore) -> None:
    live = MemoryLiveState()
    worker = LocalWorker("w1", store, live, memory_budget_mb=100, cores=2)
    worker.start()
    a = variant("v", "models/tiny/v/model.onnx", memory_mb=60)
    b = variant("w", "models/tiny/w/model.onnx", memory_mb=60)
    x = np.zeros((1, 4), np.float32)
    worker.infer(a, {"x": x}, None)
    worker.infer(b, {"x": x}, None)
    assert [i.variant_key for i in worker.status().instances] == ["tiny/w"]
    assert [i.variant_key for i in live.instances()] == ["tiny/w"]
    with pytest.raises(OutOfMemory):
        worker.load(variant("big", "models/tiny/v/model.onnx", memory_mb=150))
    # Replicas count against the budget too.
    with pytest.raises(OutOfMemory):
        worker.add_replica(b)
    worker.stop()


def test_busy_instances_are_not_evicted(store: LocalModelStore) -> None:
    worker = LocalWorker("w1", store, MemoryLiveState(), memory_budget_mb=100, cores=2)
    a = variant("v", "models/tiny/v/model.onnx", memory_mb=60)
    worker.load(a)
    worker._instances["tiny/v"]._outstanding = 1  # as if a request were running
    with pytest.raises(OutOfMemory, match="nothing idle"):
        worker.load(variant("w", "models/tiny/w/model.onnx", memory_mb=60))
    worker._instances["tiny/v"]._outstanding = 0
    worker.stop()


def test_replicas_are_reported(store: LocalModelStore) -> None:
    live = MemoryLiveState()
    worker = LocalWorker("w1", store, live, memory_budget_mb=100, cores=2)
    worker.start()
    a = variant("v", "models/tiny/v/model.onnx", memory_mb=20)
    assert worker.add_replica(a) == 2
    assert live.instances("w1")[0].replicas == 2
    assert worker.status().memory_used_mb == 40
    assert worker.remove_replica("tiny/v") == 1
    assert worker.remove_replica("tiny/v") == 1  # never the last
    assert live.instances("w1")[0].replicas == 1
    assert worker.unload("tiny/v") and not worker.unload("tiny/v")
    worker.stop()


def test_try_run_now_never_waits(raw_session: ort.InferenceSession) -> None:
    gated = GatedSession(raw_session)
    instance = Instance("tiny/v", lambda: gated, _curve({1: 1.0}))
    x = np.ones((1, 4), np.float32)
    threads = queue_behind_gate(instance, gated, lambda: instance.infer({"x": x}), [])
    assert instance.try_run_now({"x": x}) is None  # busy: nothing queued, nothing run
    assert instance.outstanding == 1
    gated.release(threads)
    result = instance.try_run_now({"x": x})
    assert result is not None and result.queue_ms == 0
    np.testing.assert_array_equal(result.outputs["y"], raw_session.run(None, {"x": x})[0])
    instance.close()


class RejectingSession:
    """Stands in for a model whose graph refuses all-zero inputs."""

    def get_inputs(self):  # type: ignore[no-untyped-def]
        return ort.InferenceSession(linear_model(), providers=["CPUExecutionProvider"]).get_inputs()

    def run(self, names, feeds):  # type: ignore[no-untyped-def]
        raise RuntimeError("zeros are not a valid input for this model")


def test_warm_up_runs_zeros_through_symbolic_dimensions_and_tolerates_refusal(
    raw_session: ort.InferenceSession,
) -> None:
    seen: list[dict[str, np.ndarray]] = []

    class Recording:
        def get_inputs(self):  # type: ignore[no-untyped-def]
            return raw_session.get_inputs()

        def run(self, names, feeds):  # type: ignore[no-untyped-def]
            seen.append(feeds)
            return raw_session.run(names, feeds)

    assert warm_up(Recording())  # type: ignore[arg-type]
    assert [(k, v.shape, v.dtype) for k, v in seen[0].items()] == [("x", (1, 4), np.float32)]
    assert not warm_up(RejectingSession())  # type: ignore[arg-type]


def test_every_replica_is_warmed_before_it_serves(store: LocalModelStore, monkeypatch: pytest.MonkeyPatch) -> None:
    from infaas import runtime

    warmed: list[ort.InferenceSession] = []
    monkeypatch.setattr(runtime, "warm_up", lambda session, shapes=None: warmed.append(session) or True)
    worker = LocalWorker("w1", store, MemoryLiveState(), memory_budget_mb=100, cores=2)
    worker.start()
    a = variant("v", "models/tiny/v/model.onnx", memory_mb=20)
    worker.load(a)
    assert len(warmed) == 1
    worker.add_replica(a)
    assert len(warmed) == 2 and warmed[0] is not warmed[1]
    worker.stop()
