"""``infaas worker``: run a worker process that front-ends find through the shared live state."""

from __future__ import annotations

import socket

import typer

from infaas.cli.client import err
from infaas.config import get_settings


def worker_command(
    port: int = typer.Option(..., help="port to serve the worker API on"),
    host: str = typer.Option("127.0.0.1", help="interface to bind"),
    advertise: str = typer.Option(
        None, help="base URL front-ends use to reach this worker (default http://<host>:<port>)"
    ),
    worker_id: str = typer.Option(None, "--id", help="worker id (default INFAAS_WORKER_ID, else host-port)"),
    gpu: int = typer.Option(
        None, "--gpu", help="CUDA device to run GPU variants on (default INFAAS_WORKER_GPU, else 0 when usable)"
    ),
) -> None:
    """Run a worker: loads variants from the model store on demand and serves them to every front-end.

    Needs INFAAS_REDIS_URL (how front-ends discover workers) and the same INFAAS_MODEL_STORE as the
    front-ends. The worker API has no authentication: bind it to a private network only. The worker
    advertises the hardware this host really has: "gpu" when onnxruntime-gpu and a CUDA device are both
    there, "tensorrt" too when TensorRT is installed; ``--gpu N`` pins device N.
    """
    import uvicorn

    from infaas import logs, switch_interval, tracing
    from infaas.hardware import GpuNotUsable  # imports ONNX Runtime: not at CLI start (test_packaging)
    from infaas.services import build_worker_service
    from infaas.worker.server import create_worker_app

    settings = get_settings()
    logs.setup(settings)
    switch_interval.apply(settings.switch_interval_ms)
    tracing.configure("infaas-worker")
    if gpu is not None:
        settings = settings.model_copy(update={"worker_gpu": gpu})
    address = advertise or f"http://{host}:{port}"
    wid = worker_id or settings.worker_id or f"{socket.gethostname()}-{port}"
    try:
        service = build_worker_service(settings, wid, address)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    except GpuNotUsable as exc:  # one line (rich would wrap it in a box): what was asked, and what is there
        err.print(f"[red]error (--gpu / INFAAS_WORKER_GPU):[/red] {exc}", soft_wrap=True)
        raise typer.Exit(2) from None
    try:
        uvicorn.run(
            create_worker_app(service),
            host=host,
            port=port,
            log_level="warning",
            log_config=None,  # uvicorn's own lines (errors) go through infaas.logs: JSON, secrets masked
            http="httptools",
            loop="uvloop",
            timeout_keep_alive=60,
        )
    finally:
        service.live.close()
