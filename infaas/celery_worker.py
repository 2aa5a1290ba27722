"""The Celery worker: ``celery -A infaas.celery_worker worker`` (or ``infaas jobs``) runs background tasks.

It sits beside the composition root, not inside ``infaas.jobs``: a worker builds its own services
(``build_services``), which in turn build the job runner, so living in ``infaas.jobs`` would make the two
import each other.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from celery import signals

from infaas import logs, tracing
from infaas.config import get_settings
from infaas.jobs.celery_runner import RUN_TASK, make_celery
from infaas.services import Services, build_services

log = logging.getLogger(__name__)

_services: Services | None = None
_services_lock = threading.Lock()


def worker_services() -> Services:
    """This worker process's services, built on first use and kept for every later task.

    Built lazily so that each prefork child opens its own database connections after the fork. Its job
    runner is a ``CeleryRunner`` (``INFAAS_BROKER_URL`` is set in a worker), so a task that queues
    another sends it back through the broker instead of running it inside this worker.
    """
    global _services
    with _services_lock:
        if _services is None:
            _services = build_services(get_settings(), with_jobs=True)
        return _services


app = make_celery(get_settings().broker_url)


@signals.setup_logging.connect
def _setup_logging(loglevel: int | str | None = None, **_: Any) -> None:
    """infaas's structured lines instead of Celery's own logging setup (a receiver here replaces it); Celery's
    own lines (``ready.``, tasks received and done) at the worker's ``--loglevel``."""
    logs.setup(get_settings())
    logging.getLogger("celery").setLevel(loglevel or logging.INFO)


@signals.worker_process_init.connect
def _start_recovery(**_: Any) -> None:
    """Build the services when the process that runs tasks starts (each prefork child, or the solo worker).

    Their maintenance thread starts with them: this worker heartbeats the work it claims and runs the
    start-up recovery sweep at once, instead of only after its first task. If the database is not
    reachable yet, the failure is logged and the services are built with the first task instead (a
    raise here would end the worker process and have it restarted in a loop).
    """
    tracing.configure("infaas-jobs")  # here, after the fork: the span exporter's thread belongs to this process
    try:
        worker_services()
    except Exception:
        log.exception("could not open the services at worker start; trying again with the first task")


@signals.worker_process_shutdown.connect
def _stop(**_: Any) -> None:
    """Stop the maintenance thread and release connections when the worker process ends normally."""
    global _services
    with _services_lock:
        if _services is not None:
            _services.close()
            _services = None


@app.task(name=RUN_TASK)
def run(name: str, kwargs: dict[str, Any]) -> None:
    """Run registered background task ``name`` with JSON ``kwargs`` on this worker's services."""
    worker_services().run_task(name, **kwargs)
