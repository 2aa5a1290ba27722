"""Small, valid ONNX models that only show their cost when run: endless loops and shapes computed at run time.

Each passes ``onnx.checker`` and the static shape checks of ``infaas.onnx_check`` (nothing huge is declared
or inferable), so only a bounded test inference can refuse it. Shared by the sandbox unit tests and the
live-server tests.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

TRIP_COUNT_2_62 = 2**62  # the reported 291-byte attack
TRIP_COUNT_10_12 = 10**12


def _model(nodes: list[onnx.NodeProto], initializers: list[TensorProto], output_shape: list[int | str]) -> bytes:
    graph = helper.make_graph(
        nodes,
        "bomb",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, output_shape)],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def _scalar(name: str, value: object, dtype: type) -> TensorProto:
    return numpy_helper.from_array(np.array(value, dtype=dtype), name)


def _loop_body(condition: list[onnx.NodeProto], initializers: Sequence[TensorProto] = ()) -> onnx.GraphProto:
    """A ``Loop`` body (iteration ``i``, ``cond_in``, a [1] float carried through unchanged): ``condition``
    computes ``cond_out``, the loop's only way to stop when it has no trip count."""
    return helper.make_graph(
        [*condition, helper.make_node("Identity", ["v_in"], ["v_out"])],
        "body",
        [
            helper.make_tensor_value_info("i", TensorProto.INT64, []),
            helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
            helper.make_tensor_value_info("v_in", TensorProto.FLOAT, [1]),
        ],
        [
            helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
            helper.make_tensor_value_info("v_out", TensorProto.FLOAT, [1]),
        ],
        list(initializers),
    )


def loop_with_trip_count(trip_count: int) -> bytes:
    """``Loop`` with a constant trip count around an ``Identity`` body: never answers for a huge count."""
    body = _loop_body([helper.make_node("Identity", ["cond_in"], ["cond_out"])])
    return _model(
        [helper.make_node("Loop", ["M", "keep_going", "x"], ["y"], body=body)],
        [_scalar("M", trip_count, np.int64), _scalar("keep_going", True, np.bool_)],
        [1],
    )


def loop_driven_by_condition() -> bytes:
    """``Loop`` with no trip count at all: the body's own condition (``i < 2^62``) keeps it going."""
    body = _loop_body([helper.make_node("Less", ["i", "bound"], ["cond_out"])], [_scalar("bound", 2**62, np.int64)])
    return _model(
        [helper.make_node("Loop", ["", "keep_going", "x"], ["y"], body=body)],
        [_scalar("keep_going", True, np.bool_)],
        [1],
    )


def _runtime_side(offset: int) -> list[onnx.NodeProto]:
    """``side = int64(max(x)) + offset`` and ``shape = [side, side]``: unknown until the model runs."""
    return [
        helper.make_node("ReduceMax", ["x"], ["peak"], keepdims=1),
        helper.make_node("Cast", ["peak"], ["peak_int"], to=TensorProto.INT64),
        helper.make_node("Add", ["peak_int", "offset"], ["side"]),
        helper.make_node("Concat", ["side", "side"], ["shape"], axis=0),
    ]


def constant_of_shape_at_run_time(offset: int) -> bytes:
    """``ReduceMax → Cast → Add → ConstantOfShape``: a float32 [offset, offset] on zeros (20000: 1.6 GB)."""
    return _model(
        [
            *_runtime_side(offset),
            helper.make_node("ConstantOfShape", ["shape"], ["filled"]),
            helper.make_node("ReduceSum", ["filled"], ["total"], keepdims=0),
            helper.make_node("Add", ["x", "total"], ["y"]),
        ],
        [numpy_helper.from_array(np.array([offset], np.int64), "offset")],
        [1],
    )


def expand_at_run_time(offset: int) -> bytes:
    """``Expand`` of the input to a run-time [side, side]: the same bomb through another operator."""
    return _model(
        [
            *_runtime_side(offset),
            helper.make_node("Expand", ["x", "shape"], ["spread"]),
            helper.make_node("ReduceMean", ["spread"], ["mean"], keepdims=0),
            helper.make_node("Add", ["x", "mean"], ["y"]),
        ],
        [numpy_helper.from_array(np.array([offset], np.int64), "offset")],
        [1],
    )


def loop_from_input_value() -> bytes:
    """A ``Loop`` that runs ``int64(max(x))`` times: no iteration on zeros (what the check runs), endless for 1e12."""
    body = _loop_body([helper.make_node("Identity", ["cond_in"], ["cond_out"])])
    return _model(
        [
            helper.make_node("ReduceMax", ["x"], ["peak"], keepdims=0),
            helper.make_node("Cast", ["peak"], ["trips"], to=TensorProto.INT64),
            helper.make_node("Loop", ["trips", "keep_going", "x"], ["y"], body=body),
        ],
        [_scalar("keep_going", True, np.bool_)],
        [1],
    )


def allocation_from_input_value() -> bytes:
    """A [max(x), max(x)] allocation: harmless on zeros (what the check runs), huge for a large input value."""
    return constant_of_shape_at_run_time(0)
