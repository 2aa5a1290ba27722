"""``infaas worker``: run a worker process that front-ends find through the shared live state."""

from __future__ import annotations

import socket

import typer

from infaas.config import get_settings


def worker_command(
    port: int = typer.Option(..., help="port to serve the worker API on"),
    host: str = typer.Option("127.0.0.1", help="interface to bind"),
    advertise: str = typer.Option(
        None, help="base URL front-ends use to reach this worker (default http://<host>:<port>)"
    ),
    worker_id: str = typer.Option(None, "--id", help="worker id (default INFAAS_WORKER_ID, else host-port)"),
) -> None:
    """Run a worker: loads variants from the model store on demand and serves them to every front-end.

    Needs INFAAS_REDIS_URL (how front-ends discover workers) and the same INFAAS_MODEL_STORE as the
    front-ends. The worker API has no authentication: bind it to a private network only.
    """
    import uvicorn

    from infaas.live_state.redis import RedisLiveState
    from infaas.model_store import open_model_store
    from infaas.worker.server import WorkerService, create_worker_app
    from infaas.worker.worker import LocalWorker

    settings = get_settings()
    if not settings.redis_url:
        raise typer.BadParameter("set INFAAS_REDIS_URL: front-ends find workers through the shared live state")
    settings.ensure_home()
    address = advertise or f"http://{host}:{port}"
    wid = worker_id or settings.worker_id or f"{socket.gethostname()}-{port}"
    live = RedisLiveState.from_settings(settings)
    store = open_model_store(settings.resolved_model_store, cache_dir=str(settings.home / "cache"))
    worker = LocalWorker(
        wid,
        store,
        live,
        memory_budget_mb=settings.worker_memory_mb,
        cores=settings.worker_cores,
        heartbeat_s=settings.heartbeat_s,
    )
    service = WorkerService(worker, live, address, settings.heartbeat_s)
    try:
        uvicorn.run(
            create_worker_app(service),
            host=host,
            port=port,
            log_level="warning",
            http="httptools",
            loop="uvloop",
            timeout_keep_alive=60,
        )
    finally:
        live.close()
