"""ONNX Runtime sessions: the one place that knows how a variant is loaded.

The worker and the profiler both load variants through here, so what is profiled is exactly what is
served (same providers, same thread settings, same graph optimisation level).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

ONNX_TO_NUMPY: dict[str, type[np.generic]] = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(int16)": np.int16,
    "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8,
    "tensor(bool)": np.bool_,
}


def numpy_dtype(onnx_type: str) -> np.dtype:
    """The numpy dtype for an ONNX Runtime type string such as ``tensor(float)``."""
    try:
        return np.dtype(ONNX_TO_NUMPY[onnx_type])
    except KeyError as exc:
        raise ValueError(f"unsupported tensor type {onnx_type!r}") from exc


def session_options(threads: int) -> ort.SessionOptions:
    """Options shared by serving and profiling; ``threads=0`` lets ONNX Runtime use every core."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = max(0, threads)
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    return options


def create_session(
    model: str | Path | bytes, providers: list[str] | None = None, threads: int = 0
) -> ort.InferenceSession:
    """Load a model with the given execution providers (CPU when none are given)."""
    source = str(model) if isinstance(model, Path) else model
    return ort.InferenceSession(
        source, sess_options=session_options(threads), providers=providers or ["CPUExecutionProvider"]
    )


def available_providers() -> list[str]:
    """Execution providers this ONNX Runtime build offers (not proof that a device exists)."""
    return list(ort.get_available_providers())
