"""``GET /metrics``: this front-end's Prometheus metrics (``infaas.metrics``), admin only.

One registry per app, opened in the lifespan: the engine's per-query counters and a collector that reads live
state and the metadata database when Prometheus scrapes. ``infaas serve`` is one process, so the endpoint is
per process and needs no multiprocess mode; several front-ends are several scrape targets (``docker/
prometheus.yml``). Admin only because label values name every tenant's models: Prometheus sends the admin key
as a bearer token (``authorization.credentials_file``); without an admin key only loopback is served, as
everywhere.
"""

from __future__ import annotations

from fastapi import APIRouter, FastAPI, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from api.deps import AdminDep
from infaas.metrics import QueryMetrics, StateCollector, cached_threads
from infaas.services import Services

router = APIRouter(tags=["observability"])


def open_metrics(app: FastAPI, services: Services) -> None:
    """Give the engine its per-query metrics and the app the registry ``GET /metrics`` exports."""
    registry = CollectorRegistry(auto_describe=True)
    services.engine.metrics = QueryMetrics(registry)
    registry.register(
        StateCollector(
            services.live,
            services.metadata,
            cached_threads(services.engine.cache),
            services.settings.heartbeat_ttl_s,
        )
    )
    app.state.metrics_registry = registry


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "Prometheus text exposition format"}},
)
def metrics(request: Request, _admin: AdminDep) -> Response:
    """Requests by outcome, latency histograms, SLO misses, estimate error, workers, jobs, decisions, builds."""
    return Response(generate_latest(request.app.state.metrics_registry), media_type=CONTENT_TYPE_LATEST)
