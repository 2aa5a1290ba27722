"""Docker provider: each worker is an ``infaas worker`` container with its own CPU and memory limit.

On one host, ``local`` and ``inprocess`` workers share the same cores, so an added worker adds no capacity; a
container started with ``--cpus`` (``nano_cpus``) and a memory limit does, and it is how a single-host deployment
scales. Containers carry labels (``infaas.cluster``, ``infaas.role=worker``) so the provider finds its own workers
after a restart and never touches any other container. A worker is stopped with SIGTERM (it finishes in-flight
requests and deregisters), killed after ``INFAAS_DOCKER_STOP_TIMEOUT_S``, then removed.

Networking (``INFAAS_DOCKER_NETWORK``):

- ``host`` (default): the container shares the host's network, so the URLs the front-end uses (Redis and
  PostgreSQL on 127.0.0.1) work unchanged; the worker listens on a free loopback port (its API has no
  authentication, so it never listens beyond loopback here).
- a named network (e.g. the compose project's ``infaas_default``, with the front-end in a container on it): the
  worker listens on ``INFAAS_DOCKER_WORKER_PORT`` and advertises ``http://<container name>:<port>`` (Docker's
  DNS on that network resolves it).

A local model store folder is bind-mounted at the same path, and the container runs as that folder's owner, so
it reads (and writes) the store with the front-end's permissions; an ``s3://`` store needs no mount, and
``INFAAS_DOCKER_VOLUMES`` names the volumes to mount instead (a front-end in a compose stack).
"""

from __future__ import annotations

import math
import os
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import docker
import httpx
from docker.errors import DockerException, NotFound
from pydantic_settings import BaseSettings, SettingsConfigDict

from autoscaler.providers.base import Provider, ProviderError, WorkerHandle
from autoscaler.providers.local import cluster_env, free_port, remote_client
from infaas.config import Settings
from infaas.worker import WorkerClient

CLUSTER_LABEL = "infaas.cluster"
ROLE_LABEL = "infaas.role"
ID_LABEL = "infaas.worker-id"
ADDRESS_LABEL = "infaas.address"
# What a worker process holds beside its variants: its own variant budget is the container's limit less this, so a
# full worker is refused a load (409) before the kernel kills it. An idle worker container measured 122 MiB
# (`docker stats`); ONNX Runtime's allocator and the HTTP buffers of a busy worker come on top.
PROCESS_BASELINE_MB = 400
# The image's HEALTHCHECK is switched off for the containers this provider starts: it starts a Python process in the
# container every 5 s, which used 65 ms of CPU a check inside a 0.5-CPU quota (0.39 CPU-s in 31 s against 0.02 without
# it, cgroup cpuacct; the container was throttled for 44 ms), stalling the queries it serves then. Nothing reads that
# status here: the provider waits for /health itself, and a dead worker's live-state heartbeat expires.
NO_HEALTHCHECK = {"test": ["NONE"]}


class DockerSettings(BaseSettings):
    """``INFAAS_DOCKER_*``: what to run and with how much."""

    model_config = SettingsConfigDict(env_prefix="INFAAS_DOCKER_", extra="ignore")

    image: str = "infaas-worker:local"  # `make images`
    network: str = "host"
    cpus: float = 1.0  # docker run --cpus
    memory_mb: int = 2048  # docker run --memory (and --memory-swap: no swap)
    worker_port: int = 8101  # on a named network; host networking picks a free port
    cluster: str = "infaas"
    start_timeout_s: float = 60.0
    stop_timeout_s: int = 10
    # `docker run -v` entries ("infaas_store:/data") instead of bind-mounting a local model store at its own
    # path: a front-end in a container (compose) has its store in a named volume, not at a host path.
    volumes: list[str] = []


def worker_environment(settings: Settings, docker_settings: DockerSettings, worker_id: str) -> dict[str, str]:
    """The worker's environment: the cluster's shared settings, its id, and the budget its limits allow."""
    env = cluster_env(settings)
    env.update(
        {
            "INFAAS_WORKER_ID": worker_id,
            "INFAAS_HOME": "/tmp/infaas-home",  # its own scratch space, writable whichever user it runs as
            "INFAAS_REDIS_PREFIX": settings.redis_prefix,
            "INFAAS_WORKER_CORES": str(max(1, math.ceil(docker_settings.cpus))),
            "INFAAS_WORKER_MEMORY_MB": str(
                min(settings.worker_memory_mb, docker_settings.memory_mb - PROCESS_BASELINE_MB)
            ),
            "INFAAS_HEARTBEAT_TTL_S": str(settings.heartbeat_ttl_s),
        }
    )
    return env


class DockerProvider(Provider):
    """Runs and removes labelled worker containers with the Docker SDK."""

    name = "docker"

    def __init__(self, settings: Settings, docker_settings: DockerSettings | None = None) -> None:
        if settings.resolved_database_url.startswith("sqlite"):
            raise ProviderError("the docker provider needs INFAAS_DATABASE_URL: containers cannot share a SQLite file")
        if not settings.redis_url:
            raise ProviderError("the docker provider needs INFAAS_REDIS_URL: workers find front-ends through it")
        self._settings = settings
        self._docker = docker_settings or DockerSettings()
        if self._docker.memory_mb <= PROCESS_BASELINE_MB:
            raise ProviderError(f"INFAAS_DOCKER_MEMORY_MB must exceed {PROCESS_BASELINE_MB} (a worker's own use)")
        try:
            self._client = docker.from_env()
            self._client.ping()
        except DockerException as exc:
            raise ProviderError(f"no Docker engine answers (start dockerd, or set DOCKER_HOST): {exc}") from exc
        self._lock = threading.Lock()

    @property
    def _labels(self) -> dict[str, str]:
        return {CLUSTER_LABEL: self._docker.cluster, ROLE_LABEL: "worker"}

    def _run_options(self, worker_id: str) -> tuple[dict[str, Any], str]:
        """``containers.run`` keyword arguments and the address the worker will advertise."""
        cfg = self._docker
        env = worker_environment(self._settings, cfg, worker_id)
        options: dict[str, Any] = {
            "image": cfg.image,
            "name": worker_id,
            "detach": True,
            "nano_cpus": int(cfg.cpus * 1e9),
            "mem_limit": f"{cfg.memory_mb}m",
            "memswap_limit": f"{cfg.memory_mb}m",
            "healthcheck": NO_HEALTHCHECK,
        }
        store = self._settings.resolved_model_store
        if cfg.volumes:
            options["volumes"] = list(cfg.volumes)
        elif "://" not in store:
            Path(store).mkdir(parents=True, exist_ok=True)
            owner = os.stat(store)
            options["volumes"] = {store: {"bind": store, "mode": "rw"}}
            options["user"] = f"{owner.st_uid}:{owner.st_gid}"
        if cfg.network == "host":
            port = free_port()
            address = f"http://127.0.0.1:{port}"
            options["network_mode"] = "host"
            options["command"] = ["infaas", "worker", "--host", "127.0.0.1", "--port", str(port)]
            env["INFAAS_WORKER_PORT"] = str(port)  # the port it listens on, for anything in it that reads it
        else:  # Docker's DNS resolves a container's name on a user-defined network
            address = f"http://{worker_id}:{cfg.worker_port}"
            options["network"] = cfg.network
            env["INFAAS_WORKER_PORT"] = str(cfg.worker_port)
            env["INFAAS_WORKER_ADVERTISE"] = address
        options["environment"] = env
        return options, address

    def start_worker(self) -> WorkerHandle:
        worker_id = f"{self._docker.cluster}-worker-{uuid.uuid4().hex[:8]}"
        options, address = self._run_options(worker_id)
        labels = {**self._labels, ID_LABEL: worker_id, ADDRESS_LABEL: address}
        try:
            container = self._client.containers.run(**options, labels=labels)
        except DockerException as exc:
            raise ProviderError(f"starting a worker container from {self._docker.image}: {exc}") from exc
        handle = self._handle(container.id, worker_id, address)
        self._wait_healthy(container, handle)
        return handle

    def _handle(self, container_id: str, worker_id: str, address: str) -> WorkerHandle:
        cfg = self._docker
        return WorkerHandle(
            id=worker_id,
            address=address,
            cores=max(1, math.ceil(cfg.cpus)),
            meta={"container": container_id[:12], "cpus": str(cfg.cpus), "memory_mb": str(cfg.memory_mb)},
        )

    def _wait_healthy(self, container: Any, handle: WorkerHandle) -> None:
        """Until the worker answers /health (it registers itself in live state before it serves)."""
        deadline = time.monotonic() + self._docker.start_timeout_s
        while True:
            try:
                if httpx.get(f"{handle.address}/health", timeout=1.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            container.reload()
            if container.status not in {"created", "running"}:
                logs = container.logs(tail=30).decode(errors="replace")
                self._remove(container)
                raise ProviderError(f"worker container {handle.id} exited ({container.status}): {logs}")
            if time.monotonic() > deadline:
                self._remove(container)
                raise ProviderError(
                    f"worker container {handle.id} not healthy within {self._docker.start_timeout_s:g} s"
                )
            time.sleep(0.25)

    def connect(self, handle: WorkerHandle) -> WorkerClient:
        return remote_client(handle.id, handle.address)

    def stop_worker(self, worker_id: str) -> None:
        containers = self._containers(worker_id)
        if not containers:
            raise ProviderError(f"{worker_id} is not a worker container of cluster {self._docker.cluster!r}")
        for container in containers:
            self._remove(container)

    def _remove(self, container: Any) -> None:
        """SIGTERM (the worker drains and deregisters), SIGKILL after the timeout, then remove it."""
        try:
            container.stop(timeout=self._docker.stop_timeout_s)
            container.remove(force=True)
        except NotFound:
            pass
        except DockerException as exc:
            raise ProviderError(f"removing worker container {container.name}: {exc}") from exc

    def _containers(self, worker_id: str | None = None) -> list[Any]:
        labels = [f"{k}={v}" for k, v in self._labels.items()]
        if worker_id is not None:
            labels.append(f"{ID_LABEL}={worker_id}")
        with self._lock:
            return self._client.containers.list(filters={"label": labels, "status": "running"}, ignore_removed=True)

    def workers(self) -> list[WorkerHandle]:
        return [self._handle(c.id, c.labels[ID_LABEL], c.labels[ADDRESS_LABEL]) for c in self._containers()]
