"""``build_model_variants`` / ``reprofile_model`` against a real SQLite catalog and local model store."""

from __future__ import annotations

import io
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import numpy as np
import pytest

from infaas import cuda
from infaas.config import Settings
from infaas.db.models import ModelStatus, VariantStatus
from infaas.services import Services, build_services
from tests.factories import mlp_model, seed_model
from variant_generator import registry
from variant_generator.base import BuildContext
from variant_generator.build import build_model_variants, reprofile_model

CPU_VARIANTS = {
    "cpu-fp32",
    "cpu-fp32-t1",
    "cpu-int8-dynamic",
    "cpu-int8-dynamic-t1",
    "cpu-int8-static",
    "cpu-int8-static-t1",
}
GPU_VARIANTS = {"cuda-fp32", "cuda-fp16", "tensorrt-ep-fp32", "tensorrt-fp16", "tensorrt-int8"}


@pytest.fixture
def services(tmp_path: Path) -> Iterator[Services]:
    settings = Settings(home=tmp_path, build_variants=True, profile_runs=5, profile_max_seconds=0.1, worker_cores=2)
    services = build_services(settings, with_jobs=False)
    yield services
    services.close()


def _validation_inputs() -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, inputs=np.random.default_rng(1).standard_normal((40, 6)).astype(np.float32))
    return buffer.getvalue()


# The MLP with a validation set, registered in the catalog and awaiting its build.
seed_mlp = partial(
    seed_model,
    name="mlp",
    model=mlp_model(in_dim=6).SerializeToString(),
    task="classification",
    max_batch=4,
    owner="test",
    public=True,
    validation=_validation_inputs(),
)


def variants(services: Services, name: str = "mlp") -> dict[str, object]:
    model = services.metadata.get_model(name)
    assert model is not None
    return {v.name: v for v in model.variants}


def test_builds_profiles_and_stores_every_cpu_variant(services: Services) -> None:
    seed_mlp(services)
    build_model_variants(services, "mlp")
    model = services.metadata.get_model("mlp")
    assert model is not None and model.status == ModelStatus.READY
    built = variants(services)
    for name in CPU_VARIANTS:
        v = built[name]
        assert v.status == VariantStatus.READY, (name, v.reason)
        assert [p.batch_size for p in v.profiles] == [1, 2, 4]
        assert all(p.latency_p99_ms >= p.latency_p50_ms > 0 and p.throughput_per_s > 0 for p in v.profiles)
        assert v.accuracy is not None and v.accuracy >= 0.9
        assert v.threads == (1 if name.endswith("-t1") else 2)
        assert v.artifact_key.startswith("models/mlp/variants/") and services.store.exists(v.artifact_key)
    assert built["cpu-fp32"].accuracy == 1.0


@pytest.mark.skipif(cuda.has_cuda_device(), reason="this host has a CUDA device")
def test_gpu_variants_are_recorded_as_skipped(services: Services) -> None:
    seed_mlp(services)
    build_model_variants(services, "mlp")
    built = variants(services)
    for name in GPU_VARIANTS:
        assert (built[name].status, built[name].reason, built[name].profiles) == ("skipped", "no CUDA device", ())


def test_one_failing_generator_does_not_stop_the_others(services: Services, monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(ctx: BuildContext) -> Path:
        raise RuntimeError("quantizer exploded")

    monkeypatch.setattr(registry.get("cpu-int8-dynamic"), "build", boom)
    seed_mlp(services)
    build_model_variants(services, "mlp")
    built = variants(services)
    assert built["cpu-int8-dynamic"].status == VariantStatus.FAILED
    assert "quantizer exploded" in built["cpu-int8-dynamic"].reason
    assert all(built[n].status == VariantStatus.READY for n in CPU_VARIANTS - {"cpu-int8-dynamic"})
    assert services.metadata.get_model("mlp").status == ModelStatus.READY


def test_model_fails_with_a_summary_when_nothing_builds(services: Services, monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(ctx: BuildContext) -> Path:
        raise RuntimeError("disk full")

    for generator in registry.generators():
        monkeypatch.setattr(generator, "build", boom)
    seed_mlp(services)
    build_model_variants(services, "mlp")
    model = services.metadata.get_model("mlp")
    assert model.status == ModelStatus.FAILED
    assert "cpu-fp32: RuntimeError: disk full" in model.status_reason


def test_without_validation_static_int8_is_skipped(services: Services) -> None:
    seed_mlp(services, validation=None)
    build_model_variants(services, "mlp")
    built = variants(services)
    assert built["cpu-int8-static"].status == VariantStatus.SKIPPED
    assert "no validation inputs" in built["cpu-int8-static"].reason
    assert built["cpu-fp32"].profiles[0].accuracy_metric == "agreement-synthetic"


def test_rebuilding_is_idempotent_and_reprofiling_replaces_profiles(services: Services) -> None:
    seed_mlp(services)
    build_model_variants(services, "mlp")
    first = variants(services)
    build_model_variants(services, "mlp")
    second = variants(services)
    assert second.keys() == first.keys()
    assert {n: v.status for n, v in second.items()} == {n: v.status for n, v in first.items()}
    reprofile_model(services, "mlp")
    third = variants(services)
    assert third["cpu-fp32"].profiles[0].measured_at > second["cpu-fp32"].profiles[0].measured_at
    assert len(third["cpu-fp32"].profiles) == 3


def test_deleting_the_model_removes_every_artifact(services: Services) -> None:
    seed_mlp(services)
    build_model_variants(services, "mlp")
    keys = {v.artifact_key for v in variants(services).values() if v.artifact_key}
    assert keys and all(k.startswith("models/mlp/") for k in keys)
    services.metadata.delete_model("mlp")
    services.store.delete_prefix("models/mlp/")
    assert services.store.list("models/mlp/") == []


def test_model_deleted_mid_build_stops_quietly(services: Services, monkeypatch: pytest.MonkeyPatch) -> None:
    generator = registry.get("cpu-int8-dynamic")
    real_build = generator.build

    def delete_then_build(ctx: BuildContext) -> Path:
        services.metadata.delete_model("mlp")
        services.store.delete_prefix("models/mlp/")
        return real_build(ctx)

    monkeypatch.setattr(generator, "build", delete_then_build)
    seed_mlp(services)
    build_model_variants(services, "mlp")
    assert services.metadata.get_model("mlp") is None
    assert services.store.list("models/mlp/") == []
    build_model_variants(services, "never-registered")  # a stale job is a no-op
    reprofile_model(services, "never-registered")
