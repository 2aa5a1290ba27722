"""``build_model_variants`` / ``reprofile_model`` against a real SQLite catalog and local model store."""

from __future__ import annotations

import io
import resource
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path

import numpy as np
import pytest

from infaas import cuda
from infaas.accuracy import fidelity_of
from infaas.config import Settings
from infaas.db.models import ModelStatus, VariantStatus
from infaas.services import Services, build_services
from tests.factories import mlp_model, seed_model
from tests.infaas import runtime_bombs
from tests.variant_generator.exploding import Exploding
from variant_generator import build, registry
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
        # No labels: no accuracy (nothing declared either), and agreement with the original is fidelity.
        assert v.accuracy is None and fidelity_of(v).value is not None and fidelity_of(v).value >= 0.9
        assert v.threads == (1 if name.endswith("-t1") else 2)
        # 1x1 and 2x1 measured for the one-thread variants on 2 cores; 1x2 is the all-cores variant, alone.
        assert all(len(p.replica_throughput_per_s) == (2 if v.threads == 1 else 0) for p in v.profiles), name
        assert v.artifact_key.startswith("models/mlp/variants/") and services.store.exists(v.artifact_key)
    assert fidelity_of(built["cpu-fp32"]).value == 1.0


def test_calibration_rows_are_held_out_of_scoring(services: Services) -> None:
    seed_mlp(services)
    model = services.metadata.get_model("mlp")
    measurement = build.Measurement(services, model, services.store.local_path(model.artifact_key))
    calibration, scored = measurement.calibration, measurement.data
    assert calibration is not None and (calibration.rows, scored.rows) == (10, 30)  # 40 rows: a quarter calibrates
    rows = lambda data: {row.tobytes() for row in data.inputs["x"]}  # noqa: E731
    assert rows(calibration).isdisjoint(rows(scored))


@pytest.mark.skipif(cuda.has_cuda_device(), reason="this host has a CUDA device")
def test_gpu_variants_are_recorded_as_skipped(services: Services) -> None:
    seed_mlp(services)
    build_model_variants(services, "mlp")
    built = variants(services)
    for name in GPU_VARIANTS:
        assert (built[name].status, built[name].reason, built[name].profiles) == ("skipped", "no CUDA device", ())


def exploding(monkeypatch: pytest.MonkeyPatch, message: str, *names: str) -> None:
    """Replace the named generators (every one when no name is given) by ``Exploding`` ones."""
    replaced = [Exploding(g, message) if not names or g.variant_name in names else g for g in registry.generators()]
    monkeypatch.setattr(registry, "generators", lambda: replaced)


def test_one_failing_generator_does_not_stop_the_others(services: Services, monkeypatch: pytest.MonkeyPatch) -> None:
    exploding(monkeypatch, "quantizer exploded", "cpu-int8-dynamic")
    seed_mlp(services)
    build_model_variants(services, "mlp")
    built = variants(services)
    assert built["cpu-int8-dynamic"].status == VariantStatus.FAILED
    assert "quantizer exploded" in built["cpu-int8-dynamic"].reason
    assert all(built[n].status == VariantStatus.READY for n in CPU_VARIANTS - {"cpu-int8-dynamic"})
    assert services.metadata.get_model("mlp").status == ModelStatus.READY


def test_model_fails_with_a_summary_when_nothing_builds(services: Services, monkeypatch: pytest.MonkeyPatch) -> None:
    exploding(monkeypatch, "disk full")
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
    fp32 = built["cpu-fp32"].profiles[0]  # no labels: agreement with the original is fidelity, not accuracy
    assert (fp32.accuracy, fp32.accuracy_metric, fp32.fidelity_metric) == (None, None, "agreement-synthetic")


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
    sandboxed = build.run_limited

    def delete_then_run(fn, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        if kwargs["what"] == "building and profiling cpu-int8-dynamic":  # meanwhile, the owner deletes
            services.metadata.delete_model("mlp")
            services.store.delete_prefix("models/mlp/")
        return sandboxed(fn, *args, **kwargs)

    monkeypatch.setattr(build, "run_limited", delete_then_run)
    seed_mlp(services)
    build_model_variants(services, "mlp")
    assert services.metadata.get_model("mlp") is None
    assert services.store.list("models/mlp/") == []
    build_model_variants(services, "never-registered")  # a stale job is a no-op
    reprofile_model(services, "never-registered")


def test_gpu_steps_are_bounded_in_time_only(services: Services) -> None:
    seed_mlp(services)
    model = services.metadata.get_model("mlp")
    measurement = build.Measurement(services, model, services.store.local_path(model.artifact_key))
    assert measurement.limits_on("cpu") == build.build_limits(services.settings)
    assert measurement.limits_on("gpu").memory_mb is None
    assert measurement.limits_on("gpu").wall_s == services.settings.build_timeout_s


# -- a build is bounded like the registration check ----------------------------------------------------------


def _values(x: float) -> bytes:
    """A validation set for the 1-element input ``x``: four samples (its first axis counts them), each ``x``."""
    buffer = io.BytesIO()
    np.savez(buffer, x=np.full(4, x, np.float32))
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("model", "value", "refusal"),
    [
        # Harmless on the zeros registration runs; the owner's values ask for a [20000, 20000] float32 (1.6 GB)...
        pytest.param(
            runtime_bombs.allocation_from_input_value,
            20000.0,
            "needed more memory than its limit of 256 MB (INFAAS_BUILD_MEMORY_MB)",
            id="memory",
        ),
        # ... or for 10^12 loop iterations.
        pytest.param(
            runtime_bombs.loop_from_input_value, 1e12, "did not finish within 1 s (INFAAS_BUILD_TIMEOUT_S)", id="time"
        ),
    ],
)
def test_a_build_past_its_limits_fails_every_variant_with_the_reason(
    tmp_path: Path, model: Callable[[], bytes], value: float, refusal: str
) -> None:
    settings = Settings(
        home=tmp_path, profile_runs=3, profile_max_seconds=0.1, worker_cores=2, build_timeout_s=1, build_memory_mb=256
    )
    services = build_services(settings, with_jobs=False)
    try:
        seed_model(services, "by-value", model(), task="regression", max_batch=4, validation=_values(value))
        peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        started = time.monotonic()
        build_model_variants(services, "by-value")
        assert time.monotonic() - started < 10  # the limit is spent once, not once per variant
        assert (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_before) / 1024 < 100  # MB, in this process
        info = services.metadata.get_model("by-value")
        assert info is not None and info.status == ModelStatus.FAILED
        for variant in info.variants:
            if variant.hardware == "gpu" and variant.reason == "no CUDA device":
                continue  # skipped before anything runs
            if variant.status == VariantStatus.SKIPPED and variant.reason.startswith("not a transformer encoder"):
                continue  # the graph check (VariantGenerator.precheck) rules it out before any child runs
            assert variant.status == VariantStatus.FAILED, (variant.name, variant.reason)
            assert f"running the original model on the validation set {refusal}" in variant.reason, variant.reason
        assert {v.name for v in info.variants if v.status == VariantStatus.FAILED} >= CPU_VARIANTS
    finally:
        services.close()
