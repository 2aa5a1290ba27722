"""The composition root: every backend and the query engine, built once at start-up from configuration.

The API, the CLI and the Celery worker call ``build_services`` (the autoscaler receives the result), and
``infaas worker`` calls ``build_worker_service``; they are the only place
that chooses between the embedded and scaled-out implementation of a concern (metadata SQLite or
PostgreSQL, model store folder or S3, live state in-process or Redis, jobs in-process or Celery, the
autoscaler's leader lease always ours or in Redis) and wires them together. Everything else receives a
``Services`` and never asks which mode it is in.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from infaas import __version__, orphans, scratch
from infaas.auth import KeyRing
from infaas.candidates import CandidateCache
from infaas.cascade_drift import catalog_monitor
from infaas.config import Settings
from infaas.db.migrate import upgrade
from infaas.db.session import Database
from infaas.engine import QueryEngine
from infaas.hardware import Hardware, detect
from infaas.jobs import tasks
from infaas.jobs.durable import DurableRunner
from infaas.jobs.periodic import Every, Periodic
from infaas.jobs.runner import InProcessRunner, JobRunner
from infaas.leadership import InProcessLease, Lease, RedisLease, front_end_id
from infaas.live_state import LiveState, make_live_state
from infaas.logs import public_config
from infaas.metadata import MetadataStore
from infaas.model_store import ModelStore, open_model_store
from infaas.quotas import EventWindow, MemoryEventWindow, Quotas, RedisEventWindow
from infaas.worker.clients import WorkerClients
from infaas.worker.server import DEPTH_REPORT_S, WorkerService
from infaas.worker.worker import LocalWorker

log = logging.getLogger(__name__)


@dataclass
class Services:
    """Everything a route, a task or the autoscaler needs, passed explicitly."""

    settings: Settings
    db: Database
    metadata: MetadataStore
    store: ModelStore
    live: LiveState
    keyring: KeyRing
    engine: QueryEngine
    quotas: Quotas
    leadership: Lease  # the autoscaler acts only while this front-end holds it
    jobs: DurableRunner | None = None
    maintenance: Periodic | None = None  # work heartbeat and sweep, orphan sweep (processes that run jobs)

    def run_task(self, name: str, **kwargs: Any) -> Any:
        """Run background task ``name`` here, now (what a job runner does with a queued task)."""
        return tasks.get(name)(self, **kwargs)

    def give_up_task(self, name: str, reason: str, **kwargs: Any) -> None:
        """Record that task ``name`` failed for good, where its user looks (the task's give-up hook)."""
        hook = tasks.give_up_hook(name)
        if hook is not None:
            hook(self, reason, **kwargs)

    def start_serving(self) -> None:
        """Start this process's in-process worker, if configured (front-ends; idempotent)."""
        self.engine.workers.start()

    def close(self) -> None:
        """Stop serving and background work, and release connections."""
        self.engine.workers.stop()
        # Work still running is waited for while the heartbeat goes on renewing its lease: stopping the
        # heartbeat first would let another process claim a build that this one is still finishing.
        if self.jobs is not None:
            self.jobs.shutdown()
        if self.maintenance is not None:
            self.maintenance.stop()
        self.leadership.close()
        self.live.close()
        self.quotas.close()
        self.db.dispose()


def build_services(settings: Settings, *, migrate: bool = True, with_jobs: bool = True) -> Services:
    """Open every backend named by ``settings``; apply migrations first when asked."""
    log.info("infaas %s starting", __version__, extra={"event": "startup", "config": public_config(settings)})
    # The in-process worker's hardware first: a pinned GPU that cannot be used stops start-up before anything opens.
    hardware = detect(settings.worker_gpu) if settings.in_process_worker else None
    settings.ensure_home()
    url = settings.resolved_database_url
    if migrate:
        upgrade(url)
    db = Database(url)
    metadata = MetadataStore(db)
    store = _model_store(settings)
    live = make_live_state(settings)
    local = (
        _local_worker(settings, settings.worker_id or "local", store, live, hardware) if hardware is not None else None
    )
    engine = QueryEngine(
        CandidateCache(metadata),
        live,
        WorkerClients(live, local=local, avoid_s=settings.heartbeat_ttl_s),
        prices=settings.prices,
        max_batch=settings.max_batch_per_query,
        max_inputs=settings.max_inputs_per_request,
    )
    # Catalog changes made in this process (registration, builds, profiling) refresh this engine and are
    # announced to every other process through live state; theirs reach this engine the same way.
    metadata.add_listener(engine.catalog_changed)
    metadata.add_listener(live.catalog_changed)
    live.on_catalog_change(engine.catalog_changed)
    services = Services(
        settings=settings,
        db=db,
        metadata=metadata,
        store=store,
        live=live,
        keyring=KeyRing(metadata, settings.admin_key),
        engine=engine,
        quotas=Quotas(settings, db, _event_window(settings)),
        leadership=_leadership(settings),
    )
    if with_jobs:
        services.jobs = _durable_runner(settings, services)
        services.maintenance = _maintenance(settings, services, services.jobs)
        services.maintenance.start()  # its first round is the start-up recovery
    engine.cascades = catalog_monitor(
        metadata,
        services.jobs.submit if services.jobs is not None else None,
        window_s=settings.cascade_drift_window_s,
        min_rows=settings.cascade_drift_min_rows,
    )
    return services


def build_worker_service(settings: Settings, worker_id: str, address: str) -> WorkerService:
    """An ``infaas worker`` process's parts: the shared model store and live state, and one ``LocalWorker``.

    No database: front-ends send a worker the description of each variant it serves, so a worker host
    needs only the model store and Redis (which is how front-ends find it).
    """
    if not settings.redis_url:
        raise ValueError("set INFAAS_REDIS_URL: front-ends find workers through the shared live state")
    hardware = detect(settings.worker_gpu)
    log.info("infaas worker %s starting", worker_id, extra={"event": "startup", "config": public_config(settings)})
    settings.ensure_home()
    store = _model_store(settings)
    from infaas.live_state.redis import RedisLiveState  # as make_live_state: redis only where it is used

    live = RedisLiveState.from_settings(settings, flush_interval_s=DEPTH_REPORT_S)
    worker = _local_worker(settings, worker_id, store, live, hardware)
    return WorkerService(worker, live, address, settings.heartbeat_s)


def _model_store(settings: Settings) -> ModelStore:
    return open_model_store(settings.resolved_model_store, cache_dir=str(settings.home / "cache"))


def _local_worker(
    settings: Settings, worker_id: str, store: ModelStore, live: LiveState, hardware: Hardware
) -> LocalWorker:
    """This process's worker, advertising ``hardware``: what ``infaas.hardware.detect`` found on this host with
    ``settings.worker_gpu`` pinned (it raises ``GpuNotUsable``, naming the visible devices, for a GPU that
    cannot be used)."""
    log.info("worker %s runs %s", worker_id, hardware.describe())
    return LocalWorker(
        worker_id,
        store,
        live,
        memory_budget_mb=settings.worker_memory_mb,
        cores=settings.worker_cores,
        hardware=hardware,
        heartbeat_s=settings.heartbeat_s,
    )


def _event_window(settings: Settings) -> EventWindow:
    """Quota windows in Redis when configured (every front-end counts together), otherwise in this process."""
    if settings.redis_url:
        return RedisEventWindow(settings.redis_url, settings.redis_prefix)
    return MemoryEventWindow()


def _leadership(settings: Settings) -> Lease:
    """The autoscaler's leader lease: in Redis when configured (front-ends contend), otherwise always ours."""
    if settings.redis_url:
        key = f"{settings.redis_prefix}:autoscaler:leader"
        return RedisLease(settings.redis_url, key, holder=front_end_id(), ttl_s=settings.autoscaler_lease_s)
    return InProcessLease(front_end_id())


def _durable_runner(settings: Settings, services: Services) -> DurableRunner:
    """Every task recorded and leased in the metadata store, delivered by Celery or the in-process pool."""
    transport = _job_runner(settings, services.run_task)
    in_process = isinstance(transport, InProcessRunner)
    return DurableRunner(
        services.metadata,
        transport,
        execute=services.run_task,
        give_up=services.give_up_task,
        lease_s=settings.work_lease_s,
        max_attempts=settings.work_max_attempts,
        transport_holds_queue=in_process,
        queue_wait_s=None if in_process else _broker_visibility_s(),
    )


def _broker_visibility_s() -> float:
    from infaas.jobs.celery_runner import visibility_timeout_s  # imports Celery: only when scaled out

    return visibility_timeout_s()


def _maintenance(settings: Settings, services: Services, runner: DurableRunner) -> Periodic:
    """The heartbeat of this process's work, the sweep that resumes dead processes' work, and the orphan sweeps.

    The orphan sweep lists the whole model store, so it runs at a tenth of the grace period (at least every
    recovery period): nothing it removes can be younger than the grace anyway. The scratch sweep runs with it:
    it removes the temporary folders of killed processes, only those quiet for longer than any live step
    (``scratch.stale_after_s``), since a front-end and a Celery worker may share this home.
    """
    orphan_period_s = max(settings.recovery_period_s, settings.orphan_grace_s / 10)
    return Periodic(
        [
            Every(runner.heartbeat_s, runner.heartbeat, "work heartbeat"),
            Every(settings.recovery_period_s, runner.sweep, "work recovery sweep"),
            Every(
                orphan_period_s,
                lambda: orphans.sweep(services.metadata, services.store, settings.orphan_grace_s),
                "orphan sweep",
            ),
            Every(
                orphan_period_s,
                lambda: scratch.sweep_scratch(settings.scratch_dir, scratch.stale_after_s(settings)),
                "scratch sweep",
            ),
        ]
    )


def _job_runner(settings: Settings, execute: Callable[..., Any]) -> JobRunner:
    """Celery when a broker is configured, otherwise in-process (running tasks through ``execute``)."""
    if settings.broker_url:
        from infaas.jobs.celery_runner import CeleryRunner  # imports Celery: only when scaled out

        return CeleryRunner(settings.broker_url)
    return InProcessRunner(execute)
