"""Pipelines over REST (issue 17): define, list, show, delete; every bad definition is a 400 that stores nothing;
a model a pipeline uses cannot be deleted; scale factors are measured on the stages' validation rows."""

from __future__ import annotations

import copy
import io
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
from fastapi.testclient import TestClient

from infaas.pipelines.dag import condition_mask
from infaas.pipelines.spec import Condition
from infaas.services import Services
from tests.factories import TASK, mlp_model, profiles, seed_model

CLASS, ABOVE = 1, 0.5


def _validation(rows: int = 400) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, x=np.random.default_rng(3).normal(size=(rows, 8)).astype(np.float32))
    return buffer.getvalue()


@pytest.fixture
def zoo(services: Services) -> dict[str, bytes]:
    """filter: x[8] -> y[3]; head: x[3] -> y[2] (fed by filter's scores); wide: x[8] -> y[3] (fed by the input)."""
    models = {
        "filter": mlp_model(in_dim=8, classes=3, seed=0).SerializeToString(),
        "head": mlp_model(in_dim=3, classes=2, seed=1).SerializeToString(),
        "wide": mlp_model(in_dim=8, classes=3, seed=2).SerializeToString(),
    }
    for name, model in models.items():
        seed_model(
            services,
            name,
            model,
            task=TASK,
            validation=_validation() if name == "filter" else None,
            variants={"cpu-fp32": profiles({1: 1.0, 4: 2.0, 16: 5.0})},
        )
    return models


def _pipeline(**changes: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "name": "cascade",
        "p99_ms": 50,
        "inputs": [{"name": "image", "dtype": "float32", "shape": [-1, 8]}],
        "stages": [{"name": "f", "model": "filter"}, {"name": "h", "model": "head"}, {"name": "w", "model": "wide"}],
        "edges": [
            {"from": "input.image", "to": "f.x"},
            {"from": "f.y", "to": "h.x", "when": {"class": CLASS, "above": ABOVE}},
            {"from": "input.image", "to": "w.x"},
        ],
        "arrivals": {"rate_per_s": 100, "burstiness": 2, "duration_s": 10},
    }
    spec.update(changes)
    return spec


def test_define_list_show_delete(client: TestClient, services: Services, zoo: dict[str, bytes]) -> None:
    response = client.post("/v1/pipelines", json=_pipeline())
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["name"] == "cascade" and body["models"] == ["filter", "head", "wide"] and body["plan"] is None
    assert [p["name"] for p in client.get("/v1/pipelines").json()] == ["cascade"]
    shown = client.get("/v1/pipelines/cascade").json()
    assert shown["spec"]["edges"][1]["when"] == {"class": CLASS, "above": ABOVE, "scores": "softmax"}

    # Scale factors: the share of validation rows the condition lets through, as ONNX Runtime computes it here.
    x = np.load(io.BytesIO(_validation()))["x"]
    scores = ort.InferenceSession(zoo["filter"]).run(None, {"x": x})[0]
    expected = condition_mask(scores, Condition(CLASS, ABOVE)).mean()
    assert 0 < expected < 1  # the condition really splits the rows, so the test can tell
    factors = shown["scale_factors"]
    assert factors["source"] == "validation" and factors["rows"] == len(x)
    assert factors["stages"] == {"f": 1.0, "h": pytest.approx(expected), "w": 1.0}
    assert factors["edges"] == {"1": pytest.approx(expected)}

    assert client.post("/v1/pipelines", json=_pipeline()).status_code == 409
    assert client.delete("/v1/pipelines/cascade").json() == {"deleted": "cascade"}
    assert client.get("/v1/pipelines/cascade").status_code == 404
    assert client.get("/v1/pipelines").json() == []


def _break(path: str, value: Any) -> dict[str, Any]:
    spec = copy.deepcopy(_pipeline())
    target: Any = spec
    keys = path.split("/")
    for key in keys[:-1]:
        target = target[int(key)] if isinstance(target, list) else target[key]
    last = keys[-1]
    if isinstance(target, list):
        target[int(last)] = value
    else:
        target[last] = value
    return spec


@pytest.mark.parametrize(
    ("spec", "says"),
    [
        (_break("edges/0", {"from": "h.y", "to": "f.x"}), "cycle"),
        (_break("stages/1", {"name": "h", "model": "nope"}), "no model 'nope'"),
        (_break("stages/1", {"name": "h", "task": "nothing-here"}), "task 'nothing-here'"),
        (_break("edges/2", {"from": "f.y", "to": "w.x"}), "float32[-1, 3] but wide takes float32[-1, 8]"),
        (_break("inputs", [{"name": "image", "dtype": "int64", "shape": [-1, 8]}]), "int64"),
        (_break("edges/1", {"from": "f.y", "to": "h.x", "when": {"class": 7, "above": 0.5}}), "out of range"),
        (_break("edges/1", {"from": "f.nope", "to": "h.x"}), "no output 'nope'"),
        (_break("edges/0", {"from": "input.other", "to": "f.x"}), "no input 'other'"),
        (_break("edges/0", {"from": "input.image", "to": "zz.x"}), "no stage named 'zz'"),
        (_break("p99_ms", 0), "p99_ms"),
        (_break("arrivals", {"trace": [3.0, 1.0]}), "non-decreasing"),
        (_break("stages/2", {"name": "f", "model": "wide"}), "unique"),
        (_break("inputs", [7]), "'inputs' must be"),
        (_break("arrivals", {"rate_per_s": 10, "burstiness": 1e-9}), "burstiness"),
    ],
)
def test_bad_definitions_are_400s_that_store_nothing(
    client: TestClient, zoo: dict[str, bytes], spec: dict[str, Any], says: str
) -> None:
    response = client.post("/v1/pipelines", json=spec)
    assert response.status_code == 400, response.text
    assert response.json()["code"] == "invalid_pipeline"
    assert says in response.json()["detail"]
    assert client.get("/v1/pipelines").json() == []


def test_a_model_in_use_cannot_be_deleted(client: TestClient, services: Services, zoo: dict[str, bytes]) -> None:
    assert client.post("/v1/pipelines", json=_pipeline()).status_code == 201
    response = client.delete("/v1/models/head")
    assert response.status_code == 409
    assert response.json()["code"] == "model_in_use" and "cascade" in response.json()["detail"]
    assert services.metadata.get_model("head") is not None and services.store.exists("models/head/model.onnx")
    assert client.delete("/v1/pipelines/cascade").status_code == 200
    assert client.delete("/v1/models/head").status_code == 200


def test_without_validation_rows_every_stage_is_assumed_reached(
    client: TestClient, services: Services, zoo: dict[str, bytes]
) -> None:
    spec = _pipeline(
        stages=[{"name": "f", "model": "wide"}, {"name": "h", "model": "head"}, {"name": "w", "model": "wide"}]
    )
    shown = client.post("/v1/pipelines", json=spec).json()
    assert shown["scale_factors"]["source"] == "assumed"
    assert shown["scale_factors"]["stages"] == {"f": 1.0, "h": 1.0, "w": 1.0}


def _run(model: bytes, x: np.ndarray) -> np.ndarray:
    return ort.InferenceSession(model).run(None, {"x": x})[0]


def test_infer_runs_the_dag_through_the_engine_with_the_edge_condition_per_row(
    client: TestClient, zoo: dict[str, bytes]
) -> None:
    assert client.post("/v1/pipelines", json=_pipeline()).status_code == 201
    x = np.random.default_rng(5).normal(size=(24, 8)).astype(np.float32)
    response = client.post("/v1/pipelines/cascade/infer", json={"inputs": {"image": x.tolist()}})
    assert response.status_code == 200, response.text
    body = response.json()

    scores = _run(zoo["filter"], x)
    kept = np.flatnonzero(condition_mask(scores, Condition(CLASS, ABOVE)))
    assert 0 < len(kept) < len(x)
    assert set(body["outputs"]) == {"h", "w"}  # the sinks
    assert body["outputs"]["h"]["rows"] == kept.tolist()
    np.testing.assert_allclose(np.array(body["outputs"]["h"]["y"]), _run(zoo["head"], scores[kept]), rtol=1e-5)
    assert body["outputs"]["w"]["rows"] == list(range(len(x)))
    np.testing.assert_allclose(np.array(body["outputs"]["w"]["y"]), _run(zoo["wide"], x), rtol=1e-5)
    stages = body["stages"]
    assert {n: s["model"] for n, s in stages.items()} == {"f": "filter", "h": "head", "w": "wide"}
    assert stages["h"]["rows_reached"] == len(kept) and stages["h"]["rows"] == len(kept)
    assert all(s["worker"] == "local" and s["stage_ms"] > 0 for s in stages.values())
    # Every stage's query went through the engine and was recorded like any query.
    recorded = [q["model"] for q in client.get("/v1/queries").json()["queries"]]
    assert sorted(recorded) == ["filter", "head", "wide"]


def test_infer_with_wrong_inputs_is_a_400(client: TestClient, zoo: dict[str, bytes]) -> None:
    assert client.post("/v1/pipelines", json=_pipeline()).status_code == 201
    for inputs, says in (({"nope": [[0.0] * 8]}, "missing ['image']"), ({"image": [[0.0] * 3]}, "shape [1, 3]")):
        response = client.post("/v1/pipelines/cascade/infer", json={"inputs": inputs})
        assert response.status_code == 400 and says in response.json()["detail"], response.text
    assert client.post("/v1/pipelines/nothing/infer", json={"inputs": {}}).status_code == 404


def test_plan_is_stored_and_shown(client: TestClient, zoo: dict[str, bytes]) -> None:
    assert client.post("/v1/pipelines", json=_pipeline(p99_ms=20)).status_code == 201
    response = client.post("/v1/pipelines/cascade/plan")
    assert response.status_code == 200, response.text
    planned = response.json()["plan"]
    assert planned["feasible"] and planned["p99_ms"] <= 20 and planned["objective_ms"] == 20
    assert set(planned["stages"]) == {"f", "h", "w"}
    for stage in planned["stages"].values():
        assert stage["variant"] == "cpu-fp32" and stage["replicas"] >= 1 and stage["batch"] in (1, 4, 16)
        assert 0 < stage["utilisation"] <= 1 and stage["cost_per_hour"] > 0
    assert planned["cost_per_hour"] == pytest.approx(sum(s["cost_per_hour"] for s in planned["stages"].values()))
    assert client.get("/v1/pipelines/cascade").json()["plan"] == planned


def test_an_objective_below_the_service_time_is_refused(client: TestClient, zoo: dict[str, bytes]) -> None:
    response = client.post("/v1/pipelines", json=_pipeline(p99_ms=1.0))  # f then h: 1 ms each at p50 alone
    assert response.status_code == 422, response.text
    assert response.json()["code"] == "objective_below_service_time" and "P99 of" in response.json()["detail"]
    assert client.get("/v1/pipelines").json() == []
