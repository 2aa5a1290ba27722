"""``benchmarks/trace_docker.py``: it removes what a killed run left, containers of a ``trace-<pid>-<run>`` cluster
whose process is gone, and nothing else (not a live run's, not the provider tests' or the compose stack's; real
engine); and the pure functions behind its report (percentiles, reversals of the worker count)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import docker
import pytest

from autoscaler.providers.docker import CLUSTER_LABEL
from benchmarks.trace_docker import cpu_usage, orphaned_clusters, percentiles, remove_orphans, reversals
from tests.containers.engine import ensure_images, unique_name

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]


def test_only_trace_clusters_of_dead_processes_are_orphans() -> None:
    alive = {100}
    clusters = {"trace-100-0123abcd", "trace-200-0123abcd", "trace-200-0123abcd-f", "infaas", "trace-x-0123abcd"}
    assert orphaned_clusters(clusters, lambda pid: pid in alive) == {"trace-200-0123abcd", "trace-200-0123abcd-f"}
    assert orphaned_clusters(clusters, lambda pid: True) == set()


def test_percentiles_of_nothing_and_of_values() -> None:
    assert percentiles([]) == {"n": 0}
    out = percentiles([float(v) for v in range(1, 101)])
    assert out["n"] == 100 and out["p50"] == pytest.approx(50.5) and out["max"] == 100.0
    assert 99.0 <= out["p99"] <= 100.0


def test_reversals_count_flapping_not_a_held_scale_up() -> None:
    held = [(0.0, 1), (1.0, 1), (2.0, 2), (3.0, 3), (9.0, 3), (12.0, 2), (14.0, 1)]
    assert reversals(held) == 1  # up for the spike, down after it
    flapping = [(0.0, 1), (1.0, 2), (2.0, 1), (3.0, 2), (4.0, 1)]
    assert reversals(flapping) == 3
    assert reversals([(0.0, 1), (5.0, 1)]) == 0 and reversals([]) == 0


def test_cpu_usage_reads_a_containers_cgroup(tmp_path: Path) -> None:
    (tmp_path / "cpuacct" / "docker" / "abc").mkdir(parents=True)
    (tmp_path / "cpu" / "docker" / "abc").mkdir(parents=True)
    (tmp_path / "cpuacct" / "docker" / "abc" / "cpuacct.usage").write_text("2500000000\n")
    (tmp_path / "cpu" / "docker" / "abc" / "cpu.stat").write_text(
        "nr_periods 200\nnr_throttled 50\nthrottled_time 1500000000\n"
    )
    assert cpu_usage("abc", tmp_path) == {"cpu_s": 2.5, "throttled_periods": 0.25, "throttled_s": 1.5}
    assert cpu_usage("not-there", tmp_path) == {}


def test_a_dead_runs_containers_are_removed_and_no_other() -> None:
    ensure_images("worker")
    client = docker.from_env()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)  # that process has exited
    run = unique_name("")
    labels = {
        "dead": f"trace-{dead_pid}-{run}",
        "dead-fixed": f"trace-{dead_pid}-{run}-f",
        "live": f"trace-{os.getpid()}-{run}",
        "other": unique_name("infaas-test-"),
    }
    made = {
        key: client.containers.run(
            "infaas-worker:local",
            ["sleep", "300"],
            detach=True,
            name=unique_name(f"cleanup-{key}-"),
            labels={CLUSTER_LABEL: cluster},
        )
        for key, cluster in labels.items()
    }
    try:
        removed = remove_orphans(client)
        assert made["dead"].name in removed and made["dead-fixed"].name in removed
        left = {c.name for c in client.containers.list(all=True, filters={"label": CLUSTER_LABEL})}
        assert made["live"].name in left and made["other"].name in left
        assert made["dead"].name not in left and made["dead-fixed"].name not in left
    finally:
        for container in made.values():
            try:
                container.remove(force=True)
            except docker.errors.NotFound:
                pass
