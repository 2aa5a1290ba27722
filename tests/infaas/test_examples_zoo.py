"""The example zoo builds real, interchangeable ONNX classifiers whose speed and accuracy really differ."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import pytest

pytest.importorskip("torch")
pytest.importorskip("sklearn")
ort = pytest.importorskip("onnxruntime")

from infaas.examples import TASK, ZooModel, build_zoo, load_zoo  # noqa: E402
from infaas.examples.graphs import bilinear_upsample_matrix  # noqa: E402

EXPECTED = {"digits-logreg", "digits-mlp-small", "digits-mlp-large", "digits-cnn"}


@pytest.fixture(scope="module")
def zoo(tmp_path_factory: pytest.TempPathFactory) -> list[ZooModel]:
    """One quick build shared by every test in this module (training is the slow part)."""
    return build_zoo(tmp_path_factory.mktemp("zoo"), quick=True)


def _session(model: ZooModel) -> ort.InferenceSession:
    return ort.InferenceSession(str(model.onnx_path), providers=["CPUExecutionProvider"])


def test_zoo_has_the_four_models_for_one_task(zoo: list[ZooModel]) -> None:
    assert {m.name for m in zoo} == EXPECTED
    assert {m.task for m in zoo} == {TASK}
    # One interface for the whole task, so any of them can serve any query.
    assert {(m.input_name, m.input_shape, m.output_name) for m in zoo} == {("input", (64,), "logits")}


def test_models_pass_the_onnx_checker_with_a_dynamic_batch_axis(zoo: list[ZooModel]) -> None:
    for model in zoo:
        proto = onnx.load(str(model.onnx_path))
        onnx.checker.check_model(proto, full_check=True)
        assert proto.opset_import[0].version == 17
        (graph_input,) = proto.graph.input
        (graph_output,) = proto.graph.output
        assert graph_input.name == "input" and graph_output.name == "logits"
        assert graph_input.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
        batch_dim = graph_input.type.tensor_type.shape.dim[0]
        assert batch_dim.dim_param == "batch" and not batch_dim.HasField("dim_value")


@pytest.mark.parametrize("batch", [1, 7])
def test_models_run_at_any_batch_size(zoo: list[ZooModel], batch: int) -> None:
    x = np.random.default_rng(batch).random((batch, 64), dtype=np.float32)
    for model in zoo:
        (logits,) = _session(model).run(["logits"], {"input": x})
        assert logits.shape == (batch, 10) and logits.dtype == np.float32
        assert np.all(np.isfinite(logits))


def test_validation_files_match_the_models(zoo: list[ZooModel]) -> None:
    for model in zoo:
        with np.load(model.validation_path) as data:
            assert data["inputs"].dtype == np.float32 and data["inputs"].shape[1:] == (64,)
            np.testing.assert_array_equal(data["inputs"], data[model.input_name])
            assert data["labels"].dtype == np.int64 and data["labels"].shape == (len(data["inputs"]),)
            assert set(np.unique(data["labels"])) == set(range(10))  # stratified: every digit is there
            assert 0.0 <= data["inputs"].min() and data["inputs"].max() <= 1.0


def test_recorded_accuracy_is_what_onnx_runtime_measures(zoo: list[ZooModel]) -> None:
    for model in zoo:
        with np.load(model.validation_path) as data:
            (logits,) = _session(model).run(["logits"], {"input": data["inputs"]})
            accuracy = float(np.mean(logits.argmax(axis=1) == data["labels"]))
        assert accuracy == pytest.approx(model.accuracy, abs=0.01), model.name
        assert accuracy > 0.5, model.name


def test_accuracies_spread_over_at_least_five_points(zoo: list[ZooModel]) -> None:
    accuracies = {m.name: m.accuracy for m in zoo}
    assert max(accuracies.values()) - min(accuracies.values()) >= 0.05, accuracies


def test_cnn_is_much_slower_than_logistic_regression(zoo: list[ZooModel]) -> None:
    """Measured side by side (interleaved) so machine load hits both alike; a ratio, never absolute times."""
    by_name = {m.name: m for m in zoo}
    sessions = {name: _session(by_name[name]) for name in ("digits-logreg", "digits-cnn")}
    x = {"input": np.random.default_rng(0).random((1, 64), dtype=np.float32)}
    times: dict[str, list[float]] = {name: [] for name in sessions}
    for _ in range(5):
        for session in sessions.values():
            session.run(None, x)
    for _ in range(40):
        for name, session in sessions.items():
            start = time.perf_counter()
            session.run(None, x)
            times[name].append(time.perf_counter() - start)
    ratio = statistics.median(times["digits-cnn"]) / statistics.median(times["digits-logreg"])
    assert ratio >= 20, f"CNN only {ratio:.1f}x slower than logistic regression"


def test_zoo_json_lists_the_models(zoo: list[ZooModel]) -> None:
    out_dir = zoo[0].onnx_path.parent
    entries = json.loads((out_dir / "zoo.json").read_text())
    assert [e["name"] for e in entries] == [m.name for m in zoo]
    for entry in entries:
        assert Path(entry["onnx_path"]).is_file() and Path(entry["validation_path"]).is_file()
        assert entry["input_shape"] == [64]
    loaded = load_zoo(out_dir)
    assert [(m.name, m.accuracy, m.onnx_path.resolve()) for m in loaded] == [
        (m.name, m.accuracy, m.onnx_path.resolve()) for m in zoo
    ]


def test_upsample_matrix_is_a_bilinear_resize() -> None:
    """Constant images stay constant, and each output pixel is a convex mix of input pixels."""
    matrix = bilinear_upsample_matrix(32)
    assert matrix.shape == (64, 1024)
    np.testing.assert_allclose(matrix.sum(axis=0), 1.0, rtol=1e-6)
    assert matrix.min() >= 0.0
    image = np.arange(64, dtype=np.float32)
    up = (image @ matrix).reshape(32, 32)
    assert up[0, 0] == image[0] and up[-1, -1] == image[-1]  # corners clamp to the corner pixels


def test_importing_the_package_does_not_import_torch() -> None:
    code = "import sys, infaas.examples; sys.exit(1 if 'torch' in sys.modules else 0)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
