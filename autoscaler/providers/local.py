"""Local provider (the default): each worker is an ``infaas worker --port P`` process on this machine.

The child gets this process's environment plus the settings that must agree across the cluster
(home, database, model store, live state) and its own worker id, so it registers itself in the shared
live state (Redis when scaled out) and the front-ends reach it over HTTP. It is stopped with SIGTERM
(the worker finishes in-flight requests and deregisters), then SIGKILL after a grace period.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass

from autoscaler.providers.base import Provider, ProviderError, WorkerHandle
from infaas.config import Settings
from infaas.worker import WorkerClient


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def cluster_env(settings: Settings) -> dict[str, str]:
    """The ``INFAAS_*`` variables a worker must share with the front-end that started it."""
    env = {
        "INFAAS_HOME": str(settings.home),
        "INFAAS_DATABASE_URL": settings.resolved_database_url,
        "INFAAS_MODEL_STORE": settings.resolved_model_store,
        "INFAAS_WORKER_MEMORY_MB": str(settings.worker_memory_mb),
        "INFAAS_WORKER_CORES": str(settings.worker_cores),
        "INFAAS_HEARTBEAT_S": str(settings.heartbeat_s),
    }
    if settings.redis_url:
        env["INFAAS_REDIS_URL"] = settings.redis_url
    if settings.admin_key:
        env["INFAAS_ADMIN_KEY"] = settings.admin_key
    return env


def remote_client(worker_id: str, base_url: str) -> WorkerClient:
    """The HTTP ``WorkerClient`` for a worker started elsewhere (``infaas.worker.remote``)."""
    try:
        from infaas.worker.remote import RemoteWorkerClient
    except ImportError as exc:
        raise ProviderError("infaas.worker.remote is not available in this build") from exc
    return RemoteWorkerClient(worker_id, base_url)


@dataclass
class _Child:
    handle: WorkerHandle
    process: subprocess.Popen[bytes]


class LocalProvider(Provider):
    """Starts and stops ``infaas worker`` processes on loopback."""

    name = "local"

    def __init__(self, settings: Settings, *, host: str = "127.0.0.1", start_timeout_s: float = 60.0) -> None:
        self._settings = settings
        self._host = host
        self._start_timeout_s = start_timeout_s
        self._children: dict[str, _Child] = {}
        self._lock = threading.Lock()

    def command(self, port: int) -> list[str]:
        """The worker command line (the same interpreter, so the same virtual environment)."""
        return [sys.executable, "-m", "infaas", "worker", "--port", str(port)]

    def start_worker(self) -> WorkerHandle:
        port = free_port(self._host)
        worker_id = f"local-{port}-{uuid.uuid4().hex[:6]}"
        env = {**os.environ, **cluster_env(self._settings), "INFAAS_WORKER_ID": worker_id}
        log_path = self._settings.home / "workers" / f"{worker_id}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "wb") as log:  # a file, not a pipe: a chatty worker must never block on it
            process = subprocess.Popen(
                self.command(port), env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        handle = WorkerHandle(
            id=worker_id,
            address=f"http://{self._host}:{port}",
            cores=self._settings.worker_cores,
            meta={"pid": str(process.pid), "port": str(port), "log": str(log_path)},
        )
        deadline = time.monotonic() + self._start_timeout_s
        while not _listening(self._host, port):
            if process.poll() is not None:
                tail = log_path.read_text(errors="replace")[-2000:]
                raise ProviderError(f"worker exited with status {process.returncode}: {tail}")
            if time.monotonic() > deadline:
                _terminate(process, 5.0)
                raise ProviderError(f"worker did not listen on {handle.address} within {self._start_timeout_s:g} s")
            time.sleep(0.1)
        with self._lock:
            self._children[worker_id] = _Child(handle, process)
        return handle

    def connect(self, handle: WorkerHandle) -> WorkerClient:
        return remote_client(handle.id, handle.address)

    def stop_worker(self, worker_id: str) -> None:
        with self._lock:
            child = self._children.pop(worker_id, None)
        if child is not None:
            _terminate(child.process, 10.0)

    def workers(self) -> list[WorkerHandle]:
        with self._lock:
            return [c.handle for c in self._children.values() if c.process.poll() is None]


def _listening(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


def _terminate(process: subprocess.Popen[bytes], grace_s: float) -> None:
    """SIGTERM, then SIGKILL if it has not exited within ``grace_s``."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(grace_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(5.0)
