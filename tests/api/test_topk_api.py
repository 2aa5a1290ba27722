"""``POST /v1/topk`` end to end (issue 16 points 5 and 7): a cheap model scores every row, the most accurate
re-scores the cheap one's top r*k, each through the engine and the in-process worker; exact when no pair is
precise enough for less; every bad query a 4xx that runs and records nothing."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import onnx
import pytest
from fastapi.testclient import TestClient
from onnx import numpy_helper

from infaas.services import Services
from infaas.topk import top_k
from tests.api.test_metrics import scrape, total
from tests.factories import TASK, linear_model, profiles, reference_outputs, seed_model
from tests.fuzz import secure_world

IN_DIM, CLASSES, ROWS, K, COLUMN = 8, 3, 300, 5, 1  # 300 rows: more than one 256-row query per stage
BIG_MS = {1: 1.0, 64: 20.0, 256: 80.0}
SMALL_MS = {1: 0.05, 64: 0.5, 256: 2.0}


def _close_to(model: bytes, scale: float, seed: int) -> bytes:
    """``model``'s linear map with its weights perturbed: a cheaper model that ranks rows nearly alike."""
    proto = onnx.load_from_string(model)
    rng = np.random.default_rng(seed)
    for init in proto.graph.initializer:
        values = numpy_helper.to_array(init)
        init.CopyFrom(
            numpy_helper.from_array(values + rng.normal(scale=scale, size=values.shape).astype(values.dtype), init.name)
        )
    return proto.SerializeToString()


def _validation(rows: int = 800) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, x=np.random.default_rng(7).normal(size=(rows, IN_DIM)).astype(np.float32))
    return buffer.getvalue()


def _query(rows: int = ROWS, seed: int = 11) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(rows, IN_DIM)).astype(np.float32)


@pytest.fixture
def pair(services: Services) -> dict[str, bytes]:
    """Task TASK: ``big`` (accurate, slow profile, with validation rows) and ``small`` (close to it, fast)."""
    big = linear_model(in_dim=IN_DIM, out_dim=CLASSES, seed=0)
    small = _close_to(big, 0.05, seed=1)
    seed_model(
        services,
        "big",
        big,
        task=TASK,
        validation=_validation(),
        variants={"cpu-fp32": profiles(BIG_MS, accuracy=0.95)},
    )
    seed_model(services, "small", small, task=TASK, variants={"cpu-fp32": profiles(SMALL_MS, accuracy=0.8)})
    return {"big": big, "small": small}


def test_approximate_top_k_through_the_engine(client: TestClient, services: Services, pair: dict[str, bytes]) -> None:
    x = _query()
    response = client.post("/v1/topk", json={"task": TASK, "inputs": {"x": x.tolist()}, "k": K, "column": COLUMN})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["mode"] == "approximate", body["reason"]
    assert body["cheap"]["model"] == "small" and body["expensive"]["model"] == "big"
    assert body["cheap"]["rows"] == ROWS and body["cheap"]["queries"] == 2  # 256 + 44 rows
    rescored = body["rescored"]
    assert K <= rescored < ROWS and body["expensive"]["rows"] == rescored
    assert body["r"] == pytest.approx(rescored / K, abs=1 / K)
    assert 0.95 <= body["estimated_precision"] <= 1.0 and body["calibration"]["required"] == 99
    calibration = body["calibration"]
    assert calibration["tune_rows"] + calibration["report_rows"] == 800 - 128  # less the INT8-static ones
    assert calibration["k_range"] == [4, 7] and calibration["rows_range"] == [256, 511]

    # The answer is exactly the big model's top k among the small model's top `rescored`, with the big one's scores.
    cheap = reference_outputs(pair["small"], x)[:, COLUMN]
    expensive = reference_outputs(pair["big"], x)[:, COLUMN]
    kept = top_k(cheap, rescored)
    expected = kept[top_k(expensive[kept], K)]
    assert body["indices"] == expected.tolist()
    assert body["scores"] == pytest.approx(expensive[expected].tolist(), rel=1e-5)
    assert len(set(body["indices"]) & set(top_k(expensive, K).tolist())) / K >= 0.8

    # Every stage ran as engine queries on the workers: pinned to its variant, recorded like any query.
    served = [(q.model, q.variant, q.batch) for q in services.live.recent_queries(100)]
    assert ("big", "cpu-fp32", rescored) in served and ("small", "cpu-fp32", 256) in served
    # The choice is kept: a second query of the same ranges runs no validation rows again.
    before = len(services.live.recent_queries(1000))
    again = client.post("/v1/topk", json={"task": TASK, "inputs": {"x": x.tolist()}, "k": K, "column": COLUMN})
    assert again.json()["indices"] == body["indices"]
    assert len(services.live.recent_queries(1000)) - before == 3  # 256 + 44 cheap rows, the re-scored ones


def test_exact_when_no_pair_is_precise_enough(client: TestClient, services: Services) -> None:
    big = linear_model(in_dim=IN_DIM, out_dim=CLASSES, seed=0)
    unrelated = linear_model(in_dim=IN_DIM, out_dim=CLASSES, seed=5)  # ranks rows its own way
    seed_model(services, "big", big, task=TASK, validation=_validation(), variants={"cpu-fp32": profiles(BIG_MS)})
    seed_model(services, "other", unrelated, task=TASK, variants={"cpu-fp32": profiles(SMALL_MS, accuracy=0.5)})
    x = _query()
    body = client.post("/v1/topk", json={"task": TASK, "inputs": {"x": x.tolist()}, "k": K, "column": 0}).json()
    assert body["mode"] == "exact" and body["cheap"] is None and body["r"] is None, body
    assert body["rescored"] == ROWS and body["estimated_precision"] == 1.0
    assert "exact: no cheaper variant reaches precision 0.95" in body["reason"]
    considered = body["calibration"]["considered"]
    assert [c["cheap"] for c in considered] == ["other/cpu-fp32"] and considered[0]["kept"].startswith("no:")
    expensive = reference_outputs(big, x)[:, 0]
    assert body["indices"] == top_k(expensive, K).tolist()


def test_exact_without_a_cheaper_variant_or_validation_rows(client: TestClient, services: Services) -> None:
    seed_model(
        services,
        "only",
        linear_model(in_dim=IN_DIM, out_dim=CLASSES),
        task=TASK,
        variants={"cpu-fp32": profiles(BIG_MS)},
    )
    x = _query(rows=40)
    body = client.post("/v1/topk", json={"model": "only", "inputs": {"x": x.tolist()}, "k": 3, "column": 2}).json()
    assert body["mode"] == "exact" and "no variant is cheaper" in body["reason"]
    assert (
        body["indices"] == top_k(reference_outputs(linear_model(in_dim=IN_DIM, out_dim=CLASSES), x)[:, 2], 3).tolist()
    )


@pytest.mark.parametrize(
    ("changes", "status", "says"),
    [
        ({"k": ROWS + 1}, 400, f"'k' is {ROWS + 1} but the query has {ROWS} rows"),
        ({"k": 0}, 400, "'k' must be a positive integer"),
        ({"k": -3}, 400, "'k' must be a positive integer"),
        ({"k": 2.5}, 400, "'k' must be a positive integer"),
        ({"k": None}, 400, "'k' is missing"),
        ({"column": CLASSES}, 400, f"column {CLASSES} is out of range"),
        ({"column": -1}, 400, "'column' must be a non-negative integer"),
        ({"column": None}, 400, "name the 'column' to rank by"),
        ({"min_precision": 0}, 400, "'min_precision' must be in (0, 1]"),
        ({"min_precision": 1.5}, 400, "'min_precision' must be in (0, 1]"),
        ({"min_precision": "high"}, 400, "'min_precision' must be a number"),
        ({"latency_ms": 0}, 400, "'latency_ms' must be > 0"),
        ({"model": "big"}, 400, "give exactly one of 'model' or 'task'"),
        ({"task": "no-such-task"}, 404, "no model registered for task 'no-such-task'"),
        ({"task": None, "model": "nope"}, 404, "model 'nope' not found"),
        ({"inputs": {"z": [[0.0] * IN_DIM]}}, 400, "missing ['x']"),
    ],
)
def test_bad_queries_are_4xx_and_run_nothing(
    client: TestClient, services: Services, pair: dict[str, bytes], changes: dict, status: int, says: str
) -> None:
    body = {"task": TASK, "inputs": {"x": _query().tolist()}, "k": K, "column": COLUMN} | changes
    body = {key: value for key, value in body.items() if value is not None}
    response = client.post("/v1/topk", json=body)
    assert response.status_code == status, response.text
    assert says in response.json()["detail"]
    assert services.live.recent_queries(100) == []  # nothing ran, nothing was recorded


def test_an_output_without_a_usable_score_is_422(client: TestClient, services: Services) -> None:
    # An embedding task: three columns that are not class scores, so no column is a ranking.
    seed_model(
        services,
        "embedder",
        linear_model(in_dim=IN_DIM, out_dim=3),
        task="text-embedding",
        variants={"cpu-fp32": profiles(BIG_MS)},
    )
    response = client.post(
        "/v1/topk", json={"model": "embedder", "inputs": {"x": _query(10).tolist()}, "k": 2, "column": 0}
    )
    assert response.status_code == 422 and response.json()["code"] == "no_score_to_rank", response.text
    assert "not class scores" in response.json()["detail"]
    # A one-column score of the same task ranks (and 'column' may be left out).
    seed_model(
        services,
        "scorer",
        linear_model(in_dim=IN_DIM, out_dim=1),
        task="text-embedding",
        variants={"cpu-fp32": profiles(BIG_MS)},
    )
    ranked = client.post("/v1/topk", json={"model": "scorer", "inputs": {"x": _query(10).tolist()}, "k": 2})
    assert ranked.status_code == 200 and ranked.json()["column"] == 0, ranked.text
    assert services.live.recent_queries(100)[0].model == "scorer"


def test_another_tenants_private_model_is_unknown(tmp_path: Path) -> None:
    with secure_world(tmp_path / "home") as (client, services, tenants):
        model = linear_model(in_dim=IN_DIM)
        seed_model(services, "alice.secret", model, task=TASK, owner="alice", variants={"cpu-fp32": profiles(BIG_MS)})
        body = {"model": "alice.secret", "inputs": {"x": _query(10).tolist()}, "k": 2, "column": 0}
        hidden = client.post("/v1/topk", json=body, headers=tenants.bob)
        assert hidden.status_code == 404 and hidden.json()["code"] == "unknown_model", hidden.text
        task = client.post("/v1/topk", json=body | {"model": None, "task": TASK}, headers=tenants.bob)
        assert task.status_code == 404 and task.json()["code"] == "unknown_model", task.text
        mine = client.post("/v1/topk", json=body, headers=tenants.alice)
        assert (
            mine.status_code == 200
            and mine.json()["indices"] == top_k(reference_outputs(model, _query(10))[:, 0], 2).tolist()
        )


def test_a_cascade_variant_takes_no_part(client: TestClient, services: Services, pair: dict[str, bytes]) -> None:
    # A cascade's rows are scored by whichever member answered them: not a ranking, even when it is "most accurate".
    services.metadata.upsert_variant(
        "big",
        "cascade-cpu-fp32",
        kind="cascade",
        precision="fp32",
        hardware="cpu",
        threads=1,
        providers=["CPUExecutionProvider"],
        status="ready",
        artifact_key="models/big/model.onnx",
    )
    services.metadata.replace_profiles("big", "cascade-cpu-fp32", profiles(SMALL_MS, accuracy=0.99))
    body = client.post(
        "/v1/topk", json={"task": TASK, "inputs": {"x": _query().tolist()}, "k": K, "column": COLUMN}
    ).json()
    assert body["expensive"]["variant"] == "cpu-fp32" and body["cheap"]["model"] == "small", body
    assert all("cascade" not in c["cheap"] for c in body["calibration"]["considered"])


def test_stage_queries_are_counted_under_endpoint_topk(client: TestClient, pair: dict[str, bytes]) -> None:
    body = {"task": TASK, "inputs": {"x": _query().tolist()}, "k": K, "column": COLUMN}
    before = total(scrape(client), "infaas_requests_total", endpoint="topk")
    answer = client.post("/v1/topk", json=body).json()
    samples = scrape(client)
    stage_queries = answer["cheap"]["queries"] + answer["expensive"]["queries"]
    # The first query also scored the validation rows (800 rows: 4 queries per model) to choose r.
    assert total(samples, "infaas_requests_total", endpoint="topk") - before == stage_queries + 8
    assert total(samples, "infaas_requests_total", endpoint="topk", model="small", outcome="ok") >= 2
