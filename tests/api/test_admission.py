"""Admission decides from the headers (issue 14, findings 3 and 5, in-process): every refusal is sent
before the app asks for a single body byte, console forms included; the upload limit belongs to the upload
routes whatever the Content-Type, and every other route gets the body limit, streamed or declared."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from starlette.types import Message

from infaas.services import Services
from tests.fuzz import Tenants, secure_world


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[TestClient, Services, Tenants]]:
    with secure_world(tmp_path / "home", max_body_mb=0.001, max_upload_mb=0.1, max_jobs_per_tenant=0) as world:
        yield world


def _call_without_reading(app: FastAPI, method: str, path: str, headers: dict[str, str]) -> tuple[int, int]:
    """(status, body reads the app asked for) of a request declaring 50 MB that never sends them."""
    reads = 0
    sent: list[Message] = []

    async def receive() -> Message:
        nonlocal reads
        reads += 1
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        sent.append(message)

    raw = [(k.lower().encode(), v.encode()) for k, v in {**headers, "content-length": "50000000"}.items()]
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"testserver"), *raw],
        "client": ("testclient", 50000),
        "server": ("testserver", 80),
    }
    asyncio.run(app(scope, receive, send))
    return sent[0]["status"], reads


MULTIPART = {"content-type": "multipart/form-data; boundary=z"}


def test_every_refusal_comes_before_the_body(served: tuple[TestClient, Services, Tenants]) -> None:
    client, _, tenants = served
    app = client.app
    assert isinstance(app, FastAPI)
    fake = {"authorization": "Bearer fake", **MULTIPART}
    cases = [
        ("POST", "/v1/models", fake, 401),
        ("POST", "/v1/models", MULTIPART, 401),
        ("POST", "/v1/jobs", fake, 401),
        ("POST", "/v1/jobs", {**tenants.alice, **MULTIPART}, 429),  # over the (zero) job quota
        ("POST", "/v1/infer", {"authorization": "Bearer fake"}, 401),
        ("POST", "/v2/models/m/infer", {}, 401),
        ("POST", "/v1/admin/keys", {"authorization": "Bearer fake"}, 401),
        ("POST", "/console/actions/register", MULTIPART, 401),  # no session cookie
        ("POST", "/console/actions/register", {**tenants.alice, **MULTIPART}, 403),  # not an admin
        ("POST", "/console/actions/delete", {"cookie": "infaas_console=forged.1.-.sig"}, 401),
    ]
    for method, path, headers, status in cases:
        assert _call_without_reading(app, method, path, headers) == (status, 0), (method, path, headers)


def _chunks(size: int) -> Iterator[bytes]:
    for _ in range(size // 1000):
        yield b" " * 1000


@pytest.mark.parametrize("content_type", ["multipart/form-data; boundary=z", "MULTIPART/form-data", "multipart/x"])
def test_non_upload_routes_get_the_body_limit_whatever_the_content_type(
    served: tuple[TestClient, Services, Tenants], content_type: str
) -> None:
    client, _, tenants = served
    headers = {**tenants.alice, "content-type": content_type}
    declared = client.post("/v1/infer", content=b" " * 5000, headers=headers)
    streamed = client.post("/v1/infer", content=_chunks(5000), headers=headers)  # chunked: no Content-Length
    for response in (declared, streamed):
        assert response.status_code == 413 and "1000 bytes" in response.json()["detail"], response.text


def test_upload_routes_get_the_upload_limit_whatever_the_content_type(
    served: tuple[TestClient, Services, Tenants],
) -> None:
    client, services, tenants = served
    headers = {**tenants.alice, "content-type": "application/json"}
    within = client.post("/v1/models", content=b" " * 5000, headers=headers)
    assert within.status_code == 422, within.text  # over the body limit, within the upload limit: parsed
    over = client.post("/v1/models", content=b" " * 200_000, headers=headers)
    assert over.status_code == 413 and "100000 bytes" in over.json()["detail"], over.text
    assert services.metadata.list_models() == []


def test_console_form_without_a_session_gets_the_sign_in_page(served: tuple[TestClient, Services, Tenants]) -> None:
    """A browser whose console session expired posts a form: it is refused before the body, with the sign-in
    page (as every console page answers), not a JSON error; the console's JSON API keeps its JSON 401."""
    client, _services, _tenants = served
    client.cookies.clear()
    page = client.post("/console/actions/delete", data={"name": "m", "csrf": "x"})
    assert page.status_code == 401
    assert page.headers["content-type"].startswith("text/html")
    assert 'action="/console/login' in page.text and page.headers["www-authenticate"] == "Bearer"
