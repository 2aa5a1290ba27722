"""A planned pipeline stage's batch cap (issue 17, point 4) set on a worker's instance, in-process and over HTTP:
the worker batches no more rows per session run than the plan says."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from infaas.live_state import MemoryLiveState
from infaas.model_store import LocalModelStore
from infaas.runtime import open_session
from infaas.worker import LocalWorker
from infaas.worker.remote import RemoteWorkerClient
from tests.factories import profiles, variant_info, write_mlp
from tests.worker_app import served_worker


class _Slow:
    """A real session whose runs take 30 ms more: concurrent queries queue, so batches form."""

    def __init__(self, session: Any) -> None:
        self._session = session

    def __getattr__(self, name: str) -> Any:
        return getattr(self._session, name)

    def run(self, names: Any, feeds: Any) -> Any:
        time.sleep(0.03)
        return self._session.run(names, feeds)


def _batches(worker: LocalWorker, variant: Any, queries: int = 24) -> list[int]:
    x = np.zeros((1, 8), dtype=np.float32)
    out: list[int] = []
    lock = threading.Lock()

    def one() -> None:
        result = worker.infer(variant, {"x": x}, time.monotonic() + 30)
        with lock:
            out.append(result.batch)

    threads = [threading.Thread(target=one) for _ in range(queries)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out


def test_set_max_batch_caps_the_rows_an_instance_runs_together(tmp_path: Path) -> None:
    store = LocalModelStore(tmp_path / "store")
    store.put_file("m/mlp.onnx", write_mlp(tmp_path / "mlp.onnx"))
    variant = variant_info("m", "fp32", profiles({1: 30.0, 4: 31.0, 16: 33.0}), artifact_key="m/mlp.onnx")
    worker = LocalWorker(
        "w",
        store,
        MemoryLiveState(),
        memory_budget_mb=100,
        cores=2,
        opener=lambda *a, **k: _Slow(open_session(*a, **k)),
    )
    assert worker.set_max_batch("m/fp32", 2) == 0  # not loaded
    worker.load(variant)
    assert worker.status().instances[0].max_batch == 16  # uncapped: its best profiled batch
    assert max(_batches(worker, variant)) > 2  # the queries do queue and batch
    assert worker.set_max_batch("m/fp32", 2) == 2
    capped = _batches(worker, variant)
    assert len(capped) == 24 and max(capped) == 2
    worker.stop()


def test_set_max_batch_over_http(tmp_path: Path) -> None:
    store = LocalModelStore(tmp_path / "store")
    store.put_file("m/mlp.onnx", write_mlp(tmp_path / "mlp.onnx"))
    variant = variant_info("m", "fp32", profiles({1: 5.0, 4: 6.0, 16: 8.0}), artifact_key="m/mlp.onnx")
    with served_worker(store, MemoryLiveState(), memory_budget_mb=100) as url:
        client = RemoteWorkerClient("w", url)
        assert client.set_max_batch("m/fp32", 2) == 0
        client.load(variant)
        assert client.status().instances[0].max_batch == 16
        assert client.set_max_batch("m/fp32", 4) == 4
        assert client.status().instances[0].max_batch == 4
