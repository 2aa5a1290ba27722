"""GPU variants are served once a GPU worker is live, and never without one, end to end through the query engine.

No GPU here: the GPU worker advertises an injected hardware report and opens its sessions on the CPU (its
opener records what it was asked to open, and on which device), so what is tested is the path from a
worker's advertised hardware through selection and placement to the pinned session.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from infaas.cuda import CudaDevice
from infaas.db.models import VariantStatus
from infaas.engine import Query
from infaas.hardware import HardwareReport, advertise
from infaas.runtime import CPU_PROVIDERS, Session, Shapes, open_session
from infaas.selector import Requirements
from infaas.services import Services
from infaas.worker import LocalWorker
from tests.factories import artifact_key_of, linear_model, profiles, reference_outputs, seed_model
from variant_generator.cuda import CUDA_PROVIDERS

BUDGET_MS = 10.0  # met by the GPU variant's profile (p50 0.5 ms) and by no CPU profile (p50 40 ms)
X = np.ones((2, 4), np.float32)


class CpuStandIn:
    """Opens every variant on the CPU, recording the providers and device it was asked for."""

    def __init__(self) -> None:
        self.opened: list[tuple[tuple[str, ...], int | None]] = []

    def __call__(
        self,
        path: Path,
        providers: Sequence[str],
        threads: int,
        device: int | None = None,
        shapes: Shapes | None = None,
    ) -> Session:
        self.opened.append((tuple(providers), device))
        return open_session(path, CPU_PROVIDERS, threads, shapes=shapes)


@pytest.fixture
def lin(services: Services) -> bytes:
    """Model ``lin`` with a CPU variant too slow for the budget and a CUDA variant well inside it."""
    model = linear_model()
    seed_model(services, "lin", model, task="t", variants={"fp32": profiles({1: 40.0, 8: 60.0})})
    services.metadata.upsert_variant(
        "lin",
        "cuda-fp32",
        kind="cuda-fp32",
        precision="fp32",
        hardware="gpu",
        threads=1,
        providers=list(CUDA_PROVIDERS),
        status=VariantStatus.READY,
        artifact_key=artifact_key_of("lin"),
    )
    services.metadata.replace_profiles("lin", "cuda-fp32", profiles({1: 0.5, 8: 1.0}))
    services.start_serving()  # the in-process worker: this host has no GPU, so it advertises cpu only
    return model


@pytest.fixture
def gpu_worker(services: Services, lin: bytes) -> Iterator[tuple[LocalWorker, CpuStandIn]]:
    """A live worker whose (injected) host has onnxruntime-gpu and two GPUs, pinned to GPU 1."""
    devices = (CudaDevice(0, "Fake GPU", 16000.0), CudaDevice(1, "Fake GPU", 16000.0))
    report = HardwareReport(tuple(CUDA_PROVIDERS), devices, tensorrt=False, pinned=1)
    opener = CpuStandIn()
    worker = LocalWorker(
        "gpu-0",
        services.store,
        services.live,
        memory_budget_mb=1000,
        cores=1,
        hardware=advertise(report),
        opener=opener,
    )
    services.engine.workers.add(worker)
    worker.start()
    yield worker, opener
    services.engine.workers.remove(worker.id)
    worker.stop()


def _ask(services: Services, latency_ms: float | None = BUDGET_MS):  # type: ignore[no-untyped-def]
    return services.engine.infer(Query(Requirements(model="lin", latency_ms=latency_ms), {"x": X.tolist()}))


def test_without_a_gpu_worker_the_gpu_variant_is_never_chosen(services: Services, lin: bytes) -> None:
    assert [w.hardware for w in services.live.workers()] == [("cpu",)]
    first = _ask(services)
    assert (first.served_by.variant, first.served_by.worker) == ("fp32", "local")
    assert first.served_by.slo_at_risk  # best effort: by the profiles, only the GPU variant meets 10 ms
    for latency_ms in (BUDGET_MS, 0.1, None):
        answer = _ask(services, latency_ms)
        assert (answer.served_by.variant, answer.served_by.worker) == ("fp32", "local")
    assert [i.variant_key for i in services.live.instances()] == ["lin/fp32"]


def test_a_query_only_the_gpu_variant_meets_is_served_by_it_on_the_gpu_worker(
    services: Services, lin: bytes, gpu_worker: tuple[LocalWorker, CpuStandIn]
) -> None:
    worker, opener = gpu_worker
    (state,) = [w for w in services.live.workers() if w.id == "gpu-0"]
    assert state.hardware == ("cpu", "gpu") and state.device == "cuda:1 Fake GPU (16000 MB)"

    answer = _ask(services)
    assert (answer.served_by.variant, answer.served_by.worker) == ("cuda-fp32", "gpu-0")
    assert not answer.served_by.slo_at_risk
    np.testing.assert_allclose(answer.outputs["y"], reference_outputs(lin, X), rtol=1e-6)
    # Opened as the catalog describes it (the CUDA provider first), on the pinned device.
    assert opener.opened == [(CUDA_PROVIDERS, 1)]
    # The CPU-only worker never holds the GPU variant.
    assert {(i.worker_id, i.variant_key) for i in services.live.instances()} == {("gpu-0", "lin/cuda-fp32")}

    worker.stop()  # the GPU worker leaves: the GPU variant is not chosen any more
    services.engine.workers.remove(worker.id)
    assert (_ask(services).served_by.variant, _ask(services).served_by.worker) == ("fp32", "local")


def test_admins_see_each_workers_gpu_in_stats_and_the_console(
    client: TestClient, services: Services, lin: bytes, gpu_worker: tuple[LocalWorker, CpuStandIn]
) -> None:
    workers = {w["id"]: w for w in client.get("/v1/stats").json()["workers"]}  # the local principal is an admin
    assert workers["gpu-0"]["hardware"] == ["cpu", "gpu"] and workers["gpu-0"]["device_memory_mb"] == 16000.0
    assert workers["gpu-0"]["device"] == "cuda:1 Fake GPU (16000 MB)" and workers["local"]["device"] == ""
    page = client.get("/console/workers")
    assert page.status_code == 200 and "<dt>GPU</dt><dd>cuda:1 Fake GPU (16000 MB)</dd>" in page.text
