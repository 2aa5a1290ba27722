"""``/v1/infer``, ``/v1/stats``, ``/v1/queries`` and the v2 (Open Inference Protocol) routes, end to end.

Models are tiny ONNX graphs written straight into the model store and catalog, so outputs can be
compared with ONNX Runtime run directly on the same file.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import numpy as np
import orjson
import pytest
import uvicorn
from fastapi import FastAPI
from fastapi.testclient import TestClient

from api.app import create_app
from infaas import offload
from infaas.config import Settings
from infaas.engine import Query
from infaas.errors import UnknownModel
from infaas.selector import Requirements
from infaas.services import Services
from tests.factories import linear_model, profiles, reference_outputs, seed_model, wait_for

IN, OUT = 4, 3
TINY_TASK = "tiny-task"
TINY = linear_model(IN, OUT)
FP32 = profiles({b: 0.1 * b for b in (1, 4, 16)}, p99_factor=2.0, memory_mb=20.0)  # equal throughput: best is 1
# A model and one ready, profiled variant, as the variant generator would leave them.
seed_tiny = partial(seed_model, task=TINY_TASK, declared_accuracy=0.9, variants={"fp32": FP32})


def make_app(tmp_path: Path, **settings: object) -> FastAPI:
    return create_app(Settings(home=tmp_path, **settings))


@pytest.fixture()
def client(tmp_path: Path) -> Iterator[TestClient]:
    with TestClient(make_app(tmp_path, max_batch_per_query=8)) as test_client:
        services: Services = test_client.app.state.services  # type: ignore[attr-defined]
        seed_tiny(services, "tiny", TINY)
        yield test_client


def test_outputs_are_the_models_outputs(client: TestClient) -> None:
    x = np.random.default_rng(0).standard_normal((3, IN)).astype(np.float32)
    response = client.post("/v1/infer", json={"model": "tiny", "inputs": {"x": x.tolist()}, "latency_ms": 200})
    assert response.status_code == 200, response.text
    body = response.json()
    np.testing.assert_allclose(np.array(body["outputs"]["y"], np.float32), reference_outputs(TINY, x), rtol=1e-6)
    served = body["served_by"]
    assert served["model"] == "tiny" and served["variant"] == "fp32" and served["worker"] == "local"
    assert served["rows"] == 3 and served["batch"] >= 3 and not served["slo_at_risk"]
    assert served["actual_ms"] > 0 and served["estimated_ms"] > 0 and served["cost"] > 0
    assert "tiny/fp32 on local (cold" in served["reason"]
    again = client.post("/v1/infer", json={"model": "tiny", "inputs": {"x": x.tolist()}, "latency_ms": 200})
    assert "tiny/fp32 on local (loaded)" in again.json()["served_by"]["reason"]


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        ({"z": [[1, 2, 3, 4]]}, "missing ['x']; unexpected ['z']"),
        ({"x": [[1, 2, 3]]}, "shape [1, 3], the model expects ['N', 4]"),
        ({"x": [1, 2, 3, 4]}, "shape [4]"),
        ({"x": [["a", "b", "c", "d"]]}, "expects float32"),
        ({"x": [[True, False, True, False]]}, "holds bool values"),
        ({"x": [[1, 2, 3, 4], [1, 2]]}, "not a rectangular array"),
        ({"x": [[0.0] * IN] * 9}, "at most 8 per query"),
        ({"x": []}, "shape [0]"),
    ],
)
def test_bad_inputs_are_400_with_a_clear_message(client: TestClient, inputs: dict, message: str) -> None:
    response = client.post("/v1/infer", json={"model": "tiny", "inputs": inputs})
    assert response.status_code == 400, response.text
    assert message in response.json()["detail"]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"{not json", "not valid JSON"),
        (b"[]", "JSON object"),
        (orjson.dumps({"inputs": {"x": [[1, 2, 3, 4]]}}), "exactly one of 'model' or 'task'"),
        (orjson.dumps({"model": "tiny", "task": "t", "inputs": {"x": [[1, 2, 3, 4]]}}), "exactly one"),
        (orjson.dumps({"model": "tiny"}), "'inputs' must be"),
        (orjson.dumps({"model": "tiny", "inputs": {"x": [[1, 2, 3, 4]]}, "latency_ms": "fast"}), "must be a number"),
        (orjson.dumps({"model": "tiny", "inputs": {"x": [[1, 2, 3, 4]]}, "min_accuracy": 2}), "in [0, 1]"),
        (orjson.dumps({"model": "tiny", "inputs": {"x": [[1, 2, 3, 4]]}, "latency_ms": 0}), "latency_ms"),
    ],
)
def test_malformed_bodies_are_400(client: TestClient, body: bytes, message: str) -> None:
    response = client.post("/v1/infer", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 400, response.text
    assert message in response.json()["detail"]


def test_too_many_inputs_is_400(tmp_path: Path) -> None:
    with TestClient(make_app(tmp_path, max_inputs_per_request=1)) as c:
        seed_tiny(c.app.state.services, "tiny", TINY)  # type: ignore[attr-defined]
        response = c.post("/v1/infer", json={"model": "tiny", "inputs": {"x": [[0] * IN], "y": [[0]]}})
    assert response.status_code == 400
    assert "at most 1 are accepted" in response.json()["detail"]


def test_unknown_model_or_task_is_404(client: TestClient) -> None:
    response = client.post("/v1/infer", json={"model": "nope", "inputs": {"x": [[0] * IN]}})
    assert response.status_code == 404 and "'nope' not found" in response.json()["detail"]
    response = client.post("/v1/infer", json={"task": "nope", "inputs": {"x": [[0] * IN]}})
    assert response.status_code == 404 and "task 'nope'" in response.json()["detail"]


def test_models_the_caller_may_not_use_look_unknown(client: TestClient) -> None:
    engine = client.app.state.services.engine  # type: ignore[attr-defined]
    with pytest.raises(UnknownModel, match="not found"):
        engine.infer(Query(Requirements(model="tiny"), {"x": [[0.0] * IN]}, allowed=lambda m: False))


def test_unreachable_accuracy_is_422_naming_the_best(client: TestClient) -> None:
    response = client.post("/v1/infer", json={"model": "tiny", "inputs": {"x": [[0] * IN]}, "min_accuracy": 0.99})
    assert response.status_code == 422
    assert "best available is 0.9" in response.json()["detail"]


def test_model_without_ready_variant_is_503(client: TestClient) -> None:
    seed_tiny(client.app.state.services, "building", TINY, variant_status="building")  # type: ignore[attr-defined]
    response = client.post("/v1/infer", json={"model": "building", "inputs": {"x": [[0] * IN]}})
    assert response.status_code == 503 and "not ready" in response.json()["detail"]


def test_task_queries_span_models_and_respect_accuracy(client: TestClient) -> None:
    services = client.app.state.services  # type: ignore[attr-defined]
    accurate = linear_model(IN, OUT, seed=5)
    measured = profiles({b: 0.1 * b for b in (1, 4, 16)}, accuracy=0.97, p99_factor=2.0, memory_mb=20.0)
    seed_tiny(services, "accurate", accurate, declared_accuracy=0.97, variants={"fp32": measured})
    x = np.ones((2, IN), np.float32)
    response = client.post("/v1/infer", json={"task": "tiny-task", "inputs": {"x": x.tolist()}, "min_accuracy": 0.95})
    assert response.status_code == 200, response.text
    assert response.json()["served_by"]["model"] == "accurate"
    np.testing.assert_allclose(
        np.array(response.json()["outputs"]["y"], np.float32), reference_outputs(accurate, x), rtol=1e-6
    )


def test_stats_and_recent_queries(client: TestClient) -> None:
    for _ in range(3):
        assert client.post(
            "/v1/infer", json={"model": "tiny", "inputs": {"x": [[0] * IN]}, "latency_ms": 500}
        ).is_success
    stats = client.get("/v1/stats").json()["variants"]
    assert [s["variant_key"] for s in stats] == ["tiny/fp32"]
    assert stats[0]["requests"] == 3 and stats[0]["p99_ms"] >= stats[0]["p50_ms"] > 0
    assert stats[0]["slo_miss_rate"] == 0.0
    (worker,) = client.get("/v1/stats").json()["workers"]  # the local principal is an admin
    assert worker["id"] == "local" and worker["instances"][0]["variant_key"] == "tiny/fp32"
    assert worker["instances"][0]["queue_depth"] == 0
    recent = client.get("/v1/queries", params={"limit": 2}).json()["queries"]
    assert len(recent) == 2
    assert recent[0]["variant"] == "fp32" and recent[0]["latency_ms"] == 500 and recent[0]["estimated_ms"] > 0
    # Estimates before and after correction, over the queries served by the loaded instance (not the load).
    estimates = client.get("/v1/stats").json()["estimates"]
    assert 2 <= estimates["observed"] <= 3 and estimates["overhead_ms"] > 0
    assert estimates["raw_error_ms"]["p99"] >= estimates["raw_error_ms"]["p50"]
    assert estimates["corrected_promises"]["promised"] <= estimates["observed"]
    assert list(estimates["factors"]) == ["tiny/fp32 on local"]  # admins see the correction per placement
    page = client.get("/console/live")
    assert page.status_code == 200 and 'id="estimates"' in page.text and "corrected" in page.text
    assert stats[0]["infeasible_rate"] == 0.0 and client.get("/v1/stats").json()["rejected"] == []


def test_rejected_and_infeasible_queries_are_counted_apart_in_stats_and_console(client: TestClient) -> None:
    body = {"model": "tiny", "inputs": {"x": [[0] * IN]}, "latency_ms": 0.001}  # below any service time
    assert client.post("/v1/infer", json=body | {"on_infeasible": "reject"}).status_code == 503
    assert client.post("/v1/infer", json=body).json()["served_by"]["slo_at_risk"]  # best effort: served, flagged
    content = client.get("/v1/stats").json()
    [rejected] = content["rejected"]
    assert rejected["target"] == "tiny" and rejected["rejected"] == 1 and rejected["unmet_latency"] == 1
    [served] = content["variants"]
    assert served["requests"] == 1 and served["infeasible_rate"] == 1.0 and served["slo_miss_rate"] == 0.0
    live = client.get("/console/api/live").json()
    assert live["rejected"][0]["target"] == "tiny" and live["rows"][0]["infeasible_rate"] == 1.0
    page = client.get("/console/live").text
    assert 'id="rejected"' in page and "<td>tiny</td>" in page


# -- Open Inference Protocol ------------------------------------------------------------------------


def test_v2_metadata_health_and_readiness(client: TestClient) -> None:
    assert client.get("/v2/health/live").status_code == 200
    assert client.get("/v2/health/ready").status_code == 200
    assert client.get("/v2").json()["extensions"] == ["binary_tensor_data"]
    meta = client.get("/v2/models/tiny").json()
    assert meta["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, IN]}]
    assert client.get("/v2/models/tiny/ready").status_code == 200
    assert client.get("/v2/models/tiny/versions/1/ready").status_code == 200
    assert client.get("/v2/models/tiny/versions/7").status_code == 404
    assert client.get("/v2/models/nope").json() == {"error": "unknown model 'nope'"}
    seed_tiny(client.app.state.services, "building", TINY, variant_status="building")  # type: ignore[attr-defined]
    assert client.get("/v2/models/building/ready").status_code == 503


def test_v2_json_infer_and_errors(client: TestClient) -> None:
    x = np.arange(8, dtype=np.float32).reshape(2, IN)
    body = {
        "id": "q1",
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [2, IN], "data": x.reshape(-1).tolist()}],
        "parameters": {"slo_latency_ms": 100, "slo_min_accuracy": 0.5},
    }
    response = client.post("/v2/models/tiny/infer", json=body)
    assert response.status_code == 200, response.text
    out = response.json()
    assert out["id"] == "q1" and out["parameters"]["variant"] == "tiny/fp32"
    y = np.array(out["outputs"][0]["data"], np.float32).reshape(out["outputs"][0]["shape"])
    np.testing.assert_allclose(y, reference_outputs(TINY, x), rtol=1e-6)

    assert client.post("/v2/models/nope/infer", json=body).status_code == 404
    wrong = {**body, "inputs": [{**body["inputs"][0], "datatype": "INT64", "data": [0] * 8}]}
    response = client.post("/v2/models/tiny/infer", json=wrong)
    assert response.status_code == 400 and "dtype int64" in response.json()["error"]
    picky = {**body, "parameters": {"slo_min_accuracy": 0.99}}
    response = client.post("/v2/models/tiny/infer", json=picky)
    assert response.status_code == 400 and "best available is 0.9" in response.json()["error"]
    seed_tiny(client.app.state.services, "building", TINY, variant_status="building")  # type: ignore[attr-defined]
    assert client.post("/v2/models/building/infer", json=body).status_code == 503


def test_v2_large_bodies_are_decoded_one_at_a_time(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    from api.routes import v2

    held: list[bool] = []
    decode = v2.decode_request

    def spy(body: bytes, header_length: str | None) -> object:
        held.append(v2._LARGE_DECODES.locked())
        return decode(body, header_length)

    monkeypatch.setattr(v2, "decode_request", spy)
    x = [0.5] * IN
    small = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, IN], "data": x}]}
    large = {**small, "id": "q" * (offload.INLINE_BODY_BYTES + 1)}  # decoded in the pool: under the lock
    for body in (small, large):
        response = client.post("/v2/models/tiny/infer", json=body)
        assert response.status_code == 200, response.text
    assert response.json()["id"] == large["id"]
    assert held == [False, True]


@pytest.mark.parametrize(
    ("header_length", "message"),
    [("999", "body has"), ("-1", "body has"), ("abc", "must be an integer"), ("3", "not valid JSON")],
)
def test_v2_malformed_binary_header_is_400(client: TestClient, header_length: str, message: str) -> None:
    header = orjson.dumps(
        {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, IN], "parameters": {"binary_data_size": 16}}]}
    )
    response = client.post(
        "/v2/models/tiny/infer",
        content=header + np.zeros(IN, np.float32).tobytes(),
        headers={"Inference-Header-Content-Length": header_length},
    )
    assert response.status_code == 400
    assert message in response.json()["error"]


# -- the unmodified Triton client against a live server ---------------------------------------------


@pytest.fixture()
def live_server(tmp_path: Path) -> Iterator[tuple[str, Services]]:
    app = make_app(tmp_path)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_for(lambda: server.started or not thread.is_alive(), 20, interval_s=0.02)
    assert server.started, "uvicorn did not start"
    try:
        yield f"127.0.0.1:{port}", app.state.services
    finally:
        server.should_exit = True
        thread.join(10)


@pytest.mark.parametrize("binary", [True, False])
def test_tritonclient_http_works_unmodified(live_server: tuple[str, Services], binary: bool) -> None:
    import tritonclient.http as httpclient

    url, services = live_server
    seed_tiny(services, "tiny", TINY)
    client = httpclient.InferenceServerClient(url)
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("tiny")
    assert client.get_model_metadata("tiny")["outputs"][0]["name"] == "y"
    x = np.random.default_rng(7).standard_normal((5, IN)).astype(np.float32)
    tensor = httpclient.InferInput("x", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x, binary_data=binary)
    # Default (no outputs named) asks for binary outputs; naming them with binary_data=False asks for JSON.
    outputs = None if binary else [httpclient.InferRequestedOutput("y", binary_data=False)]
    result = client.infer("tiny", [tensor], outputs=outputs, parameters={"slo_latency_ms": 100})
    np.testing.assert_allclose(result.as_numpy("y"), reference_outputs(TINY, x), rtol=1e-6)
    assert result.get_response()["parameters"]["variant"] == "tiny/fp32"
    with pytest.raises(httpclient.InferenceServerException) as excinfo:
        client.infer("nope", [tensor])
    assert excinfo.value.status() == "404"
    client.close()


def test_candidate_cache_reads_the_catalog_only_after_a_change(client: TestClient) -> None:
    services = client.app.state.services  # type: ignore[attr-defined]
    engine = services.engine
    calls = 0
    original = services.metadata.list_models

    def counting():  # type: ignore[no-untyped-def]
        nonlocal calls
        calls += 1
        return original()

    services.metadata.list_models = counting
    body = {"model": "tiny", "inputs": {"x": [[0] * IN]}}
    engine.cache.model("tiny")
    calls = 0
    for _ in range(5):
        assert client.post("/v1/infer", json=body).status_code == 200
    assert calls == 0  # no SQL on the query path
    seed_tiny(services, "second", TINY)  # the metadata store's listener invalidates the cache
    assert client.post("/v1/infer", json={**body, "model": "second"}).status_code == 200
    assert calls >= 1


# -- on_infeasible and max_cost as a hard limit -----------------------------------------------------------


def test_v1_infeasible_queries_are_503_naming_the_best_and_run_nothing(client: TestClient) -> None:
    x = {"x": [[0] * IN]}
    rejected = client.post(
        "/v1/infer", json={"model": "tiny", "inputs": x, "latency_ms": 0.01, "on_infeasible": "reject"}
    )
    assert rejected.status_code == 503 and rejected.json()["code"] == "infeasible"
    detail = rejected.json()["detail"]
    # Cold: 5 ms load + 0.15 ms service (the p99, 1.5 × the 0.1 ms p50) is the fastest; accuracy as profiled.
    assert "no placement meets latency_ms 0.01; nothing was run" in detail
    assert "best achievable: latency 5.2 ms, accuracy 0.9, cost $" in detail
    assert "retry-after" not in rejected.headers  # no queue: waiting would not help
    unaffordable = client.post("/v1/infer", json={"model": "tiny", "inputs": x, "max_cost": 1e-15})
    assert unaffordable.status_code == 503 and unaffordable.json()["code"] == "infeasible"
    assert "max_cost $1e-15/query (a hard limit)" in unaffordable.json()["detail"]
    assert client.get("/v1/queries").json()["queries"] == []
    assert client.get("/v1/stats").json()["workers"][0]["instances"] == []
    # Best effort (the default, or said outright) serves the fastest, flagged.
    for hint in ({}, {"on_infeasible": "best_effort"}):
        served = client.post("/v1/infer", json={"model": "tiny", "inputs": x, "latency_ms": 0.01, **hint})
        assert served.status_code == 200 and served.json()["served_by"]["slo_at_risk"] is True


@pytest.mark.parametrize("value", ["drop", "", 1, None])
def test_v1_bad_on_infeasible_is_400_naming_the_allowed_values(client: TestClient, value: object) -> None:
    body = {"model": "tiny", "inputs": {"x": [[0] * IN]}, "on_infeasible": value}
    response = client.post("/v1/infer", json=body)
    if value is None:  # null is absent: the default
        assert response.status_code == 200
        return
    assert response.status_code == 400
    assert """'on_infeasible' must be "best_effort" or "reject\"""" in response.json()["detail"]


def test_v2_infeasible_queries_are_503_and_bad_hints_400(client: TestClient) -> None:
    body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, IN], "data": [0.0] * IN}]}
    reject = {**body, "parameters": {"slo_latency_ms": 0.01, "slo_on_infeasible": "reject"}}
    response = client.post("/v2/models/tiny/infer", json=reject)
    assert response.status_code == 503 and list(response.json()) == ["error"]
    assert "nothing was run; best achievable: latency 5.2 ms" in response.json()["error"]  # load + p99
    response = client.post("/v2/models/tiny/infer", json={**body, "parameters": {"slo_max_cost": 1e-15}})
    assert response.status_code == 503 and "max_cost" in response.json()["error"]
    bad = {**body, "parameters": {"slo_on_infeasible": "later"}}
    response = client.post("/v2/models/tiny/infer", json=bad)
    assert response.status_code == 400
    assert response.json() == {"error": """'slo_on_infeasible' must be "best_effort" or "reject", not 'later'"""}
    assert client.get("/v1/queries").json()["queries"] == []
    best_effort = {**body, "parameters": {"slo_latency_ms": 0.01, "slo_on_infeasible": "best_effort"}}
    response = client.post("/v2/models/tiny/infer", json=best_effort)
    assert response.status_code == 200 and response.json()["parameters"]["slo_at_risk"] is True


def test_the_hint_and_its_errors_are_documented(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    v1 = paths["/v1/infer"]["post"]
    schema = v1["requestBody"]["content"]["application/json"]["schema"]
    assert schema["properties"]["on_infeasible"]["enum"] == ["best_effort", "reject"]
    assert "infeasible" in v1["responses"]["503"]["description"]
    assert "on_infeasible" in v1["responses"]["400"]["description"]
    v2 = paths["/v2/models/{name}/infer"]["post"]["responses"]
    assert "infeasible" in v2["503"]["description"] and "slo_on_infeasible" in v2["400"]["description"]


def test_v2_infer_version_in_the_path_or_the_query(client: TestClient) -> None:
    body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, IN], "data": [0.0] * IN}]}
    assert client.post("/v2/models/tiny/infer", json=body).status_code == 200
    assert client.post("/v2/models/tiny/infer?version=1", json=body).status_code == 200
    assert client.post("/v2/models/tiny/versions/1/infer", json=body).status_code == 200
    unknown = client.post("/v2/models/tiny/infer?version=7", json=body)
    assert unknown.status_code == 404 and unknown.json() == {"error": "unknown model 'tiny' version '7'"}
    assert client.post("/v2/models/tiny/versions/7/infer", json=body).status_code == 404
