"""ONNX Runtime sessions: the one place that knows how a variant is loaded.

The worker and the profiler both load variants through here, so what is profiled is exactly what is
served (same providers, same thread settings, same graph optimisation level).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnxruntime as ort

log = logging.getLogger(__name__)

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


def warm_up(session: ort.InferenceSession) -> bool:
    """Run one batch-1 inference on zeros so the first real query does not pay for it.

    ONNX Runtime allocates its arenas and picks kernels on the first ``run``: for a small model that is
    ten times a warm call, which a query would see as a latency the profile (measured warm) never
    promised. Symbolic dimensions become 1. Returns ``False`` when the model rejects zeros (say a
    data-dependent shape); the session is still fine, only not warmed.
    """
    try:
        feeds = {
            i.name: np.zeros([d if isinstance(d, int) and d > 0 else 1 for d in i.shape], dtype=numpy_dtype(i.type))
            for i in session.get_inputs()
        }
        session.run(None, feeds)
        return True
    except Exception as exc:  # any failure only means no warm-up; serving reports real errors
        log.debug("warm-up of a session failed: %s", exc)
        return False
