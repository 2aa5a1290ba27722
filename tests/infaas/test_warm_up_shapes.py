"""Serving warm-up at the model's recorded input shape (``ModelInfo.input_shapes``), not 1x1.

``strided_concat_model`` stands in for a YOLO detector (NudeNet's 320n.onnx): ``images [batch, 3, height, width]``
whose ``Concat`` fails below 4x4. Fed 1x1, the warm-up failed quietly and ONNX Runtime logged the ``Concat``
error each time a session opened; at the recorded shape it runs and logs nothing.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace

import pytest

from infaas import runtime
from infaas.live_state import MemoryLiveState
from infaas.services import Services
from infaas.worker import LocalWorker
from infaas.worker.remote import variant_from_json, variant_to_json
from tests.factories import profiles, seed_model, variant_info
from tests.shaped_models import installed_model_file, strided_concat_model

CONCAT_ERROR = "Non concat axis dimensions must match"


@pytest.fixture
def warm_ups(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[bool]]:
    """Whether each warm-up ran (the real one, recorded)."""
    real, results = runtime.warm_up, []

    def recording(session: runtime.Session, shapes: runtime.Shapes | None = None) -> bool:
        results.append(real(session, shapes))
        return results[-1]

    monkeypatch.setattr(runtime, "warm_up", recording)
    yield results


def _detector(services: Services, model: bytes | None = None) -> LocalWorker:
    """A detector registered at its recorded shape, and a worker (not started: no live-state traffic needed)."""
    data = model if model is not None else strided_concat_model().SerializeToString()
    seed_model(services, "det", data, task="detect", variants={"fp32": profiles({1: 5.0}, memory_mb=20.0)})
    return LocalWorker("w-warm", services.store, MemoryLiveState(), memory_budget_mb=500, cores=1)


def test_a_worker_warms_a_detector_up_at_its_recorded_shape(
    services: Services, warm_ups: list[bool], capfd: pytest.CaptureFixture[str]
) -> None:
    worker = _detector(services)
    model = services.metadata.get_model("det")
    assert model is not None and model.input_shapes["images"][2:] != (1, 1)  # registration found a working size
    (variant,) = model.variants
    assert variant.input_shapes == model.input_shapes  # the catalog hands workers the recorded shape
    capfd.readouterr()
    worker.load(variant)
    worker.add_replica(variant)  # every replica's session is warmed
    assert warm_ups == [True, True]
    assert CONCAT_ERROR not in capfd.readouterr().err


def test_without_the_recorded_shape_the_warm_up_fails_and_onnx_runtime_logs_it(
    services: Services, warm_ups: list[bool], capfd: pytest.CaptureFixture[str]
) -> None:
    """The control: what the worker did before (1x1), so the test above cannot pass by accident."""
    worker = _detector(services)
    model = services.metadata.get_model("det")
    assert model is not None
    capfd.readouterr()
    worker.load(replace(model.variants[0], input_shapes={}))
    assert warm_ups == [False]
    assert CONCAT_ERROR in capfd.readouterr().err


def test_the_recorded_shape_reaches_a_remote_worker() -> None:
    shaped = replace(variant_info("det", "fp32", profiles({1: 5.0})), input_shapes={"images": (1, 3, 320, 320)})
    assert variant_from_json(variant_to_json(shaped)).input_shapes == {"images": (1, 3, 320, 320)}


def test_nudenet_320n_is_warmed_up_at_320_without_an_onnx_runtime_error(
    services: Services, warm_ups: list[bool], capfd: pytest.CaptureFixture[str]
) -> None:
    """The real YOLOv8n detector from PyPI's ``nudenet`` that the issue names."""
    worker = _detector(services, installed_model_file("nudenet", "320n.onnx").read_bytes())
    model = services.metadata.get_model("det")
    assert model is not None and model.variants[0].input_shapes == {"images": (1, 3, 320, 320)}
    capfd.readouterr()
    worker.load(model.variants[0])
    assert warm_ups == [True]
    assert "[E:onnxruntime" not in capfd.readouterr().err
