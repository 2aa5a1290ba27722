"""Durable background work (``infaas.jobs.durable``): recorded before it runs, claimed by exactly one
process, resumed when its process died, failed with the reason once out of attempts.

A process killed with SIGKILL leaves its rows exactly as they were at that moment and renews nothing, so
each crash point is set up here by leaving the rows as the dead process would have (claimed by an owner
that never comes back) and moving an injected clock past its lease; the sweep and claims then run for real.
The same recovery through a real ``infaas serve`` killed mid-build is in ``test_crash_recovery.py``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from infaas.config import Settings
from infaas.db.migrate import upgrade
from infaas.db.models import Job, ModelStatus, VariantStatus, WorkState
from infaas.db.session import Database
from infaas.jobs.durable import RUN_WORK_ITEM, DurableRunner
from infaas.jobs.runner import JobRunner
from infaas.metadata import MetadataStore
from infaas.offline import JobStatus, result_key
from infaas.services import Services, build_services
from tests.factories import TASK, mlp_model, npy_bytes, profiles, seed_model, wait_for
from tests.pg import temporary_database

LEASE_S = 10.0


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """Builds on and quick; this process's own recovery thread sweeps only at start (the tests sweep)."""
    return Settings(
        home=tmp_path / "home",
        build_variants=True,
        autoscaler="off",
        profile_runs=5,
        profile_max_seconds=0.1,
        worker_cores=2,
        recovery_period_s=3600,
        orphan_grace_s=3600,
        cascades=False,  # the tests count a registration's build item, not the task's cascade decision after it
    )


class Clock:
    """A clock the test moves: leases expire when the test says so, not after a real wait."""

    def __init__(self) -> None:
        self.now = datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


class Broker(JobRunner):
    """A transport that only keeps what it is handed (messages nobody has consumed yet)."""

    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []

    def submit(self, task_name: str, **kwargs: Any) -> None:
        assert task_name == RUN_WORK_ITEM
        self.messages.append(kwargs)


def runner(
    services: Services,
    owner: str,
    clock: Clock,
    *,
    execute: Callable[..., Any] | None = None,
    max_attempts: int = 3,
    transport: JobRunner | None = None,
) -> DurableRunner:
    """A process's runner on the shared catalog, delivering through ``transport`` (a ``Broker`` by default)."""
    return DurableRunner(
        services.metadata,
        transport or Broker(),
        execute=execute or services.run_task,
        give_up=services.give_up_task,
        lease_s=LEASE_S,
        max_attempts=max_attempts,
        transport_holds_queue=True,
        owner=owner,
        clock=clock,
    )


def seed_mlp(services: Services, **kwargs: Any) -> None:
    seed_model(services, "mlp", mlp_model().SerializeToString(), task=TASK, max_batch=8, **kwargs)


# -- claims and leases -----------------------------------------------------------------------------


def test_submit_records_the_item_before_handing_it_over_and_refuses_unknown_tasks(services: Services) -> None:
    broker = Broker()
    first = runner(services, "a", Clock(), transport=broker)
    first.submit("profile_variants", model_name="mlp")
    [item] = services.metadata.list_work_items()
    assert (item.task, item.kwargs, item.state, item.attempts, item.owner) == (
        "profile_variants",
        {"model_name": "mlp"},
        WorkState.PENDING,
        0,
        "a",
    )
    assert broker.messages == [{"item_id": item.id}]
    with pytest.raises(KeyError, match="unknown background task"):
        first.submit("no-such-task")
    with pytest.raises(KeyError, match="submit the task itself"):
        first.submit(RUN_WORK_ITEM, item_id=item.id)
    assert len(services.metadata.list_work_items()) == 1


def _claim_race(metadata: MetadataStore, item_id: str, now: datetime, contenders: int) -> list[str]:
    """``contenders`` threads claim one item at the same instant; returns the owners that won."""
    start = threading.Barrier(contenders)
    winners: list[str] = []

    def claim(owner: str) -> None:
        start.wait()
        if metadata.claim_work_item(item_id, owner, now + timedelta(seconds=LEASE_S), now, 3) is not None:
            winners.append(owner)

    threads = [threading.Thread(target=claim, args=(f"p{i}",)) for i in range(contenders)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    return winners


def _check_leases(metadata: MetadataStore, make_item: Callable[[], str]) -> None:
    clock = Clock()
    item_id = make_item()
    assert len(_claim_race(metadata, item_id, clock.now, 8)) == 1  # a pending item: one claim wins
    assert metadata.claim_work_item(item_id, "late", clock.now + timedelta(seconds=LEASE_S), clock.now, 3) is None
    clock.advance(LEASE_S / 2)  # still leased: never taken over
    assert _claim_race(metadata, item_id, clock.now, 4) == []
    clock.advance(LEASE_S)  # the holder stopped renewing: exactly one of the others takes it
    assert len(_claim_race(metadata, item_id, clock.now, 8)) == 1
    item = metadata.get_work_item(item_id)
    assert item is not None and item.state == WorkState.RUNNING and item.attempts == 2


def test_one_claim_wins_and_a_live_lease_is_never_taken_over_on_sqlite(services: Services) -> None:
    first = runner(services, "a", Clock())

    def make_item() -> str:
        item = first.new_item("profile_variants", model_name="mlp")
        services.metadata.add_work_item(item)
        return item.id

    _check_leases(services.metadata, make_item)


@pytest.mark.integration
def test_one_claim_wins_and_a_live_lease_is_never_taken_over_on_postgresql(services: Services) -> None:
    first = runner(services, "a", Clock())
    with temporary_database() as url:
        upgrade(url)
        db = Database(url)
        try:
            metadata = MetadataStore(db)

            def make_item() -> str:
                item = first.new_item("profile_variants", model_name="mlp")
                metadata.add_work_item(item)
                return item.id

            _check_leases(metadata, make_item)
        finally:
            db.dispose()


def test_the_heartbeat_renews_only_what_this_process_still_holds(services: Services) -> None:
    clock = Clock()
    release = threading.Event()
    holder = runner(services, "a", clock, execute=lambda name, **kwargs: release.wait(30))
    holder.submit("profile_variants", model_name="mlp")
    [item] = services.metadata.list_work_items()
    running = threading.Thread(target=holder.run, args=(item.id,))
    running.start()
    try:
        held = wait_for(
            lambda: services.metadata.get_work_item(item.id), 10, until=lambda i: i and i.state == WorkState.RUNNING
        )
        assert held is not None and held.state == WorkState.RUNNING, held
        clock.advance(LEASE_S * 0.9)
        assert holder.heartbeat() == 1  # renewed from the new "now"
        clock.advance(LEASE_S * 0.9)  # past the first lease, within the renewed one
        other = runner(services, "b", clock)
        assert other.sweep() == 0 and other.metadata.get_work_item(item.id).state == WorkState.RUNNING  # type: ignore[union-attr]
    finally:
        release.set()
        running.join(30)
    assert services.metadata.get_work_item(item.id).state == WorkState.DONE  # type: ignore[union-attr]
    assert holder.heartbeat() == 0  # nothing held any more


def test_a_redelivered_message_and_the_sweep_run_an_item_once(services: Services) -> None:
    """Celery redelivers a dead worker's message (``acks_late``) while the sweep resubmits the same item."""
    clock = Clock()
    runs: list[str] = []

    def slow_task(name: str, **kwargs: Any) -> None:
        runs.append(name)
        time.sleep(0.3)

    dead = runner(services, "dead", clock)
    dead.submit("profile_variants", model_name="mlp")
    [item] = services.metadata.list_work_items()
    assert services.metadata.claim_work_item(item.id, "dead", clock.now + timedelta(seconds=LEASE_S), clock.now, 3)
    clock.advance(LEASE_S + 1)
    broker = Broker()
    sweeper = runner(services, "sweeper", clock, transport=broker)
    assert sweeper.sweep() == 1 and broker.messages == [{"item_id": item.id}]
    workers = [runner(services, f"w{i}", clock, execute=slow_task) for i in range(3)]
    deliveries = [threading.Thread(target=w.run, args=(item.id,)) for w in workers]  # redelivery + resubmissions
    for thread in deliveries:
        thread.start()
    for thread in deliveries:
        thread.join(30)
    assert runs == ["profile_variants"]
    finished = services.metadata.get_work_item(item.id)
    assert finished is not None and finished.state == WorkState.DONE and finished.attempts == 2


# -- retries and giving up -------------------------------------------------------------------------


def test_a_failed_attempt_is_retried_by_the_sweep_and_then_done(services: Services) -> None:
    clock = Clock()
    outcomes = iter([RuntimeError("database away"), None])

    def flaky(name: str, **kwargs: Any) -> None:
        outcome = next(outcomes)
        if outcome is not None:
            raise outcome

    broker = Broker()
    work = runner(services, "a", clock, execute=flaky, transport=broker)
    work.submit("profile_variants", model_name="mlp")
    [item] = services.metadata.list_work_items()
    work.run(item.id)
    retried = services.metadata.get_work_item(item.id)
    assert retried is not None and retried.state == WorkState.PENDING
    assert retried.error == "RuntimeError: database away" and retried.attempts == 1
    clock.advance(0.001)
    assert work.sweep() == 1 and broker.messages[-1] == {"item_id": item.id}
    work.run(item.id)
    done = services.metadata.get_work_item(item.id)
    assert done is not None and done.state == WorkState.DONE and done.attempts == 2


def test_a_build_whose_process_keeps_dying_ends_failed_with_the_reason(services: Services) -> None:
    seed_mlp(services)
    services.metadata.set_model_status("mlp", ModelStatus.BUILDING)
    services.metadata.upsert_variant(
        "mlp", "cpu-fp32", kind="fp32", precision="fp32", hardware="cpu", status=VariantStatus.BUILDING
    )
    clock = Clock()
    dead = runner(services, "dead", clock, max_attempts=2)
    dead.submit("build_variants", model_name="mlp")
    [item] = services.metadata.list_work_items()
    for attempt in (1, 2):  # two processes claim it and die
        assert services.metadata.claim_work_item(item.id, f"dead{attempt}", clock.now, clock.now, 2)
        clock.advance(1)
    recovering = runner(services, "up", clock, max_attempts=2)
    assert recovering.sweep() == 1
    failed = services.metadata.get_work_item(item.id)
    assert failed is not None and failed.state == WorkState.FAILED
    assert failed.error == "failed after 2 attempt(s): the process running it stopped"
    model = services.metadata.get_model("mlp")
    assert model is not None and model.status == ModelStatus.FAILED  # never left building
    assert model.status_reason == f"variant build stopped: {failed.error}"
    assert [(v.name, v.status, v.reason) for v in model.variants] == [("cpu-fp32", VariantStatus.FAILED, failed.error)]
    assert recovering.sweep() == 0  # given up once, not again


def test_a_build_that_raises_on_its_last_attempt_is_failed_with_its_error(services: Services) -> None:
    seed_mlp(services)

    def broken(name: str, **kwargs: Any) -> None:
        raise OSError("disk full")

    work = runner(services, "a", Clock(), execute=broken, max_attempts=1)
    work.submit("build_variants", model_name="mlp")
    [item] = services.metadata.list_work_items()
    work.run(item.id)
    model = services.metadata.get_model("mlp")
    assert model is not None and model.status == ModelStatus.FAILED
    assert model.status_reason == "variant build stopped: failed after 1 attempt(s): OSError: disk full"


# -- resuming real work ------------------------------------------------------------------------------


def test_a_build_killed_half_way_is_resumed_to_ready_without_duplicates(services: Services) -> None:
    """The issue's state: model ``building``, its first variant row ``building``, nothing running it."""
    seed_mlp(services)
    clock = Clock()
    dead = runner(services, "dead", clock)
    dead.submit("build_variants", model_name="mlp")
    [item] = services.metadata.list_work_items()
    assert services.metadata.claim_work_item(item.id, "dead", clock.now + timedelta(seconds=LEASE_S), clock.now, 3)
    services.metadata.set_model_status("mlp", ModelStatus.BUILDING)
    services.metadata.upsert_variant(
        "mlp", "cpu-fp32", kind="fp32", precision="fp32", hardware="cpu", status=VariantStatus.BUILDING
    )
    services.store.put_bytes("models/mlp/variants/cpu-fp32.onnx", b"half a file the dead build left")

    clock.advance(LEASE_S + 1)
    broker = Broker()
    restarted = runner(services, "restarted", clock, transport=broker)
    assert restarted.sweep() == 1
    restarted.run(broker.messages[0]["item_id"])

    model = services.metadata.get_model("mlp")
    assert model is not None and model.status == ModelStatus.READY, model
    names = [v.name for v in model.variants]
    assert len(names) == len(set(names)) and "cpu-fp32" in names  # upserted, not duplicated
    assert all(v.status != VariantStatus.BUILDING for v in model.variants)
    stored = services.store.list("models/mlp/variants/")
    assert len(stored) == len(set(stored)) and services.store.get_bytes("models/mlp/variants/cpu-fp32.onnx") != (
        b"half a file the dead build left"
    )
    finished = services.metadata.get_work_item(item.id)
    assert finished is not None and finished.state == WorkState.DONE and finished.attempts == 2


def _offline_job(services: Services, job_id: str, x: np.ndarray) -> None:
    key = f"jobs/{job_id}/input.npy"
    services.store.put_bytes(key, npy_bytes(x))
    services.metadata.add_job(
        Job(id=job_id, owner="local", model_name="mlp", input_key=key, status=JobStatus.QUEUED, progress=0.0)
    )


def test_an_offline_job_whose_process_died_finishes_exactly_once(services: Services) -> None:
    seed_mlp(services, variants={"cpu-fp32-1t": profiles({1: 0.25, 8: 1.0})})
    x = np.random.default_rng(3).normal(size=(50, 8)).astype(np.float32)
    _offline_job(services, "job-1", x)
    clock = Clock()
    dead = runner(services, "dead", clock)
    dead.submit("offline_job", job_id="job-1")
    [item] = services.metadata.list_work_items()
    assert services.metadata.claim_work_item(item.id, "dead", clock.now + timedelta(seconds=LEASE_S), clock.now, 3)
    services.metadata.update_job("job-1", status=JobStatus.RUNNING, progress=0.4)  # where it was killed

    clock.advance(LEASE_S + 1)
    broker = Broker()
    restarted = runner(services, "restarted", clock, transport=broker)
    assert restarted.sweep() == 1
    for message in broker.messages * 2:  # delivered twice: the second finds it done
        restarted.run(message["item_id"])
    job = services.metadata.get_job("job-1")
    assert job is not None and job.status == JobStatus.DONE and job.progress == 1.0
    assert services.store.list("jobs/job-1/") == ["jobs/job-1/input.npy", result_key("job-1")]
    with np.load(services.store.local_path(result_key("job-1"))) as result:
        assert result["y"].shape == (50, 3)
    assert services.metadata.get_work_item(item.id).attempts == 2  # type: ignore[union-attr]


def test_an_offline_job_out_of_attempts_is_failed_with_the_reason(services: Services) -> None:
    seed_mlp(services, variants={"cpu-fp32-1t": profiles({1: 0.25, 8: 1.0})})
    _offline_job(services, "job-2", np.ones((4, 8), np.float32))
    clock = Clock()
    runner(services, "dead", clock, max_attempts=1).submit("offline_job", job_id="job-2")
    [item] = services.metadata.list_work_items()
    assert services.metadata.claim_work_item(item.id, "dead", clock.now, clock.now, 1)
    clock.advance(1)
    assert runner(services, "up", clock, max_attempts=1).sweep() == 1
    job = services.metadata.get_job("job-2")
    assert job is not None and job.status == JobStatus.FAILED
    assert job.error == "failed after 1 attempt(s): the process running it stopped"


def test_start_up_recovery_runs_what_a_dead_process_left_queued(settings: Settings) -> None:
    """The embedded default end to end: a pending build leased to a dead process is run by the next one."""
    first = build_services(settings, with_jobs=False)
    try:
        seed_mlp(first)
        stale = datetime.now(UTC) - timedelta(seconds=1)
        dead = DurableRunner(
            first.metadata,
            Broker(),
            execute=first.run_task,
            give_up=first.give_up_task,
            lease_s=LEASE_S,
            max_attempts=3,
            transport_holds_queue=True,
            owner="dead",
            clock=lambda: stale - timedelta(seconds=LEASE_S),
        )
        dead.submit("build_variants", model_name="mlp")  # queued in its pool, then the process died
    finally:
        first.close()
    second = build_services(settings)  # its maintenance thread sweeps at start
    try:
        model = wait_for(
            lambda: second.metadata.get_model("mlp"), 60, until=lambda m: m and m.status == ModelStatus.READY
        )
        assert model is not None and model.status == ModelStatus.READY, model
        [item] = second.metadata.list_work_items()
        assert item.state == WorkState.DONE and item.attempts == 1
    finally:
        second.close()


def test_the_sweep_forgets_finished_items_after_a_week_and_keeps_the_rest(services: Services) -> None:
    clock = Clock()
    work = runner(services, "a", clock, execute=lambda name, **kwargs: None)
    for model in ("done", "pending"):
        work.submit("profile_variants", model_name=model)
    done, pending = services.metadata.list_work_items()
    work.run(done.id)
    clock.advance(6 * 24 * 3600)
    work.heartbeat()  # the pending one is still held (queued in this process)
    work.sweep()
    assert len(services.metadata.list_work_items()) == 2
    clock.advance(2 * 24 * 3600)
    work.heartbeat()
    work.sweep()
    assert [item.id for item in services.metadata.list_work_items()] == [pending.id]


def test_work_queued_in_a_broker_is_sent_again_only_after_the_brokers_own_horizon(services: Services) -> None:
    clock, broker = Clock(), Broker()
    sender = DurableRunner(
        services.metadata,
        broker,
        execute=services.run_task,
        give_up=services.give_up_task,
        lease_s=LEASE_S,
        max_attempts=3,
        transport_holds_queue=False,  # Celery: the broker holds the queue, not this process
        queue_wait_s=60,
        owner="front-end",
        clock=clock,
    )
    sender.submit("profile_variants", model_name="mlp")
    [item] = services.metadata.list_work_items()
    assert item.owner is None and sender.heartbeat() == 0  # nobody renews a message waiting in the broker
    clock.advance(LEASE_S * 3)  # a long queue: still waiting, not sent again
    assert sender.sweep() == 0 and len(broker.messages) == 1
    clock.advance(60)  # past the broker's horizon: taken for lost and sent again
    assert sender.sweep() == 1 and broker.messages == [{"item_id": item.id}] * 2
    requeued = services.metadata.get_work_item(item.id)
    assert requeued is not None and requeued.state == WorkState.PENDING and requeued.attempts == 0
