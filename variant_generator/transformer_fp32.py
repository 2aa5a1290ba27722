"""FP32 on the CPU with ONNX Runtime's transformer fusions (attention, skip layer norm, bias + GELU, embeddings).

``cpu-fp32`` applies ONNX Runtime's generic graph optimizations, which do not recognise a transformer's attention
block; ``onnxruntime.transformers.optimizer`` rewrites it into the ``Attention`` contrib operator (one kernel for
QKV projection, scores, mask, softmax and mixing). Only transformer encoders get this variant
(``transformer_graph.inspect``); others are skipped saying what was looked for. The fusions made are recorded on
the variant (``notes``), and the variant is profiled like any other: whether it is faster on this host is what its
profiles say (on all-MiniLM-L6-v2 on a loaded 2-core host it was within noise of ``cpu-fp32`` at batch 1 and 8,
``benchmarks/results/transformer_variants.json``).
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

from infaas.runtime import Skip
from variant_generator import transformer_graph
from variant_generator.base import BuildContext, VariantGenerator

log = logging.getLogger(__name__)

FUSIONS_SUFFIX = ".fusions.json"


def require_transformer(shape: transformer_graph.TransformerShape) -> transformer_graph.TransformerShape:
    """``shape`` if it is a transformer encoder's, else ``Skip`` saying what was looked for."""
    if not shape.is_transformer:
        raise Skip(
            "not a transformer encoder: the transformer optimizer needs self-attention (MatMul -> Softmax -> MatMul) "
            f"and layer normalisation; found {shape.attention_blocks} attention block(s), "
            f"{shape.layer_norms} layer norm(s)"
        )
    return shape


def optimized_transformer(ctx: BuildContext) -> tuple[Path, dict[str, object]]:
    """The transformer-optimized graph of ``ctx.source`` under ``ctx.workdir`` and what was fused, made once per
    build (the static INT8 search quantizes it too); ``Skip`` for graphs that are not transformer encoders or
    where the optimizer fused nothing."""
    out = ctx.workdir / "transformer-optimized.onnx"
    record = out.with_suffix(FUSIONS_SUFFIX)
    if out.exists() and record.exists():
        return out, json.loads(record.read_text())
    shape = require_transformer(transformer_graph.inspect_file(ctx.source))
    fusions = transformer_graph.optimize(ctx.source, out, shape)
    log.info("transformer fusions for %s (%s): %s", ctx.model.name, shape.describe(), fusions)
    if not fusions:
        out.unlink(missing_ok=True)
        raise Skip(f"the transformer optimizer fused nothing in this graph ({shape.describe()}): same as cpu-fp32")
    details: dict[str, object] = {"fusions": fusions, "graph": shape.describe()}
    record.write_text(json.dumps(details))
    return out, details


class CpuFp32Transformer(VariantGenerator):
    """``onnxruntime.transformers.optimizer`` (model type ``bert``) of a transformer encoder, FP32."""

    name = "cpu-fp32-transformer"
    kind = "cpu-fp32-transformer"
    precision = "fp32"

    def precheck(self, ctx: BuildContext) -> None:
        require_transformer(transformer_graph.inspect_file(ctx.source))

    def build(self, ctx: BuildContext) -> Path:
        optimized, _ = optimized_transformer(ctx)
        out = self.output_path(ctx)
        shutil.copyfile(optimized, out)
        return out

    def notes(self, artifact: Path, ctx: BuildContext) -> str | None:
        record = ctx.workdir / ("transformer-optimized" + FUSIONS_SUFFIX)
        if not record.exists():
            return None
        details = json.loads(record.read_text())
        return f"transformer fusions: {transformer_graph.describe_fusions(details['fusions'])} ({details['graph']})"
