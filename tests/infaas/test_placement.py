"""Placement under memory pressure: a load that does not fit moves the query on, in process and over HTTP."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from infaas.engine import Query
from infaas.live_state import MemoryLiveState, WorkerState
from infaas.model_store import LocalModelStore
from infaas.selector import NoWorkerAvailable, Requirements
from infaas.services import Services
from infaas.worker import LocalWorker, OutOfMemory
from infaas.worker.remote import RemoteWorkerClient
from tests.factories import linear_model, profiles, reference_outputs, seed_model, variant_info, write_mlp
from tests.worker_app import served_worker

VARIANT_MB = 10.0  # the profiled memory of every variant below


def _stale_small_worker(services: Services, worker_id: str) -> LocalWorker:
    """An in-process worker with room for nothing (5 MB), while live state still shows it empty with 1 TB:
    what a front-end sees when another front-end's load landed there after its last snapshot."""
    small = LocalWorker(worker_id, services.store, services.live, memory_budget_mb=5.0, cores=1)
    services.engine.workers.add(small)
    services.live.register_worker(
        WorkerState(id=worker_id, address="local", cores=1, memory_budget_mb=1e6, heartbeat_at=time.time())
    )
    return small


def test_a_load_out_of_memory_moves_the_query_to_the_next_worker(
    services: Services, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="infaas.engine")
    model = linear_model()
    measured = profiles({1: 0.05, 8: 0.1}, memory_mb=VARIANT_MB)
    seed_model(services, "lin", model, task="t", variants={"fp32": measured})
    services.start_serving()
    _stale_small_worker(services, "small")
    x = np.ones((2, 4), np.float32)
    answer = services.engine.infer(Query(Requirements(model="lin"), {"x": x.tolist()}))
    # Chosen first for its (reported) free memory, "small" failed the load; the local worker served.
    assert "lin/fp32 on small: needs 10 MB, budget is 5 MB; trying the next placement" in caplog.text
    assert answer.served_by.worker == "local" and not answer.served_by.slo_at_risk
    np.testing.assert_allclose(answer.outputs["y"], reference_outputs(model, x), rtol=1e-6)
    assert services.live.instances("small") == [] and [i.variant_key for i in services.live.instances("local")] == [
        "lin/fp32"
    ]
    (record,) = services.live.recent_queries(10)
    assert record.worker == "local"


def test_the_query_fails_only_when_no_worker_has_room(services: Services) -> None:
    seed_model(services, "lin", linear_model(), task="t", variants={"fp32": profiles({1: 0.05}, memory_mb=VARIANT_MB)})
    services.start_serving()
    local = services.engine.workers.local
    assert local is not None
    services.engine.workers.remove(local.id)  # only the two stale small workers remain reachable
    local.stop()
    _stale_small_worker(services, "small-1")
    _stale_small_worker(services, "small-2")
    with pytest.raises(NoWorkerAvailable, match="needs 10 MB, budget is 5 MB") as excinfo:
        services.engine.infer(Query(Requirements(model="lin"), {"x": [[0.0] * 4]}))
    assert excinfo.value.headers == {"Retry-After": "1"}
    assert services.live.recent_queries(10) == [] and services.live.instances() == []


@pytest.fixture
def small_worker_url(tmp_path: Path) -> Iterator[tuple[str, LocalModelStore]]:
    """An ``infaas worker`` app over HTTP whose 5 MB budget fits no variant here."""
    store = LocalModelStore(tmp_path / "store")
    with served_worker(store, MemoryLiveState(), memory_budget_mb=5.0) as url:
        yield url, store


def test_a_remote_worker_reports_out_of_memory_as_such(
    small_worker_url: tuple[str, LocalModelStore], tmp_path: Path
) -> None:
    url, store = small_worker_url
    store.put_file("m/mlp.onnx", write_mlp(tmp_path / "mlp.onnx"))
    variant = variant_info("m", "fp32", profiles({1: 0.1}, memory_mb=VARIANT_MB), artifact_key="m/mlp.onnx")
    client = RemoteWorkerClient("w", url)
    try:
        with pytest.raises(OutOfMemory, match="needs 10 MB, budget is 5 MB"):
            client.infer(variant, {"x": np.zeros((1, 8), np.float32)}, None)
        with pytest.raises(OutOfMemory, match="needs 10 MB"):
            client.load(variant)
    finally:
        client.close()
