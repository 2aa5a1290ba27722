"""TensorRT variants: the TensorRT execution provider, and native engines in FP16 and INT8.

``tensorrt`` is imported lazily: most hosts (and the CPU install) do not have it. Native engines are
built from the ONNX file with one optimisation profile covering batch 1..max_batch; INT8 is calibrated
on the validation inputs. Engines are tied to the GPU model and TensorRT version they were built with,
which is why ``reprofile_model`` re-measures them on new hardware rather than trusting old numbers.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from variant_generator.accuracy import DEFAULT_DYNAMIC_DIM, ValidationSet
from variant_generator.base import BuildContext, Skip, VariantGenerator
from variant_generator.gpu import CudaDriver, require_cuda

NO_TENSORRT = "tensorrt package not installed (pip install infaas[gpu])"
TRT_PROVIDERS: tuple[str, ...] = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
WORKSPACE_BYTES = 1 << 30
CALIBRATION_ROWS = 256
CALIBRATION_BATCH = 8


def import_tensorrt() -> ModuleType:
    """The ``tensorrt`` module, or ``Skip`` with the install hint."""
    try:
        import tensorrt
    except ImportError as exc:
        raise Skip(NO_TENSORRT) from exc
    return tensorrt


def _require() -> ModuleType:
    require_cuda()
    return import_tensorrt()


class TensorrtEp(VariantGenerator):
    """The original graph served by ONNX Runtime's TensorRT execution provider (FP32)."""

    name = "tensorrt-ep-fp32"
    kind = "tensorrt-ep-fp32"
    precision = "fp32"
    hardware = "gpu"
    providers = TRT_PROVIDERS

    def build(self, ctx: BuildContext) -> Path:
        _require()
        out = self.output_path(ctx)
        shutil.copyfile(ctx.source, out)
        return out


def _shapes(dims: list[int], batch: int) -> tuple[int, ...]:
    """A concrete input shape: ``batch`` on axis 0, a default for any other dynamic axis."""
    return (batch, *(d if d > 0 else DEFAULT_DYNAMIC_DIM for d in dims[1:]))


def _calibrator(trt: ModuleType, cuda: CudaDriver, data: ValidationSet, batch: int) -> Any:
    """An entropy calibrator feeding validation batches of exactly ``batch`` rows."""
    rows = min(data.rows, CALIBRATION_ROWS)
    batches = [data.batch(batch, start) for start in range(0, max(rows - batch, 0) + 1, batch)]

    class Calibrator(trt.IInt8EntropyCalibrator2):  # type: ignore[misc, name-defined]
        def __init__(self) -> None:
            trt.IInt8EntropyCalibrator2.__init__(self)
            self.pending = iter(batches)
            self.buffers = {name: cuda.alloc(array.nbytes) for name, array in batches[0].items()}

        def get_batch_size(self) -> int:
            return batch

        def get_batch(self, names: list[str]) -> list[int] | None:
            feeds = next(self.pending, None)
            if feeds is None:
                return None
            for name in names:
                cuda.to_device(self.buffers[name], np.ascontiguousarray(feeds[name]))
            return [self.buffers[name] for name in names]

        def read_calibration_cache(self) -> None:
            return None

        def write_calibration_cache(self, cache: Any) -> None:
            return None

    return Calibrator()


class TensorrtEngine(VariantGenerator):
    """A native TensorRT engine (``.engine``) in FP16 or INT8 (INT8 layers fall back to FP16)."""

    hardware = "gpu"
    providers = ("TensorRT",)
    suffix = ".engine"

    def __init__(self, precision: str) -> None:
        super().__init__()
        self.precision = precision
        self.name = self.kind = f"tensorrt-{precision}"

    def build(self, ctx: BuildContext) -> Path:
        trt = _require()
        calibration_data = ctx.validation if self.precision == "int8" else None
        if self.precision == "int8" and calibration_data is None:
            raise Skip("no validation inputs to calibrate INT8 on (upload validation.npz)")
        logger = trt.Logger(trt.Logger.WARNING)
        builder = trt.Builder(logger)
        network = builder.create_network(0)  # explicit batch is the only mode in TensorRT 10
        parser = trt.OnnxParser(network, logger)
        if not parser.parse_from_file(str(ctx.source)):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise RuntimeError(f"TensorRT could not parse the model: {errors}")
        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, WORKSPACE_BYTES)
        config.set_flag(trt.BuilderFlag.FP16)
        top = max(1, ctx.model.max_batch)
        profile = builder.create_optimization_profile()
        for i in range(network.num_inputs):
            tensor = network.get_input(i)
            dims = list(tensor.shape)
            if dims and dims[0] > 0:  # a pinned batch size: one shape only
                shape = _shapes(dims, dims[0])
                profile.set_shape(tensor.name, shape, shape, shape)
            else:
                profile.set_shape(tensor.name, _shapes(dims, 1), _shapes(dims, max(1, top // 2)), _shapes(dims, top))
        config.add_optimization_profile(profile)
        if calibration_data is not None:
            config.set_flag(trt.BuilderFlag.INT8)
            batch = min(CALIBRATION_BATCH, top)
            calibration = builder.create_optimization_profile()
            for i in range(network.num_inputs):
                tensor = network.get_input(i)
                shape = _shapes(list(tensor.shape), batch)
                calibration.set_shape(tensor.name, shape, shape, shape)
            config.set_calibration_profile(calibration)
            config.int8_calibrator = _calibrator(trt, CudaDriver(), calibration_data, batch)
        serialized = builder.build_serialized_network(network, config)
        if serialized is None:
            raise RuntimeError(f"TensorRT could not build an {self.precision} engine")
        out = self.output_path(ctx)
        out.write_bytes(bytes(serialized))
        return out


class EngineRunner:
    """Runs a native TensorRT engine on numpy feeds (what a worker needs to serve ``.engine`` variants)."""

    providers = ["TensorRT"]

    def __init__(self, path: Path) -> None:
        require_cuda()
        self.trt = import_tensorrt()
        self.cuda = CudaDriver()
        runtime = self.trt.Runtime(self.trt.Logger(self.trt.Logger.WARNING))
        self.engine = runtime.deserialize_cuda_engine(path.read_bytes())
        if self.engine is None:
            raise RuntimeError("TensorRT could not load the engine (built for another GPU or version?)")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        is_input = {n: self.engine.get_tensor_mode(n) == self.trt.TensorIOMode.INPUT for n in names}
        self.inputs = [n for n in names if is_input[n]]
        self.outputs = [n for n in names if not is_input[n]]
        self.buffers: dict[str, tuple[int, int]] = {}

    def _dtype(self, name: str) -> np.dtype:
        return np.dtype(self.trt.nptype(self.engine.get_tensor_dtype(name)))

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

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        for name in self.inputs:
            array = np.ascontiguousarray(feeds[name], dtype=self._dtype(name))
            self.context.set_input_shape(name, array.shape)
            self.cuda.to_device(self._buffer(name, array.nbytes), array)
        results = []
        for name in self.outputs:
            array = np.empty(tuple(self.context.get_tensor_shape(name)), dtype=self._dtype(name))
            self._buffer(name, array.nbytes)
            results.append(array)
        if not self.context.execute_async_v3(0):
            raise RuntimeError("TensorRT execution failed")
        self.cuda.synchronize()
        for name, array in zip(self.outputs, results, strict=True):
            self.cuda.to_host(array, self.buffers[name][0])
        return results

    def __del__(self) -> None:
        for ptr, _ in getattr(self, "buffers", {}).values():
            try:
                self.cuda.free(ptr)
            except RuntimeError:
                pass


@dataclass(frozen=True)
class TensorArg:
    """Name and shape of an engine input/output, shaped like ONNX Runtime's ``NodeArg``."""

    name: str
    shape: list[int | str]


class EngineSession:
    """An ONNX-Runtime-session-shaped wrapper of ``EngineRunner``, so worker instances (which batch over
    ``get_inputs``/``get_outputs``/``run(names, feeds)``) serve ``.engine`` variants unchanged."""

    def __init__(self, path: Path) -> None:
        self.runner = EngineRunner(path)
        engine = self.runner.engine
        # -1 dimensions are dynamic (the engine's optimisation profile covers batch 1..max_batch).
        self._args = {
            name: TensorArg(name, [d if d >= 0 else "batch" for d in engine.get_tensor_shape(name)])
            for name in self.runner.inputs + self.runner.outputs
        }

    def get_inputs(self) -> list[TensorArg]:
        return [self._args[n] for n in self.runner.inputs]

    def get_outputs(self) -> list[TensorArg]:
        return [self._args[n] for n in self.runner.outputs]

    def get_providers(self) -> list[str]:
        return list(self.runner.providers)

    def run(self, output_names: list[str] | None, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        by_name = dict(zip(self.runner.outputs, self.runner.run(feeds), strict=True))
        return [by_name[n] for n in (output_names or self.runner.outputs)]
