"""FP32 on the GPU with ONNX Runtime's CUDA execution provider.

The artifact is the original graph: ONNX Runtime optimises it for the CUDA provider at load time, and a
file saved after CUDA-specific fusions would not load on a CPU-only build. The provider check that
proves the session really runs on the GPU happens when it is loaded (``infaas.runtime.open_session``).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from infaas.runtime import require_cuda
from variant_generator.base import BuildContext, VariantGenerator

CUDA_PROVIDERS: tuple[str, ...] = ("CUDAExecutionProvider", "CPUExecutionProvider")


class CudaFp32(VariantGenerator):
    """The original graph served by the CUDA execution provider."""

    name = "cuda-fp32"
    kind = "cuda-fp32"
    precision = "fp32"
    hardware = "gpu"
    providers = CUDA_PROVIDERS

    def build(self, ctx: BuildContext) -> Path:
        require_cuda()
        out = self.output_path(ctx)
        shutil.copyfile(ctx.source, out)
        return out
