"""Issue 14, as a hostile tenant or web page would try it: each test sends the reproduced request and asserts the
safe outcome (a 4xx that says why, nothing stored or deleted, others still served).

6: auth-off mode and the console refuse DNS-rebound ``Host`` names and cross-site state changes; 8: reserved
tenant names; 9: visibility decided before anything is loaded; 10: names, OIP shapes, ONNX Runtime failures and
console deletes that were 500s; 11/12: forwarded headers and the sign-in throttle against a real uvicorn.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import httpx
import numpy as np
import orjson
import pytest
import uvicorn
from fastapi.testclient import TestClient
from sqlalchemy import event
from typer.testing import CliRunner

from api.app import create_app
from infaas.catalog import ModelInfo
from infaas.cli.main import app as cli_app
from infaas.config import Settings, get_settings
from infaas.db.models import ApiKey
from infaas.registration import RegistrationRequest, register_model
from infaas.services import Services, build_services
from tests.factories import TASK, linear_model, profiles, seed_model, upload_model
from tests.fuzz import ADMIN_KEY, Tenants, bearer, mlp_bytes, secure_app, secure_settings, secure_world
from tests.fuzz.hostile_tenant import gather_model, serve_in_thread

LOCAL_URL = "http://127.0.0.1:8000"
LOCAL_PEER = ("127.0.0.1", 40000)
EVIL = "http://evil.example"
FP32 = profiles({1: 0.1, 4: 0.4}, memory_mb=20.0)
seed_ready = partial(seed_model, task=TASK, variants={"fp32": FP32})


GATHER = gather_model()  # y = table[i] over 4 values: an index past 3 fails inside ONNX Runtime


# -- 6: auth-off mode (the embedded default) ------------------------------------------------------
@pytest.fixture
def keyless(tmp_path: Path) -> Iterator[tuple[TestClient, Services]]:
    """Auth off, a browser on this machine: loopback peer, ``Host: 127.0.0.1:8000``; one ready model."""
    settings = Settings(home=tmp_path / "home", build_variants=False, autoscaler="off")
    services = build_services(settings)
    seed_ready(services, "tiny", linear_model(4, 3))
    with TestClient(create_app(settings, services=services), base_url=LOCAL_URL, client=LOCAL_PEER) as client:
        yield client, services
    services.close()


def test_cross_site_pages_cannot_drive_a_keyless_server(keyless: tuple[TestClient, Services]) -> None:
    """Issue 14, item 6: with ``Origin: http://evil.example`` a text/plain infer got 200, a multipart register 201
    and a re-profile 202."""
    client, services = keyless
    infer_body = orjson.dumps({"model": "tiny", "inputs": {"x": [[0.1, 0.2, 0.3, 0.4]]}})
    plain = {"Content-Type": "text/plain"}
    assert client.post("/v1/infer", content=infer_body, headers=plain).status_code == 200  # the page's own request

    for hostile in ({"Origin": EVIL}, {"Origin": "null"}, {"Sec-Fetch-Site": "cross-site"}):
        infer = client.post("/v1/infer", content=infer_body, headers={**plain, **hostile})
        assert infer.status_code == 403 and "cross-site request refused" in infer.json()["detail"], infer.text
        register = upload_model(client, "planted", mlp_bytes(), headers=hostile)
        assert register.status_code == 403, register.text
        assert client.post("/v1/models/tiny/profile", headers=hostile).status_code == 403
        assert client.delete("/v1/models/tiny", headers=hostile).status_code == 403
        assert client.post("/v2/models/tiny/infer", json={"inputs": []}, headers=hostile).status_code == 403
    assert services.metadata.get_model("planted") is None and not services.store.list("models/planted/")
    assert services.metadata.get_model("tiny") is not None
    # Reading is not a state change; same-origin pages and scripts (no Origin) keep working.
    assert client.get("/v1/models", headers={"Origin": EVIL}).status_code == 200
    same_origin = {"Origin": LOCAL_URL, "Sec-Fetch-Site": "same-origin"}
    assert client.post("/v1/infer", content=infer_body, headers={**plain, **same_origin}).status_code == 200


@pytest.mark.parametrize("host", ["evil.example", "evil.example:8000", "127.0.0.1.evil.example", "localhost.evil", ""])
def test_dns_rebinding_host_is_refused(keyless: tuple[TestClient, Services], host: str) -> None:
    """Issue 14, item 6: with ``Host: evil.example`` ``GET /console/actions`` handed out a session and a CSRF token
    and ``POST /console/actions/delete`` then deleted a model."""
    client, services = keyless
    headers = {"Host": host}
    page = client.get("/console/actions", headers=headers)
    assert page.status_code == 403 and "set-cookie" not in page.headers
    assert "loopback host" in page.text and 'name="csrf"' not in page.text
    deleted = client.post("/console/actions/delete", data={"name": "tiny", "confirmed": "yes"}, headers=headers)
    assert deleted.status_code == 403
    assert client.get("/v1/models", headers=headers).status_code == 403
    assert client.delete("/v1/models/tiny", headers=headers).status_code == 403
    assert services.metadata.get_model("tiny") is not None


@pytest.mark.parametrize("host", ["127.0.0.1:8000", "localhost:8000", "LOCALHOST", "[::1]:8000", "[::1]", "127.0.0.2"])
def test_loopback_host_names_are_served(keyless: tuple[TestClient, Services], host: str) -> None:
    client, _ = keyless
    assert client.get("/v1/models", headers={"Host": host}).status_code == 200
    assert client.get("/console/actions", headers={"Host": host}).status_code == 200


def test_keyless_console_session_from_a_rebound_page_is_refused(keyless: tuple[TestClient, Services]) -> None:
    """The whole attack: a session fetched through the loopback name cannot be used cross-site either."""
    client, services = keyless
    page = client.get("/console/actions")
    token = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert page.status_code == 200 and token is not None
    form = {"name": "tiny", "confirmed": "yes", "csrf": token.group(1)}
    for hostile in ({"Origin": EVIL}, {"Sec-Fetch-Site": "cross-site"}, {"Host": "evil.example"}):
        assert client.post("/console/actions/delete", data=form, headers=hostile).status_code == 403
    assert services.metadata.get_model("tiny") is not None
    assert client.post("/console/actions/delete", data=form).status_code == 200  # the console itself still can
    assert services.metadata.get_model("tiny") is None


def test_test_client_name_is_loopback_only_without_trusted_proxies(tmp_path: Path) -> None:
    """``testclient`` is the name Starlette's test client gives its peer; with trusted proxies a forwarded header
    could carry it, so then it is not believed."""
    for trusted, expected in (("", 200), ("127.0.0.1", 403)):
        settings = Settings(
            home=tmp_path / f"h{expected}", build_variants=False, autoscaler="off", trusted_proxies=trusted
        )
        with TestClient(create_app(settings)) as client:
            assert client.get("/v1/models").status_code == expected
        for name in ("localhost", "testclient"):
            with TestClient(create_app(settings), base_url=LOCAL_URL, client=(name, 1)) as named:
                assert named.get("/v1/models").status_code == (expected if name == "testclient" else 403)


# -- 6 with keys: the console cookie is the ambient credential -------------------------------------
@pytest.fixture
def secure(tmp_path: Path) -> Iterator[tuple[TestClient, Services, Tenants]]:
    with secure_world(tmp_path / "home") as world:
        yield world


def test_cookie_console_requests_refuse_cross_site_and_bearer_calls_do_not(
    secure: tuple[TestClient, Services, Tenants],
) -> None:
    client, services, tenants = secure
    seed_ready(services, "tiny", linear_model(4, 3), owner="admin")
    assert client.post("/console/login", data={"key": ADMIN_KEY}, follow_redirects=False).status_code == 303
    token = re.search(r'name="csrf" value="([^"]+)"', client.get("/console/actions").text)
    assert token is not None
    form = {"name": "tiny", "confirmed": "yes", "csrf": token.group(1)}
    # No Origin (an old browser) but marked cross-site: refused although the token is right.
    refused = client.post("/console/actions/delete", data=form, headers={"Sec-Fetch-Site": "cross-site"})
    assert refused.status_code == 403 and services.metadata.get_model("tiny") is not None
    assert client.post("/console/login", data={"key": ADMIN_KEY}, headers={"Origin": EVIL}).status_code == 403
    client.cookies.clear()
    # Bearer-key API clients are not a browser's ambient credential: an Origin does not matter to them.
    scripted = upload_model(client, "scripted", mlp_bytes(), headers={**tenants.alice, "Origin": EVIL})
    assert scripted.status_code == 201, scripted.text


# -- 8: reserved tenant names -----------------------------------------------------------------------
@pytest.mark.parametrize("tenant", ["admin", "local", "Admin", "LOCAL"])
def test_reserved_tenant_names_are_refused(secure: tuple[TestClient, Services, Tenants], tenant: str) -> None:
    """Issue 14, item 8: ``POST /v1/admin/keys {"tenant": "admin"}`` made a non-admin key that listed and described
    the admin's private models and deleted one."""
    client, services, tenants = secure
    before = services.metadata.list_api_keys()
    for admin in (False, True):
        response = client.post("/v1/admin/keys", json={"tenant": tenant, "admin": admin}, headers=tenants.admin)
        assert response.status_code == 400, response.text
        assert response.json()["code"] == "reserved_tenant" and "reserved" in response.json()["detail"]
    assert services.metadata.list_api_keys() == before


def test_tenant_keys_never_see_the_admins_or_local_private_models(
    secure: tuple[TestClient, Services, Tenants], tmp_path: Path
) -> None:
    client, services, tenants = secure
    seed_ready(services, "admins-private", linear_model(4, 3), owner="admin")
    model_path = tmp_path / "m.onnx"
    model_path.write_bytes(mlp_bytes())
    register_model(services, RegistrationRequest(name="locals-private", task=TASK, model_path=model_path))  # keyless
    assert services.metadata.get_model("locals-private").owner == "local"
    # A key stored for a reserved name before such names were refused is refused at the door.
    legacy = services.keyring.create("legacy")
    with services.db.session() as session:
        session.get(ApiKey, legacy.info.id).tenant = "admin"
    assert client.get("/v1/models", headers=bearer(legacy.secret)).status_code == 401
    for headers in (tenants.alice, tenants.bob):
        assert client.get("/v1/models", headers=headers).json() == []
        for name in ("admins-private", "locals-private"):
            assert client.get(f"/v1/models/{name}", headers=headers).status_code == 404
            assert client.delete(f"/v1/models/{name}", headers=headers).status_code == 404
    assert services.metadata.get_model("admins-private") is not None


# -- 9: visibility before loading -------------------------------------------------------------------
# Threads of the server's own background work (job pool, maintenance, heartbeats), which may touch the
# database at any moment: what they do is not the request's work.
_BACKGROUND_THREADS = ("infaas-", "heartbeat-", "live-state", "catalog-subscriber", "worker-heartbeat")


def _on_request_thread() -> bool:
    return not threading.current_thread().name.startswith(_BACKGROUND_THREADS)


@contextmanager
def _counting_sql(services: Services) -> Iterator[list[str]]:
    statements: list[str] = []

    def record(_conn: object, _cursor: object, statement: str, *_args: object) -> None:
        if _on_request_thread():
            statements.append(statement)

    event.listen(services.db.engine, "before_cursor_execute", record)
    try:
        yield statements
    finally:
        event.remove(services.db.engine, "before_cursor_execute", record)


@pytest.mark.parametrize(("method", "suffix"), [("GET", ""), ("GET", "/variants"), ("POST", "/profile")])
def test_hidden_and_missing_names_cost_the_same_work(
    secure: tuple[TestClient, Services, Tenants], method: str, suffix: str
) -> None:
    """Issue 14, item 9: 5.7 ms for an existing private name vs 2.3 ms for none, because the model was loaded
    (variants, profiles) before access was checked. Now neither touches the database."""
    client, services, tenants = secure
    seed_ready(services, "alice.private", linear_model(4, 3), owner="alice")
    client.get("/v1/models/alice.private", headers=tenants.bob)  # warm the key and catalog caches
    loads: list[str] = []
    real_get_model = services.metadata.get_model

    def counting_get_model(name: str) -> ModelInfo | None:
        if _on_request_thread():
            loads.append(name)
        return real_get_model(name)

    services.metadata.get_model = counting_get_model  # type: ignore[method-assign]
    try:
        with _counting_sql(services) as for_hidden:
            hidden = client.request(method, f"/v1/models/alice.private{suffix}", headers=tenants.bob)
        with _counting_sql(services) as for_missing:
            missing = client.request(method, f"/v1/models/alice.nothing{suffix}", headers=tenants.bob)
        assert hidden.status_code == missing.status_code == 404
        assert loads == [] and for_hidden == for_missing
        assert not [s for s in for_hidden if re.search(r"\b(models|variants|profiles)\b", s)], for_hidden
        # The owner's request does load it: the check is about visibility, not a broken route.
        assert client.request(method, f"/v1/models/alice.private{suffix}", headers=tenants.alice).status_code < 300
        assert loads == ["alice.private"]
    finally:
        services.metadata.get_model = real_get_model  # type: ignore[method-assign]


# -- 10: 500s that are now clean 4xx ----------------------------------------------------------------
def test_a_name_ending_in_a_newline_is_refused(secure: tuple[TestClient, Services, Tenants]) -> None:
    client, services, tenants = secure
    for name in ("model\n", "model\r\n", "\nmodel"):
        response = upload_model(client, name, mlp_bytes(), headers=tenants.alice)
        assert response.status_code == 400 and "name must be" in response.json()["detail"], response.text
    assert client.post("/v1/admin/keys", json={"tenant": "eve\n"}, headers=tenants.admin).status_code == 422
    assert client.delete("/v1/admin/keys/abcdef%0A", headers=tenants.admin).status_code == 422
    assert not services.store.list("models/") and services.metadata.list_models() == []


@pytest.mark.parametrize(
    "tensor",
    [
        {"shape": [4294967296, 4294967296, 0], "data": []},
        {"shape": [0, 2**62], "parameters": {"binary_data_size": 0}},
        {"shape": [2**40, 0, 2**40], "data": []},
        {"shape": [1, 2**62, 0], "parameters": {"binary_data_size": 0}},
    ],
)
def test_oip_shapes_no_array_can_have_are_400(secure: tuple[TestClient, Services, Tenants], tensor: dict) -> None:
    client, services, tenants = secure
    seed_ready(services, "alice.tiny", linear_model(4, 3), owner="alice")
    body = orjson.dumps({"inputs": [{"name": "x", "datatype": "FP32", **tensor}]})
    headers = {**tenants.alice, "Content-Type": "application/octet-stream"}
    if "parameters" in tensor:
        headers["Inference-Header-Content-Length"] = str(len(body))
    response = client.post("/v2/models/alice.tiny/infer", content=body, headers=headers)
    assert response.status_code == 400 and "shape" in response.json()["error"], response.text


def test_onnx_runtime_failures_on_a_query_are_400(secure: tuple[TestClient, Services, Tenants]) -> None:
    """A registered model that fails inside ONNX Runtime on the values given (an index out of range here)."""
    client, services, tenants = secure
    seed_ready(services, "alice.gather", GATHER, owner="alice")
    good = client.post("/v1/infer", json={"model": "alice.gather", "inputs": {"i": [3, 0]}}, headers=tenants.alice)
    assert good.status_code == 200 and good.json()["outputs"]["y"] == [3.0, 0.0], good.text
    bad = client.post("/v1/infer", json={"model": "alice.gather", "inputs": {"i": [1, 99]}}, headers=tenants.alice)
    assert bad.status_code == 400 and bad.json()["code"] == "invalid_input", bad.text
    assert "the model could not run on this input" in bad.json()["detail"] and "99" in bad.json()["detail"]
    binary = np.array([7], np.int64).tobytes()
    header = orjson.dumps(
        {"inputs": [{"name": "i", "datatype": "INT64", "shape": [1], "parameters": {"binary_data_size": 8}}]}
    )
    oip = client.post(
        "/v2/models/alice.gather/infer",
        content=header + binary,
        headers={**tenants.alice, "Inference-Header-Content-Length": str(len(header))},
    )
    assert oip.status_code == 400 and "could not run" in oip.json()["error"], oip.text
    assert client.post("/v1/infer", json={"model": "alice.gather", "inputs": {"i": [2]}}, headers=tenants.alice).json()[
        "outputs"
    ]["y"] == [2.0]


@pytest.mark.parametrize("name", ["..", "a/../../b", "../models", "/etc", "x\n", ""])
def test_console_delete_of_a_path_is_refused(secure: tuple[TestClient, Services, Tenants], name: str) -> None:
    client, services, tenants = secure
    seed_ready(services, "tiny", linear_model(4, 3), owner="admin")
    stored = services.store.list("models/")
    response = client.post("/console/actions/delete", data={"name": name, "confirmed": "yes"}, headers=tenants.admin)
    assert response.status_code in (400, 422), response.text
    assert services.store.list("models/") == stored and services.metadata.get_model("tiny") is not None


# -- 11 and 12: forwarded headers, the sign-in throttle, against a real uvicorn ----------------------
def _serve_options(monkeypatch: pytest.MonkeyPatch, **env: str) -> dict[str, object]:
    """The forwarded-header options ``infaas serve`` hands uvicorn under ``env``."""
    captured: dict[str, object] = {}
    monkeypatch.setattr(uvicorn, "run", lambda *_args, **kwargs: captured.update(kwargs))
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    get_settings.cache_clear()
    try:
        result = CliRunner().invoke(cli_app, ["serve"])
    finally:
        get_settings.cache_clear()
    assert result.exit_code == 0, result.output
    return {k: v for k, v in captured.items() if k in ("proxy_headers", "forwarded_allow_ips")}


def test_serve_believes_forwarded_headers_only_from_configured_proxies(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("INFAAS_HOME", str(tmp_path / "cli"))
    assert _serve_options(monkeypatch) == {"proxy_headers": False}
    trusted = _serve_options(monkeypatch, INFAAS_TRUSTED_PROXIES="10.0.0.1,192.168.0.0/16")
    assert trusted == {"proxy_headers": True, "forwarded_allow_ips": "10.0.0.1,192.168.0.0/16"}


def test_forwarded_addresses_cannot_dodge_the_sign_in_throttle(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Issue 14, item 11: 30 wrong keys with 30 forwarded addresses were 30 401s and no 429."""
    monkeypatch.setenv("INFAAS_HOME", str(tmp_path / "cli"))
    options = _serve_options(monkeypatch)
    settings = secure_settings(tmp_path / "home")
    services = build_services(settings)
    try:
        with serve_in_thread(secure_app(settings, services), options) as url, httpx.Client(base_url=url) as http:
            statuses = [
                http.post(
                    "/console/login", data={"key": "guess"}, headers={"X-Forwarded-For": f"198.51.100.{i}"}
                ).status_code
                for i in range(30)
            ]
            assert statuses == [401] * 5 + [429] * 25
            # The admin, behind the same address, still signs in.
            signed_in = http.post("/console/login", data={"key": ADMIN_KEY}, follow_redirects=False)
            assert signed_in.status_code == 303
    finally:
        services.close()


@pytest.mark.parametrize("forwarded", ["testclient", "localhost", "127.0.0.1", "::1"])
def test_forwarded_names_never_make_a_remote_client_local(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, forwarded: str
) -> None:
    """Issue 14, item 12: ``testclient`` and ``localhost`` in X-Forwarded-For counted as loopback. Without trusted
    proxies the header is ignored (the peer is what counts); behind a trusted proxy, names never count."""
    monkeypatch.setenv("INFAAS_HOME", str(tmp_path / "cli"))
    settings = Settings(home=tmp_path / "home", build_variants=False, autoscaler="off", trusted_proxies="127.0.0.1")
    services = build_services(settings)
    try:
        with serve_in_thread(
            create_app(settings, services=services), {"proxy_headers": True, "forwarded_allow_ips": "127.0.0.1"}
        ) as url:
            with httpx.Client(base_url=url) as http:
                # A proxy on loopback forwarding a remote client: refused, whatever name the client put first.
                remote = http.get("/v1/models", headers={"X-Forwarded-For": f"{forwarded}, 203.0.113.9"})
                assert remote.status_code == 403
                spoofed = http.get("/v1/models", headers={"X-Forwarded-For": forwarded})
                assert spoofed.status_code == (200 if forwarded in ("127.0.0.1", "::1") else 403)
    finally:
        services.close()
