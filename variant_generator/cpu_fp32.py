"""FP32 on the CPU with ONNX Runtime's graph optimizations applied once and saved as the artifact.

This is the baseline variant: it must be ready for every valid model. The saved file uses the
``EXTENDED`` level (fusions, constant folding) because ``ENABLE_ALL`` also bakes in layout transforms
tuned to this host's instruction set, which would make the file wrong for another worker; the session
a worker opens applies the remaining ``ENABLE_ALL`` passes at load time anyway.
"""

from __future__ import annotations

from pathlib import Path

import onnxruntime as ort

from variant_generator.base import BuildContext, VariantGenerator


class CpuFp32(VariantGenerator):
    """Graph-optimized FP32 for the CPU execution provider."""

    name = "cpu-fp32"
    kind = "cpu-fp32"
    precision = "fp32"

    def build(self, ctx: BuildContext) -> Path:
        out = self.output_path(ctx)
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        options.optimized_model_filepath = str(out)
        options.log_severity_level = 3
        ort.InferenceSession(str(ctx.source), sess_options=options, providers=["CPUExecutionProvider"])
        return out
