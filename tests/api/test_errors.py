"""One error root: every domain error carries a status and a code, and one handler renders it the same way
for every route and middleware (``{"detail", "code"}`` on ``/v1``, ``{"error"}`` with Triton's statuses on
``/v2``), headers included."""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

import api
import autoscaler
import infaas
import variant_generator
from api import errors
from api.limits import BodySizeLimit
from infaas.errors import InfaasError, TooManyRequests, Unauthenticated, Unprocessable
from infaas.model_store.base import ObjectNotFound
from infaas.services import build_services
from tests.fuzz import secure_app, secure_settings


def _import_everything() -> None:
    """Import every module of the four packages, so every ``InfaasError`` subclass is defined.

    Modules whose optional extra is not installed (TensorRT, cloud SDKs) are skipped; ``__main__``
    modules would run a command line.
    """
    for package in (infaas, api, autoscaler, variant_generator):
        for module in pkgutil.walk_packages(package.__path__, prefix=f"{package.__name__}."):
            if module.name.rsplit(".", 1)[-1] == "__main__":
                continue
            try:
                importlib.import_module(module.name)
            except ModuleNotFoundError as exc:
                if exc.name and exc.name.split(".")[0] in {"infaas", "api", "autoscaler", "variant_generator"}:
                    raise


def _subclasses(root: type) -> Iterator[type]:
    for sub in root.__subclasses__():
        yield sub
        yield from _subclasses(sub)


def test_every_domain_error_has_a_status_and_a_code() -> None:
    _import_everything()
    found = set(_subclasses(InfaasError))
    names = {cls.__name__ for cls in found}
    # The errors callers meet most, so the walk cannot silently find nothing.
    assert {"RegistrationError", "DuplicateModel", "ModelCheckError", "OipError", "JobInputError"} <= names
    assert {"NoVariant", "LoginRequired", "NotFound", "TooManyRequests"} <= names
    for cls in found:
        assert 400 <= cls.status <= 599, cls
        assert isinstance(cls.code, str) and cls.code and cls.code != InfaasError.code, cls


def test_v1_route_error_is_detail_and_code(client: TestClient) -> None:
    missing = client.get("/v1/jobs/no-such-job")
    assert missing.status_code == 404
    assert missing.json() == {"detail": "job 'no-such-job' not found", "code": "not_found"}
    neither = client.post("/v1/jobs", data={"min_accuracy": "0.5"})
    assert neither.status_code == 400
    assert neither.json() == {"detail": "give exactly one of 'model' or 'task'", "code": "bad_request"}


@pytest.fixture
def tiny() -> TestClient:
    """An app with the one handler and routes that raise, on both protocols."""
    app = FastAPI()
    errors.install(app)

    @app.get("/v1/floor")
    @app.get("/v2/floor")
    def floor() -> None:
        raise Unprocessable("no variant reaches accuracy 0.99")

    @app.get("/v1/key")
    def key() -> None:
        raise Unauthenticated("missing API key")

    @app.get("/v2/busy")
    def busy() -> None:
        raise TooManyRequests("slow down", retry_after_s=3)

    return TestClient(app)


def test_v2_route_error_is_error_with_tritons_status(tiny: TestClient) -> None:
    v1 = tiny.get("/v1/floor")
    assert v1.status_code == 422 and v1.json() == {
        "detail": "no variant reaches accuracy 0.99",
        "code": "unprocessable",
    }
    v2 = tiny.get("/v2/floor")
    assert v2.status_code == 400 and v2.json() == {"error": "no variant reaches accuracy 0.99"}


def test_headers_survive_rendering(tiny: TestClient) -> None:
    unauthenticated = tiny.get("/v1/key")
    assert unauthenticated.status_code == 401 and unauthenticated.headers["www-authenticate"] == "Bearer"
    busy = tiny.get("/v2/busy")
    assert busy.status_code == 429 and busy.headers["retry-after"] == "3"
    assert busy.json() == {"error": "slow down"}


def test_middleware_refusals_have_the_same_shape() -> None:
    """A middleware renders with the handler's function: ``/v2`` gets ``{"error"}`` there too."""
    app = FastAPI()

    @app.post("/v1/echo")
    @app.post("/v2/echo")
    async def echo() -> None:
        return None

    limited = BodySizeLimit(app, upload_limit=10, body_limit=10)
    with TestClient(limited) as http:
        v1 = http.post("/v1/echo", content=b"x" * 100)
        assert v1.status_code == 413
        assert v1.json() == {"detail": "request body is larger than the limit of 10 bytes", "code": "payload_too_large"}
        v2 = http.post("/v2/echo", content=b"x" * 100)
        assert v2.status_code == 413 and v2.json() == {"error": "request body is larger than the limit of 10 bytes"}


def test_console_login_required_is_a_sign_in_page_for_browsers_and_a_401_for_scripts(tmp_path: Path) -> None:
    settings = secure_settings(tmp_path / "home")
    services = build_services(settings)
    try:
        with TestClient(secure_app(settings, services)) as http:
            page = http.get("/console", follow_redirects=False)
            assert page.status_code == 401 and page.headers["content-type"].startswith("text/html")
            assert page.headers["www-authenticate"] == "Bearer"
            api_call = http.get("/console/api/live")
            assert api_call.status_code == 401 and api_call.json()["code"] == "login_required"
    finally:
        services.close()


def test_the_frameworks_own_refusals_have_the_house_shape(client: TestClient) -> None:
    """No such route, a wrong method, a query parameter out of range: ``code`` beside ``detail`` on /v1
    (FastAPI's validation list kept, as the OpenAPI documents it), ``{"error"}`` on /v2."""
    assert client.get("/v1/no-such-route").json() == {"detail": "Not Found", "code": "not_found"}
    wrong_method = client.delete("/v1/infer")
    assert wrong_method.status_code == 405 and wrong_method.json()["code"] == "method_not_allowed"
    out_of_range = client.get("/v1/stats", params={"window_s": -1})
    assert out_of_range.status_code == 422 and out_of_range.json()["code"] == "invalid_request"
    assert out_of_range.json()["detail"][0]["loc"] == ["query", "window_s"]
    oip = client.get("/v2/no-such-route")
    assert (oip.status_code, oip.json()) == (404, {"error": "Not Found"})


def test_a_missing_store_object_is_a_404_not_a_500() -> None:
    missing = ObjectNotFound("jobs/j1/result.npz")
    assert (missing.status, missing.code) == (404, "object_not_found") and isinstance(missing, KeyError)
    assert "jobs/j1/result.npz" in str(missing)
