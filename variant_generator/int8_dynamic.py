"""INT8 with dynamic (runtime-computed) activation scales: no calibration data needed.

Only MatMul-like operators are quantized: on this kind of host dynamic INT8 made CNNs 2-8x *slower*
at batch 1 (``ConvInteger`` has no fast kernel), while transformer and MLP MatMuls gain. So on a CNN only
the classifier head is quantized; ``require_quantized`` then skips the variant (it would be INT8 in name
only: open-nsfw's was 1 MatMul = 0.00019% of its MACs, ``variant_generator.quantized_share``) and points to
static INT8. The helpers here are shared with the static quantizer.
"""

from __future__ import annotations

import logging
from pathlib import Path

import onnx
from onnx import version_converter
from onnxruntime.quantization import QuantType, quantize_dynamic
from onnxruntime.quantization.shape_inference import quant_pre_process

from infaas.catalog import ModelInfo
from infaas.runtime import Skip
from variant_generator.base import BuildContext, VariantGenerator
from variant_generator.quantized_share import measure, require_quantized_share

log = logging.getLogger(__name__)

ML_DOMAIN = "ai.onnx.ml"
DYNAMIC_OP_TYPES = ["MatMul", "Gemm", "Attention", "LSTM", "GRU"]
QUANT_OPSET = 13  # per-channel QuantizeLinear/DequantizeLinear (their ``axis``) need it
_QUANTIZED_OPS = {"QuantizeLinear", "DynamicQuantizeLinear", "MatMulInteger", "DynamicQuantizeMatMul"}


def _upgraded_opset(ctx: BuildContext, model: onnx.ModelProto) -> Path:
    """``ctx.source``, converted to opset ``QUANT_OPSET`` if older (best effort: the source if that fails).

    Static QDQ quantization writes per-channel ``DequantizeLinear`` nodes with an ``axis`` (opset 13), so on
    open-nsfw (opset 9) it produced a model ONNX Runtime refused to load ("Unrecognized attribute: axis for
    operator DequantizeLinear"); converted to opset 13 (0.5 s) it quantizes and loads, its FP32 outputs
    unchanged (max difference 0.0).
    """
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), QUANT_OPSET)
    if opset >= QUANT_OPSET:
        return ctx.source
    upgraded = ctx.workdir / f"opset{QUANT_OPSET}.onnx"
    try:
        onnx.save(version_converter.convert_version(model, QUANT_OPSET), str(upgraded))
    except Exception as exc:  # the converter lacks some adapters; quantizing the original may still work
        log.info("opset %d -> %d conversion failed for %s (%s)", opset, QUANT_OPSET, ctx.model.name, exc)
        upgraded.unlink(missing_ok=True)
        return ctx.source
    return upgraded


def quantizable_source(ctx: BuildContext) -> Path:
    """The model pre-processed for quantization (opset 13 or later, shape inference, fusions), or the
    original if that fails.

    Raises ``Skip`` for graphs made only of ``ai.onnx.ml`` operators, which ONNX Runtime cannot quantize.
    """
    model = onnx.load(str(ctx.source), load_external_data=False)
    if model.graph.node and all(node.domain == ML_DOMAIN for node in model.graph.node):
        raise Skip("graph has only ai.onnx.ml operators, which cannot be quantized")
    prepared = ctx.workdir / "quant-preprocessed.onnx"
    if prepared.exists():
        return prepared
    source = _upgraded_opset(ctx, model)
    try:
        # Symbolic shape inference is skipped: on graphs it cannot finish (MiniLM) ONNX Runtime dumps
        # `sym_shape_infer_temp.onnx` and its external data into the *current directory* of the server.
        quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
    except Exception as exc:  # best effort: quantizing the raw graph still works, just less well
        log.info("quant_pre_process failed for %s (%s); quantizing the original graph", ctx.model.name, exc)
        prepared.unlink(missing_ok=True)
        return source
    return prepared


def require_quantized(path: Path, model: ModelInfo, how: str, instead: str) -> Path:
    """Skip when the quantizer found nothing to quantize (the "variant" would just be FP32 again), or when
    what it quantized is too little of the compute to call the variant INT8 (``require_quantized_share``;
    ``how`` names the quantization, ``instead`` what the owner can do)."""
    ops = {node.op_type for node in onnx.load(str(path)).graph.node}
    if not ops & _QUANTIZED_OPS and not any(op.startswith("QLinear") or op.endswith("Integer") for op in ops):
        raise Skip("no operator in this graph could be quantized")
    require_quantized_share(path, model, how, instead)
    return path


def int8_notes(path: Path, model: ModelInfo) -> str:
    """What an INT8 variant really quantized, shown on the variant: e.g. ``INT8: quantized 53 Conv, 1 MatMul
    = 100.0% of MACs``."""
    return f"INT8: quantized {measure(path, model).describe()}"


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
        return require_quantized(
            out,
            ctx.model,
            "dynamic INT8",
            "Conv is not quantized dynamically (ConvInteger has no fast kernel here); use cpu-int8-static "
            "with validation inputs (upload validation.npz)",
        )

    def notes(self, artifact: Path, ctx: BuildContext) -> str | None:
        return int8_notes(artifact, ctx.model)
