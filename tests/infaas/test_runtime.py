"""The one artifact loader: it opens an ONNX variant as it is served, says why a variant cannot run on this
host, and is what both a worker and the profiler open variants with (so they refuse the same ones)."""

from __future__ import annotations

import re
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from infaas import cuda
from infaas.config import Settings
from infaas.live_state import MemoryLiveState
from infaas.model_store import LocalModelStore
from infaas.runtime import CPU_PROVIDERS, NO_TENSORRT, TENSORRT_ENGINE, Skip, open_session
from infaas.worker import LocalWorker
from tests.factories import model_info, profiles, variant_info, write_mlp
from variant_generator.accuracy import ValidationSet
from variant_generator.profiler import profile_variant

CUDA_PROVIDERS = ("CUDAExecutionProvider", "CPUExecutionProvider")


def test_an_fp32_onnx_variant_opens_with_its_providers_and_threads(tmp_path: Path) -> None:
    path = write_mlp(tmp_path / "cpu-fp32.onnx")
    session = open_session(path, CPU_PROVIDERS, 2)
    x = np.random.default_rng(0).standard_normal((5, 8)).astype(np.float32)
    expected = ort.InferenceSession(str(path), providers=list(CPU_PROVIDERS)).run(None, {"x": x})[0]
    np.testing.assert_allclose(session.run(None, {"x": x})[0], expected, rtol=1e-5, atol=1e-6)
    assert session.get_providers() == ["CPUExecutionProvider"]
    assert session.get_session_options().intra_op_num_threads == 2
    assert [(i.name, i.type) for i in session.get_inputs()] == [("x", "tensor(float)")]


@pytest.mark.skipif(cuda.has_cuda_device(), reason="this host has a CUDA device")
def test_an_engine_without_a_device_is_skipped_with_why(tmp_path: Path) -> None:
    engine = tmp_path / "tensorrt-fp16.engine"
    engine.write_bytes(b"never read: the device check comes first")
    with pytest.raises(Skip, match="^no CUDA device$"):
        open_session(engine, (TENSORRT_ENGINE,), 0)


def test_an_engine_without_tensorrt_says_which_extra_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cuda, "cuda_device_count", lambda: 1)
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # makes `import tensorrt` fail
    engine = tmp_path / "tensorrt-fp16.engine"
    engine.write_bytes(b"never read: the package check comes first")
    with pytest.raises(Skip, match=f"^{re.escape(NO_TENSORRT)}$"):
        open_session(engine, (TENSORRT_ENGINE,), 0)


@pytest.mark.parametrize(
    ("providers", "gpu_present", "reason"),
    [
        (CUDA_PROVIDERS, False, "CUDAExecutionProvider is not active in this onnxruntime build"),
        ((TENSORRT_ENGINE,), True, NO_TENSORRT),
    ],
    ids=["cuda-provider-not-active", "engine-without-tensorrt"],
)
def test_worker_and_profiler_refuse_the_same_variant_for_the_same_reason(
    providers: tuple[str, ...], gpu_present: bool, reason: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Neither serves nor measures a GPU variant on the CPU: both open it through ``open_session``."""
    if cuda.has_cuda_device() and not gpu_present:
        pytest.skip("this host has a CUDA device, so the CUDA provider may well be active")
    monkeypatch.setattr(cuda, "cuda_device_count", lambda: int(gpu_present))
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    store = LocalModelStore(tmp_path / "store")
    key = "models/mlp/variants/gpu.onnx"
    store.put_file(key, write_mlp(tmp_path / "mlp.onnx"))
    variant = replace(variant_info("mlp", "gpu", profiles({1: 1.0}), artifact_key=key), providers=providers)

    worker = LocalWorker("w1", store, MemoryLiveState(), memory_budget_mb=100, cores=1)
    with pytest.raises(Skip) as served:
        worker.load(variant)
    with pytest.raises(Skip) as profiled:
        profile_variant(
            store.local_path(key),
            model_info("mlp", max_batch=2),
            providers=providers,
            threads=1,
            settings=Settings(home=tmp_path, profile_runs=1, profile_max_seconds=0.1),
            data=ValidationSet({"x": np.zeros((2, 8), np.float32)}),
        )
    assert str(served.value) == str(profiled.value)
    assert str(served.value).startswith(reason)
