"""An ``infaas worker`` app served over HTTP by uvicorn in this process, for tests of the remote-worker client."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import uvicorn

from infaas.live_state import LiveState
from infaas.model_store import ModelStore
from infaas.worker import LocalWorker
from infaas.worker.server import WorkerService, create_worker_app
from tests.factories import wait_for
from tests.s3server import free_port

HEARTBEAT_S = 0.2


@contextmanager
def served_worker(store: ModelStore, live: LiveState, *, memory_budget_mb: float) -> Iterator[str]:
    """Serve worker ``w`` (one core, ``memory_budget_mb``) over ``store`` and ``live`` on a free loopback port;
    yield its URL once uvicorn has started, and stop the server on exit.

    In a thread of this process rather than a child process: the test can reach the worker's store and live
    state directly, and no process outlives a failed test.
    """
    worker = LocalWorker("w", store, live, memory_budget_mb=memory_budget_mb, cores=1)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = uvicorn.Server(
        uvicorn.Config(create_worker_app(WorkerService(worker, live, url, HEARTBEAT_S)), port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        assert wait_for(lambda: server.started, 10, interval_s=0.02), "the worker app did not start within 10 s"
        yield url
    finally:
        server.should_exit = True
        thread.join(10)
