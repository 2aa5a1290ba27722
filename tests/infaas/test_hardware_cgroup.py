"""The CPU a worker advertises from its cgroup quota (``infaas.hardware.cgroup_cpu_limit``): cgroup v1 and v2, a
container's view (the mount is its own group) and a host's (the group found by its path), the smallest quota along
the way; then through ``advertise`` and the registration to live state, in memory and in Redis."""

from __future__ import annotations

from pathlib import Path

import pytest

from infaas import hardware
from infaas.hardware import CPU_ONLY, Hardware, HardwareReport, advertise, cgroup_cpu_limit
from infaas.live_state import LiveState, MemoryLiveState
from infaas.live_state.redis import RedisLiveState
from infaas.model_store import LocalModelStore
from infaas.worker import LocalWorker
from tests.redis_server import REDIS_URL, delete_keys, redis_up


def v1_group(directory: Path, quota: int, period: int = 100_000) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "cpu.cfs_quota_us").write_text(f"{quota}\n")
    (directory / "cpu.cfs_period_us").write_text(f"{period}\n")


def v2_group(directory: Path, line: str) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "cpu.max").write_text(line + "\n")


def test_v1_inside_a_container_reads_its_own_mount(tmp_path: Path) -> None:
    # docker run --cpus 0.5 on cgroup v1: the container sees its group mounted at /sys/fs/cgroup/cpu,cpuacct while
    # /proc/self/cgroup names the host's path, which does not exist in its mount.
    v1_group(tmp_path / "cpu,cpuacct", 50_000)
    membership = "12:memory:/docker/abc\n4:cpu,cpuacct:/docker/abc\n0::/\n"
    assert cgroup_cpu_limit(tmp_path, membership) == 0.5


def test_v1_on_a_host_finds_the_group_by_its_path_and_the_smallest_quota_wins(tmp_path: Path) -> None:
    v1_group(tmp_path / "cpu", -1)  # the root group: no quota
    v1_group(tmp_path / "cpu" / "slice", 300_000)
    v1_group(tmp_path / "cpu" / "slice" / "job", 150_000, period=100_000)
    assert cgroup_cpu_limit(tmp_path, "1:cpu:/slice/job\n") == 1.5
    v1_group(tmp_path / "cpu" / "slice", 100_000)  # a parent's tighter limit binds its child
    assert cgroup_cpu_limit(tmp_path, "1:cpu:/slice/job\n") == 1.0
    assert cgroup_cpu_limit(tmp_path, "1:cpu:/\n") is None  # the root group


def test_v2_reads_cpu_max_along_the_path(tmp_path: Path) -> None:
    v2_group(tmp_path, "max 100000")
    v2_group(tmp_path / "kubepods" / "pod1", "25000 100000")
    assert cgroup_cpu_limit(tmp_path, "0::/kubepods/pod1\n") == 0.25
    assert cgroup_cpu_limit(tmp_path, "0::/\n") is None
    v2_group(tmp_path / "kubepods" / "pod1", "max 100000")
    assert cgroup_cpu_limit(tmp_path, "0::/kubepods/pod1\n") is None


@pytest.mark.parametrize(
    "membership", ["", "garbage\n", "1:cpu:/\n", "0::/\n", "4:memory:/x\n"], ids=["empty", "bad", "v1", "v2", "other"]
)
def test_no_quota_files_or_no_cpu_controller_is_no_quota(tmp_path: Path, membership: str) -> None:
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("not a number\n")
    assert cgroup_cpu_limit(tmp_path, membership) is None


def test_this_host_reads_without_error() -> None:
    limit = cgroup_cpu_limit()
    assert limit is None or limit > 0


def test_the_probe_caps_the_quota_at_the_cpus_it_may_run_on(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hardware, "cgroup_cpu_limit", lambda: 8.0)
    monkeypatch.setattr(hardware.os, "sched_getaffinity", lambda _pid: {0, 1})
    assert hardware.probe().cpus == 2.0
    monkeypatch.setattr(hardware, "cgroup_cpu_limit", lambda: 0.5)
    assert hardware.probe().cpus == 0.5
    monkeypatch.setattr(hardware, "cgroup_cpu_limit", lambda: None)
    assert hardware.probe().cpus is None


def test_advertise_passes_the_quota_on_and_describes_it() -> None:
    cpu = ("CPUExecutionProvider",)
    limited = advertise(HardwareReport(cpu, (), False, cpus=0.5))
    assert limited == Hardware(("cpu",), None, 0.5) and limited.describe() == "cpu (quota 0.5 CPU)"
    assert advertise(HardwareReport(cpu, (), False)) == CPU_ONLY and CPU_ONLY.describe() == "cpu"


def _registered(live: LiveState, tmp_path: Path) -> None:
    worker = LocalWorker(
        "q",
        LocalModelStore(tmp_path / "store"),
        live,
        memory_budget_mb=100,
        cores=1,
        hardware=Hardware(("cpu",), None, 0.5),
    )
    worker.start()
    try:
        (state,) = live.workers()
        assert state.cpus == 0.5 and state.cpu_share == 0.5
    finally:
        worker.stop()


def test_the_quota_reaches_live_state_in_memory(tmp_path: Path) -> None:
    _registered(MemoryLiveState(), tmp_path)


@pytest.mark.integration
@pytest.mark.skipif(not redis_up(), reason="no Redis on 127.0.0.1:6379")
def test_the_quota_reaches_live_state_in_redis(tmp_path: Path) -> None:
    prefix = "infaas-test-cgroup-quota"
    live = RedisLiveState(REDIS_URL, prefix, snapshot_ttl_s=0.0)
    try:
        _registered(live, tmp_path)
    finally:
        live.close()
        delete_keys(prefix)
