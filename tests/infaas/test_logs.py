"""Structured logs (``infaas.logs``): JSON lines with the request and trace ids, and no secret in any line."""

from __future__ import annotations

import io
import json
import logging
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from infaas import logs, tracing
from infaas.config import Settings
from infaas.services import build_services
from tests.factories import write_mlp
from tests.pg import temporary_database

log = logging.getLogger("infaas.test_logs")


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    for name in ("infaas", "api", "autoscaler", "variant_generator"):
        logging.getLogger(name).setLevel(logging.NOTSET)


def _lines(stream: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_a_line_is_json_with_its_event_fields_and_the_ids(tmp_path: Path, restore_logging: None) -> None:
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    stream = io.StringIO()
    logs.setup(Settings(home=tmp_path), stream=stream)  # not a terminal: JSON
    log.info("model %s built", "m", extra={"event": "build", "model": "m", "variants": {"fp32": "ready"}})
    token = logs.REQUEST_ID.set(0x2A)
    tracing.configure("test", exporter=InMemorySpanExporter())
    try:
        with tracing.tracer().start_as_current_span("query") as span:
            try:
                raise ValueError("boom")
            except ValueError:
                log.exception("query failed")
        trace_id = format(span.get_span_context().trace_id, "032x")
    finally:
        tracing.shutdown()
        logs.REQUEST_ID.reset(token)
    logging.getLogger("somelib").info("below WARNING: not shown")
    built, failed = _lines(stream)
    assert built["msg"] == "model m built" and built["level"] == "info" and built["logger"] == "infaas.test_logs"
    assert (built["event"], built["model"], built["variants"]) == ("build", "m", {"fp32": "ready"})
    assert "request_id" not in built and "trace_id" not in built  # outside a request, tracing off
    assert failed["request_id"].endswith("-2a") and failed["trace_id"] == trace_id
    assert failed["level"] == "error" and "ValueError: boom" in failed["exc"]


def test_a_terminal_gets_human_lines(tmp_path: Path, restore_logging: None) -> None:
    stream = _Tty()
    logs.setup(Settings(home=tmp_path), stream=stream)
    log.warning("worker %s left", "w1", extra={"event": "worker_leave", "worker": "w1"})
    (line,) = stream.getvalue().splitlines()
    assert "WARNING" in line and "infaas.test_logs: worker w1 left" in line and "event=worker_leave" in line
    assert not line.startswith("{")


def test_each_request_gets_its_own_id(tmp_path: Path, restore_logging: None) -> None:
    seen: list[str | None] = []

    async def app(scope: dict, receive: object, send: object) -> None:
        seen.append(logs.request_id())

    import anyio

    wrapped = logs.RequestIds(app)
    for _ in range(2):
        anyio.run(wrapped, {"type": "http"}, None, None)
    assert seen[0] is not None and seen[1] is not None and seen[0] != seen[1]
    assert logs.request_id() is None  # each request set it in its own context


def test_the_startup_line_shows_the_configuration_without_secrets() -> None:
    settings = Settings(
        admin_key="admin-secret-value",
        database_url="postgresql+psycopg://infaas:db-pass-word@db.internal:5432/infaas",
        redis_url="redis://:redis-pass-word@cache:6379/0",
        max_workers=7,
    )
    shown = logs.public_config(settings)
    assert shown["admin_key"] == logs.MASK and shown["api_key"] is None
    assert shown["database_url"] == "postgresql+psycopg://infaas:***@db.internal:5432/infaas"
    assert shown["redis_url"] == "redis://:***@cache:6379/0"
    assert shown["max_workers"] == 7 and shown["autoscaler"] == "on"
    assert "secret" not in json.dumps(shown, default=str) and "pass-word" not in json.dumps(shown, default=str)


@pytest.mark.integration
def test_no_secret_or_api_key_reaches_a_log_line(
    tmp_path: Path, restore_logging: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Startup, a registration and queries with ``Authorization: Bearer`` keys (one answered 503, logged), and
    errors whose messages carry the secrets (as a driver's or an SDK's error text may): every captured line is
    scanned for them."""
    admin_key = "adm-" + secrets.token_urlsafe(16)
    db_password = "pg-" + secrets.token_urlsafe(16)  # PostgreSQL here trusts local clients: any password works
    s3_secret = "s3/" + secrets.token_urlsafe(24)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_secret)
    stream = io.StringIO()
    with temporary_database() as url:
        database_url = url.replace("postgres@", f"postgres:{db_password}@", 1)
        assert db_password in database_url
        settings = Settings(home=tmp_path / "home", database_url=database_url, admin_key=admin_key, autoscaler="off")
        settings = settings.model_copy(update={"build_variants": False})
        logs.setup(settings, stream=stream)
        services = build_services(settings)
        tenant_key = services.keyring.create("acme").secret
        try:
            with TestClient(create_app(settings, services=services)) as client:
                admin = {"Authorization": f"Bearer {admin_key}"}
                mlp = write_mlp(tmp_path / "m.onnx").read_bytes()
                response = client.post(
                    "/v1/models", data={"name": "mlp", "task": "t"}, files={"model": ("m.onnx", mlp)}, headers=admin
                )
                assert response.status_code == 201, response.text
                tenant = {"Authorization": f"Bearer {tenant_key}"}
                missing = client.post("/v1/infer", json={"model": "nope", "inputs": {"x": [[0.0]]}}, headers=tenant)
                assert missing.status_code == 404
                # The admin's model is registered but never built: a 503, which the server logs as an error.
                unbuilt = client.post("/v1/infer", json={"model": "mlp", "inputs": {"x": [[0.0] * 8]}}, headers=admin)
                assert unbuilt.status_code == 503, unbuilt.text
                wrong = client.get("/v1/models", headers={"Authorization": f"Bearer {tenant_key}x"})
                assert wrong.status_code == 401
            log.error("could not reach %s for a request with Authorization: Bearer %s", database_url, tenant_key)
            try:
                raise RuntimeError(f"S3 refused: secret {s3_secret} admin {admin_key} password {db_password}")
            except RuntimeError:
                log.exception("model store failed")
        finally:
            services.close()

    lines = _lines(stream)  # every line is JSON
    events = {line.get("event") for line in lines}
    assert {"startup", "registration"} <= events, lines
    startup = next(line for line in lines if line.get("event") == "startup")
    assert startup["config"]["admin_key"] == logs.MASK and "127.0.0.1:5432" in startup["config"]["database_url"]
    registration = next(line for line in lines if line.get("event") == "registration")
    assert registration["model"] == "mlp" and registration["request_id"]
    served_error = next(line for line in lines if line.get("event") == "error" and line.get("status") == 503)
    assert served_error["code"] == "model_not_ready" and served_error["request_id"] != registration["request_id"]
    assert "POST /v1/infer answered 503" in served_error["msg"]
    assert all(line["event"] == "error" for line in lines if line["level"] == "error")  # the raised ones too
    text = stream.getvalue()
    assert "could not reach" in text and "S3 refused" in text  # the error lines were written, masked
    for secret in (admin_key, db_password, s3_secret, tenant_key, tenant_key[: len(tenant_key) // 2]):
        assert secret not in text, secret
