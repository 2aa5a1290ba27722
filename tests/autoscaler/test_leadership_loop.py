"""The autoscaler acts only while it holds the leader lease, and a new leader remembers its predecessor's
cool-downs. A fake clock drives the lease: the loop's gating is decided without sleeping. The cluster is
empty with ``min_workers=1``, so every period the VM level wants a worker: an action to allow or refuse."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from autoscaler import Autoscaler, PolicyConfig, handover
from autoscaler.providers.inprocess import InProcessProvider
from infaas.catalog import DecisionInfo
from infaas.config import Settings
from infaas.services import Services, build_services


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class SharedKey:
    """The one lease key of a cluster, on the fake clock (what Redis holds, as far as these tests need)."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.holder: str | None = None
        self.until = 0.0

    def free(self) -> bool:
        return self.holder is None or self.clock() >= self.until


class ClockedLease:
    """A lease on ``SharedKey`` with the contract of ``infaas.leadership.Lease`` and a TTL on the fake clock."""

    def __init__(self, key: SharedKey, holder: str, ttl_s: float) -> None:
        self.key, self.holder, self.ttl_s = key, holder, ttl_s
        self._until = 0.0

    @property
    def held(self) -> bool:
        return self.key.holder == self.holder and self.key.clock() < self._until

    def try_acquire(self) -> bool:
        if self.key.holder != self.holder and not self.key.free():
            return False
        return self._take()

    def renew(self) -> bool:
        if self.key.holder != self.holder or self.key.free():
            self._until = 0.0
            return False
        return self._take()

    def _take(self) -> bool:
        self.key.holder, self.key.until = self.holder, self.key.clock() + self.ttl_s
        self._until = self.key.until
        return True

    def release(self) -> None:
        if self.key.holder == self.holder:
            self.key.holder = None
        self._until = 0.0

    def close(self) -> None:
        self.release()


TTL_S = 3.0


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def services(tmp_path: Path) -> Iterator[Services]:
    settings = Settings(
        home=tmp_path / "home",
        build_variants=False,
        autoscaler="on",
        in_process_worker=False,
        min_workers=1,
        max_workers=2,
        worker_cores=1,
        worker_memory_mb=200.0,
        autoscaler_lease_s=TTL_S,
        autoscaler_lease_renew_s=1.0,
    )
    built = build_services(settings, with_jobs=False)
    yield built
    built.close()


def scaler_for(services: Services, lease: ClockedLease, clock: FakeClock) -> Autoscaler:
    services.leadership = lease
    provider = InProcessProvider(services.store, services.live, memory_budget_mb=200.0, cores=1, heartbeat_s=0.2)
    return Autoscaler(services, provider=provider, clock=clock)


def acted(services: Services) -> list[DecisionInfo]:
    return [d for d in services.metadata.list_decisions() if d.level != handover.LEVEL]


def test_only_the_lease_holder_acts(services: Services, clock: FakeClock) -> None:
    key = SharedKey(clock)
    other = ClockedLease(key, "front-end-b", TTL_S)
    assert other.try_acquire()  # another front-end leads
    scaler = scaler_for(services, ClockedLease(key, "front-end-a", TTL_S), clock)
    try:
        assert not scaler.lead() and not scaler.leading
        assert scaler.step_vm() == [] and scaler.step_model() == []
        assert services.metadata.list_decisions() == []  # a follower records nothing either

        clock.now += TTL_S  # b stopped renewing: its lease runs out
        assert scaler.lead() and scaler.leading
        [took] = services.metadata.list_decisions()
        assert (took.level, took.action, took.target) == ("leader", "leader", "front-end-a")
        assert [a.action for a in scaler.step_vm()] == ["add_worker"]
        # The worker it starts is recorded ("worker_started") by a background thread, possibly already: not counted.
        [add] = [d for d in acted(services) if d.action != "worker_started"]
        assert add.action == "add_worker" and add.inputs["front_end"] == "front-end-a"
    finally:
        scaler.stop()


def test_a_leader_that_could_not_renew_in_time_stops_acting(services: Services, clock: FakeClock) -> None:
    scaler = scaler_for(services, ClockedLease(SharedKey(clock), "a", TTL_S), clock)
    try:
        assert scaler.lead()
        clock.now += TTL_S  # no renewal for a whole TTL (a hung period): another front-end may lead by now
        assert not scaler.leading
        assert scaler.step_vm() == []
        assert acted(services) == []
    finally:
        scaler.stop(stop_workers=True)


def test_actions_planned_before_the_lease_was_lost_are_not_carried_out(services: Services, clock: FakeClock) -> None:
    scaler = scaler_for(services, ClockedLease(SharedKey(clock), "a", TTL_S), clock)
    observe = scaler.view

    def slow_view():  # the period's observation outlasts the lease
        view = observe()
        clock.now += TTL_S
        return view

    scaler.view = slow_view  # type: ignore[method-assign]
    try:
        assert scaler.lead()
        planned = scaler.step_vm()
        assert [a.action for a in planned] == ["add_worker"]  # decided from what it saw while leading ...
        assert acted(services) == []  # ... but neither recorded nor carried out
        assert scaler.provider.workers() == []
    finally:
        scaler.stop()


def test_a_refused_renewal_is_recorded_and_stops_the_leader(services: Services, clock: FakeClock) -> None:
    key = SharedKey(clock)
    scaler = scaler_for(services, ClockedLease(key, "a", TTL_S), clock)
    try:
        assert scaler.lead()
        clock.now += TTL_S
        assert ClockedLease(key, "b", TTL_S).try_acquire()  # b took the expired lease
        assert not scaler.lead() and not scaler.leading
        actions = [(d.action, d.target) for d in services.metadata.list_decisions()]
        assert actions == [("step_down", "a"), ("leader", "a")]  # newest first
        assert scaler.step_vm() == []
    finally:
        scaler.stop()


def test_a_stopped_leader_releases_the_lease_and_says_so(services: Services, clock: FakeClock) -> None:
    key = SharedKey(clock)
    scaler = scaler_for(services, ClockedLease(key, "a", TTL_S), clock)
    assert scaler.lead()
    scaler.stop()
    assert key.holder is None  # the next front-end need not wait for the TTL
    newest = services.metadata.list_decisions()[0]
    assert (newest.action, newest.target) == ("step_down", "a")


def test_a_new_leader_keeps_its_predecessors_cool_downs(services: Services, clock: FakeClock) -> None:
    key = SharedKey(clock)
    first = scaler_for(services, ClockedLease(key, "a", TTL_S), clock)
    assert first.lead() and first.step_vm()  # a adds a worker ...
    first._leading = False  # ... and dies without a word (no release, no step_down)
    clock.now += TTL_S
    second = scaler_for(services, ClockedLease(key, "b", TTL_S), clock)
    try:
        assert second.lead()
        took = services.metadata.list_decisions()[0]
        assert took.action == "leader" and took.inputs["previous_leader"] == "a"
        assert took.inputs["decisions_used"] == 1
        config = PolicyConfig()
        assert second._vm_history.cooling("cluster", clock(), config.vm_cooldown_s)
        assert "cluster" in second._vm_history.last_up
        assert second._vm_history.streaks == {}  # streaks start fresh
    finally:
        second.stop()
        first.stop()


def test_renewal_must_come_well_within_the_lease(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "home", autoscaler_lease_s=2.0, autoscaler_lease_renew_s=2.0)
    services = build_services(settings, with_jobs=False)
    try:
        with pytest.raises(ValueError, match="INFAAS_AUTOSCALER_LEASE_RENEW_S .* must be positive and below"):
            Autoscaler(services)
    finally:
        services.close()


def decision(
    age_s: float, level: str, action: str, target: str, inputs: dict | None = None, dry_run: bool = False
) -> DecisionInfo:
    at = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC) - timedelta(seconds=age_s)
    return DecisionInfo(
        id=0,
        at=at,
        level=level,
        action=action,
        target=target,
        inputs=inputs or {},
        reason="why",
        dry_run=dry_run,
        outcome=None,
    )


WALL_NOW = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC).timestamp()


def test_rebuild_places_each_guard_at_its_decisions_time() -> None:
    log = [  # newest first, as list_decisions returns them
        decision(1, "leader", "leader", "front-end-b"),
        decision(2, "vm", "worker_started", "w3"),  # the end of an add_worker: not an action of its own
        decision(3, "vm", "remove_worker", "w2"),
        decision(5, "vm", "drain_worker", "w1"),
        decision(6, "model", "upgrade", "w1/m/v1", {"worker": "w1", "to_variant": "m/v2"}),
        decision(8, "vm", "drain_worker", "w2"),
        decision(9, "model", "remove_replica", "w1/m/v0"),
        decision(10, "vm", "add_worker", "cluster"),
        decision(12, "model", "add_replica", "w1/m/v0"),
        decision(4, "model", "add_replica", "w9/m/v0", dry_run=True),  # another mode: not this history
        decision(20, "leader", "leader", "front-end-a"),
    ]
    rebuilt = handover.rebuild(log, now=1000.0, dry_run=False, wall_now=WALL_NOW)
    assert rebuilt.previous_leader == "front-end-b"
    assert rebuilt.decisions_used == 7
    assert rebuilt.model.last_action == {"w1/m/v0": 991.0, "w1/m/v1": 994.0, "w1/m/v2": 994.0}
    assert rebuilt.model.last_up == {"w1/m/v0": 988.0, "w1/m/v1": 994.0, "w1/m/v2": 994.0}
    assert rebuilt.vm.last_action == {"cluster": 995.0, "drain:w1": 995.0}  # w2 was removed: its drain is over
    assert rebuilt.vm.last_up == {"cluster": 990.0}
    assert rebuilt.vm.started == {"w3": 998.0}  # the new worker's minimum lifetime runs from its start
    assert rebuilt.model.streaks == {} and rebuilt.model.derate == {}


def test_rebuild_of_a_dry_run_uses_only_dry_run_decisions_and_reads_naive_times_as_utc() -> None:
    naive = decision(2, "model", "add_replica", "w/m/v", dry_run=True)
    naive = DecisionInfo(**{**naive.__dict__, "at": naive.at.replace(tzinfo=None)})
    rebuilt = handover.rebuild(
        [naive, decision(1, "model", "unload", "w/m/x")], now=50.0, dry_run=True, wall_now=WALL_NOW
    )
    assert rebuilt.model.last_action == {"w/m/v": 48.0} and rebuilt.previous_leader is None
