"""Registration's check finds a shape a model with dynamic spatial or sequence dimensions runs at."""

from __future__ import annotations

import importlib
from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper
from typer.testing import CliRunner

from infaas.input_shapes import (
    SEQUENCE_SIZES,
    SPATIAL_SIZES,
    InputShapeError,
    candidate_shapes,
    check_given_shapes,
    metadata_image_size,
    parse_input_shapes,
)
from infaas.onnx_check import MAX_DECLARED_ELEMENTS, ModelCheckError, check_model_bytes
from infaas.tensors import TensorSpec
from tests.shaped_models import fixed_size_model, installed_model_file, strided_concat_model

cli_main = importlib.import_module("infaas.cli.main")  # the package's ``main`` attribute is the entry function
IMAGES = TensorSpec("images", np.dtype(np.float32), (-1, 3, -1, -1))


def test_a_model_failing_at_size_one_is_checked_at_the_first_common_size_that_runs() -> None:
    checked = check_model_bytes(strided_concat_model().SerializeToString())
    assert checked.inputs[0].shape == (-1, 3, -1, -1)  # the signature stays dynamic
    assert checked.input_shapes == {"images": (1, 3, SPATIAL_SIZES[0], SPATIAL_SIZES[0])}


def test_the_exporters_image_size_is_tried_first() -> None:
    model = strided_concat_model({"imgsz": "[320, 320]", "stride": "32"})
    assert check_model_bytes(model.SerializeToString()).input_shapes == {"images": (1, 3, 320, 320)}


def test_the_owners_shape_is_used_and_recorded() -> None:
    checked = check_model_bytes(strided_concat_model().SerializeToString(), {"images": (1, 3, 64, 96)})
    assert checked.input_shapes == {"images": (1, 3, 64, 96)}


def test_an_owners_shape_the_model_does_not_run_at_is_a_400_naming_it() -> None:
    with pytest.raises(ModelCheckError) as refused:
        check_model_bytes(strided_concat_model().SerializeToString(), {"images": (1, 3, 2, 2)})
    assert "images=1,3,2,2" in str(refused.value) and "--input-shape" in str(refused.value)
    assert refused.value.status == 400


def test_no_working_shape_is_a_400_naming_the_option_and_what_was_tried() -> None:
    with pytest.raises(ModelCheckError) as refused:
        check_model_bytes(fixed_size_model(100, 100).SerializeToString())
    message = str(refused.value)
    assert "--input-shape" in message and "input_shape" in message
    assert all(f"images=1,3,{s},{s}" in message for s in SPATIAL_SIZES)
    # ...and the option is the fix: the shape the model takes registers.
    fixed = check_model_bytes(fixed_size_model(100, 100).SerializeToString(), {"images": (1, 3, 100, 100)})
    assert fixed.input_shapes == {"images": (1, 3, 100, 100)}


def test_a_model_dynamic_only_in_its_batch_records_no_shape_and_keeps_its_message() -> None:
    graph = helper.make_graph(
        [helper.make_node("Reshape", ["x", "shape"], ["y"])],
        "bad_reshape",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, 3])],
        initializer=[helper.make_tensor("shape", TensorProto.INT64, [2], [3, 3])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(ModelCheckError, match="at the declared input shapes failed"):
        check_model_bytes(model.SerializeToString())


def test_a_sequence_input_is_checked_at_the_sequence_sizes() -> None:
    graph = helper.make_graph(
        [helper.make_node("ReduceSum", ["tokens"], ["total"], keepdims=0)],
        "seq",
        [helper.make_tensor_value_info("tokens", TensorProto.FLOAT, ["batch", "sequence", 8])],
        [helper.make_tensor_value_info("total", TensorProto.FLOAT, [])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    assert check_model_bytes(model.SerializeToString()).input_shapes == {"tokens": (1, SEQUENCE_SIZES[0], 8)}


@pytest.mark.parametrize(
    ("text", "fix"),
    [
        ("images", "NAME=D0,D1"),
        ("=1,3", "NAME=D0,D1"),
        ("images=1,3,a,320", "integers"),
        ("images=1,3,0,320", "positive"),
        ("images=1,3,-320,320", "positive"),
        ("images=1,3,8,8;images=1,3,16,16", "two shapes"),
    ],
)
def test_malformed_input_shapes_say_what_to_fix(text: str, fix: str) -> None:
    with pytest.raises(InputShapeError, match=fix) as refused:
        parse_input_shapes(text)
    assert refused.value.status == 400


def test_input_shapes_parse_from_the_form_field_and_the_repeated_option() -> None:
    assert parse_input_shapes("images=1,3,320,320; mask = 1,16") == {"images": (1, 3, 320, 320), "mask": (1, 16)}
    assert parse_input_shapes(["images=1,3,320,320", "mask=1,16"]) == {"images": (1, 3, 320, 320), "mask": (1, 16)}
    assert parse_input_shapes(None) == parse_input_shapes("") == {}


@pytest.mark.parametrize(
    ("given", "fix"),
    [
        ({"img": (1, 3, 320, 320)}, "no input 'img'; its inputs are 'images'"),
        ({"images": (1, 3, 320)}, "has 4 dimensions"),
        ({"images": (1, 4, 320, 320)}, "fixes dimension 1 to 3"),
        ({"images": (1, 3, 100000, 100000)}, "past the limit of"),
    ],
)
def test_shapes_that_cannot_be_the_models_are_refused(given: dict, fix: str) -> None:
    with pytest.raises(InputShapeError, match=fix):
        check_given_shapes(given, {IMAGES.name: IMAGES.shape}, MAX_DECLARED_ELEMENTS)
    with pytest.raises(InputShapeError, match=fix):  # before any inference: the static checks refuse it
        check_model_bytes(strided_concat_model().SerializeToString(), given)


def test_candidates_are_bounded_and_ordered() -> None:
    hinted = candidate_shapes([IMAGES], {}, {"imgsz": "[320, 320]"})
    assert [c["images"][2:] for c in hinted] == [(320, 320)] + [(s, s) for s in SPATIAL_SIZES if s != 320]
    nhwc = TensorSpec("pixels", np.dtype(np.float32), (-1, -1, -1, 3))
    assert candidate_shapes([nhwc], {}, {})[0]["pixels"] == (1, SPATIAL_SIZES[0], SPATIAL_SIZES[0], 3)
    static = TensorSpec("x", np.dtype(np.float32), (-1, 8))
    assert candidate_shapes([static], {}, {}) == [{"x": (1, 8)}]  # nothing to resolve: one try, as before


@pytest.mark.parametrize(
    ("raw", "size"), [("[320, 320]", (320, 320)), ("640", (640, 640)), ("(480, 640)", (480, 640)), ("big", None)]
)
def test_metadata_image_size(raw: str, size: tuple[int, int] | None) -> None:
    assert metadata_image_size({"imgsz": raw}) == size


def test_nudenet_320n_registers_at_its_exported_size() -> None:
    """The real YOLOv8n detector from PyPI's ``nudenet``: refused at 1x1 before, checked at its imgsz now."""
    data = installed_model_file("nudenet", "320n.onnx").read_bytes()
    checked = check_model_bytes(data)
    assert checked.inputs[0].shape == (-1, 3, -1, -1)
    assert checked.input_shapes == {"images": (1, 3, 320, 320)}


def test_the_cli_sends_repeated_input_shapes_as_the_form_field(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sent: list[dict] = []

    def call(method: str, path: str, **kwargs: object) -> dict:
        sent.append(dict(kwargs["data"]))  # type: ignore[call-overload]
        return {"name": "detector", "task": "detection", "status": "pending"}

    monkeypatch.setattr(cli_main, "call", call)
    model = tmp_path / "m.onnx"
    model.write_bytes(strided_concat_model().SerializeToString())
    args = ["register", str(model), "--name", "detector", "--task", "detection"]
    shapes = ["--input-shape", "images=1,3,320,320", "--input-shape", "mask=1,16"]
    result = CliRunner().invoke(cli_main.app, args + shapes)
    assert result.exit_code == 0, result.output
    assert sent[0]["input_shape"] == "images=1,3,320,320;mask=1,16"
    assert CliRunner().invoke(cli_main.app, args).exit_code == 0 and "input_shape" not in sent[1]
