"""INT8 with dynamic (runtime-computed) activation scales: no calibration data needed.

Only MatMul-like operators are quantized: on this kind of host dynamic INT8 made CNNs 2-8x *slower*
at batch 1 (``ConvInteger`` has no fast kernel), while transformer and MLP MatMuls gain. The helpers
here are shared with the static quantizer.
"""

from __future__ import annotations

import logging
from pathlib import Path

import onnx
from onnxruntime.quantization import QuantType, quantize_dynamic
from onnxruntime.quantization.shape_inference import quant_pre_process

from infaas.runtime import Skip
from variant_generator.base import BuildContext, VariantGenerator

log = logging.getLogger(__name__)

ML_DOMAIN = "ai.onnx.ml"
DYNAMIC_OP_TYPES = ["MatMul", "Gemm", "Attention", "LSTM", "GRU"]
_QUANTIZED_OPS = {"QuantizeLinear", "DynamicQuantizeLinear", "MatMulInteger", "DynamicQuantizeMatMul"}


def quantizable_source(ctx: BuildContext) -> Path:
    """The model pre-processed for quantization (shape inference, fusions), or the original if that fails.

    Raises ``Skip`` for graphs made only of ``ai.onnx.ml`` operators, which ONNX Runtime cannot quantize.
    """
    graph = onnx.load(str(ctx.source), load_external_data=False).graph
    if graph.node and all(node.domain == ML_DOMAIN for node in graph.node):
        raise Skip("graph has only ai.onnx.ml operators, which cannot be quantized")
    prepared = ctx.workdir / "quant-preprocessed.onnx"
    if prepared.exists():
        return prepared
    try:
        # Symbolic shape inference is skipped: on graphs it cannot finish (MiniLM) ONNX Runtime dumps
        # `sym_shape_infer_temp.onnx` and its external data into the *current directory* of the server.
        quant_pre_process(str(ctx.source), str(prepared), skip_symbolic_shape=True)
    except Exception as exc:  # best effort: quantizing the raw graph still works, just less well
        log.info("quant_pre_process failed for %s (%s); quantizing the original graph", ctx.model.name, exc)
        prepared.unlink(missing_ok=True)
        return ctx.source
    return prepared


def require_quantized(path: Path) -> Path:
    """Skip when the quantizer found nothing to quantize (the "variant" would just be FP32 again)."""
    ops = {node.op_type for node in onnx.load(str(path)).graph.node}
    if not ops & _QUANTIZED_OPS and not any(op.startswith("QLinear") or op.endswith("Integer") for op in ops):
        raise Skip("no operator in this graph could be quantized")
    return path


class Int8Dynamic(VariantGenerator):
    """``quantize_dynamic`` of the MatMul-like operators, INT8 per-channel weights."""

    name = "cpu-int8-dynamic"
    kind = "cpu-int8-dynamic"
    precision = "int8"

    def build(self, ctx: BuildContext) -> Path:
        out = self.output_path(ctx)
        quantize_dynamic(
            quantizable_source(ctx),
            out,
            op_types_to_quantize=DYNAMIC_OP_TYPES,
            weight_type=QuantType.QInt8,
            per_channel=True,  # per-tensor cost MiniLM cosine 0.963 vs 0.993 per-channel, at equal speed
        )
        return require_quantized(out)
