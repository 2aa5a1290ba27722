"""Durable background work: every task is recorded before it runs, leased while it runs, and resumed when
the process running it dies.

A task submitted through ``DurableRunner`` becomes a ``work_items`` row (``pending``) before the
transport (the in-process pool, or Celery) sees it; only the row's id travels, as the ``work_item``
task. Whoever runs it first *claims* it with one conditional UPDATE (pending, or running under an expired
lease → running, attempts + 1, leased to this process), runs the real task, and ends it ``done``, or
``failed`` with the error once ``max_attempts`` runs failed (a failed run before that goes back to
``pending``, retried by the next sweep).

The lease is ``owner`` (host, pid and a random tag: one per process) and ``lease_expires_at``. One
heartbeat per process renews every item that process holds, so a live process never loses its items and
a dead one's expire after ``work_lease_s``. The sweep (at start-up, then every ``recovery_period_s``)
requeues expired items — their process died, or their message was lost — and gives up on those that used
every attempt: the item is ``failed`` with the reason, and the task's give-up hook shows it where the user
looks (the model's ``status_reason``, the job's ``error``).

Why this cannot run one item twice at once: only a claim starts a run, a claim succeeds only on a pending
item or an expired lease, and a live process renews its leases every third of the lease. Celery's own
redelivery (``acks_late``) of a message whose worker died and the sweep's resubmission of the same item
both end in a claim, and exactly one of them wins; the other returns at once. Clocks: leases are written
and compared with each host's UTC clock, so hosts must agree to well within ``work_lease_s`` (NTP does).
The one way to two runs at once is a process cut off from the database for longer than the lease while
others still reach it: its lease expires, another claims the item, and when the first finishes its
release finds the item no longer its own and only logs it; tasks are idempotent for that reason.

On the embedded default the in-process pool holds the queue, so queued (pending) items are leased to the
process that queued them and are requeued when it dies. With Celery the broker holds the queue: a pending
item has no owner, and its lease is ``queue_wait_s``, how long it may wait for a worker before the sweep
sends its message again (a message the broker lost, say in a restart without persistence). It is the
broker's visibility timeout, the horizon after which Celery itself takes a message for lost: a shorter one
would send every item of a long queue again and again (each duplicate is harmless, its claim fails, but
they pile up behind the long jobs that made the queue long).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from infaas.db.models import WorkState
from infaas.jobs import tasks
from infaas.jobs.runner import JobRunner
from infaas.metadata import MetadataStore, NewWorkItem

log = logging.getLogger(__name__)

RUN_WORK_ITEM = "work_item"  # the task the transport carries: run the recorded item with this id
MAX_ERROR_CHARS = 2000
# Finished items are kept this long, then pruned by the sweep: long enough to look at a failure after a
# weekend, short enough that the table stays the size of a week's work.
FINISHED_RETENTION = timedelta(days=7)

# ``Services.run_task(name, **kwargs)`` and ``Services.give_up_task(name, reason, **kwargs)``.
TaskExecutor = Callable[..., Any]
GiveUpHook = Callable[..., None]
Clock = Callable[[], datetime]


def utc_now() -> datetime:
    """Timezone-aware now: what leases are written and compared with."""
    return datetime.now(UTC)


def process_owner_id() -> str:
    """This process's lease owner: readable (host and pid) and unique even if a pid is reused."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def _reason(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:MAX_ERROR_CHARS]


class DurableRunner(JobRunner):
    """Records, claims, heartbeats and recovers background work; ``transport`` only delivers item ids."""

    def __init__(
        self,
        metadata: MetadataStore,
        transport: JobRunner,
        *,
        execute: TaskExecutor,
        give_up: GiveUpHook,
        lease_s: float,
        max_attempts: int,
        transport_holds_queue: bool,
        queue_wait_s: float | None = None,
        owner: str | None = None,
        clock: Clock = utc_now,
    ) -> None:
        if lease_s <= 0 or max_attempts < 1:
            raise ValueError("work_lease_s must be positive and work_max_attempts at least 1")
        self.metadata = metadata
        self.transport = transport
        self.owner = owner or process_owner_id()
        self.lease = timedelta(seconds=lease_s)
        # How long a pending item may wait in a queue this process does not hold before it is sent again.
        self.queue_wait = self.lease if transport_holds_queue else timedelta(seconds=queue_wait_s or lease_s)
        self.max_attempts = max_attempts
        self._execute = execute
        self._give_up = give_up
        self._holds_queue = transport_holds_queue
        self._clock = clock
        # Items this process holds (queued in its pool, or running here): only these get their lease renewed,
        # so an item whose run ended without its row being updated (the database was down) expires and is retried.
        self._held: set[str] = set()
        self._held_lock = threading.Lock()

    @property
    def heartbeat_s(self) -> float:
        """How often the heartbeat renews leases: three tries before a live lease could expire."""
        return self.lease.total_seconds() / 3

    # -- submitting --------------------------------------------------------------------------------
    def new_item(self, task_name: str, **kwargs: Any) -> NewWorkItem:
        """A work item for ``task_name(**kwargs)``, not yet recorded (``submit``, or recorded with a registration)."""
        if task_name == RUN_WORK_ITEM:
            raise KeyError(f"{RUN_WORK_ITEM!r} runs recorded work; submit the task itself")
        tasks.get(task_name)  # an unknown name fails in the caller
        return NewWorkItem(
            id=str(uuid.uuid4()),
            task=task_name,
            kwargs=kwargs,
            owner=self.owner if self._holds_queue else None,
            lease_expires_at=self._clock() + self.queue_wait,
        )

    def submit(self, task_name: str, **kwargs: Any) -> None:
        """Record ``task_name(**kwargs)`` as pending, then hand it to the transport."""
        item = self.new_item(task_name, **kwargs)
        self.metadata.add_work_item(item)
        self.dispatch(item.id)

    def dispatch(self, item_id: str) -> None:
        """Hand a recorded item to the transport; if that fails (broker down), the sweep hands it again later.

        The item is already durable, so a delivery failure is logged rather than raised: the caller's
        request was accepted and the work will run once the transport is back.
        """
        if self._holds_queue:
            self._hold(item_id)
        try:
            self.transport.submit(RUN_WORK_ITEM, item_id=item_id)
        except Exception:
            self._release_hold(item_id)
            log.exception("could not queue work item %s; the recovery sweep queues it again", item_id)

    def _hold(self, item_id: str) -> None:
        with self._held_lock:
            self._held.add(item_id)

    def _release_hold(self, item_id: str) -> None:
        with self._held_lock:
            self._held.discard(item_id)

    # -- running -----------------------------------------------------------------------------------
    def run(self, item_id: str) -> None:
        """Claim and run one recorded item (what the ``work_item`` task does, wherever it is delivered)."""
        self._hold(item_id)
        try:
            self._claim_and_run(item_id)
        finally:
            self._release_hold(item_id)

    def _claim_and_run(self, item_id: str) -> None:
        now = self._clock()
        item = self.metadata.claim_work_item(item_id, self.owner, now + self.lease, now, self.max_attempts)
        if item is None:
            log.info("work item %s is finished, running elsewhere or gone; not run again", item_id)
            return
        try:
            self._execute(item.task, **item.kwargs)
        except Exception as exc:
            log.exception("work item %s (%s) failed on attempt %d", item.id, item.task, item.attempts)
            self._attempt_failed(item.id, item.task, item.kwargs, item.attempts, _reason(exc))
            return
        except BaseException as exc:  # this thread is ending: let the next sweep retry at once
            self.metadata.release_work_item(item.id, self.owner, WorkState.PENDING, error=_reason(exc))
            raise
        if not self.metadata.release_work_item(item.id, self.owner, WorkState.DONE):
            log.warning("work item %s finished after its lease was taken over; the other run decides", item.id)

    def _attempt_failed(self, item_id: str, task: str, kwargs: dict[str, Any], attempts: int, reason: str) -> None:
        if attempts >= self.max_attempts:
            reason = f"failed after {attempts} attempt(s): {reason}"
            if self.metadata.release_work_item(item_id, self.owner, WorkState.FAILED, error=reason):
                self._call_give_up(task, reason, kwargs)
            return
        # Pending with an expired lease and no owner: the next sweep queues it again (the sweep period is the backoff).
        self.metadata.release_work_item(
            item_id, self.owner, WorkState.PENDING, error=reason, lease_expires_at=self._clock()
        )

    def _call_give_up(self, task: str, reason: str, kwargs: dict[str, Any]) -> None:
        try:
            self._give_up(task, reason, **kwargs)
        except Exception:
            log.exception("could not record that %s %s gave up: %s", task, kwargs, reason)

    # -- keeping leases and recovering -------------------------------------------------------------
    def heartbeat(self) -> int:
        """Renew the lease of every item this process holds; returns how many."""
        with self._held_lock:
            held = sorted(self._held)
        if not held:
            return 0
        return self.metadata.renew_work_leases(self.owner, held, self._clock() + self.lease)

    def sweep(self) -> int:
        """Requeue work whose lease expired, give up on work out of attempts, prune old finished items.

        Returns how many expired items it requeued or gave up on.
        """
        touched = 0
        now = self._clock()
        self.metadata.delete_finished_work_items(now - FINISHED_RETENTION)
        for item in self.metadata.expired_work_items(now):
            if item.state == WorkState.RUNNING and item.attempts >= self.max_attempts:
                last = f"; last error: {item.error}" if item.error else ""
                reason = f"failed after {item.attempts} attempt(s): the process running it stopped{last}"
                if self.metadata.fail_expired_work_item(item.id, reason[:MAX_ERROR_CHARS], now):
                    log.error("work item %s (%s %s) %s", item.id, item.task, item.kwargs, reason)
                    self._call_give_up(item.task, reason, item.kwargs)
                    touched += 1
                continue
            owner = self.owner if self._holds_queue else None
            if not self.metadata.requeue_expired_work_item(item.id, owner, now + self.queue_wait, now):
                continue  # claimed or requeued by someone else meanwhile
            log.warning(
                "resuming work item %s (%s %s): %s, %d of %d attempt(s) used",
                item.id,
                item.task,
                item.kwargs,
                "its process stopped" if item.state == WorkState.RUNNING else "it was queued but never run",
                item.attempts,
                self.max_attempts,
            )
            self.dispatch(item.id)
            touched += 1
        return touched

    def shutdown(self) -> None:
        self.transport.shutdown()


class WorkHost(Protocol):
    """What ``run_work_item`` needs of the services it runs on."""

    jobs: Any


def run_work_item(services: WorkHost, item_id: str) -> None:
    """The ``work_item`` background task: claim and run a recorded item on this process's runner."""
    runner = services.jobs
    if not isinstance(runner, DurableRunner):
        raise TypeError("work items run on a DurableRunner (see infaas.services.build_services)")
    runner.run(item_id)
