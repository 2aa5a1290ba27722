"""Hand-built ONNX graphs for the example zoo, from plain numpy weights.

The graphs are written with ``onnx.helper`` instead of ``torch.onnx.export`` so that the result does not
depend on which exporter a PyTorch release ships, and so that every weighted layer is a plain
``MatMul`` + ``Add`` or ``Conv`` node (plus ``Relu``/``MaxPool``, and for the CNN's test-time
augmentation ``Pad``/``Slice``/``Concat``/``ReduceMean``): ops ONNX Runtime's quantizer knows how to rewrite.

Every graph has the same interface, so that all zoo models are interchangeable for one task:

* input ``input``: float32 ``[batch, 64]``, the 8x8 digit image flattened row-major, pixel values / 16
  (so in ``[0, 1]``);
* output ``logits``: float32 ``[batch, 10]``, unnormalised class scores (argmax is the predicted digit;
  apply a softmax for probabilities).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
NUM_FEATURES = 64  # 8x8 digits, flattened
NUM_CLASSES = 10
OPSET = 17
IR_VERSION = 8  # what opset 17 needs; a newer IR would shut out older ONNX Runtime builds


@dataclass(frozen=True)
class Dense:
    """A fully connected layer ``y = x @ weight + bias`` (``weight`` is ``[in, out]``)."""

    weight: np.ndarray
    bias: np.ndarray


@dataclass(frozen=True)
class Conv:
    """A 3x3 'same' convolution (``weight`` is ``[out, in, k, k]``), then ReLU, then optionally a 2x2 max-pool."""

    weight: np.ndarray
    bias: np.ndarray
    pool: bool


def bilinear_upsample_matrix(size: int, source: int = 8) -> np.ndarray:
    """The ``[source², size²]`` matrix that bilinearly resizes a flattened ``source x source`` image.

    Resizing is linear, so doing it as one ``MatMul`` keeps the CNN graph to quantizable ops and lets
    training use the very same operator (``x @ U``) as inference. Pixel centres are aligned as in
    ``align_corners=False`` resizing, with edge clamping.
    """
    axis = np.zeros((source, size), dtype=np.float64)
    for j in range(size):
        t = min(max((j + 0.5) * source / size - 0.5, 0.0), source - 1.0)
        i0 = int(np.floor(t))
        i1 = min(i0 + 1, source - 1)
        w = t - i0
        axis[i0, j] += 1.0 - w
        axis[i1, j] += w
    # kron(A, A)[r*source + c, i*size + j] = A[r, i] * A[c, j]: separable row/column interpolation.
    return np.kron(axis, axis).astype(np.float32)


class _GraphBuilder:
    """Accumulates nodes and initializers; names every value uniquely."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._count = 0

    def const(self, name: str, array: np.ndarray) -> str:
        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def node(self, op: str, inputs: Sequence[str], output: str | None = None, **attrs: object) -> str:
        self._count += 1
        out = output or f"{op.lower()}_{self._count}"
        self.nodes.append(helper.make_node(op, list(inputs), [out], name=f"{op}_{self._count}", **attrs))
        return out

    def dense(self, x: str, layer: Dense, prefix: str, output: str | None = None) -> str:
        w = self.const(f"{prefix}.weight", layer.weight.astype(np.float32))
        b = self.const(f"{prefix}.bias", layer.bias.astype(np.float32))
        return self.node("Add", [self.node("MatMul", [x, w]), b], output)

    def model(self, graph_name: str, doc: str) -> onnx.ModelProto:
        graph = helper.make_graph(
            self.nodes,
            graph_name,
            [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["batch", NUM_FEATURES])],
            [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["batch", NUM_CLASSES])],
            self.initializers,
        )
        model = helper.make_model(
            graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="infaas.examples", doc_string=doc
        )
        model.ir_version = IR_VERSION
        onnx.checker.check_model(model, full_check=True)
        return model


def mlp_graph(layers: Sequence[Dense], name: str, doc: str = "") -> onnx.ModelProto:
    """``Dense → ReLU → … → Dense``; one layer is (multinomial) logistic regression."""
    g = _GraphBuilder()
    x = INPUT_NAME
    for i, layer in enumerate(layers):
        last = i == len(layers) - 1
        x = g.dense(x, layer, f"fc{i + 1}", OUTPUT_NAME if last else None)
        if not last:
            x = g.node("Relu", [x])
    return g.model(name, doc)


def cnn_graph(
    size: int,
    convs: Sequence[Conv],
    head: Sequence[Dense],
    name: str,
    doc: str = "",
    views: Sequence[tuple[int, int]] = ((1, 1),),
) -> onnx.ModelProto:
    """Upsample to ``size x size`` (a ``MatMul``), the conv stack, flatten, then an MLP head.

    With several ``views`` (test-time augmentation) the upsampled image is padded by one pixel and cropped
    at each ``(dy, dx)`` offset; the crops are stacked along the batch axis, run through the network
    together, and their logits averaged, so the graph really does ``len(views)`` times the work of one
    pass (whether that buys accuracy depends on the data; on the centred digits it does not).
    """
    g = _GraphBuilder()
    x = g.node("MatMul", [INPUT_NAME, g.const("upsample", bilinear_upsample_matrix(size))])
    x = g.node("Reshape", [x, g.const("image_shape", np.array([-1, 1, size, size], dtype=np.int64))])
    if len(views) > 1:
        padded = g.node("Pad", [x, g.const("view_pads", np.array([0, 0, 1, 1, 0, 0, 1, 1], dtype=np.int64))])
        axes = g.const("view_axes", np.array([2, 3], dtype=np.int64))
        crops = []
        for i, (dy, dx) in enumerate(views):
            starts = g.const(f"view{i}_starts", np.array([dy, dx], dtype=np.int64))
            ends = g.const(f"view{i}_ends", np.array([dy + size, dx + size], dtype=np.int64))
            crops.append(g.node("Slice", [padded, starts, ends, axes]))
        x = g.node("Concat", crops, axis=0)
    for i, conv in enumerate(convs):
        k = conv.weight.shape[-1]
        w = g.const(f"conv{i + 1}.weight", conv.weight.astype(np.float32))
        b = g.const(f"conv{i + 1}.bias", conv.bias.astype(np.float32))
        x = g.node("Conv", [x, w, b], kernel_shape=[k, k], pads=[k // 2] * 4)
        x = g.node("Relu", [x])
        if conv.pool:
            x = g.node("MaxPool", [x], kernel_shape=[2, 2], strides=[2, 2])
    x = g.node("Flatten", [x], axis=1)
    for i, layer in enumerate(head):
        last = i == len(head) - 1
        x = g.dense(x, layer, f"fc{i + 1}", OUTPUT_NAME if last and len(views) == 1 else None)
        if not last:
            x = g.node("Relu", [x])
    if len(views) > 1:
        shape = g.const("views_shape", np.array([len(views), -1, NUM_CLASSES], dtype=np.int64))
        x = g.node("Reshape", [x, shape])
        g.node("ReduceMean", [x], OUTPUT_NAME, axes=[0], keepdims=0)
    return g.model(name, doc)
