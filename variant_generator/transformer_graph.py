"""Recognising a transformer encoder in an ONNX graph, and rewriting it with ONNX Runtime's transformer fusions.

A graph is a transformer encoder when it has self-attention -- ``MatMul -> (scale/mask) -> Softmax -> MatMul``
-- and layer normalisation (``LayerNormalization``, or the ``ReduceMean -> Sub -> Pow -> ReduceMean -> Sqrt``
chain older exporters emit). ``onnxruntime.transformers.optimizer`` then fuses attention, layer norms with their
residual ``Add`` (``SkipLayerNormalization``), bias + GELU and the embedding block into ONNX Runtime's contrib
operators. It needs the head count to fuse attention: with ``num_heads=0`` it guesses from the graph and, on
all-MiniLM-L6-v2 exported by PyTorch 2.13, failed ("Failed to detect num_heads and hidden_size") and fused no
attention at all (12 SkipLayerNormalization + 6 BiasGelu only); given 12 heads / 384 it fused 6 Attention and
1 EmbedLayerNormalization too, cosine 1.000000 to the original. So both are read from the graph here: the hidden
size from the layer norms' scale, the head count from the ``Reshape`` that splits it into ``[heads, head_size]``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

# Ops that may sit between the scores MatMul and the Softmax (scale, mask), or after the Softmax (dropout, cast).
_SCORE_OPS = frozenset({"Div", "Mul", "Add", "Where", "Cast", "Sub"})
_PROBS_OPS = frozenset({"Cast", "Dropout", "Identity"})
_LAYER_NORM_CHAIN = frozenset({"ReduceMean", "Pow", "Sqrt"})
_MAX_HOPS = 4
# What ``get_fused_operator_statistics`` reports that counts as a transformer fusion. ``LayerNormalization`` is
# left out: the statistics count the ones an exporter already wrote (MiniLM: 1 with attention unfused).
FUSED_OPS = (
    "Attention",
    "MultiHeadAttention",
    "EmbedLayerNormalization",
    "SkipLayerNormalization",
    "SkipSimplifiedLayerNormalization",
    "SimplifiedLayerNormalization",
    "BiasGelu",
    "FastGelu",
    "Gelu",
    "GemmFastGelu",
)


@dataclass(frozen=True)
class TransformerShape:
    """What the graph says about its encoder: attention blocks, layer norms, and the sizes the fusions need.

    ``num_heads``/``hidden_size`` are 0 when they could not be read (the optimizer then guesses).
    """

    attention_blocks: int
    layer_norms: int
    num_heads: int
    hidden_size: int

    @property
    def is_transformer(self) -> bool:
        """Self-attention and layer normalisation both present."""
        return self.attention_blocks > 0 and self.layer_norms > 0

    def describe(self) -> str:
        """E.g. ``6 attention blocks, 13 layer norms, 12 heads x 32 (hidden 384)``."""
        sizes = (
            f"{self.num_heads} heads x {self.hidden_size // self.num_heads} (hidden {self.hidden_size})"
            if self.num_heads and self.hidden_size
            else "head count not found"
        )
        return f"{self.attention_blocks} attention blocks, {self.layer_norms} layer norms, {sizes}"


class _Graph:
    """Producers, consumers and constant values of one graph."""

    def __init__(self, model: onnx.ModelProto) -> None:
        graph = model.graph
        self.producer = {out: node for node in graph.node for out in node.output}
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        for node in graph.node:
            for name in node.input:
                self.consumers.setdefault(name, []).append(node)
        self.constants: dict[str, np.ndarray] = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
        for node in graph.node:
            if node.op_type == "Constant":
                value = next((a.t for a in node.attribute if a.name == "value"), None)
                if value is not None:
                    self.constants[node.output[0]] = numpy_helper.to_array(value)

    def upstream(self, name: str, through: frozenset[str]) -> Iterator[onnx.NodeProto]:
        """Nodes producing ``name``, walking back through ``through`` ops for up to ``_MAX_HOPS`` steps."""
        frontier = [name]
        for _ in range(_MAX_HOPS):
            nodes = [self.producer[n] for n in frontier if n in self.producer]
            yield from nodes
            frontier = [i for node in nodes if node.op_type in through for i in node.input]

    def downstream(self, name: str, through: frozenset[str]) -> Iterator[onnx.NodeProto]:
        """Nodes consuming ``name``, walking forward through ``through`` ops for up to ``_MAX_HOPS`` steps."""
        frontier = [name]
        for _ in range(_MAX_HOPS):
            nodes = [c for n in frontier for c in self.consumers.get(n, [])]
            yield from nodes
            frontier = [o for node in nodes if node.op_type in through for o in node.output]

    def shape_values(self, name: str) -> list[int | None]:
        """A ``Reshape``'s target shape, element by element where constant (a ``Concat`` of pieces included)."""
        if name in self.constants:
            return [int(v) for v in self.constants[name].reshape(-1)]
        node = self.producer.get(name)
        if node is None or node.op_type != "Concat":
            return []
        values: list[int | None] = []
        for piece in node.input:
            constant = self.constants.get(piece)
            if constant is None:
                source = self.producer.get(piece)  # Unsqueeze(Constant) is how PyTorch writes a literal
                if source is not None and source.op_type == "Unsqueeze" and source.input[0] in self.constants:
                    constant = self.constants[source.input[0]]
            values.extend([int(v) for v in constant.reshape(-1)] if constant is not None else [None])
        return values


def _attention_blocks(graph: _Graph, model: onnx.ModelProto) -> int:
    """Softmaxes fed (through scale/mask ops) by a MatMul and feeding a MatMul: ``softmax(QK^T) V``."""
    count = 0
    for node in model.graph.node:
        if node.op_type != "Softmax":
            continue
        scores = any(n.op_type == "MatMul" for n in graph.upstream(node.input[0], _SCORE_OPS))
        mixes = any(n.op_type == "MatMul" for n in graph.downstream(node.output[0], _PROBS_OPS))
        count += scores and mixes
    return count


def _layer_norms(model: onnx.ModelProto) -> tuple[int, list[int]]:
    """Layer norms (fused or decomposed) and the sizes of the fused ones' scales."""
    ops = Counter(node.op_type for node in model.graph.node)
    fused = [n for n in model.graph.node if n.op_type in ("LayerNormalization", "SkipLayerNormalization")]
    decomposed = min(ops["Sqrt"], ops["Pow"], ops["ReduceMean"] // 2) if _LAYER_NORM_CHAIN <= ops.keys() else 0
    graph_constants = {t.name: list(t.dims) for t in model.graph.initializer}
    sizes = [graph_constants[n.input[1]][-1] for n in fused if len(n.input) > 1 and graph_constants.get(n.input[1])]
    return len(fused) + decomposed, sizes


def _head_count(graph: _Graph, model: onnx.ModelProto, hidden: int) -> int:
    """The most common ``heads`` of a ``Reshape`` to ``[..., heads, head_size]`` with ``heads * head_size = hidden``
    (``heads`` may be written -1: all-MiniLM-L6-v2 exported with transformers 5 reshapes to ``[b, s, -1, 32]``)."""
    found: Counter[int] = Counter()
    for node in model.graph.node:
        if node.op_type != "Reshape" or len(node.input) < 2:
            continue
        values = graph.shape_values(node.input[1])
        if len(values) < 4 or not values[-1] or values[-1] <= 0 or values[-2] is None:
            continue
        heads, size = values[-2], values[-1]
        if heads == -1 and hidden and hidden % size == 0:  # transformers 5 writes view(..., -1, head_size)
            heads = hidden // size
        if heads > 0 and (hidden == 0 or heads * size == hidden):
            found[heads] += 1
    return found.most_common(1)[0][0] if found else 0


def inspect(model: onnx.ModelProto) -> TransformerShape:
    """Attention blocks, layer norms, head count and hidden size of ``model`` (see the module doc)."""
    graph = _Graph(model)
    blocks = _attention_blocks(graph, model)
    norms, sizes = _layer_norms(model)
    hidden = Counter(sizes).most_common(1)[0][0] if sizes else 0
    heads = _head_count(graph, model, hidden) if blocks else 0
    if heads and not hidden:
        heads = 0  # a head count without the hidden size it divides is a guess; let the optimizer guess
    return TransformerShape(blocks, norms, heads, hidden if heads else 0)


def inspect_file(path: Path) -> TransformerShape:
    """``inspect`` of an ONNX file (weights loaded: the head count may be a constant tensor)."""
    return inspect(onnx.load(str(path)))


def optimize(source: Path, out: Path, shape: TransformerShape) -> dict[str, int]:
    """Write ``source`` rewritten by ONNX Runtime's BERT optimizer to ``out``; the fusions it made, by operator.

    ``opt_level=0``: only the transformer fusions are applied here; the session a worker opens applies ONNX
    Runtime's generic graph optimizations at load time (baking them in would tie the file to this host's
    instruction set, see ``cpu_fp32``).
    """
    from onnxruntime.transformers.optimizer import optimize_model

    optimized = optimize_model(
        str(source),
        model_type="bert",
        num_heads=shape.num_heads,
        hidden_size=shape.hidden_size,
        opt_level=0,
        use_gpu=False,
    )
    statistics = optimized.get_fused_operator_statistics()
    optimized.save_model_to_file(str(out))
    return {op: int(statistics.get(op, 0)) for op in FUSED_OPS if statistics.get(op, 0)}


def describe_fusions(fusions: Mapping[str, int]) -> str:
    """E.g. ``6 Attention, 12 SkipLayerNormalization, 6 BiasGelu``, largest count first."""
    ordered = sorted(fusions.items(), key=lambda kv: (-kv[1], kv[0]))
    return ", ".join(f"{count} {op}" for op, count in ordered) or "none"
