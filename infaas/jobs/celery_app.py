"""The Celery application: ``celery -A infaas.jobs.celery_app worker`` runs infaas background tasks.

There is one generic task, ``infaas.run(name, kwargs)``, that dispatches to the task registry
(``infaas.jobs.tasks``), so adding a background task never touches Celery configuration. Delivery is
at-least-once: messages are acknowledged only after the task returns (``acks_late``) and are given back
when the worker dies (``reject_on_worker_lost``), which is why every registered task is idempotent.

Two knobs are read from the environment here rather than from ``Settings`` because only Celery uses
them: ``INFAAS_JOBS_QUEUE`` (queue name, default ``infaas``; tests use a unique one) and
``INFAAS_BROKER_VISIBILITY_TIMEOUT_S`` (how long a Redis broker waits before redelivering a message whose
worker vanished without acknowledging it; default one hour, so keep it above the longest job).
"""

from __future__ import annotations

import os
import threading
from typing import Any

from celery import Celery

from infaas.config import get_settings
from infaas.services import Services, build_services

DEFAULT_QUEUE = "infaas"
RUN_TASK = "infaas.run"

_services: Services | None = None
_services_lock = threading.Lock()


def make_celery(broker_url: str | None) -> Celery:
    """A Celery app for ``broker_url`` with infaas's delivery settings (used by workers and senders)."""
    queue = os.environ.get("INFAAS_JOBS_QUEUE", DEFAULT_QUEUE)
    visibility_s = float(os.environ.get("INFAAS_BROKER_VISIBILITY_TIMEOUT_S", "3600"))
    celery = Celery("infaas", broker=broker_url, set_as_current=False)
    celery.conf.update(
        task_serializer="json",
        accept_content=["json"],
        result_serializer="json",
        task_ignore_result=True,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_default_queue=queue,
        broker_connection_retry_on_startup=True,
        broker_transport_options={
            "visibility_timeout": visibility_s,
            # Sweep for abandoned messages every few seconds (a cheap sorted-set range query), so a
            # short visibility timeout really does mean quick recovery.
            "unacked_restore_interval": max(1.0, min(10.0, visibility_s / 4)),
            "unacked_restore_throttle": 1,
        },
        worker_hijack_root_logger=False,
    )
    return celery


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


@app.task(name=RUN_TASK)
def run(name: str, kwargs: dict[str, Any]) -> None:
    """Run registered background task ``name`` with JSON ``kwargs`` on this worker's services."""
    from infaas.jobs import tasks

    tasks.run(worker_services(), name, **kwargs)
