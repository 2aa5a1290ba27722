"""Which integer kernels ONNX Runtime really runs for a quantized graph, read from the graph it optimizes.

A QDQ graph only says which tensors are rounded to INT8; the speed comes from ONNX Runtime fusing each
DequantizeLinear -> op -> QuantizeLinear group into an integer kernel (``QLinearConv``, ``MatMulIntegerToFloat``,
...) when the group has the shape its selectors accept. When it does not, the graph runs the float op between
quantize-dequantize pairs and is *slower* than FP32: MiniLM's static INT8 with quantized MatMul outputs kept
18 float MatMuls, 36 DequantizeLinear and 24 QuantizeLinear after optimization and ran at 0.5x FP32's speed;
with float MatMul outputs all of them became ``MatMulIntegerToFloat``. So the search records, for every
configuration, how many integer kernels the optimized graph has, and a test fails when a fusion stops happening.
"""

from __future__ import annotations

import tempfile
from collections import Counter
from pathlib import Path

import onnx
import onnxruntime as ort

from infaas.runtime import CPU_PROVIDERS, session_options

# Ops of ONNX Runtime's optimized CPU graph that compute in integers (besides every ``QLinear*`` op).
INTEGER_OPS = frozenset(
    {
        "MatMulIntegerToFloat",
        "MatMulInteger",
        "DynamicQuantizeMatMul",
        "ConvInteger",
        "QGemm",
        "QAttention",
        "DynamicQuantizeLSTM",
    }
)


def is_integer_op(op_type: str) -> bool:
    """Whether an operator of the optimized graph runs an integer kernel."""
    return op_type in INTEGER_OPS or op_type.startswith("QLinear")


def optimized_ops(path: Path) -> Counter[str]:
    """Operator counts of the graph ONNX Runtime runs for ``path`` on the CPU (serving options, every graph
    optimization on), written by the session to a temporary file."""
    with tempfile.TemporaryDirectory(prefix="infaas-optimized-") as folder:
        target = Path(folder) / "optimized.onnx"
        options = session_options(1)
        options.optimized_model_filepath = str(target)
        ort.InferenceSession(str(path), sess_options=options, providers=list(CPU_PROVIDERS))
        model = onnx.load(str(target), load_external_data=False)
    return Counter(node.op_type for node in model.graph.node)


def integer_kernels(path: Path) -> int:
    """How many integer-kernel operators ONNX Runtime runs for the graph at ``path``."""
    return sum(count for op, count in optimized_ops(path).items() if is_integer_op(op))
