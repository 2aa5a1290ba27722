"""Static INT8 configurations become integer kernels in the graph ONNX Runtime runs, not float ops between
quantize-dequantize pairs (issue 15: a batch-invariant INT8 variant that is faster than FP32). These fail when an
ONNX Runtime upgrade or a change to the quantization settings stops the fusions."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from infaas.onnx_check import check_model_bytes
from tests.factories import model_info
from tests.variant_generator.tiny_bert import LAYERS, export_tiny_bert, token_inputs
from variant_generator import int8_search
from variant_generator.accuracy import ValidationSet
from variant_generator.base import BuildContext
from variant_generator.int8_search import Config
from variant_generator.integer_kernels import integer_kernels, optimized_ops

RNG = np.random.default_rng(0)
WEIGHT_MATMULS_PER_LAYER = 6  # query, key, value, output projection, feed-forward up and down


def _context(source: Path, data: ValidationSet, task: str, folder: Path) -> BuildContext:
    checked = check_model_bytes(source.read_bytes())
    info = model_info("m", task=task, inputs=[s.to_json() for s in checked.inputs], max_batch=8)
    workdir = folder / "build"
    workdir.mkdir()
    return BuildContext(replace(info, input_shapes=checked.input_shapes), source, data, workdir, cores=1)


def _residual_cnn(path: Path) -> Path:
    """Conv-ReLU-Conv + skip connection, ReLU, global pool, linear: one ResNet basic block on 3x16x16 images."""
    weights = {
        "k1": RNG.standard_normal((8, 3, 3, 3)) * 0.3,
        "b1": RNG.standard_normal(8) * 0.1,
        "k2": RNG.standard_normal((8, 8, 3, 3)) * 0.2,
        "b2": RNG.standard_normal(8) * 0.1,
        "w": RNG.standard_normal((5, 8)),
        "c": RNG.standard_normal(5),
    }
    nodes = [
        helper.make_node("Conv", ["x", "k1", "b1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "k2", "b2"], ["c2"], pads=[1, 1, 1, 1], name="conv2"),
        helper.make_node("Add", ["c2", "r1"], ["s"], name="skip"),
        helper.make_node("Relu", ["s"], ["r2"], name="relu2"),
        helper.make_node("GlobalAveragePool", ["r2"], ["p"], name="pool"),
        helper.make_node("Flatten", ["p"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "w", "c"], ["y"], transB=1, name="fc"),
    ]
    graph = helper.make_graph(
        nodes,
        "block",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, 16, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 5])],
        [numpy_helper.from_array(w.astype(np.float32), name) for name, w in weights.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def test_weight_configurations_run_every_weight_matmul_as_an_integer_kernel(tmp_path: Path) -> None:
    source = export_tiny_bert(tmp_path / "bert.onnx")
    data = ValidationSet(token_inputs(32))
    ctx = _context(source, data, "embedding", tmp_path)
    out = tmp_path / "int8.onnx"
    int8_search._quantize(source, out, Config("original", "weights", "MinMax"), data, ctx)
    ops = optimized_ops(out)
    # Each weight MatMul is DequantizeLinear(activation) + DequantizeLinear(weight) -> MatMul with a float output,
    # which ONNX Runtime fuses; a quantized output (a QuantizeLinear after it) left them all float.
    assert ops["MatMulIntegerToFloat"] == WEIGHT_MATMULS_PER_LAYER * LAYERS, ops
    assert ops["DequantizeLinear"] == 0, ops  # no float op is left reading a dequantized copy
    assert integer_kernels(out) == WEIGHT_MATMULS_PER_LAYER * LAYERS


def test_every_operator_configuration_runs_convs_and_residual_adds_as_integer_kernels(tmp_path: Path) -> None:
    source = _residual_cnn(tmp_path / "cnn.onnx")
    data = ValidationSet({"x": RNG.standard_normal((32, 3, 16, 16)).astype(np.float32)})
    ctx = _context(source, data, "classification", tmp_path)
    out = tmp_path / "int8.onnx"
    assert int8_search._quantize(source, out, Config("original", "all", "MinMax"), data, ctx)  # per-channel
    ops = optimized_ops(out)
    # With signed activations (the quantizer's default) ONNX Runtime 1.32 left 11 of ResNet-18's 20 Convs float.
    assert ops["QLinearConv"] == 2 and ops["Conv"] == 0, ops
    assert ops["QLinearAdd"] == 1 and ops["Add"] == 0, ops
    assert ops["QGemm"] == 1, ops
