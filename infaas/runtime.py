"""The one artifact loader: opens any variant (an ONNX file or a native TensorRT engine) as a ``Session``.

Workers and the profiler both open variants through ``open_session``, so what is profiled is exactly
what is served: same runtime, providers, thread settings, graph optimisation level and warm-up. Which
runtime opens an artifact follows the catalog's ``VariantInfo.providers``: ``("TensorRT",)`` is a native
engine, anything else is a list of ONNX Runtime execution providers. ``tensorrt`` is imported only when
an engine is opened: most hosts (and the CPU install) do not have it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import Protocol

import numpy as np
import onnxruntime as ort

from infaas import cuda
from infaas.cascade_session import CASCADE, CascadeSession, read_bundle
from infaas.errors import Unavailable
from infaas.hardware_kinds import TENSORRT_ENGINE  # the "provider" of a native engine: no ONNX Runtime involved
from infaas.tensorrt_engine import EngineSession

log = logging.getLogger(__name__)

CPU_PROVIDERS: tuple[str, ...] = ("CPUExecutionProvider",)
NO_CUDA_DEVICE = "no CUDA device"
NO_TENSORRT = "tensorrt package not installed (pip install 'infaas[gpu,tensorrt]')"


class Skip(Unavailable):
    """The variant does not apply here (no GPU, no ``tensorrt``, nothing to quantize...); the message is why.

    Raised by the loader when this host cannot run an artifact and by generators when a kind of variant
    makes no sense for a model; a build records either as the variant's ``skipped`` status, and a query
    whose in-process worker cannot open the variant gets a 503 that says why.
    """

    code = "variant_not_runnable_here"


class TensorInfo(Protocol):
    """Name, shape (ints, or names/``None`` for dynamic axes) and ONNX type string of an input or output."""

    @property
    def name(self) -> str: ...

    @property
    def shape(self) -> Sequence[int | str | None]: ...

    @property
    def type(self) -> str: ...


class Session(Protocol):
    """A loaded variant, as ONNX Runtime's ``InferenceSession`` already is (``EngineSession`` for engines)."""

    def get_inputs(self) -> Sequence[TensorInfo]: ...

    def get_outputs(self) -> Sequence[TensorInfo]: ...

    def run(self, output_names: Sequence[str] | None, feeds: Mapping[str, np.ndarray], /) -> list[np.ndarray]:
        """The named outputs (every output, in the model's order, for ``None``)."""
        ...


# Input name -> the concrete shape (batch 1) a model with dynamic dimensions runs at (``ModelInfo.input_shapes``).
Shapes = Mapping[str, Sequence[int]]


class SessionOpener(Protocol):
    """``open_session``'s shape: what a worker calls to open a variant (tests inject one that stays on the CPU)."""

    def __call__(
        self,
        path: Path,
        providers: Sequence[str],
        threads: int,
        device: int | None = None,
        shapes: Shapes | None = None,
    ) -> Session: ...


def open_session(
    path: Path, providers: Sequence[str], threads: int, device: int | None = None, shapes: Shapes | None = None
) -> Session:
    """Open a variant artifact as the catalog describes it, warmed up, or raise ``Skip`` saying why not.

    ``providers`` and ``threads`` are the variant's (``threads=0``: every core); ``device`` is the CUDA
    device its GPU providers or engine run on (a worker's ``--gpu``; ``None``: the runtime's default, 0). A
    GPU provider that this ONNX Runtime build does not really activate is refused rather than silently run
    on the CPU: a "GPU" variant served or profiled on the CPU would be a lie. ``shapes`` are the model's
    recorded input shapes (``VariantInfo.input_shapes``), which the warm-up runs at.
    """
    session: Session
    if CASCADE in providers:
        return open_cascade(path, device, shapes)
    if TENSORRT_ENGINE in providers:
        require_cuda()
        session = EngineSession(path, import_tensorrt(), device or 0)
    else:
        ort_session = create_session(path, providers, threads, device)
        wanted = providers[0] if providers else CPU_PROVIDERS[0]
        active = ort_session.get_providers()
        if wanted not in active:
            raise Skip(f"{wanted} is not active in this onnxruntime build (active: {', '.join(active)})")
        session = ort_session
    warm_up(session, shapes)
    return session


def open_cascade(path: Path, device: int | None = None, shapes: Shapes | None = None) -> CascadeSession:
    """A cascade bundle (``infaas.cascade_session``) as one session: each member opened with its own providers
    and threads, and warmed, as ``open_session`` opens any variant."""
    spec, cheap, expensive = read_bundle(path)
    stages = []
    for member, model in ((spec.cheap, cheap), (spec.expensive, expensive)):
        stage = create_session(model, member.providers, member.threads, device)
        warm_up(stage, shapes)
        stages.append(stage)
    return CascadeSession(spec, stages[0], stages[1])


def warm_up(session: Session, shapes: Shapes | None = None) -> bool:
    """Run one batch-1 inference on zeros so the first real query does not pay for it.

    ONNX Runtime allocates its arenas and picks kernels on the first ``run``: for a small model that is
    ten times a warm call, which a query would see as a latency the profile (measured warm) never
    promised. An input with a recorded shape (``shapes``: what registration found the model runs at) is
    fed at it; other symbolic dimensions become 1. Without the recorded shape a YOLO detector's
    ``[batch, 3, height, width]`` was fed 1x1: its ``Concat`` failed, so it was never warmed and ONNX
    Runtime logged an error each time a session opened. Returns ``False`` when the model rejects zeros (say a
    data-dependent shape); the session is still fine, only not warmed.
    """
    recorded = shapes or {}
    try:
        feeds = {
            i.name: np.zeros(
                recorded.get(i.name) or [d if isinstance(d, int) and d > 0 else 1 for d in i.shape],
                dtype=numpy_dtype(i.type),
            )
            for i in session.get_inputs()
        }
        session.run(None, feeds)
        return True
    except Exception as exc:  # any failure only means no warm-up; serving reports real errors
        log.debug("warm-up of a session failed: %s", exc)
        return False


def create_session(
    model: str | Path | bytes, providers: Sequence[str] | None = None, threads: int = 0, device: int | None = None
) -> ort.InferenceSession:
    """An ONNX Runtime session with the serving options (CPU when no providers are given).

    For ONNX files that are not variants (the registration check on an upload); variants go through
    ``open_session``.
    """
    source = str(model) if isinstance(model, Path) else model
    return ort.InferenceSession(
        source, sess_options=session_options(threads), providers=provider_options(providers or CPU_PROVIDERS, device)
    )


# Execution providers that run on one CUDA device, chosen by their ``device_id`` option.
DEVICE_PROVIDERS = frozenset({"CUDAExecutionProvider", "TensorrtExecutionProvider"})


def provider_options(providers: Sequence[str], device: int | None) -> list[str | tuple[str, dict[str, str]]]:
    """ONNX Runtime's provider list with ``device_id`` set on the GPU providers when a device is pinned.

    The option, not ``CUDA_VISIBLE_DEVICES``: the in-process worker of ``infaas serve`` shares its process
    with the front-end, and an environment variable read once at CUDA initialisation cannot be changed by
    the code that finds out which device to use.
    """
    if device is None:
        return list(providers)
    return [(p, {"device_id": str(device)}) if p in DEVICE_PROVIDERS else p for p in providers]


def session_options(threads: int) -> ort.SessionOptions:
    """Options shared by serving and profiling; ``threads=0`` lets ONNX Runtime use every core.

    Intra-op threads do not spin-wait between runs: a worker holds many sessions on the same cores, and each
    spinning session burns a core that the others and the Python threads handing them work need. Closed-loop
    capacity of the example zoo's mix on two shared cores (``benchmarks/trace.py``'s calibration, paired runs):
    spinning 169/179/754/615 q/s at 4 clients and 112/76/89 at 8, not spinning 669/762/802/966 and 342/384/130;
    alone on the machine, not spinning costs mlp-large 256 rows +4% at p50 and saves 17% at p99.
    """
    options = ort.SessionOptions()
    options.intra_op_num_threads = max(0, threads)
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    return options


def available_providers() -> list[str]:
    """Execution providers this ONNX Runtime build offers (not proof that a device exists)."""
    return list(ort.get_available_providers())


def require_cuda() -> None:
    """Raise ``Skip("no CUDA device")`` unless this host really has one (GPU generators check this first)."""
    if not cuda.has_cuda_device():
        raise Skip(NO_CUDA_DEVICE)


def import_tensorrt() -> ModuleType:
    """The ``tensorrt`` module, or ``Skip`` with the install hint."""
    try:
        import tensorrt
    except ImportError as exc:
        raise Skip(NO_TENSORRT) from exc
    return tensorrt


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
