"""Job runners: where background tasks execute."""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from infaas.jobs import tasks

log = logging.getLogger(__name__)

# Runs a named task with its JSON arguments on this process's services (``Services.run_task``).
TaskExecutor = Callable[..., Any]


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

    def __init__(self, execute: TaskExecutor, max_workers: int = 1) -> None:
        self._execute = execute
        self._pool = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="infaas-job")
        self.futures: list[Future[None]] = []

    def submit(self, task_name: str, **kwargs: Any) -> None:
        tasks.get(task_name)  # an unknown name fails in the caller, not later on the pool
        future = self._pool.submit(self._run, task_name, kwargs)
        self.futures = [f for f in self.futures if not f.done()] + [future]

    def _run(self, task_name: str, kwargs: dict[str, Any]) -> None:
        try:
            self._execute(task_name, **kwargs)
        except Exception:
            log.exception("background task %s failed", task_name)

    def wait(self, timeout: float | None = None) -> None:
        """Block until every submitted task finished (tests, demo, ``--wait``)."""
        for future in list(self.futures):
            future.result(timeout=timeout)

    def shutdown(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=False)
