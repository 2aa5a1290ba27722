"""A cheap and an expensive digit classifier made with numpy alone, and their labelled validation set.

The cascade tests need two models of one task that really differ in accuracy and cost, with confidence that
means something: a ridge-regression linear classifier on the 64 pixels (~0.93 top-1, ~0.01 ms a row) and a
random-features network (64 -> 8192 ReLU -> 10, readout by ridge regression: ~0.99, ~0.3 ms), trained in a few
seconds on scikit-learn's bundled digits (cached per process). Input ``x`` float32 ``[batch, 64]``, output ``y``
float32 ``[batch, 10]`` (scores).
"""

from __future__ import annotations

import functools
import io

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from sklearn.datasets import load_digits

CLASSES = 10


def digits(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(x_train, y_train, x_valid, y_valid)``: pixels / 16 as float32, a seeded 60/40 split."""
    data = load_digits()
    x, y = (data.data / 16.0).astype(np.float32), data.target.astype(np.int64)
    order = np.random.default_rng(seed).permutation(len(x))
    cut = int(len(x) * 0.6)
    return x[order[:cut]], y[order[:cut]], x[order[cut:]], y[order[cut:]]


def _ridge(features: np.ndarray, labels: np.ndarray, alpha: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Weights and bias of a ridge regression onto one-hot labels, scaled so a softmax of the scores is sharp
    (solved in the dual, rows x rows, when there are more features than rows)."""
    ones = np.hstack([features, np.ones((len(features), 1), np.float32)]).astype(np.float64)
    target = np.eye(CLASSES)[labels] * 8.0
    if ones.shape[1] > len(ones):
        solution = ones.T @ np.linalg.solve(ones @ ones.T + alpha * np.eye(len(ones)), target)
    else:
        solution = np.linalg.solve(ones.T @ ones + alpha * np.eye(ones.shape[1]), ones.T @ target)
    solution = solution.astype(np.float32)
    return solution[:-1], solution[-1]


def _model(nodes: list[onnx.NodeProto], weights: dict[str, np.ndarray]) -> bytes:
    graph = helper.make_graph(
        nodes,
        "digits",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", CLASSES])],
        [numpy_helper.from_array(v, k) for k, v in weights.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


@functools.cache
def cheap_model(seed: int = 0) -> bytes:
    """The linear classifier."""
    x, y, _, _ = digits(seed)
    w, b = _ridge(x, y)
    return _model([helper.make_node("Gemm", ["x", "w", "b"], ["y"])], {"w": w, "b": b})


@functools.cache
def expensive_model(seed: int = 0, hidden: int = 8192) -> bytes:
    """The random-features network."""
    x, y, _, _ = digits(seed)
    rng = np.random.default_rng(seed + 7)
    w1 = (rng.standard_normal((64, hidden)) / 4.0).astype(np.float32)
    b1 = rng.standard_normal(hidden).astype(np.float32) * 0.5
    h = np.maximum(x @ w1 + b1, 0.0)
    w2, b2 = _ridge(h, y, alpha=10.0)
    nodes = [
        helper.make_node("Gemm", ["x", "w1", "b1"], ["h"]),
        helper.make_node("Relu", ["h"], ["hr"]),
        helper.make_node("Gemm", ["hr", "w2", "b2"], ["y"]),
    ]
    return _model(nodes, {"w1": w1, "b1": b1, "w2": w2, "b2": b2})


@functools.cache
def validation(seed: int = 0) -> bytes:
    """The held-out digits as a registration's ``validation.npz`` (``inputs``, ``labels``)."""
    _, _, x, y = digits(seed)
    buffer = io.BytesIO()
    np.savez(buffer, inputs=x, labels=y)
    return buffer.getvalue()
