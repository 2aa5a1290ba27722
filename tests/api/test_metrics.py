"""``GET /metrics`` on a front-end and on an ``infaas worker``: every family counts what was sent, and the
console's live page reads the same numbers (one source of truth)."""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from api.app import create_app
from infaas.config import Settings
from infaas.errors import BadRequest, ModelNotReady, TooManyRequests, UnknownModel
from infaas.live_state import QueryRecord
from infaas.metrics import FOLD_AT, QueryMetrics, outcome_of
from infaas.selector import Achievable, Infeasible
from infaas.services import Services
from infaas.worker import LocalWorker
from infaas.worker.server import WorkerService, create_worker_app
from tests.factories import linear_model, profiles, seed_model

IN, OUT = 4, 3
FP32 = profiles({b: 0.1 * b for b in (1, 4, 16)}, p99_factor=2.0, memory_mb=20.0, threads=1)
X = np.random.default_rng(0).standard_normal((2, IN)).astype(np.float32).tolist()

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(client: TestClient, headers: dict[str, str] | None = None) -> Samples:
    """Every sample of ``GET /metrics``, keyed by (sample name, labels)."""
    response = client.get("/metrics", headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=")
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(response.text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sample with exactly these labels (0 when absent, as Prometheus reads a series never created)."""
    return samples.get((name, frozenset(labels.items())), 0.0)


def total(samples: Samples, name: str, **labels: str) -> float:
    """Sum of the samples named ``name`` whose labels include ``labels``."""
    wanted = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and wanted <= ls)


@pytest.fixture()
def client(tmp_path: Path) -> Iterator[TestClient]:
    with TestClient(create_app(Settings(home=tmp_path, autoscaler="off", worker_cores=4))) as test_client:
        services: Services = test_client.app.state.services  # type: ignore[attr-defined]
        seed_model(services, "tiny", linear_model(IN, OUT), task="tiny-task", variants={"fp32": FP32})
        yield test_client


def infer(client: TestClient, **fields: object) -> int:
    return client.post("/v1/infer", json={"model": "tiny", "inputs": {"x": X}, **fields}).status_code


def oip(client: TestClient) -> int:
    body = {"inputs": [{"name": "x", "shape": [2, IN], "datatype": "FP32", "data": X}]}
    return client.post("/v2/models/tiny/infer", json=body).status_code


def test_requests_outcomes_histograms_and_misses_count_what_was_sent(client: TestClient) -> None:
    ok, oip_ok, at_risk, rejected, bad = 7, 3, 4, 2, 5
    assert all(infer(client, latency_ms=10_000) == 200 for _ in range(ok))
    assert all(oip(client) == 200 for _ in range(oip_ok))
    # 1 µs cannot be met: served flagged at risk (best effort, the default), or refused (reject).
    assert all(infer(client, latency_ms=0.001) == 200 for _ in range(at_risk))
    assert all(infer(client, latency_ms=0.001, on_infeasible="reject") == 503 for _ in range(rejected))
    assert all(
        client.post("/v1/infer", json={"model": "tiny", "inputs": {"z": X}}).status_code == 400 for _ in range(bad)
    )
    assert client.post("/v1/infer", content=b"{not json").status_code == 400

    s = scrape(client)
    served = {"model": "tiny", "variant": "fp32", "worker": "local"}
    assert value(s, "infaas_requests_total", **served, endpoint="v1", outcome="ok") == ok
    assert value(s, "infaas_requests_total", **served, endpoint="oip", outcome="ok") == oip_ok
    assert value(s, "infaas_requests_total", **served, endpoint="v1", outcome="slo_at_risk") == at_risk
    failed = {"model": "", "variant": "", "worker": "", "endpoint": "v1"}
    assert value(s, "infaas_requests_total", **failed, outcome="rejected") == rejected
    assert value(s, "infaas_requests_total", **failed, outcome="client_error") == bad + 1
    assert total(s, "infaas_requests_total") == ok + oip_ok + at_risk + rejected + bad + 1

    variant = {"model": "tiny", "variant": "fp32"}
    n = ok + oip_ok + at_risk
    for histogram in ("request_duration", "queue_duration", "service_duration"):
        assert value(s, f"infaas_{histogram}_seconds_count", **variant) == n, histogram
    assert value(s, "infaas_estimate_error_seconds_bucket", **variant, le="+Inf") == n
    # The two sums the mean estimate error is computed from are those of what live state recorded.
    services: Services = client.app.state.services  # type: ignore[attr-defined]
    recorded = services.live.recent_queries(1000)
    assert len(recorded) == n
    estimated_s = value(s, "infaas_estimated_latency_seconds_total", **variant)
    assert estimated_s == pytest.approx(sum(r.estimated_ms for r in recorded) / 1000.0)
    assert value(s, "infaas_request_duration_seconds_sum", **variant) == pytest.approx(
        sum(r.actual_ms for r in recorded) / 1000.0
    )
    assert value(s, "infaas_batch_size_count", **variant) == n
    assert value(s, "infaas_batch_size_sum", **variant) >= 2 * n  # each query has 2 rows
    assert value(s, "infaas_request_duration_seconds_bucket", **variant, le="+Inf") == n
    assert 0 < value(s, "infaas_request_duration_seconds_sum", **variant) < n * 10.0
    # Every 1 µs query missed its budget, and no placement could have met it: cause infeasible, not capacity.
    assert value(s, "infaas_slo_misses_total", **variant, cause="infeasible") == at_risk
    assert value(s, "infaas_slo_misses_total", **variant, cause="capacity") == 0

    # Scrape-time families: what live state and the catalog hold.
    assert value(s, "infaas_workers", state="ready") == 1
    assert value(s, "infaas_worker_instances", worker="local") == 1
    assert value(s, "infaas_worker_replicas", worker="local") == 1
    assert value(s, "infaas_worker_cores", worker="local") == 4
    assert value(s, "infaas_worker_free_cores", worker="local") == 3  # one replica of a one-thread variant
    assert value(s, "infaas_worker_memory_used_bytes", worker="local") == pytest.approx(20e6)
    assert value(s, "infaas_variant_builds", outcome="ready") == 1
    assert value(s, "infaas_variant_served_total", **variant) == n
    assert value(s, "infaas_rejected_queries_total", target="tiny") == rejected


def test_the_console_reads_the_numbers_the_metrics_export(client: TestClient) -> None:
    for _ in range(6):
        assert infer(client, latency_ms=10_000) == 200
    assert infer(client, latency_ms=0.001, on_infeasible="reject") == 503
    live = client.get("/console/api/live").json()
    s = scrape(client)
    assert live["total"] == total(s, "infaas_variant_served_total") == 6
    assert [r["total_rejected"] for r in live["rejected"]] == [value(s, "infaas_rejected_queries_total", target="tiny")]


def test_decisions_and_jobs_are_read_from_the_database(client: TestClient) -> None:
    services: Services = client.app.state.services  # type: ignore[attr-defined]
    for action in ("replicate", "replicate", "unload"):
        services.metadata.record_decision(level="model", action=action, target="tiny/fp32", inputs={}, reason="test")
    s = scrape(client)
    assert value(s, "infaas_autoscaler_decisions_total", level="model", action="replicate") == 2
    assert value(s, "infaas_autoscaler_decisions_total", level="model", action="unload") == 1


def test_metrics_off_means_no_route_and_no_engine_hook(tmp_path: Path) -> None:
    with TestClient(create_app(Settings(home=tmp_path, autoscaler="off", metrics=False))) as test_client:
        assert test_client.get("/metrics").status_code == 404
        assert test_client.app.state.services.engine.metrics is None  # type: ignore[attr-defined]


def test_a_tenant_key_may_not_read_metrics(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path, autoscaler="off", admin_key="admin-secret-key-0123456789")
    with TestClient(create_app(settings)) as test_client:
        assert test_client.get("/metrics").status_code == 401
        admin = {"Authorization": "Bearer admin-secret-key-0123456789"}
        key = test_client.post("/v1/admin/keys", json={"tenant": "t1"}, headers=admin)
        assert key.status_code in (200, 201), key.text
        tenant = {"Authorization": f"Bearer {key.json()['secret']}"}
        assert test_client.get("/metrics", headers=tenant).status_code == 403
        assert test_client.get("/metrics", headers=admin).status_code == 200


def test_refusals_before_the_engine_are_counted_per_inference_endpoint(tmp_path: Path) -> None:
    """A 401 (no key) or a 413 (body over the limit) is answered by a middleware before any model is chosen: it is
    still an inference request refused, counted with empty model/variant/worker; other paths are not counted."""
    admin_key = "admin-secret-key-0123456789"
    settings = Settings(home=tmp_path, autoscaler="off", admin_key=admin_key, max_body_mb=0.001)
    with TestClient(create_app(settings)) as test_client:
        admin = {"Authorization": f"Bearer {admin_key}"}
        body = {"inputs": [{"name": "x", "shape": [2, IN], "datatype": "FP32", "data": X}]}
        assert test_client.post("/v1/infer", json={"model": "tiny", "inputs": {"x": X}}).status_code == 401
        assert test_client.post("/v2/models/tiny/infer", json=body).status_code == 401
        assert test_client.post("/v2/models/tiny/infer", json=body).status_code == 401
        assert test_client.post("/v1/infer", content=b"[" + b"0," * 1000 + b"0]", headers=admin).status_code == 413
        assert test_client.get("/v1/models").status_code == 401  # not an inference request: not counted
        samples = scrape(test_client, admin)
    empty = {"model": "", "variant": "", "worker": ""}
    assert value(samples, "infaas_requests_total", **empty, endpoint="v1", outcome="client_error") == 2
    assert value(samples, "infaas_requests_total", **empty, endpoint="oip", outcome="client_error") == 2
    assert total(samples, "infaas_requests_total") == 4


def test_a_worker_exports_its_own_instances_replicas_memory_and_cores(client: TestClient) -> None:
    services: Services = client.app.state.services  # type: ignore[attr-defined]
    worker = LocalWorker("w2", services.store, services.live, memory_budget_mb=500.0, cores=2)
    service = WorkerService(worker, services.live, "http://127.0.0.1:1", heartbeat_s=60.0)
    variant = services.engine.cache.for_model("tiny")[0].variant
    with TestClient(create_worker_app(service)) as worker_client:
        service.remember(variant)
        worker.load(variant)
        worker.add_replica(variant)
        s = scrape(worker_client)
    assert value(s, "infaas_worker_instances", worker="w2") == 1
    assert value(s, "infaas_worker_replicas", worker="w2") == 2
    assert value(s, "infaas_worker_free_cores", worker="w2") == 0  # two one-thread replicas on two cores
    assert value(s, "infaas_worker_memory_used_bytes", worker="w2") == pytest.approx(40e6)
    assert value(s, "infaas_worker_memory_budget_bytes", worker="w2") == pytest.approx(500e6)
    assert not any(name == "infaas_workers" for name, _ in s)  # workers by state: the front-ends' view only


DASHBOARD = Path(__file__).resolve().parents[2] / "docker" / "grafana" / "infaas-dashboard.json"
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"), "gauge": ("",)}


def exported_names(client: TestClient) -> set[str]:
    """Every sample name ``GET /metrics`` exports, including those of families with no sample yet."""
    families = list(text_string_to_metric_families(client.get("/metrics").text))
    return {f.name + suffix for f in families for suffix in SUFFIXES[f.type]} | {
        s.name for f in families for s in f.samples
    }


def test_the_dashboard_names_only_metrics_that_are_exported(client: TestClient) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    expressions = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    named = {name for expr in expressions for name in re.findall(r"\binfaas_[a-z0-9_]+", expr)}
    assert len(named) >= 15, named
    assert infer(client, latency_ms=10_000) == 200  # the per-variant series exist once a query was served
    missing = named - exported_names(client)
    assert not missing, f"the dashboard names metrics /metrics does not export: {sorted(missing)}"
    titles = " ".join(panel["title"] for panel in dashboard["panels"]).lower()
    for topic in ("outcome", "p50", "p99", "slo", "estimate error", "instances", "replicas", "memory", "decisions"):
        assert topic in titles, topic


@pytest.mark.parametrize(
    ("error", "outcome"),
    [
        (Infeasible("latency_ms", Achievable(1.0, None, 0.0)), "rejected"),
        (TooManyRequests("over your share"), "rejected"),
        (BadRequest("bad"), "client_error"),
        (UnknownModel("none"), "client_error"),
        (ModelNotReady("building"), "server_error"),
        (RuntimeError("a bug"), "server_error"),
    ],
)
def test_failures_are_labelled_by_who_refused(error: BaseException, outcome: str) -> None:
    assert outcome_of(error) == outcome


def test_no_query_is_lost_when_threads_serve_while_prometheus_scrapes() -> None:
    registry = CollectorRegistry()
    metrics = QueryMetrics(registry)
    record = QueryRecord(
        at=0.0, tenant="t", model="m", variant="v", worker="w", batch=1, latency_ms=1.0, min_accuracy=0.0,
        max_cost=None, estimated_ms=2.0, actual_ms=1.5, queue_ms=0.1, cost=0.0, slo_at_risk=False, reason="",
    )  # fmt: skip
    threads, each = 4, 3 * FOLD_AT + 7  # every thread crosses the fold threshold several times
    done = threading.Event()

    def serve() -> None:
        for i in range(each):
            metrics.served("v1", record, 1.0, 2)
            if i % 10 == 0:
                metrics.failed("oip", BadRequest("x"))

    def scrape_until_done() -> None:
        while not done.is_set():
            generate_latest(registry)

    scraper = threading.Thread(target=scrape_until_done)
    scraper.start()
    workers = [threading.Thread(target=serve) for _ in range(threads)]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    done.set()
    scraper.join()
    samples = {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(generate_latest(registry).decode())
        for s in family.samples
    }
    labels = {"model": "m", "variant": "v"}
    assert value(samples, "infaas_requests_total", **labels, worker="w", endpoint="v1", outcome="ok") == threads * each
    failed = {"model": "", "variant": "", "worker": "", "endpoint": "oip", "outcome": "client_error"}
    assert value(samples, "infaas_requests_total", **failed) == threads * len(range(0, each, 10))
    assert value(samples, "infaas_request_duration_seconds_bucket", **labels, le="0.0025") == threads * each
    assert value(samples, "infaas_request_duration_seconds_bucket", **labels, le="0.001") == 0  # 1.5 ms
    assert value(samples, "infaas_batch_size_sum", **labels) == 2 * threads * each
    assert value(samples, "infaas_slo_misses_total", **labels, cause="capacity") == threads * each  # 1.5 > 1 ms


def test_each_stage_of_a_pipeline_query_is_counted_under_endpoint_pipeline(client: TestClient) -> None:
    spec = {
        "name": "twice",
        "p99_ms": 50,
        "inputs": [{"name": "image", "dtype": "float32", "shape": [-1, IN]}],
        "stages": [{"name": "a", "model": "tiny"}, {"name": "b", "model": "tiny"}],
        "edges": [{"from": "input.image", "to": "a.x"}, {"from": "input.image", "to": "b.x"}],
        "arrivals": {"rate_per_s": 10, "burstiness": 1, "duration_s": 10},
    }
    defined = client.post("/v1/pipelines", json=spec)
    assert defined.status_code == 201, defined.text
    for _ in range(3):
        response = client.post("/v1/pipelines/twice/infer", json={"inputs": {"image": X}})
        assert response.status_code == 200, response.text
    s = scrape(client)
    served = {"model": "tiny", "variant": "fp32", "worker": "local", "endpoint": "pipeline"}
    assert value(s, "infaas_requests_total", **served, outcome="ok") == 3 * 2
    assert total(s, "infaas_requests_total", endpoint="v1") == 0  # nothing counted twice
    assert value(s, "infaas_request_duration_seconds_count", model="tiny", variant="fp32") == 3 * 2
