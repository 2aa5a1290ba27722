"""One autoscaler across front-ends, with two real ``infaas serve`` processes on PostgreSQL and Redis.

The cluster starts with no worker and ``min_workers=1``, so each front-end's autoscaler wants to add one
at once (through the ``inprocess`` provider: a worker inside the front-end that adds it). Without the
leader lease both would, and live state would list two. With it: exactly one front-end leads and records
decisions, one worker exists; SIGKILL the leader (its worker dies with it), the other front-end takes
the lease within its TTL plus one renewal, remembers the cool-downs, and adds the one replacement.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from infaas.catalog import DecisionInfo
from infaas.db.session import Database
from infaas.live_state.redis import RedisLiveState
from infaas.metadata import MetadataStore
from tests.factories import scaled_out_env, wait_for
from tests.pg import temporary_database
from tests.redis_server import REDIS_URL, delete_keys, redis_up
from tests.s3server import free_port

ROOT = Path(__file__).resolve().parents[2]
LEASE_S = 1.5
RENEW_S = 0.3
PERIOD_S = 0.2
HEARTBEAT_TTL_S = 1.0


def _postgres_up() -> bool:
    try:
        with temporary_database():
            return True
    except Exception:
        return False


pytestmark = pytest.mark.skipif(not (redis_up() and _postgres_up()), reason="needs PostgreSQL and Redis on 127.0.0.1")


@dataclass
class FrontEnds:
    tmp: Path
    env: dict[str, str]
    prefix: str
    metadata: MetadataStore
    live: RedisLiveState
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def start(self, name: str) -> None:
        port = free_port()
        log = open(self.tmp / f"{name}.log", "ab")  # noqa: SIM115 - closed with the process
        self.procs[name] = subprocess.Popen(
            [sys.executable, "-m", "infaas", "serve", "--port", str(port)],
            env={**self.env, "INFAAS_HOME": str(self.tmp / f"home-{name}")},
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
        )

        def up() -> bool:
            if self.procs[name].poll() is not None:
                raise AssertionError(f"{name} exited: {self.log(name)}")
            try:
                return httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        # Start-up, not the lease, is what can take long here: importing the app took 15-23 s at load average 20 on
        # 2 cores (two front-ends start at once), so a 30 s bound failed while the code under test was fine.
        assert wait_for(up, 90, interval_s=0.1), f"{name} did not answer: {self.log(name)}"

    def log(self, name: str) -> str:
        return (self.tmp / f"{name}.log").read_text(errors="replace")[-3000:]

    def name_of(self, front_end: str) -> str:
        """The process a front-end id (``host/pid``) names."""
        pid = int(front_end.rsplit("/", 1)[1])
        return next(name for name, proc in self.procs.items() if proc.pid == pid)

    def decisions(self) -> list[DecisionInfo]:
        """Every decision, oldest first."""
        return list(reversed(self.metadata.list_decisions(limit=1000)))

    def leaders(self) -> list[str]:
        return [d.target for d in self.decisions() if d.level == "leader" and d.action == "leader"]

    def workers(self) -> set[str]:
        return {w.id for w in self.live.workers()}


@pytest.fixture
def front_ends(tmp_path: Path) -> Iterator[FrontEnds]:
    prefix = f"infaas-test-leader-{uuid.uuid4().hex[:10]}"
    with temporary_database() as database_url:
        env = scaled_out_env(
            database_url,
            prefix,
            tmp_path / "store",
            autoscaler="on",
            provider="inprocess",
            min_workers=1,
            max_workers=1,
            autoscaler_period_s=PERIOD_S,
            vm_autoscaler_period_s=PERIOD_S,
            autoscaler_lease_s=LEASE_S,
            autoscaler_lease_renew_s=RENEW_S,
            heartbeat_s=0.2,
            heartbeat_ttl_s=HEARTBEAT_TTL_S,
            worker_cores=1,
            worker_memory_mb=200,
        )
        db = Database(database_url)
        live = RedisLiveState(REDIS_URL, prefix, snapshot_ttl_s=0.0)
        built = FrontEnds(tmp=tmp_path, env=env, prefix=prefix, metadata=MetadataStore(db), live=live)
        try:
            yield built
        finally:
            for proc in built.procs.values():
                proc.kill()
                proc.wait(15)
            live.close()
            db.dispose()
            delete_keys(f"{prefix}:")


def watch(front_ends: FrontEnds, seconds: float, most_workers: list[int]) -> None:
    """Sample the registered workers for ``seconds``, keeping the most seen at once."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        most_workers.append(len(front_ends.workers()))
        time.sleep(0.05)


def test_one_front_end_acts_and_a_killed_leader_hands_over_within_the_lease(front_ends: FrontEnds) -> None:
    front_ends.start("a")
    front_ends.start("b")
    counts: list[int] = []
    assert wait_for(lambda: len(front_ends.workers()) == 1, 15), (
        f"no worker was added: {front_ends.decisions()}\n{front_ends.log('a')}\n{front_ends.log('b')}"
    )
    watch(front_ends, 2.0, counts)  # ten autoscaler periods of both front-ends

    [first] = front_ends.leaders()
    leader = front_ends.name_of(first)
    survivor = "b" if leader == "a" else "a"
    acting = [d for d in front_ends.decisions() if d.level != "leader"]
    assert {d.inputs["front_end"] for d in acting} == {first}  # only the leader decided anything
    assert [d.action for d in acting] == ["add_worker", "worker_started"]
    [original_worker] = front_ends.workers()

    front_ends.procs[leader].send_signal(signal.SIGKILL)
    killed_at = time.monotonic()
    front_ends.procs[leader].wait(10)
    assert wait_for(lambda: len(front_ends.leaders()) == 2, LEASE_S + RENEW_S + 3.0, interval_s=0.02)
    handover_s = time.monotonic() - killed_at
    second = front_ends.leaders()[1]
    assert front_ends.name_of(second) == survivor
    print(f"leader {leader} killed; {survivor} took over after {handover_s:.2f} s (lease {LEASE_S} s)")
    # The lease was renewed at most RENEW_S before the kill, and the survivor tries every RENEW_S; the
    # last term covers writing and polling the decision and a loaded machine (1.67-1.78 s in all measured here).
    assert handover_s <= LEASE_S + RENEW_S + 1.0

    took = next(d for d in front_ends.decisions() if d.level == "leader" and d.target == second)
    assert took.inputs["previous_leader"] == first and took.inputs["decisions_used"] == 1

    assert wait_for(lambda: front_ends.workers() not in (set(), {original_worker}), 10), front_ends.decisions()
    watch(front_ends, 1.5, counts)
    assert max(counts) == 1  # never two workers at once: no duplicate from two acting front-ends
    after = [d for d in front_ends.decisions() if d.level != "leader"][len(acting) :]
    assert [d.action for d in after] == ["add_worker", "worker_started"]
    assert {d.inputs["front_end"] for d in after} == {second}
