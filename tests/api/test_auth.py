"""Authentication and key administration: 401 without a valid key, 403 for tenant keys on admin routes,
revocation effective at once, secrets shown once and stored only as hashes, and the ``infaas keys`` CLI."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from typer.testing import CliRunner

from api.app import create_app
from api.console.throttle import SignInThrottle
from infaas.auth import hash_key
from infaas.cli import keys as keys_cli
from infaas.config import Settings, get_settings
from infaas.db.models import ApiKey
from infaas.services import Services, build_services
from tests.factories import upload_model
from tests.fuzz import (
    ADMIN_KEY,
    Tenants,
    bearer,
    mlp_bytes,
    route_exists,
    secure_app,
    secure_world,
    served_routes,
)


@pytest.fixture
def secure(tmp_path: Path) -> Iterator[tuple[TestClient, Services, Tenants]]:
    with secure_world(tmp_path / "home") as world:
        yield world


def _protected_calls(client: TestClient) -> list[tuple[str, str]]:
    """Every (method, concrete path) of the app under /v1 and /v2, health probes excepted."""
    calls = []
    for path, methods in served_routes(client.app):
        if not path.startswith(("/v1/", "/v2")) or path.startswith("/v2/health"):
            continue
        concrete = re.sub(r"\{[^}]+\}", "0123abcd", path)
        calls += [(method, concrete) for method in sorted(methods) if method != "HEAD"]
    return calls


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        "Bearer",
        "Bearer ",
        "Basic cm9vdDpyb290",
        "Bearer not-a-key",
        "Bearer infaas_0123456789abcdef_forged",
        "bearer  ",
        f"Bearer {'x' * 5000}",
    ],
)
def test_missing_or_invalid_key_is_401_on_every_route(
    secure: tuple[TestClient, Services, Tenants], header: str | None
) -> None:
    client, _, _ = secure
    calls = _protected_calls(client)
    assert ("GET", "/v1/models") in calls and ("POST", "/v1/admin/keys") in calls
    headers = {} if header is None else {"Authorization": header}
    for method, path in calls:
        response = client.request(method, path, headers=headers)
        assert response.status_code == 401, (method, path, response.status_code, response.text)
        assert response.headers.get("www-authenticate") == "Bearer"


def test_revoked_key_refused(secure: tuple[TestClient, Services, Tenants]) -> None:
    client, _, tenants = secure
    assert client.get("/v1/models", headers=tenants.revoked).status_code == 401
    assert client.get("/v1/models", headers=tenants.alice).status_code == 200
    revoked = client.delete(f"/v1/admin/keys/{tenants.alice_key_id}", headers=tenants.admin)
    assert revoked.status_code == 200 and revoked.json()["revoked_at"] is not None
    # Refused at once, though the key was verified (and cached) a moment ago.
    assert client.get("/v1/models", headers=tenants.alice).status_code == 401


def test_admin_routes_refuse_tenant_keys(secure: tuple[TestClient, Services, Tenants]) -> None:
    client, _, tenants = secure
    for headers in (tenants.alice, tenants.bob):
        assert client.get("/v1/admin/keys", headers=headers).status_code == 403
        assert client.post("/v1/admin/keys", json={"tenant": "eve", "admin": True}, headers=headers).status_code == 403
        assert client.delete(f"/v1/admin/keys/{tenants.alice_key_id}", headers=headers).status_code == 403
    # Every other admin route the app grows (console included) is refused too; only the console's sign-in
    # form and its static files are public.
    public = ("/console/login", "/console/static")
    for path, methods in served_routes(client.app):
        if path.startswith(public):
            continue
        if ("/admin" in path or path.startswith("/console")) and "GET" in methods:
            concrete = re.sub(r"\{[^}]+\}", "0123abcd", path)
            assert client.get(concrete, headers=tenants.alice).status_code in (403, 404), path


def test_key_secret_shown_once_and_stored_hashed(secure: tuple[TestClient, Services, Tenants]) -> None:
    client, services, tenants = secure
    created = client.post("/v1/admin/keys", json={"tenant": "dave"}, headers=tenants.admin)
    assert created.status_code == 201, created.text
    body = created.json()
    secret = body["secret"]
    assert body["tenant"] == "dave" and body["is_admin"] is False and len(secret) >= 40
    listing = client.get("/v1/admin/keys", headers=tenants.admin)
    assert listing.status_code == 200
    assert secret not in listing.text and hash_key(secret) not in listing.text
    assert all(set(k) == {"id", "tenant", "is_admin", "created_at", "revoked_at"} for k in listing.json())
    with services.db.session() as session:
        row = session.scalar(select(ApiKey).where(ApiKey.id == body["id"]))
        assert row.key_hash == hash_key(secret)
        assert secret not in {str(getattr(row, c.key)) for c in ApiKey.__table__.columns}
    # The new key authenticates as its tenant: a model it registers belongs to it.
    registered = upload_model(client, "daves", mlp_bytes(), headers=bearer(secret))
    assert registered.status_code == 201, registered.text
    assert registered.json()["owner"] == "dave"


def test_admin_key_creation_rules(secure: tuple[TestClient, Services, Tenants]) -> None:
    client, _, tenants = secure
    made = client.post("/v1/admin/keys", json={"tenant": "ops", "admin": True}, headers=tenants.admin).json()
    second_admin = {"Authorization": f"Bearer {made['secret']}"}
    assert client.get("/v1/admin/keys", headers=second_admin).status_code == 200
    for bad in ("", "a/b", "../x", "x" * 129, "名前", "a b"):
        response = client.post("/v1/admin/keys", json={"tenant": bad}, headers=tenants.admin)
        assert response.status_code == 422, bad
    assert client.delete("/v1/admin/keys/ffffffffffffffff", headers=tenants.admin).status_code == 404
    assert client.delete("/v1/admin/keys/..%2F..%2Fetc", headers=tenants.admin).status_code in (404, 422)


def test_embedded_default_serves_loopback_only(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "home", build_variants=False, autoscaler="off")
    services = build_services(settings)
    try:
        app = secure_app(settings, services)
        with TestClient(app, base_url="http://127.0.0.1:8000", client=("127.0.0.1", 40000)) as local:
            assert local.get("/v1/models").status_code == 200
            assert local.get("/v1/admin/keys").status_code == 200
        with TestClient(app, client=("203.0.113.9", 40000)) as remote:
            assert remote.get("/v1/models").status_code == 403
            assert remote.get("/v1/admin/keys").status_code == 403
    finally:
        services.close()


def test_embedded_default_says_so_at_start(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    settings = Settings(home=tmp_path / "home", build_variants=False, autoscaler="off")
    services = build_services(settings)
    try:
        with caplog.at_level("WARNING"), TestClient(create_app(settings, services=services)):
            pass
        assert "only localhost" in caplog.text
    finally:
        services.close()


def test_health_probes_stay_open(secure: tuple[TestClient, Services, Tenants]) -> None:
    client, _, _ = secure
    probes = [p for p in ("/v2/health/live", "/v2/health/ready") if route_exists(client.app, p)]
    if not probes:
        pytest.fail("the /v2 routes are not served by the app")
    for path in probes:
        assert client.get(path).status_code == 200, path


@pytest.fixture
def cli_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("INFAAS_HOME", str(tmp_path / "cli-home"))
    monkeypatch.setenv("INFAAS_ADMIN_KEY", "cli-admin")
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def test_cli_keys_local_bootstrap(cli_env: None) -> None:
    runner = CliRunner()
    created = runner.invoke(keys_cli.keys_app, ["create", "--tenant", "first-admin", "--admin", "--local"])
    assert created.exit_code == 0, created.output
    secret = created.stdout.strip().splitlines()[-1]
    assert secret.startswith("infaas_")
    listed = runner.invoke(keys_cli.keys_app, ["list", "--local"])
    assert listed.exit_code == 0 and "first-admin" in listed.stdout and secret not in listed.stdout
    key_id = secret.split("_")[1]
    assert runner.invoke(keys_cli.keys_app, ["revoke", key_id, "--local"]).exit_code == 0
    assert runner.invoke(keys_cli.keys_app, ["revoke", "../../x", "--local"]).exit_code == 1
    assert runner.invoke(keys_cli.keys_app, ["create", "--tenant", "no/slash", "--local"]).exit_code == 1
    services = build_services(get_settings(), with_jobs=False)
    try:
        assert [k.revoked_at is not None for k in services.metadata.list_api_keys()] == [True]
    finally:
        services.close()


def test_cli_keys_over_rest(secure: tuple[TestClient, Services, Tenants], monkeypatch: pytest.MonkeyPatch) -> None:
    client, _, tenants = secure

    def call(method: str, path: str, **kwargs: object) -> object:
        response = client.request(method, path, headers=tenants.admin, **kwargs)
        assert response.status_code < 400, response.text
        return response.json()

    monkeypatch.setattr(keys_cli, "call", call)
    runner = CliRunner()
    created = runner.invoke(keys_cli.keys_app, ["create", "--tenant", "erin"])
    assert created.exit_code == 0, created.output
    secret = created.stdout.strip().splitlines()[-1]
    assert client.get("/v1/models", headers={"Authorization": f"Bearer {secret}"}).status_code == 200
    listed = runner.invoke(keys_cli.keys_app, ["list"])
    assert "erin" in listed.stdout and secret not in listed.stdout
    assert runner.invoke(keys_cli.keys_app, ["revoke", secret.split("_")[1]]).exit_code == 0
    assert client.get("/v1/models", headers={"Authorization": f"Bearer {secret}"}).status_code == 401


def test_repeated_failed_console_sign_ins_are_throttled(secure: tuple[TestClient, Services, Tenants]) -> None:
    client, services, tenants = secure
    assert services.settings.console_signin_failures == 5
    for _ in range(5):
        assert client.post("/console/login", data={"key": "guess"}).status_code == 401
    # The sixth wrong key waits, and is told for how long; so is a tenant key.
    for key in ("guess", tenants.alice["Authorization"].removeprefix("Bearer ")):
        refused = client.post("/console/login", data={"key": key}, follow_redirects=False)
        assert refused.status_code == 429 and "set-cookie" not in refused.headers
        assert 1 <= int(refused.headers["Retry-After"]) <= 60 and "Too many failed sign-ins" in refused.text
    # Bearer routes are untouched by it.
    assert client.get("/v1/models", headers=tenants.admin).status_code == 200


def test_a_throttled_address_still_signs_in_with_the_admin_key(secure: tuple[TestClient, Services, Tenants]) -> None:
    """Issue 14: five wrong keys from the admin's address (a NAT, a proxy) locked the admin out too."""
    client, services, tenants = secure
    stored_admin = services.keyring.create("ops", is_admin=True).secret
    for _ in range(5):
        assert client.post("/console/login", data={"key": "guess"}).status_code == 401
    assert client.post("/console/login", data={"key": "guess"}).status_code == 429
    for key in (ADMIN_KEY, stored_admin):
        signed_in = client.post("/console/login", data={"key": key}, follow_redirects=False)
        assert signed_in.status_code == 303 and "infaas_console=" in signed_in.headers["set-cookie"]
        client.cookies.clear()
    # A correct key does not clear the record: the next wrong key still waits.
    assert client.post("/console/login", data={"key": "guess"}).status_code == 429


def test_sign_in_throttle_window() -> None:
    now = [0.0]
    throttle = SignInThrottle(max_failures=2, window_s=10.0, clock=lambda: now[0])
    throttle.failed("a")
    throttle.failed("a")
    assert throttle.retry_after("a") == 10 and throttle.retry_after("b") == 0  # per address
    now[0] = 6.0
    assert throttle.retry_after("a") == 4
    now[0] = 10.5  # both failures have aged out of the window
    assert throttle.retry_after("a") == 0
    with pytest.raises(ValueError):
        SignInThrottle(max_failures=0, window_s=1.0)
