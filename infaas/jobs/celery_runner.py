"""Celery: the app configuration both sides share, and submitting tasks to workers through the broker.

There is one generic task, ``infaas.run(name, kwargs)``, that dispatches to the task registry
(``infaas.jobs.tasks``), so adding a background task never touches Celery configuration. Delivery is
at-least-once: messages are acknowledged only after the task returns (``acks_late``) and are given back
when the worker dies (``reject_on_worker_lost``), which is why every registered task is idempotent. The
worker side is ``infaas.celery_worker``.

Two knobs are read from the environment here rather than from ``Settings`` because only Celery uses
them: ``INFAAS_JOBS_QUEUE`` (queue name, default ``infaas``; tests use a unique one) and
``INFAAS_BROKER_VISIBILITY_TIMEOUT_S`` (how long a Redis broker waits before redelivering a message whose
worker vanished without acknowledging it; default one hour). A message redelivered while its task still
runs elsewhere (a job longer than the timeout) is refused by the work item's claim (``infaas.jobs.durable``),
so a short timeout costs a wasted delivery, never a second run of the same item at once.
"""

from __future__ import annotations

import os
from typing import Any

from celery import Celery

from infaas.jobs import tasks
from infaas.jobs.runner import JobRunner

DEFAULT_QUEUE = "infaas"
RUN_TASK = "infaas.run"


def visibility_timeout_s() -> float:
    """How long the broker keeps an unacknowledged message before delivering it again."""
    return float(os.environ.get("INFAAS_BROKER_VISIBILITY_TIMEOUT_S", "3600"))


def make_celery(broker_url: str | None) -> Celery:
    """A Celery app for ``broker_url`` with infaas's delivery settings (used by workers and senders)."""
    queue = os.environ.get("INFAAS_JOBS_QUEUE", DEFAULT_QUEUE)
    visibility_s = visibility_timeout_s()
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


class CeleryRunner(JobRunner):
    """Sends ``infaas.run(name, kwargs)`` messages; a worker anywhere runs them (scaled-out mode).

    Only the task name and JSON arguments travel, so the sender needs neither the task's code nor a
    result backend: progress and outcome are written to the metadata store by the task itself.
    """

    def __init__(self, broker_url: str) -> None:
        self.celery = make_celery(broker_url)

    def submit(self, task_name: str, **kwargs: Any) -> None:
        if task_name not in tasks.names():  # fail in the caller, not later in a worker
            raise KeyError(f"unknown background task {task_name!r}")
        self.celery.send_task(RUN_TASK, args=[task_name, kwargs])

    def shutdown(self) -> None:
        self.celery.close()
