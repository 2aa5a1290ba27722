"""A native TensorRT engine (``.engine``) served behind the same ``Session`` shape as ONNX Runtime.

Worker instances batch over ``get_inputs``/``get_outputs``/``run(names, feeds)`` and the profiler times
``run``; wrapping the engine in that shape lets both use ``.engine`` variants unchanged. The ``tensorrt``
module is passed in (``runtime.open_session`` imports it, with the install hint when it is missing),
so importing this module never needs TensorRT.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import numpy as np

from infaas.cuda import CudaDriver

# numpy dtype names that ONNX spells differently (``tensor(float)``, not ``tensor(float32)``).
_ONNX_NAMES = {"float32": "float", "float64": "double"}


@dataclass(frozen=True)
class TensorArg:
    """Name, shape and ONNX type string of an engine input/output, shaped like ONNX Runtime's ``NodeArg``."""

    name: str
    shape: list[int | str]
    type: str


class EngineSession:
    """Runs a deserialized TensorRT engine on numpy feeds, with device buffers reused across calls.

    ``device`` is the CUDA device the engine lives on (a worker's ``--gpu``); every call makes its context
    current first, since replicas run on threads other than the one that loaded the engine.
    """

    def __init__(self, path: Path, trt: ModuleType, device: int = 0) -> None:
        self.trt = trt
        self.cuda = CudaDriver(device)
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = runtime.deserialize_cuda_engine(path.read_bytes())
        if self.engine is None:
            raise RuntimeError("TensorRT could not load the engine (built for another GPU or version?)")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        is_input = {n: self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT for n in names}
        self.inputs = [n for n in names if is_input[n]]
        self.outputs = [n for n in names if not is_input[n]]
        self.buffers: dict[str, tuple[int, int]] = {}
        self._args = {name: self._arg(name) for name in names}

    def get_inputs(self) -> list[TensorArg]:
        return [self._args[n] for n in self.inputs]

    def get_outputs(self) -> list[TensorArg]:
        return [self._args[n] for n in self.outputs]

    def _dtype(self, name: str) -> np.dtype:
        return np.dtype(self.trt.nptype(self.engine.get_tensor_dtype(name)))

    def _arg(self, name: str) -> TensorArg:
        """-1 dimensions are dynamic (the engine's optimisation profile covers batch 1..max_batch)."""
        dtype = self._dtype(name).name
        shape: list[int | str] = [d if d >= 0 else "batch" for d in self.engine.get_tensor_shape(name)]
        return TensorArg(name, shape, f"tensor({_ONNX_NAMES.get(dtype, dtype)})")

    def _buffer(self, name: str, nbytes: int) -> int:
        """A device buffer for ``name`` of at least ``nbytes``, grown (never shrunk) as batches grow."""
        ptr, size = self.buffers.get(name, (0, 0))
        if size < nbytes:
            if ptr:
                self.cuda.free(ptr)
            ptr, size = self.cuda.alloc(nbytes), nbytes
            self.buffers[name] = (ptr, size)
        self.context.set_tensor_address(name, ptr)
        return ptr

    def run(self, output_names: Sequence[str] | None, feeds: Mapping[str, np.ndarray], /) -> list[np.ndarray]:
        """Outputs named by ``output_names`` (all, in the engine's order, when ``None``)."""
        self.cuda.make_current()
        for name in self.inputs:
            array = np.ascontiguousarray(feeds[name], dtype=self._dtype(name))
            self.context.set_input_shape(name, array.shape)
            self.cuda.to_device(self._buffer(name, array.nbytes), array)
        results = {}
        for name in self.outputs:
            results[name] = np.empty(tuple(self.context.get_tensor_shape(name)), dtype=self._dtype(name))
            self._buffer(name, results[name].nbytes)
        if not self.context.execute_async_v3(0):
            raise RuntimeError("TensorRT execution failed")
        self.cuda.synchronize()
        for name, array in results.items():
            self.cuda.to_host(array, self.buffers[name][0])
        return [results[n] for n in (output_names or self.outputs)]

    def __del__(self) -> None:
        for ptr, _ in getattr(self, "buffers", {}).values():
            try:
                self.cuda.free(ptr)
            except RuntimeError:
                pass
