"""Traces (``infaas.tracing``): off by default at no cost, the query's spans, and one trace across processes.

The cross-process test runs a real ``infaas worker`` child that exports over OTLP/HTTP (configured only by
``OTEL_*`` variables) to a receiver in this test, and a front-end in this process that exports to the SDK's
in-memory exporter; the query reaches the worker over real HTTP, so the worker's spans can only join the
front-end's trace through the ``traceparent`` header.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import anyio
import numpy as np
import pytest
from fastapi.testclient import TestClient
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from api.app import create_app
from infaas import offload, tracing
from infaas.config import Settings
from infaas.engine import Query
from infaas.selector import Infeasible, Requirements
from infaas.services import Services, build_services
from tests.factories import linear_model, profiles, scaled_out_env, seed_model, wait_for
from tests.pg import temporary_database
from tests.redis_server import REDIS_URL, delete_keys, redis_up
from tests.s3server import free_port

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    assert tracing.configure("infaas-test", exporter=exporter) and tracing.ENABLED
    yield exporter
    tracing.shutdown()


def _by_name(finished: tuple[ReadableSpan, ...] | list[ReadableSpan]) -> dict[str, ReadableSpan]:
    named = {s.name: s for s in finished}
    assert len(named) == len(finished), [s.name for s in finished]  # one span of each name per query
    return named


def _parent(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent is not None else None


def _assert_query_spans(named: dict[str, ReadableSpan]) -> None:
    """parse, select, run and account are children of ``query``, in that order; ``queue`` is a child of ``run``."""
    query = named["query"]
    trace_ids = {s.context.trace_id for s in named.values()}
    assert trace_ids == {query.context.trace_id}
    for step in ("parse", "select", "run", "account"):
        assert _parent(named[step]) == query.context.span_id, step
    assert _parent(named["queue"]) == named["run"].context.span_id
    order = [named[step] for step in ("parse", "select", "run", "account")]
    assert all(a.end_time <= b.start_time for a, b in zip(order, order[1:], strict=False))
    assert named["run"].start_time <= named["queue"].start_time <= named["queue"].end_time
    assert named["select"].attributes["infaas.variant"] == "fp32"


def test_tracing_is_on_only_when_the_otel_environment_asks() -> None:
    assert not tracing.ENABLED  # nothing in a test run configures it by default
    assert not tracing.wanted({})
    assert tracing.wanted({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"})
    assert tracing.wanted({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4318/v1/traces"})
    assert tracing.wanted({"OTEL_TRACES_EXPORTER": "otlp"})
    assert not tracing.wanted({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"})
    assert not tracing.wanted({"OTEL_SDK_DISABLED": "true", "OTEL_TRACES_EXPORTER": "otlp"})


def test_off_the_serving_path_touches_no_tracer(services: Services, monkeypatch: pytest.MonkeyPatch) -> None:
    seed_model(services, "lin", linear_model(), task="t", variants={"fp32": profiles({1: 0.05})})
    services.start_serving()

    def no_tracer() -> None:
        raise AssertionError("a span was asked for while tracing is off")

    monkeypatch.setattr(tracing, "tracer", no_tracer)
    monkeypatch.setattr(tracing, "now_ns", no_tracer)
    query = Query(Requirements(model="lin"), {"x": np.ones((2, 4), np.float32).tolist()})
    assert services.engine.infer(query).outputs["y"].shape == (2, 3)
    for body_bytes in (10, offload.INLINE_BODY_BYTES + 1):
        answer, _ = anyio.run(services.engine.serve, lambda: (query, None), body_bytes)
        assert answer.served_by.variant == "fp32"


@pytest.mark.parametrize("body_bytes", [10, offload.INLINE_BODY_BYTES + 1], ids=["on-the-loop", "in-the-pool"])
def test_a_served_query_has_its_spans(services: Services, spans: InMemorySpanExporter, body_bytes: int) -> None:
    seed_model(services, "lin", linear_model(), task="t", variants={"fp32": profiles({1: 0.05})})
    services.start_serving()
    query = Query(Requirements(model="lin"), {"x": np.ones((2, 4), np.float32).tolist()})
    anyio.run(services.engine.serve, lambda: (query, None), body_bytes)
    named = _by_name(spans.get_finished_spans())
    _assert_query_spans(named)
    assert named["run"].attributes["infaas.batch"] == 2
    assert named["query"].parent is None  # no HTTP server span here: the query is the trace's root


def test_a_refused_query_records_the_error_on_select(services: Services, spans: InMemorySpanExporter) -> None:
    seed_model(services, "lin", linear_model(), task="t", variants={"fp32": profiles({1: 5.0})})
    services.start_serving()
    query = Query(Requirements(model="lin", max_cost=1e-15), {"x": [[1.0, 2.0, 3.0, 4.0]]})
    with pytest.raises(Infeasible, match="max_cost"):
        services.engine.infer(query)
    named = _by_name(spans.get_finished_spans())
    assert set(named) == {"query", "select"}
    assert not named["select"].status.is_ok and named["select"].events[0].name == "exception"


# -- across processes ----------------------------------------------------------------------------------


class _OtlpReceiver(BaseHTTPRequestHandler):
    """``POST /v1/traces`` as an OTLP/HTTP collector answers it; the spans land in ``server.spans``."""

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        request = ExportTraceServiceRequest.FromString(self.rfile.read(int(self.headers["content-length"])))
        for resource_spans in request.resource_spans:
            service = next(a.value.string_value for a in resource_spans.resource.attributes if a.key == "service.name")
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    self.server.spans.append(  # type: ignore[attr-defined]
                        {
                            "service": service,
                            "name": span.name,
                            "trace_id": int.from_bytes(span.trace_id, "big"),
                            "span_id": int.from_bytes(span.span_id, "big"),
                            "parent": int.from_bytes(span.parent_span_id, "big") if span.parent_span_id else None,
                        }
                    )
        body = ExportTraceServiceResponse().SerializeToString()
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_: object) -> None:
        pass


@pytest.fixture
def collector() -> Iterator[tuple[str, list[dict]]]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _OtlpReceiver)
    server.spans = []  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", server.spans  # type: ignore[attr-defined]
    server.shutdown()


def _servers_up() -> bool:
    if not redis_up():
        return False
    try:
        with temporary_database():
            return True
    except Exception:
        return False


@pytest.mark.integration
@pytest.mark.skipif(not _servers_up(), reason="needs PostgreSQL and Redis")
def test_one_query_is_one_trace_across_the_front_end_and_a_worker_process(
    tmp_path: Path, spans: InMemorySpanExporter, collector: tuple[str, list[dict]]
) -> None:
    endpoint, worker_spans = collector
    prefix = f"infaas-test-{uuid.uuid4().hex[:10]}"
    with temporary_database() as database_url:
        env = scaled_out_env(database_url, prefix, tmp_path / "store", autoscaler="off", heartbeat_s=0.5)
        env.update(OTEL_TRACES_EXPORTER="otlp", OTEL_EXPORTER_OTLP_ENDPOINT=endpoint, OTEL_BSP_SCHEDULE_DELAY="50")
        port = free_port()
        worker_log = tmp_path / "worker.log"
        with open(worker_log, "wb") as out:
            worker = subprocess.Popen(
                [sys.executable, "-m", "infaas", "worker", "--port", str(port), "--id", "w1"],
                env={**env, "INFAAS_HOME": str(tmp_path / "home-w1")},
                cwd=ROOT,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        settings = Settings(
            home=tmp_path / "home-fe",
            database_url=database_url,
            redis_url=REDIS_URL,
            redis_prefix=prefix,
            model_store=str(tmp_path / "store"),
            in_process_worker=False,
            build_variants=False,
            autoscaler="off",
        )
        services = build_services(settings)
        try:
            seed_model(services, "lin", linear_model(), task="t", variants={"fp32": profiles({1: 0.05})})
            assert wait_for(lambda: [w.id for w in services.live.workers()] == ["w1"], 30), worker_log.read_text()
            traceparent_trace = uuid.uuid4().int >> 64 << 64 | 1  # a caller's trace, continued by the front-end
            headers = {"traceparent": f"00-{traceparent_trace:032x}-{0x1234:016x}-01"}
            with TestClient(create_app(settings, services=services)) as client:
                response = client.post(
                    "/v1/infer", json={"model": "lin", "inputs": {"x": [[1.0, 2.0, 3.0, 4.0]]}}, headers=headers
                )
            assert response.status_code == 200, response.text
            assert response.json()["served_by"]["worker"] == "w1"
            # The worker exports its spans in batches (every 50 ms here) to the collector.
            assert wait_for(lambda: any(s["name"] == "run" for s in worker_spans), 10), worker_log.read_text()
        finally:
            worker.terminate()
            worker.wait(15)
            services.close()
            delete_keys(f"{prefix}:")

    front = [s for s in spans.get_finished_spans() if s.context.trace_id == traceparent_trace]
    server = next(s for s in front if s.parent is not None and s.parent.span_id == 0x1234)  # FastAPI's span
    query = next(s for s in front if s.name == "query")
    assert _parent(query) == server.context.span_id
    _assert_query_spans(_by_name([s for s in front if s.name != server.name]))
    run = next(s for s in front if s.name == "run")

    remote = [s for s in worker_spans if s["service"] == "infaas-worker" and s["trace_id"] == traceparent_trace]
    by_id = {s["span_id"]: s for s in remote}
    worker_run = next(s for s in remote if s["name"] == "run")
    chain = [worker_run]
    while chain[-1]["parent"] in by_id:
        chain.append(by_id[chain[-1]["parent"]])
    # worker run -> the worker's server span for POST /infer/... -> (over HTTP) the front-end's run span.
    assert chain[-1]["name"].startswith("POST /infer/"), chain
    assert chain[-1]["parent"] == run.context.span_id
    assert any(s["name"] == "queue" and s["parent"] == worker_run["span_id"] for s in remote)

    lines = [json.loads(line) for line in worker_log.read_text().splitlines() if line.startswith("{")]
    events = [line.get("event") for line in lines]
    assert "startup" in events and "worker_join" in events and "worker_leave" in events, lines
