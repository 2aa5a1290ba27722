"""TensorRT variants: the TensorRT execution provider, and native engines in FP16 and INT8.

This module builds engines; the core serves them (``infaas.tensorrt_engine``). ``tensorrt`` is imported
lazily (``infaas.runtime.import_tensorrt``): most hosts (and the CPU install) do not have it. Native
engines are built from the ONNX file with one optimisation profile covering batch 1..max_batch; INT8 is
calibrated on the validation inputs. Engines are tied to the GPU model and TensorRT version they were
built with, which is why ``reprofile_model`` re-measures them on new hardware rather than trusting old
numbers.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from infaas.cuda import CudaDriver
from infaas.runtime import TENSORRT_ENGINE, Skip, import_tensorrt, require_cuda
from variant_generator.accuracy import DEFAULT_DYNAMIC_DIM, ValidationSet
from variant_generator.base import BuildContext, VariantGenerator

TRT_PROVIDERS: tuple[str, ...] = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
WORKSPACE_BYTES = 1 << 30
CALIBRATION_ROWS = 256
CALIBRATION_BATCH = 8


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


def _shapes(dims: list[int], batch: int, recorded: tuple[int, ...] | None = None) -> tuple[int, ...]:
    """A concrete input shape: ``batch`` on axis 0, the registration's recorded shape (``ModelInfo.input_shapes``)
    or else a default for any other dynamic axis."""
    if recorded is not None and len(recorded) == len(dims):
        return (batch, *recorded[1:])
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
    providers = (TENSORRT_ENGINE,)
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
            dims, recorded = list(tensor.shape), ctx.model.input_shapes.get(tensor.name)
            if dims and dims[0] > 0:  # a pinned batch size: one shape only
                shape = _shapes(dims, dims[0], recorded)
                profile.set_shape(tensor.name, shape, shape, shape)
            else:
                low, mid, high = (_shapes(dims, b, recorded) for b in (1, max(1, top // 2), top))
                profile.set_shape(tensor.name, low, mid, high)
        config.add_optimization_profile(profile)
        if calibration_data is not None:
            config.set_flag(trt.BuilderFlag.INT8)
            batch = min(CALIBRATION_BATCH, top)
            calibration = builder.create_optimization_profile()
            for i in range(network.num_inputs):
                tensor = network.get_input(i)
                shape = _shapes(list(tensor.shape), batch, ctx.model.input_shapes.get(tensor.name))
                calibration.set_shape(tensor.name, shape, shape, shape)
            config.set_calibration_profile(calibration)
            config.int8_calibrator = _calibrator(trt, CudaDriver(), calibration_data, batch)
        serialized = builder.build_serialized_network(network, config)
        if serialized is None:
            raise RuntimeError(f"TensorRT could not build an {self.precision} engine")
        out = self.output_path(ctx)
        out.write_bytes(bytes(serialized))
        return out
