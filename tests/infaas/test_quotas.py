"""Quota counting (``infaas.quotas``): the sliding window admits exactly its limit however many callers
race for it, in one process and across processes sharing Redis; jobs in flight are counted from the rows,
and a race between submissions is decided the same way wherever it is checked."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from infaas.auth import Principal
from infaas.config import Settings
from infaas.db.models import Job
from infaas.errors import TooManyRequests
from infaas.quotas import EventWindow, MemoryEventWindow, Quotas, RedisEventWindow
from infaas.services import Services, build_services
from tests.redis_server import REDIS_URL, delete_keys, redis_up

ALICE = Principal(tenant="alice", is_admin=False, key_id="k1")
ADMIN = Principal(tenant="admin", is_admin=True)


def _race(window: EventWindow | list[EventWindow], callers: int, limit: int) -> list[float | None]:
    """``callers`` threads each admit one event under one key (round-robin over the given windows)."""
    windows = window if isinstance(window, list) else [window]
    with ThreadPoolExecutor(16) as pool:
        return list(pool.map(lambda i: windows[i % len(windows)].admit("k", limit, 60.0), range(callers)))


def test_memory_window_admits_exactly_the_limit_under_a_race() -> None:
    answers = _race(MemoryEventWindow(), callers=50, limit=7)
    assert answers.count(None) == 7
    assert all(0 < wait <= 60.0 for wait in answers if wait is not None)


@pytest.mark.skipif(not redis_up(), reason="needs Redis on 127.0.0.1:6379")
def test_redis_window_is_shared_by_every_front_end() -> None:
    prefix = f"test-quota-{uuid.uuid4().hex[:8]}"
    front_ends = [RedisEventWindow(REDIS_URL, prefix) for _ in range(2)]
    try:
        answers = _race(front_ends, callers=40, limit=5)
        assert answers.count(None) == 5
        assert all(0 < wait <= 60.0 for wait in answers if wait is not None)
    finally:
        for window in front_ends:
            window.close()
        delete_keys(prefix)


@pytest.fixture
def services(tmp_path: Path) -> Iterator[Services]:
    built = build_services(
        Settings(home=tmp_path / "home", build_variants=False, autoscaler="off", max_jobs_per_tenant=2)
    )
    yield built
    built.close()


def _job(services: Services, owner: str, status: str, age_s: float) -> str:
    job_id = str(uuid.uuid4())
    services.metadata.add_job(
        Job(
            id=job_id,
            owner=owner,
            model_name="m",
            input_key=f"jobs/{job_id}/input.npy",
            status=status,
            created_at=datetime.now(UTC) - timedelta(seconds=age_s),
        )
    )
    return job_id


def test_jobs_in_flight_are_counted_from_the_rows(services: Services) -> None:
    quotas: Quotas = services.quotas
    _job(services, "alice", "done", 30)
    _job(services, "alice", "failed", 20)
    _job(services, "bob", "running", 10)
    first = _job(services, "alice", "queued", 3)
    quotas.check_jobs(ALICE)  # done, failed and other tenants' jobs do not count
    second = _job(services, "alice", "running", 2)
    with pytest.raises(TooManyRequests) as refused:
        quotas.check_jobs(ALICE)
    assert "INFAAS_MAX_JOBS_PER_TENANT" in refused.value.message and refused.value.headers["Retry-After"] == "10"
    quotas.check_jobs(ADMIN)
    # Three submissions raced past check_jobs and were all recorded: the two oldest keep their place.
    third = _job(services, "alice", "queued", 1)
    quotas.confirm_job(ALICE, first)
    quotas.confirm_job(ALICE, second)
    with pytest.raises(TooManyRequests):
        quotas.confirm_job(ALICE, third)


def test_registration_and_reprofile_windows_are_per_tenant_and_per_model(services: Services) -> None:
    one_each = {"max_registrations_per_hour": 1, "max_reprofiles_per_model_per_hour": 1}
    quotas = Quotas(services.settings.model_copy(update=one_each), services.db, MemoryEventWindow())
    quotas.admit_registration(ALICE)
    with pytest.raises(TooManyRequests) as refused:
        quotas.admit_registration(ALICE)
    assert "INFAAS_MAX_REGISTRATIONS_PER_HOUR" in refused.value.message
    assert 3500 <= int(refused.value.headers["Retry-After"]) <= 3600
    quotas.admit_registration(Principal(tenant="bob", is_admin=False))
    quotas.admit_reprofile(ALICE, "alice.a")
    quotas.admit_reprofile(ALICE, "alice.b")
    with pytest.raises(TooManyRequests, match="INFAAS_MAX_REPROFILES_PER_MODEL_PER_HOUR"):
        quotas.admit_reprofile(ALICE, "alice.a")
    for _ in range(5):  # admins are the operator
        quotas.admit_registration(ADMIN)
        quotas.admit_reprofile(ADMIN, "alice.a")
