"""Tiny ONNX models built in code, so tests need no downloads and no other module's models."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def mlp_model(in_dim: int = 8, hidden: int = 16, classes: int = 3, seed: int = 0) -> onnx.ModelProto:
    """A 2-layer MLP classifier with a dynamic batch axis: input ``x`` [batch, in_dim] → ``y`` [batch, classes]."""
    rng = np.random.default_rng(seed)
    w1 = numpy_helper.from_array(rng.normal(size=(in_dim, hidden)).astype(np.float32), "w1")
    b1 = numpy_helper.from_array(rng.normal(size=(hidden,)).astype(np.float32), "b1")
    w2 = numpy_helper.from_array(rng.normal(size=(hidden, classes)).astype(np.float32), "w2")
    b2 = numpy_helper.from_array(rng.normal(size=(classes,)).astype(np.float32), "b2")
    graph = helper.make_graph(
        [
            helper.make_node("Gemm", ["x", "w1", "b1"], ["h"]),
            helper.make_node("Relu", ["h"], ["hr"]),
            helper.make_node("Gemm", ["hr", "w2", "b2"], ["y"]),
        ],
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", in_dim])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", classes])],
        [w1, b1, w2, b2],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def write_mlp(path: Path, **kwargs: int) -> Path:
    """Write ``mlp_model(**kwargs)`` to ``path``."""
    onnx.save(mlp_model(**kwargs), path)
    return path


def write_validation(
    path: Path, in_dim: int = 8, samples: int = 64, classes: int = 3, seed: int = 1, input_name: str = "x"
) -> Path:
    """A validation ``.npz`` for the MLP: random inputs and labels from the model's own argmax-ish rule."""
    rng = np.random.default_rng(seed)
    inputs = rng.normal(size=(samples, in_dim)).astype(np.float32)
    labels = rng.integers(0, classes, size=samples).astype(np.int64)
    np.savez(path, **{input_name: inputs, "labels": labels})
    return path
