"""PostgreSQL or Redis goes down for a few seconds under load, and comes back.

The scaled-out deployment runs on a private PostgreSQL cluster and a private Redis server (this machine's
shared ones are never touched, so other tests are not disturbed). While a service is down, requests that
need it are answered 503 with ``Retry-After`` (never a 500, never a hang), no process dies, and once it is
back the deployment recovers by itself: nothing acknowledged is lost, nothing is half-written, nothing
stays stuck, and queries are answered again. Redis comes back empty (no persistence, as the Makefile
starts it): worker registrations and queued broker messages are gone and must be rebuilt.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.crash.backing import PrivatePostgres, PrivateRedis, private_postgres, private_redis
from tests.crash.deployments import Deployment, scaled_out
from tests.crash.scenario import Outage, run_outage

SEED = int(os.environ.get("CRASH_SEED", "1301"))


@pytest.fixture(scope="module")
def backing(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[PrivatePostgres, PrivateRedis]]:
    with private_postgres() as postgres, private_redis(tmp_path_factory.mktemp("redis")) as redis_server:
        if postgres is None or redis_server is None:
            pytest.skip("needs PostgreSQL's server programs and redis-server installed")
        yield postgres, redis_server


@pytest.fixture(scope="module")
def deployment(
    tmp_path_factory: pytest.TempPathFactory, backing: tuple[PrivatePostgres, PrivateRedis]
) -> Iterator[Deployment]:
    """One deployment for both outages (starting one costs more than an outage): the Redis outage meets a
    deployment that already rode out a PostgreSQL one, as a long-lived deployment would."""
    postgres, redis_server = backing
    root = tmp_path_factory.mktemp("outages")
    with scaled_out(root, postgres.create_database("infaas"), redis_server.url()) as running:
        yield running


def _replay(test: str) -> str:
    return f"CRASH_SEED={SEED} .venv/bin/pytest -p no:cacheprovider tests/crash -k {test}"


@pytest.mark.integration
def test_postgres_outage_is_answered_503_and_recovered(
    deployment: Deployment, backing: tuple[PrivatePostgres, PrivateRedis]
) -> None:
    postgres, _ = backing
    report = run_outage(deployment, SEED + 2000, Outage("PostgreSQL", postgres.stop, postgres.start), prefix="p")
    assert not report.problems, report.message(_replay("postgres_outage"), deployment.logs())


@pytest.mark.integration
def test_redis_outage_is_answered_503_and_recovered(
    deployment: Deployment, backing: tuple[PrivatePostgres, PrivateRedis]
) -> None:
    _, redis_server = backing
    report = run_outage(deployment, SEED + 3000, Outage("Redis", redis_server.stop, redis_server.start), prefix="r")
    assert not report.problems, report.message(_replay("redis_outage"), deployment.logs())
