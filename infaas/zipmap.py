"""Serves a scikit-learn classifier's ZipMap output as the probability tensor it wraps.

skl2onnx's default export ends a classifier with a ``ZipMap`` (domain ``ai.onnx.ml``), which turns the
probabilities, float [N, classes], into a ``seq(map(int64|string, float))``: one dict per row. infaas
serves tensors only (inputs are conformed, batched and split as arrays, and accuracy is scored on
arrays), and the dicts carry nothing the tensor lacks: column j is the j-th label of the ZipMap's
``classlabels_int64s`` / ``classlabels_strings``. So registration removes such a ZipMap and gives its
output's name to the probability tensor: the output keeps its name and becomes the float tensor, and the
rewrite (with the class of each column) is recorded on the model and shown to its owner. The graph is then
what skl2onnx exports with ``zipmap: False`` but for the name, so every variant generator sees the graph
it is tested on: an ``Identity`` in the ZipMap's place instead broke the FP16 variant (the converter cast
the Identity to float16 behind the float-only ``Normalizer``, and ONNX Runtime refused the result).

Only a ZipMap whose result is a graph output and feeds no other node, and whose input some node of the
main graph computes, is rewritten; any other non-tensor value is left for the signature check to refuse by
name.
"""

from __future__ import annotations

import onnx
from onnx import TensorProto, helper

ZIPMAP_DOMAIN = "ai.onnx.ml"
# Enough to read off a typical classifier's classes; past it the description gives the count only.
MAX_LABELS_SHOWN = 32


def describe_type(value: onnx.TypeProto) -> str:
    """An ONNX type as ONNX Runtime writes it, e.g. ``seq(map(int64, tensor(float)))``."""
    kind = value.WhichOneof("value")
    if kind == "tensor_type":
        return f"tensor({_element(value.tensor_type.elem_type)})"
    if kind == "sparse_tensor_type":
        return f"sparse_tensor({_element(value.sparse_tensor_type.elem_type)})"
    if kind == "sequence_type":
        return f"seq({describe_type(value.sequence_type.elem_type)})"
    if kind == "map_type":
        return f"map({_element(value.map_type.key_type)}, {describe_type(value.map_type.value_type)})"
    if kind == "optional_type":
        return f"optional({describe_type(value.optional_type.elem_type)})"
    return "a value of undeclared type"


def _element(elem_type: int) -> str:
    return TensorProto.DataType.Name(elem_type).lower()


def _class_labels(node: onnx.NodeProto) -> list[int] | list[str]:
    for attr in node.attribute:
        if attr.name == "classlabels_int64s":
            return list(attr.ints)
        if attr.name == "classlabels_strings":
            return [s.decode("utf-8", "replace") for s in attr.strings]
    return []


def _columns(labels: list[int] | list[str]) -> str:
    if not labels:
        return "the ZipMap names no classes"
    if labels == list(range(len(labels))):
        return f"column j is class j (0..{len(labels) - 1})"
    if len(labels) > MAX_LABELS_SHOWN:
        return f"columns are the ZipMap's {len(labels)} class labels in order"
    return f"columns are classes {', '.join(map(repr, labels))}"


def unwrap_zipmaps(model: onnx.ModelProto) -> tuple[str, ...]:
    """Replace each ZipMap that makes a graph output by its probability tensor, in place.

    Returns one description per rewrite (empty when the model has none), e.g. ``ZipMap output
    'output_probability' (seq(map(int64, tensor(float)))) is served as its probability tensor float32
    [N, 3]; column j is class j (0..2)``.
    """
    graph = model.graph
    outputs = {output.name: output for output in graph.output}
    consumed = {name for node in graph.node for name in node.input}
    computed = {name for node in graph.node for name in node.output}
    not_renamable = {value.name for value in [*graph.input, *graph.initializer, *graph.output]}
    rewrites: list[str] = []
    for node in list(graph.node):
        if node.op_type != "ZipMap" or node.domain != ZIPMAP_DOMAIN or len(node.input) != 1 or len(node.output) != 1:
            continue
        probabilities, name = node.input[0], node.output[0]
        if name not in outputs or name in consumed or probabilities not in computed or probabilities in not_renamable:
            continue
        labels = _class_labels(node)
        was = describe_type(outputs[name].type)
        graph.node.remove(node)
        _rename(graph, probabilities, name)
        kept = [info for info in graph.value_info if info.name != probabilities]
        del graph.value_info[:]
        graph.value_info.extend(kept)
        outputs[name].type.CopyFrom(helper.make_tensor_type_proto(TensorProto.FLOAT, ["N", len(labels) or None]))
        classes = len(labels) or "classes"
        rewrites.append(
            f"ZipMap output {name!r} ({was}) is served as its probability tensor float32 [N, {classes}]; "
            f"{_columns(labels)}"
        )
    return tuple(rewrites)


def _rename(graph: onnx.GraphProto, old: str, new: str) -> None:
    """Rename a computed value wherever nodes make or read it, subgraphs (which may read it) included."""
    for node in graph.node:
        for values in (node.input, node.output):
            for index, value in enumerate(values):
                if value == old:
                    values[index] = new
        for attr in node.attribute:
            for sub in [attr.g, *attr.graphs] if attr.HasField("g") else attr.graphs:
                _rename(sub, old, new)
