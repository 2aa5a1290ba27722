"""FP16 on the GPU (CUDA execution provider): weights and activations in half precision.

Inputs and outputs stay FP32 (``keep_io_types``) so clients send the same tensors to every variant.
Only built with a CUDA device: the CPU provider has few FP16 kernels and would be slower, not faster.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import onnx

from infaas.runtime import Skip, require_cuda
from variant_generator.base import BuildContext, VariantGenerator
from variant_generator.cuda import CUDA_PROVIDERS
from variant_generator.int8_dynamic import ML_DOMAIN


def _converter() -> Callable[..., Any]:
    """``convert_float_to_float16`` from onnxruntime's transformer tools, else onnxconverter-common."""
    try:
        from onnxruntime.transformers.float16 import convert_float_to_float16
    except ImportError:
        try:
            from onnxconverter_common.float16 import convert_float_to_float16
        except ImportError as exc:
            raise Skip("no FP16 converter (onnxruntime.transformers or onnxconverter-common)") from exc
    return convert_float_to_float16


class CudaFp16(VariantGenerator):
    """FP16 weights/activations with FP32 I/O, on the CUDA execution provider."""

    name = "cuda-fp16"
    kind = "cuda-fp16"
    precision = "fp16"
    hardware = "gpu"
    providers = CUDA_PROVIDERS

    def build(self, ctx: BuildContext) -> Path:
        require_cuda()
        convert = _converter()
        model = onnx.load(str(ctx.source))
        if all(node.domain == ML_DOMAIN for node in model.graph.node):
            raise Skip("graph has only ai.onnx.ml operators, which have no FP16 kernels")
        out = self.output_path(ctx)
        onnx.save(convert(model, keep_io_types=True), str(out))
        return out
