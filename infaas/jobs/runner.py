"""Job runners: where background tasks execute."""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from infaas.jobs import tasks

if TYPE_CHECKING:
    from infaas.services import Services

log = logging.getLogger(__name__)


class JobRunner(ABC):
    """Submits a named task with JSON-serialisable arguments."""

    @abstractmethod
    def submit(self, task_name: str, **kwargs: Any) -> None:
        """Queue ``task_name(**kwargs)``; returns at once."""

    def shutdown(self) -> None:
        """Stop accepting work (in-process runners wait for running tasks); remote runners have nothing to stop."""
        return None


class InProcessRunner(JobRunner):
    """Runs tasks on a small thread pool inside this process (embedded default)."""

    def __init__(self, services: Services, max_workers: int = 1) -> None:
        self.services = services
        self._pool = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="infaas-job")
        self.futures: list[Future[None]] = []

    def submit(self, task_name: str, **kwargs: Any) -> None:
        function = tasks.get(task_name)
        future = self._pool.submit(self._run, function, task_name, kwargs)
        self.futures = [f for f in self.futures if not f.done()] + [future]

    def _run(self, function, task_name: str, kwargs: dict[str, Any]) -> None:  # type: ignore[no-untyped-def]
        try:
            function(self.services, **kwargs)
        except Exception:
            log.exception("background task %s failed", task_name)

    def wait(self, timeout: float | None = None) -> None:
        """Block until every submitted task finished (tests, demo, ``--wait``)."""
        for future in list(self.futures):
            future.result(timeout=timeout)

    def shutdown(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=False)


def make_runner(services: Services) -> JobRunner:
    """Celery when a broker is configured, otherwise in-process."""
    if services.settings.broker_url:
        from infaas.jobs.celery_runner import CeleryRunner

        return CeleryRunner(services.settings.broker_url)
    return InProcessRunner(services)
