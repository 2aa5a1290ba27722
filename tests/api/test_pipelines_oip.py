"""OIP clients call a pipeline by name as a model (issue 17, point 6): ``/v2/models/{pipeline}`` metadata, ready
and infer (JSON and binary), answered by the DAG run; a model of the same name wins; others' pipelines stay 404."""

from __future__ import annotations

import numpy as np
import orjson
from fastapi.testclient import TestClient

from infaas.pipelines.dag import condition_mask
from infaas.pipelines.spec import Condition
from infaas.services import Services
from tests.api.test_pipelines_api import ABOVE, CLASS, _pipeline, _run
from tests.api.test_pipelines_api import zoo as zoo  # the fixture: filter -> [cond] -> head, and wide


def _infer_body(x: np.ndarray, **extra: object) -> dict:
    return {
        "inputs": [{"name": "image", "datatype": "FP32", "shape": list(x.shape), "data": x.ravel().tolist()}]
    } | extra


def test_metadata_and_ready_of_a_pipeline(client: TestClient, zoo: dict[str, bytes]) -> None:
    assert client.get("/v2/models/cascade").status_code == 404
    assert client.post("/v1/pipelines", json=_pipeline()).status_code == 201
    meta = client.get("/v2/models/cascade")
    assert meta.status_code == 200, meta.text
    body = meta.json()
    assert body["name"] == "cascade" and body["platform"] == "infaas_pipeline"
    assert body["inputs"] == [{"name": "image", "datatype": "FP32", "shape": [-1, 8]}]
    assert {o["name"] for o in body["outputs"]} == {"h.rows", "h.y", "w.rows", "w.y"}
    ready = client.get("/v2/models/cascade/ready")
    assert ready.status_code == 200 and ready.json() == {"name": "cascade", "ready": True}


def test_infer_runs_the_dag_json_and_binary(client: TestClient, zoo: dict[str, bytes]) -> None:
    assert client.post("/v1/pipelines", json=_pipeline()).status_code == 201
    x = np.random.default_rng(5).normal(size=(24, 8)).astype(np.float32)
    response = client.post("/v2/models/cascade/infer", json=_infer_body(x, id="q1"))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model_name"] == "cascade" and body["id"] == "q1"
    out = {o["name"]: o for o in body["outputs"]}
    scores = _run(zoo["filter"], x)
    kept = np.flatnonzero(condition_mask(scores, Condition(CLASS, ABOVE)))
    assert 0 < len(kept) < len(x)
    assert out["h.rows"]["data"] == kept.tolist() and out["h.rows"]["datatype"] == "INT64"
    head = np.array(out["h.y"]["data"], dtype=np.float32).reshape(out["h.y"]["shape"])
    np.testing.assert_allclose(head, _run(zoo["head"], scores[kept]), rtol=1e-5)
    wide = np.array(out["w.y"]["data"], dtype=np.float32).reshape(out["w.y"]["shape"])
    np.testing.assert_allclose(wide, _run(zoo["wide"], x), rtol=1e-5)
    parameters = body["parameters"]
    assert parameters["f.variant"] == "filter/cpu-fp32" and parameters["h.rows"] == len(kept)
    assert parameters["latency_ms"] > 0

    # Binary outputs, as Triton's client asks for them.
    binary = client.post(
        "/v2/models/cascade/infer",
        json=_infer_body(x, outputs=[{"name": "w.y", "parameters": {"binary_data": True}}]),
    )
    assert binary.status_code == 200, binary.text
    length = int(binary.headers["inference-header-content-length"])
    header = orjson.loads(binary.content[:length])
    assert [o["name"] for o in header["outputs"]] == ["w.y"]
    raw = np.frombuffer(binary.content[length:], dtype="<f4").reshape(header["outputs"][0]["shape"])
    np.testing.assert_allclose(raw, _run(zoo["wide"], x), rtol=1e-5)


def test_wrong_inputs_are_400_and_a_model_of_the_same_name_wins(
    client: TestClient, services: Services, zoo: dict[str, bytes]
) -> None:
    assert client.post("/v1/pipelines", json=_pipeline(name="wide2")).status_code == 201
    bad = client.post(
        "/v2/models/wide2/infer",
        json={"inputs": [{"name": "nope", "datatype": "FP32", "shape": [1, 8], "data": [0.0] * 8}]},
    )
    assert bad.status_code == 400 and "missing ['image']" in bad.json()["error"], bad.text
    # "wide" is a model: the model answers (its input is "x"), not a pipeline.
    assert client.get("/v2/models/wide").json()["platform"] == "onnxruntime_onnx"
    assert client.get("/v2/models/nothing/ready").status_code == 404
    assert client.post("/v2/models/nothing/infer", json=_infer_body(np.zeros((1, 8), np.float32))).status_code == 404
