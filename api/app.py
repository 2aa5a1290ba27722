"""The FastAPI application factory."""

from __future__ import annotations

import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from api import console, errors
from api.admission import Admission
from api.concurrency import ConcurrencyLimit
from api.console.throttle import SignInThrottle
from api.early_answers import DrainBeforeClose
from api.fast_routes import FastInferenceRoutes
from api.limits import BodySizeLimit
from api.routes import admin, cascades, decisions, infer, jobs, metrics, models, pipelines, topk, v2
from api.schemas import ErrorOut
from autoscaler import Autoscaler
from infaas import __version__, logs, process_group, tracing
from infaas.config import Settings, get_settings
from infaas.services import Services, build_services

log = logging.getLogger(__name__)

# Statuses any route can answer (auth, body limits, per-key concurrency); documented so that clients and
# the OpenAPI conformance fuzzing know them.
COMMON_RESPONSES: dict[int | str, dict] = {
    401: {"model": ErrorOut, "description": "missing, invalid or revoked API key"},
    403: {"model": ErrorOut, "description": "not allowed for this key"},
    413: {"model": ErrorOut, "description": "request body over the configured limit"},
    429: {
        "model": ErrorOut,
        "description": "too many requests in flight, over a quota, or over a fair share under overload (Retry-After)",
    },
}


def _start_autoscaler(services: Services) -> Autoscaler | None:
    """Run both autoscaler levels unless switched off (``dry-run`` records decisions without acting)."""
    if services.settings.autoscaler == "off":
        return None
    scaler = Autoscaler(services)
    scaler.start()
    return scaler


def create_app(settings: Settings | None = None, services: Services | None = None) -> FastAPI:
    """Build the app; services are opened in the lifespan unless given (tests may share them)."""
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        owned = services is None
        app.state.services = running = services or build_services(settings)
        if not settings.auth_enabled:
            log.warning("INFAAS_ADMIN_KEY is not set: authentication is off and only localhost clients are served")
        if settings.metrics:
            metrics.open_metrics(app, running)
        # One copy of an embedded `infaas serve --workers N`: the others' catalog changes reach this engine.
        engine = running.engine
        group = process_group.watch_catalog(
            settings, running.metadata.add_listener, engine.catalog_changed, engine.cache.catch_up_on_miss
        )
        running.start_serving()
        scaler = _start_autoscaler(running)
        # What start-up built lives as long as the process: frozen, so that full collections no longer scan it (the
        # example zoo's front-end holds ~150,000 objects; a full collection of them took ~88 ms of CPU, a pause of
        # every request in flight, and ~0 once frozen: benchmarks/trace.py, which freezes its set-up the same way).
        gc.collect()
        gc.freeze()
        try:
            yield
        finally:
            gc.unfreeze()
            if scaler is not None:
                scaler.stop()
            if group is not None:
                group.close()
            if owned:
                running.close()

    # FastAPI's native OpenTelemetry asks the global providers whether anyone listens on every request
    # (2.6 us each, measured); infaas configures none, so it is off rather than asked.
    app = FastAPI(
        title="infaas",
        version=__version__,
        lifespan=lifespan,
        responses=COMMON_RESPONSES,
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    errors.install(app)
    app.state.signin_throttle = SignInThrottle(settings.console_signin_failures, settings.console_signin_window_s)
    # Middlewares wrap in reverse order of addition. From the outside: early answers drain the unread body
    # (bounded), admission authenticates and checks upload quotas from the headers, then the per-key
    # concurrency limit and the body limit; the inference fast path runs inside all of them.
    if settings.inference_fast_path:
        app.add_middleware(
            FastInferenceRoutes,
            routes=app.router.routes,
            endpoints=(infer.infer, v2.model_infer),
            handlers=app.exception_handlers,
        )
    app.add_middleware(
        BodySizeLimit,
        upload_limit=int(settings.max_upload_mb * 1e6),
        body_limit=int(settings.max_body_mb * 1e6),
    )
    app.add_middleware(
        ConcurrencyLimit, limit=settings.max_concurrent_per_key, per_connection=not settings.auth_enabled
    )
    app.add_middleware(Admission, unauthenticated_limit=settings.max_concurrent_unauthenticated)
    app.add_middleware(DrainBeforeClose, limit_bytes=int(settings.max_body_mb * 1e6))
    app.add_middleware(logs.RequestIds)  # outermost: every line a request causes carries its id
    tracing.instrument(app)  # server spans (around everything) when OTEL_* asks for traces
    app.include_router(models.router)
    app.include_router(infer.router)
    app.include_router(v2.router)
    app.include_router(admin.router)
    app.include_router(console.router)
    app.include_router(jobs.router)
    app.include_router(decisions.router)
    app.include_router(pipelines.router)
    app.include_router(topk.router)
    app.include_router(cascades.router)
    if settings.metrics:
        app.include_router(metrics.router)
    return app
