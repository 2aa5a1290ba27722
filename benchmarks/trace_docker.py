"""``python -m benchmarks.trace --provider docker``: the trace benchmark with every worker a container.

The in-process trace (``benchmarks/trace.py``) runs its workers as ``LocalWorker``s sharing this process and
this machine's cores, so an added worker adds only *accounted* capacity. Here every worker, the one a run
starts from, those the VM-level autoscaler adds and the fixed deployments' workers, is an ``infaas worker``
container (the ``infaas-worker:local`` image, ``docker/images.sh``) started by the ``docker`` provider
(``autoscaler/providers/docker.py``) with a CPU limit (``--cpus``, default 0.5) and a memory limit: a worker
added by the autoscaler brings its own CPU quota, and a fixed deployment of N workers has N quotas.

The front-end runs in this process in scale-out mode: the catalog in PostgreSQL (a database of its own, dropped
afterwards unless ``--home`` keeps it for the next run), live state in Redis (a key prefix of its own, deleted
afterwards), queries to the workers over HTTP, as ``infaas serve`` does with ``INFAAS_IN_PROCESS_WORKER=false``.
The client threads and the engine stay outside the containers.

On one host the quotas only add up to the host's cores: ``--max-workers`` × ``--cpus`` (4 × 0.5 here) is
sized to the two cores of the machine this was written on, and the fixed-peak setup holds that ceiling for the
whole trace. Variant profiles are measured by the front-end's jobs (the real pipeline, on the host without a
limit), so they overstate what one container serves; the engine's estimate correction learns the difference.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import math
import os
import threading
import time
import uuid
from contextlib import suppress
from pathlib import Path

import docker
import numpy as np
import redis
from sqlalchemy import create_engine, text

from autoscaler import Autoscaler, PolicyConfig
from autoscaler.providers.docker import CLUSTER_LABEL, DockerProvider, DockerSettings
from benchmarks import trace
from infaas.catalog import VariantInfo
from infaas.config import Settings
from infaas.services import Services, build_services
from infaas.worker import WorkerError

log = logging.getLogger("trace.docker")

PG_ADMIN_URL = os.environ.get("INFAAS_BENCH_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("INFAAS_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``--provider docker`` options of ``benchmarks/trace.py``."""
    parser.add_argument("--cpus", type=float, default=0.5, help="docker: CPU limit of every worker container")
    parser.add_argument("--memory-mb", type=int, default=1024, help="docker: memory limit of every worker container")
    parser.add_argument("--max-workers", type=int, default=4, help="docker: worker containers infaas may scale to")
    parser.add_argument("--image", default="infaas-worker:local", help="docker: the worker image (make images)")


class DockerDeployment(trace.Deployment):
    """Worker containers with CPU limits behind a PostgreSQL/Redis front-end in this process."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.run_id = uuid.uuid4().hex[:8]
        self.cluster = f"trace-{self.run_id}"
        self.worker_cores = args.cpus
        self.results = "trace_docker"
        self.max_workers = args.max_workers
        self.what_is_simulated = (
            "What is simulated: the time scale is compressed as in the in-process trace (autoscaler periods of "
            "0.5 s and 1.5 s). Every worker is a container with a CPU quota, so an added worker adds CPU, but all "
            f"the quotas ({args.max_workers} × {args.cpus:g} CPUs at most), the front-end and the client threads "
            "share this host's cores (and other work on it: see the load averages). Cost is the price table × "
            "the containers' CPU limits × the time each was up."
        )
        self._database: str | None = None
        self._keep_database = False
        self._base: DockerProvider | None = None

    # -- the front-end --------------------------------------------------------------------------------------
    def prepare(self, zoo_dir: Path, home: Path) -> Services:
        """The zoo registered through the real pipeline, with the catalog in PostgreSQL and live state in Redis."""
        self._keep_database = self.args.home is not None
        digest = hashlib.sha1(str(home.resolve()).encode()).hexdigest()[:10]
        self._database = f"infaas_trace_{digest if self._keep_database else self.run_id}"
        admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            exists = conn.execute(text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": self._database}).first()
            if not exists:
                conn.execute(text(f'CREATE DATABASE "{self._database}"'))
        admin.dispose()
        settings = Settings(
            home=home,
            database_url=PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{self._database}",
            redis_url=REDIS_URL,
            redis_prefix=self.cluster,
            model_store=str(home / "models"),
            in_process_worker=False,  # a router-only front-end: every worker is a container
            provider="docker",
            build_variants=True,
            autoscaler="on",
            autoscaler_period_s=0.5,
            vm_autoscaler_period_s=1.5,
            idle_unload_s=15.0,
            min_workers=1,
            max_workers=self.args.max_workers,
            worker_cores=max(1, math.ceil(self.args.cpus)),
            worker_memory_mb=float(self.args.memory_mb),
            profile_max_seconds=2.0,
            heartbeat_s=0.25,
        )
        # A database kept from an earlier run (--home) has the zoo ready: then no jobs run here, so no background
        # work (such as the cascades a build queues for its task) takes CPU from the measurements.
        services = build_services(settings, with_jobs=False)
        ready = {m.name for m in services.metadata.list_models() if m.status == "ready"}
        if {model.name for model in trace.load_zoo(zoo_dir)} <= ready:
            return services
        services.close()
        return trace.register_zoo(build_services(settings), zoo_dir)

    def _provider(self, services: Services, cluster: str) -> DockerProvider:
        docker_settings = DockerSettings(
            image=self.args.image, cpus=self.args.cpus, memory_mb=self.args.memory_mb, cluster=cluster
        )
        return DockerProvider(services.settings, docker_settings)

    def start(self, services: Services) -> None:
        """One worker container, the deployment each run starts from; returns once it is registered."""
        self._base = self._provider(services, self.cluster)
        self._base.start_worker()  # the engine finds it in live state, as it finds any worker
        _wait_registered(services, 1)

    def stop(self, services: Services) -> None:
        """Stop every worker container of this front-end (SIGTERM: each deregisters), then its clients."""
        if self._base is not None:
            self._base.close()
            self._base = None
        services.engine.workers.stop()
        _wait_registered(services, 0)

    # -- setups ---------------------------------------------------------------------------------------------
    def run_infaas(
        self,
        services: Services,
        arrivals: list[trace.Arrival],
        inputs: np.ndarray,
        config: PolicyConfig,
        level: float,
        fair_share: trace.FairShare | None = None,
        infeasible: trace.Collection[str] = (),
    ) -> trace.Run:
        """Setup (a): one worker container to start from; the VM level adds and removes containers."""
        self.start(services)
        trace.fresh_engine_state(services, fair_share)
        provider = self._base
        assert provider is not None
        scaler = Autoscaler(services, provider=provider, config=config, stats_window_s=3.0)
        try:
            run = trace.run_infaas_with(services, scaler, arrivals, inputs, level, infeasible)
        finally:
            self.stop(services)  # scaler.stop() stopped the containers it owned; this removes any left
        run.worker_cores = self.worker_cores
        return run

    def run_fixed(
        self,
        name: str,
        services: Services,
        variant: VariantInfo,
        workers: int,
        replicas: int,
        arrivals: list[trace.Arrival],
        inputs: np.ndarray,
        level: float,
    ) -> trace.Run:
        """Setups (b) and (c): ``workers`` containers (at most ``--max-workers``), ``replicas`` spread over them.

        They register under a live-state prefix of their own, so the front-end's selector and autoscaler never
        see them; queries go to them through their HTTP clients, least outstanding first.
        """
        workers = min(workers, self.max_workers)
        replicas = max(replicas, workers)
        fixed_settings = services.settings.model_copy(update={"redis_prefix": f"{self.cluster}-{name}"})
        provider = DockerProvider(
            fixed_settings,
            DockerSettings(
                image=self.args.image, cpus=self.args.cpus, memory_mb=self.args.memory_mb, cluster=f"{self.cluster}-f"
            ),
        )
        started: list[threading.Thread] = []
        handles = []
        lock = threading.Lock()

        def start_one() -> None:
            handle = provider.start_worker()
            with lock:
                handles.append(handle)

        try:
            for _ in range(workers):  # started side by side: each takes seconds to import and register
                started.append(threading.Thread(target=start_one))
                started[-1].start()
            for t in started:
                t.join()
            if len(handles) != workers:
                raise RuntimeError(f"{name}: {workers - len(handles)} of {workers} worker containers did not start")
            pool = [provider.connect(h) for h in handles]
            for client in pool:
                client.load(variant)
            loaded = workers
            for i in range(replicas - workers):
                try:
                    pool[i % workers].add_replica(variant)
                    loaded += 1
                except WorkerError as exc:  # the container's budget is full: the run says how many it had
                    log.warning("%s: replica %d not added: %s", name, i + workers + 1, exc)
            run = trace.run_fixed_on(name, pool, variant, loaded, arrivals, inputs, level)
        finally:
            provider.close()
        run.worker_cores = self.worker_cores
        return run

    # -- the report -----------------------------------------------------------------------------------------
    def describe(self) -> dict:
        client = docker.from_env()
        image = client.images.get(self.args.image)
        return {
            "provider": "docker",
            "image": self.args.image,
            "image_id": image.id[:19],
            "engine": client.version().get("Version"),
            "cpus_per_worker": self.args.cpus,
            "memory_mb_per_worker": self.args.memory_mb,
            "max_workers": self.max_workers,
            "front_end": "this process: PostgreSQL catalog, Redis live state, no in-process worker",
            "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
        }

    def close(self, services: Services | None) -> None:
        """Remove every container, Redis key and (unless ``--home`` keeps it) the database this run made."""
        with suppress(Exception):
            for container in docker.from_env().containers.list(all=True, filters={"label": CLUSTER_LABEL}):
                if container.labels.get(CLUSTER_LABEL, "").startswith(self.cluster):
                    container.remove(force=True)
        if services is not None:
            services.close()
        client = redis.Redis.from_url(REDIS_URL)
        for key in client.scan_iter(match=f"{self.cluster}*", count=1000):
            client.delete(key)
        client.close()
        if self._database and not self._keep_database:
            admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
            with admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{self._database}" WITH (FORCE)'))
            admin.dispose()


def _wait_registered(services: Services, count: int, timeout_s: float = 30.0) -> None:
    """Until live state lists ``count`` workers (a stopped container's entry goes when it deregisters)."""
    deadline = time.monotonic() + timeout_s
    while len(services.engine.live.workers()) != count:
        if time.monotonic() > deadline:
            log.warning("live state lists %d workers, not %d", len(services.engine.live.workers()), count)
            return
        time.sleep(0.1)
