"""Submitting background tasks to Celery workers through the broker."""

from __future__ import annotations

from typing import Any

from infaas.jobs import tasks
from infaas.jobs.runner import JobRunner


class CeleryRunner(JobRunner):
    """Sends ``infaas.run(name, kwargs)`` messages; a worker anywhere runs them (scaled-out mode).

    Only the task name and JSON arguments travel, so the sender needs neither the task's code nor a
    result backend: progress and outcome are written to the metadata store by the task itself.
    """

    def __init__(self, broker_url: str) -> None:
        from infaas.jobs.celery_app import make_celery

        self.celery = make_celery(broker_url)

    def submit(self, task_name: str, **kwargs: Any) -> None:
        from infaas.jobs.celery_app import RUN_TASK

        if task_name not in tasks.names():  # fail in the caller, not later in a worker
            raise KeyError(f"unknown background task {task_name!r}")
        self.celery.send_task(RUN_TASK, args=[task_name, kwargs])

    def shutdown(self) -> None:
        self.celery.close()
