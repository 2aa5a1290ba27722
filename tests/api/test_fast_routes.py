"""The inference fast path really serves the inference routes (it silently served nothing once FastAPI
0.165 stopped flattening included routers), takes its paths from the registered routes, and leaves every
other request to the router."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import JSONResponse
from fastapi.testclient import TestClient

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
    app.add_middleware(FastInferenceRoutes, routes=app.router.routes, endpoints=(_endpoint,))
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
