"""Synthetic validation data (and so profiling) runs at the shape registration recorded."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from infaas.config import Settings
from infaas.db.models import ModelStatus, VariantStatus
from infaas.registration import RegistrationRequest, register_model
from infaas.services import Services, build_services
from tests.factories import model_info
from tests.shaped_models import fixed_size_model
from variant_generator.accuracy import DEFAULT_DYNAMIC_DIM, synthetic_set
from variant_generator.build import build_model_variants

IMAGES = {"name": "images", "dtype": "float32", "shape": [-1, 3, -1, -1]}


def test_synthetic_inputs_take_the_recorded_shape() -> None:
    model = replace(model_info("detector", inputs=[IMAGES]), input_shapes={"images": (1, 3, 320, 320)})
    assert synthetic_set(model, rows=4).inputs["images"].shape == (4, 3, 320, 320)


def test_a_model_without_a_recorded_shape_keeps_the_default() -> None:
    data = synthetic_set(model_info("old", inputs=[IMAGES]), rows=2)
    assert data.inputs["images"].shape == (2, 3, DEFAULT_DYNAMIC_DIM, DEFAULT_DYNAMIC_DIM)


@pytest.fixture
def services(tmp_path: Path) -> Iterator[Services]:
    settings = Settings(home=tmp_path, build_variants=True, profile_runs=3, profile_max_seconds=0.1, worker_cores=2)
    built = build_services(settings, with_jobs=False)
    yield built
    built.close()


def test_variants_of_a_model_that_runs_at_one_size_are_built_and_profiled_at_it(
    services: Services, tmp_path: Path
) -> None:
    """Declared ``[batch, 3, height, width]`` but only runs at 100x100: at the old 16x16 every variant failed."""
    path = tmp_path / "fixed.onnx"
    path.write_bytes(fixed_size_model(100, 100).SerializeToString())
    request = RegistrationRequest(
        name="fixed", task="embedding", model_path=path, max_batch=2, input_shapes={"images": (1, 3, 100, 100)}
    )
    register_model(services, request)
    build_model_variants(services, "fixed")
    model = services.metadata.get_model("fixed")
    assert model is not None and model.status == ModelStatus.READY, model.status_reason
    fp32 = next(v for v in model.variants if v.name == "cpu-fp32")
    assert fp32.status == VariantStatus.READY and [p.batch_size for p in fp32.profiles] == [1, 2]
