"""Kill -9 at random moments: the embedded default (its one ``infaas serve``) and the scaled-out deployment
(front-end, Celery worker or remote worker), restarted each time; every invariant of
``tests.crash.invariants`` must hold once recovery had its time.

``CRASH_KILLS`` (default 50) is the number of kill points in all, six tenths on the embedded default and
four tenths scaled out, ten per case; ``CRASH_SEED`` the first case's seed (each case adds its index).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests.crash.deployments import WORK_MAX_ATTEMPTS, Deployment, embedded, scaled_out
from tests.crash.scenario import run_case
from tests.pg import temporary_database
from tests.redis_server import redis_up

KILLS = int(os.environ.get("CRASH_KILLS", "50"))
SEED = int(os.environ.get("CRASH_SEED", "1301"))
KILLS_PER_CASE = 10
assert KILLS_PER_CASE < WORK_MAX_ATTEMPTS  # see deployments.WORK_MAX_ATTEMPTS
EMBEDDED_CASES = max(1, math.ceil(KILLS * 0.6 / KILLS_PER_CASE))
SCALED_OUT_CASES = max(1, math.ceil(KILLS * 0.4 / KILLS_PER_CASE))
REDIS_HOST = "127.0.0.1"


def _replay(test: str, case: int) -> str:
    command = ".venv/bin/pytest -p no:cacheprovider tests/crash"
    return f"CRASH_SEED={SEED} CRASH_KILLS={KILLS} {command} -k '{test} and case{case}'"


@pytest.mark.parametrize("case", range(EMBEDDED_CASES), ids=lambda c: f"case{c}")
def test_embedded_default_survives_kills(case: int, tmp_path: Path) -> None:
    seed = SEED + case
    with embedded(tmp_path) as deployment:
        report = run_case(deployment, seed, KILLS_PER_CASE)
        assert not report.problems, report.message(_replay("embedded", case), deployment.logs())


def _free_redis_db() -> int:
    """An empty Redis database among 8-15 (the live state and broker of one deployment; flushed after)."""
    for number in range(8, 16):
        if redis.Redis(host=REDIS_HOST, db=number).dbsize() == 0:
            return number
    pytest.skip("no empty Redis database between 8 and 15")


@pytest.fixture
def scaled_out_deployment(tmp_path: Path) -> Iterator[Deployment]:
    if not redis_up():
        pytest.skip("Redis is not running on 127.0.0.1:6379")
    number = _free_redis_db()
    client = redis.Redis(host=REDIS_HOST, db=number)
    client.set("infaas-crash-test", "reserved")  # so a concurrent test does not take the same database
    try:
        with temporary_database() as database_url:
            with scaled_out(tmp_path, database_url, f"redis://{REDIS_HOST}:6379/{number}") as deployment:
                yield deployment
    finally:
        client.flushdb()
        client.close()


@pytest.mark.integration
@pytest.mark.parametrize("case", range(SCALED_OUT_CASES), ids=lambda c: f"case{c}")
def test_scaled_out_survives_kills(case: int, scaled_out_deployment: Deployment) -> None:
    seed = SEED + 1000 + case
    report = run_case(scaled_out_deployment, seed, KILLS_PER_CASE)
    assert not report.problems, report.message(_replay("scaled_out", case), scaled_out_deployment.logs())
