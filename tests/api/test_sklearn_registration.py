"""A scikit-learn classifier exported with skl2onnx's defaults registers, builds and serves; other
non-tensor outputs are refused by name, with nothing stored."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import onnx
import pytest
from fastapi.testclient import TestClient
from onnx import TensorProto, helper
from skl2onnx import to_onnx
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression
from typer.testing import CliRunner

import infaas.cli.client
from infaas.cli.main import app as cli
from infaas.config import Settings
from infaas.services import Services
from tests.factories import upload_model, wait_for
from variant_generator.accuracy import ValidationSet

MAX_BATCH = "4"  # few batch sizes to profile

ZIPMAP_REWRITE = (
    "ZipMap output 'output_probability' (seq(map(int64, tensor(float)))) is served as its probability tensor "
    "float32 [N, 3]; column j is class j (0..2)"
)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """Builds on (in process), profiled briefly: the build is part of what is tested."""
    return Settings(
        home=tmp_path / "home", build_variants=True, autoscaler="off", profile_runs=5, profile_max_seconds=0.05
    )


@pytest.fixture(scope="module")
def iris() -> tuple[LogisticRegression, np.ndarray, np.ndarray]:
    features, labels = load_iris(return_X_y=True)
    features = features.astype(np.float32)
    return LogisticRegression(max_iter=500).fit(features, labels), features, labels


def _npz(**arrays: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def test_skl2onnx_default_export_registers_and_serves_probabilities(
    client: TestClient,
    services: Services,
    iris: tuple[LogisticRegression, np.ndarray, np.ndarray],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    classifier, features, labels = iris
    exported = to_onnx(classifier, features[:1])  # skl2onnx's defaults: the probabilities behind a ZipMap
    assert any(node.op_type == "ZipMap" for node in exported.graph.node)

    response = upload_model(
        client,
        "iris",
        exported.SerializeToString(),
        validation=_npz(inputs=features, labels=labels),
        max_batch=MAX_BATCH,
    )
    assert response.status_code == 201, response.text
    assert response.json()["outputs"] == [
        {"name": "output_label", "dtype": "int64", "shape": [-1]},
        {"name": "output_probability", "dtype": "float32", "shape": [-1, 3]},
    ]
    described = wait_for(lambda: client.get("/v1/models/iris").json(), 120, until=lambda m: m["status"] == "ready")
    assert described["status"] == "ready", described
    assert described["rewrites"] == [ZIPMAP_REWRITE]
    assert ZIPMAP_REWRITE.replace("'", "&#39;") in client.get("/console/models/iris").text
    monkeypatch.setattr(infaas.cli.client, "client", lambda timeout=120.0: TestClient(client.app))
    shown = CliRunner().invoke(cli, ["describe", "iris"])
    assert f"rewritten at registration: {ZIPMAP_REWRITE}" in " ".join(shown.output.split())  # rich wraps lines
    stored = onnx.load_model_from_string(services.store.get_bytes(services.metadata.get_model("iris").artifact_key))
    assert [node.op_type for node in stored.graph.node if node.op_type == "ZipMap"] == []

    # Every ready variant is scored on the label output against the registered labels: scikit-learn's own accuracy.
    ready = [v for v in described["variants"] if v["status"] == "ready"]
    assert ready and all(v["profiles"][0]["accuracy_metric"] == "top1" for v in ready)
    _, scored = ValidationSet({"X": features}, labels).split()  # the rows not held out for INT8 calibration
    expected_accuracy = float(np.mean(classifier.predict(scored.inputs["X"]) == scored.labels))
    assert all(v["accuracy"] == pytest.approx(expected_accuracy) for v in ready)

    rows = features[::10]
    answer = client.post("/v1/infer", json={"model": "iris", "inputs": {"X": rows.tolist()}, "latency_ms": 1000})
    assert answer.status_code == 200, answer.text
    outputs = answer.json()["outputs"]
    np.testing.assert_allclose(outputs["output_probability"], classifier.predict_proba(rows), atol=1e-5)
    np.testing.assert_array_equal(outputs["output_label"], classifier.predict(rows))


def _sequence_output_model() -> bytes:
    """y = [x, x] as a sequence: a non-tensor output that is no ZipMap."""
    graph = helper.make_graph(
        [helper.make_node("SequenceConstruct", ["x", "x"], ["y"])],
        "seq",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_sequence_value_info("y", TensorProto.FLOAT, ["N", 4])],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def _optional_output_model() -> bytes:
    """y = Optional(x): a tensor that may be absent."""
    optional = helper.make_optional_type_proto(helper.make_tensor_type_proto(TensorProto.FLOAT, ["N", 4]))
    graph = helper.make_graph(
        [helper.make_node("Optional", ["x"], ["y"])],
        "optional",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_value_info("y", optional)],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]).SerializeToString()


@pytest.mark.parametrize(
    ("model", "described"),
    [(_sequence_output_model(), "seq(tensor(float))"), (_optional_output_model(), "optional(tensor(float))")],
    ids=["sequence", "optional"],
)
def test_other_non_tensor_outputs_are_refused_by_name(
    client: TestClient, services: Services, model: bytes, described: str
) -> None:
    response = upload_model(client, "odd", model, max_batch=MAX_BATCH)
    assert response.status_code == 400, response.text
    body = response.json()
    assert body["code"] == "invalid_model"
    assert body["detail"].startswith(f"output 'y' is a {described}, not a tensor: infaas serves tensors only")
    assert "zipmap" not in body["detail"].lower()  # no skl2onnx hint for a hand-made graph
    assert services.metadata.get_model("odd") is None
    assert services.store.list("models/odd/") == []


def test_a_zipmap_that_feeds_another_node_is_refused_with_the_skl2onnx_hint(
    client: TestClient, services: Services, iris: tuple[LogisticRegression, np.ndarray, np.ndarray]
) -> None:
    """Unwrapping a ZipMap that something else consumes would change what that node receives: refused instead."""
    classifier, features, _ = iris
    exported = to_onnx(classifier, features[:1], target_opset={"": 17, "ai.onnx.ml": 3})
    exported.graph.node.append(helper.make_node("SequenceLength", ["output_probability"], ["rows"]))
    exported.graph.output.append(helper.make_tensor_value_info("rows", TensorProto.INT64, []))
    response = upload_model(client, "iris", exported.SerializeToString(), max_batch=MAX_BATCH)
    assert response.status_code == 400, response.text
    detail = response.json()["detail"]
    assert detail.startswith("output 'output_probability' is a seq(map(int64, tensor(float))), not a tensor")
    assert "options={id(model): {'zipmap': False}}" in detail
    assert services.metadata.get_model("iris") is None
    assert services.store.list("models/iris/") == []
