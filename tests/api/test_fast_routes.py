"""The inference fast path really serves the inference routes (it silently served nothing once FastAPI
0.165 stopped flattening included routers), takes its paths from the registered routes, and leaves every
other request to the router."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from starlette.types import Receive, Scope, Send

from api.app import create_app
from api.fast_routes import FastInferenceRoutes, registered_routes
from api.routes import infer, v2
from infaas.config import Settings


def _through_router(request: Request) -> None:
    request.state.through_router = True  # a dependency: only FastAPI's router runs it


async def _endpoint(request: Request) -> JSONResponse:
    through_router = getattr(request.state, "through_router", False)
    return JSONResponse({"name": request.path_params["name"], "through_router": through_router})


def _app() -> FastAPI:
    app = FastAPI()
    app.add_middleware(
        FastInferenceRoutes, routes=app.router.routes, endpoints=(_endpoint,), handlers=app.exception_handlers
    )
    router = APIRouter(prefix="/models", dependencies=[Depends(_through_router)])
    router.add_api_route("/{name}/infer", _endpoint, methods=["POST"])
    app.include_router(router, prefix="/v9")  # the include prefix is part of the registered path
    return app


def test_the_inference_routes_of_the_app_are_found(tmp_path: Path) -> None:
    app = create_app(Settings(home=tmp_path))
    found = {
        (route.path, tuple(sorted(route.methods or ())))
        for route in registered_routes(app.routes, (infer.infer, v2.model_infer))
    }
    assert found == {
        ("/v1/infer", ("POST",)),
        ("/v2/models/{name}/infer", ("POST",)),
        ("/v2/models/{name}/versions/{version}/infer", ("POST",)),
    }


def test_a_matching_request_skips_the_router() -> None:
    with TestClient(_app()) as client:
        response = client.post("/v9/models/digits/infer")
    assert response.status_code == 200
    assert response.json() == {"name": "digits", "through_router": False}


def test_other_requests_go_through_the_router() -> None:
    with TestClient(_app()) as client:
        assert client.get("/v9/models/digits/infer").status_code == 405  # wrong method: the router answers
        assert client.post("/models/digits/infer").status_code == 404  # without the include prefix: no route


class _Spilled(Exception):
    """An error only an app-level handler knows how to answer."""


@pytest.mark.parametrize("fast_path", [True, False])
def test_the_real_app_serves_inference_past_the_router_and_answers_with_its_handlers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fast_path: bool
) -> None:
    """With ``create_app``'s own wiring: inference requests never reach FastAPI's route handling when the fast
    path is on (and do when it is off), and an exception handler registered on the app answers either way."""
    handled: list[str] = []
    original = APIRoute.handle

    async def counting(self: APIRoute, scope: Scope, receive: Receive, send: Send) -> None:
        handled.append(self.path)
        await original(self, scope, receive, send)

    monkeypatch.setattr(APIRoute, "handle", counting)
    app = create_app(Settings(home=tmp_path, build_variants=False, autoscaler="off", inference_fast_path=fast_path))

    async def teapot(_request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse({"handled": str(exc)}, status_code=418)

    app.add_exception_handler(_Spilled, teapot)
    with TestClient(app) as client:
        services = client.app.state.services  # type: ignore[attr-defined]

        async def spill(*_args: object, **_kwargs: object) -> None:
            raise _Spilled("by the app's handler")

        monkeypatch.setattr(services.engine, "serve", spill)
        v1 = client.post("/v1/infer", json={"model": "m", "inputs": {"x": [[0.0]]}})
        oip = client.post("/v2/models/m/infer", json={"inputs": []})
        assert client.get("/v1/models").status_code == 200  # the spy sees routed requests
    assert handled.count("/v1/models") == 1
    inference = [p for p in handled if p.endswith("/infer")]
    assert inference == ([] if fast_path else ["/v1/infer", "/v2/models/{name}/infer"])
    assert (v1.status_code, v1.json()) == (418, {"handled": "by the app's handler"})
    assert oip.status_code == 404  # unknown model: answered before the engine, by infaas's own handler
