"""``python -m benchmarks.trace --provider docker``: the trace benchmark with every worker a container.

The in-process trace (``benchmarks/trace.py``) runs its workers as ``LocalWorker``s sharing this process and
this machine's cores, so an added worker adds only *accounted* capacity. Here every worker, the one a run
starts from, those the VM-level autoscaler adds and the fixed deployments' workers, is an ``infaas worker``
container (the ``infaas-worker:local`` image, ``docker/images.sh``) started by the ``docker`` provider
(``autoscaler/providers/docker.py``) with a CPU limit (``--cpus``, default 0.5) and a memory limit: a worker
added by the autoscaler brings its own CPU quota, and a fixed deployment of N workers has N quotas.

The front-end runs in this process in scale-out mode: the catalog in PostgreSQL (a database of its own, dropped
afterwards unless ``--home`` keeps it for the next run), live state in Redis (a key prefix of its own, deleted
afterwards), queries to the workers over HTTP, as ``infaas serve`` does with ``INFAAS_IN_PROCESS_WORKER=false``.
The client (one asyncio loop, as in the in-process trace) and the engine stay outside the containers.

On one host the quotas only add up to the host's cores: ``--max-workers`` × ``--cpus`` (3 × 0.5 by default)
leaves half a core of this two-core machine to the front-end, the client, Redis, PostgreSQL and dockerd (this
process used 0.13-0.21 cores in the infaas runs of the first full run, ``front_end_cores``), and lets the VM level
go from the one container every run starts from to three. The fixed-peak setup gets the containers the profile
says the level's spike needs (a container's replica counted at its quota's share of a core), at most
``--max-workers``. Variant profiles are measured by the front-end's jobs (the real pipeline, on the host without a
limit), so they overstate what one container serves: each worker advertises its cgroup quota
(``infaas.hardware.cgroup_cpu_limit``) and both autoscaler levels read its load at that share of the profile
(``InstanceLoad.cpu_share``); the engine's estimate correction learns the latency difference.

The capacity the load levels scale is one container's CPU (``cpu_capacity``): the rate of the class mix at which
its quota is used up, fitted from its cgroup's CPU seconds against the queries it ran, so a level of 1.5x offers
half as much work again as one container can do, and the VM level has to add containers to serve it.

Besides the trace's outcomes, ``deployment`` in the JSON records each container (the run it served, seconds from
``docker run`` to answering /health, then its CPU seconds, share of its quota used and CFS throttling, from its
cgroup), each fixed run's split of a query's round trip (the worker's queue and service, and the rest: the HTTP
path), each infaas run's worker containers over time with the VM level's actions, and this process's CPU.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import math
import os
import re
import signal
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import docker
import numpy as np
import redis
from sqlalchemy import create_engine, text

from autoscaler import Autoscaler, PolicyConfig
from autoscaler.providers.base import WorkerHandle
from autoscaler.providers.docker import CLUSTER_LABEL, DockerProvider, DockerSettings
from benchmarks import trace
from infaas import switch_interval
from infaas.catalog import VariantInfo
from infaas.config import Settings
from infaas.selector import ProfileCurve
from infaas.services import Services, build_services
from infaas.worker import WorkerError
from infaas.worker.instance import InferResult
from infaas.worker.remote import RemoteWorkerClient

log = logging.getLogger("trace.docker")

PG_ADMIN_URL = os.environ.get("INFAAS_BENCH_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("INFAAS_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
# A run's containers carry the cluster label ``trace-<pid>-<run id>``: a run killed beyond any ``finally`` (SIGKILL,
# a lost host session) leaves containers whose process is gone, and the next run removes exactly those.
_CLUSTER = re.compile(r"^trace-(\d+)-[0-9a-f]{8}")


def orphaned_clusters(clusters: set[str], alive: Callable[[int], bool]) -> set[str]:
    """The trace runs' cluster labels among ``clusters`` whose process ``alive`` says is gone.

    Other clusters (the compose stack's, the provider tests', a live run's) are never touched."""
    out = set()
    for cluster in clusters:
        match = _CLUSTER.match(cluster)
        if match is not None and not alive(int(match.group(1))):
            out.add(cluster)
    return out


def reversals(counts: list[tuple[float, int]]) -> int:
    """How often a worker count that was rising starts falling or the other way round (flapping shows as many).

    ``counts`` are (time, workers) samples; repeated values are ignored. One scale-up held and scaled down after
    the spike is one reversal; up, down, up again within a trace is two."""
    steps = [b - a for (_t, a), (_u, b) in zip(counts, counts[1:], strict=False) if b != a]
    return sum(1 for a, b in zip(steps, steps[1:], strict=False) if (a > 0) != (b > 0))


def percentiles(values: list[float]) -> dict[str, float | int]:
    """Count, p50, p99 and maximum of ``values`` (milliseconds or seconds), for the measurements this module records."""
    if not values:
        return {"n": 0}
    p50, p99 = np.percentile(values, [50, 99])
    return {"n": len(values), "p50": round(float(p50), 3), "p99": round(float(p99), 3), "max": round(max(values), 3)}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``--provider docker`` options of ``benchmarks/trace.py``."""
    parser.add_argument("--cpus", type=float, default=0.5, help="docker: CPU limit of every worker container")
    parser.add_argument("--memory-mb", type=int, default=1024, help="docker: memory limit of every worker container")
    parser.add_argument("--max-workers", type=int, default=3, help="docker: worker containers infaas may scale to")
    parser.add_argument("--image", default="infaas-worker:local", help="docker: the worker image (make images)")


CGROUP_V1 = Path("/sys/fs/cgroup")  # dockerd with the cgroupfs driver and cgroup v1, as on this host
# The CPU calibration (``cpu_capacity``): window rates rise by CPU_STEP until a window uses CPU_STOP of the
# container's quota (or CPU_WINDOWS windows), so the fit of CPU against queries is taken below saturation, where
# queueing does not change what a query costs; ``--calibrate-repeats`` such staircases, the median of their fits.
CPU_STEP = 1.5
CPU_STOP = 0.6
CPU_WINDOWS = 8
# The VM level's timing for worker containers, over the trace's policy (which keeps PolicyConfig's VM defaults): an
# added container may be drained 15 s after it started (PolicyConfig's 600 s is a VM billed by the minute that takes
# minutes to start: in a 60 s trace no container added for the 9 s spike could go before the trace ended unless
# clearly idle for 6 periods in a row; containers started in 1.9-3.5 s in session 7's runs, 4-10 s under load 8).
# 15 s still outlasts the spike. vm_startup_s stays 0 (size for the demand now): at 3 s, the first period of an
# untimed 1.5x run read the windowed rates rising from zero after the warm-up as a trend and added two containers
# at the base rate, 30% of one container's capacity ("1.2 busy cores expected one start-up ahead").
CONTAINER_VM_TIMING = {"vm_min_lifetime_s": 15.0}
RAN = ("ok", "late", "below-floor")  # outcomes of queries that ran on a worker (not refused, not failed)


def saturation_rate(windows: list[dict], cpus: float) -> dict:
    """The rate of queries run at which a container would use all of its ``cpus`` quota, from calibration windows
    (each ``ran`` queries run and ``cpu_s`` CPU seconds used over ``seconds``).

    A least-squares line of CPU per second against queries run per second: its slope is a query's CPU and its
    intercept what the worker uses idle (heartbeats); capacity = (``cpus`` - intercept) / slope. With fewer than
    two distinct rates, or a fit that is not a cost per query (slope not positive, intercept negative: noise), the
    line through the origin (total CPU over total queries) instead. Raises ``ValueError`` when no window ran
    anything or used any CPU: there is nothing to fit.
    """
    points = [(w["ran"] / w["seconds"], w["cpu_s"] / w["seconds"]) for w in windows if w["seconds"] > 0]
    ran = sum(x for x, _y in points)
    used = sum(y for _x, y in points)
    if ran <= 0 or used <= 0:
        raise ValueError(f"no calibration window ran queries and used CPU: {windows}")
    slope, intercept = used / ran, 0.0
    if len({round(x, 6) for x, _y in points}) >= 2:
        fit_slope, fit_intercept = np.polyfit([x for x, _y in points], [y for _x, y in points], 1)
        if fit_slope > 0 and fit_intercept >= 0:
            slope, intercept = float(fit_slope), float(fit_intercept)
    return {
        "capacity_qps": round(max(cpus - intercept, 0.0) / slope, 1),
        "cpu_ms_per_query": round(slope * 1000.0, 3),
        "idle_cpus": round(intercept, 4),
    }


def cpu_capacity(measure: Callable[[float], dict], *, cpus: float, start_qps: float, repeats: int) -> dict:
    """The trace's capacity in docker mode: the rate of its class mix at which one container's CPU quota is used up.

    ``measure`` runs one open-loop window at a rate and returns what ran and the CPU the container used
    (``saturation_rate``'s fields, and ``quota_used``). Each of ``repeats`` staircases rises from ``start_qps`` by
    ``CPU_STEP`` until a window uses ``CPU_STOP`` of the quota; the capacity is the median of their fits.

    Why not the in-process trace's staircases (the highest rate with 99% of queries in time): on a 0.5-CPU
    container that bar is set by the 10 ms class's tail (a query waiting out a CFS throttle), not by CPU. Two runs
    of the same code calibrated 203.9 and 20.4 q/s, and the containers used 7-41% of their quota in every run,
    so a load level of 1.5x did not mean more work than one container can do, and the VM level had no reason to add
    one (session 7, ``trace_docker-61f950a.json`` and ``trace_docker.json`` of 9621cca).
    """
    stairs = []
    for _ in range(repeats):
        windows: list[dict] = []
        rate = start_qps
        while len(windows) < CPU_WINDOWS:
            windows.append(measure(rate))
            if windows[-1]["quota_used"] >= CPU_STOP:
                break
            rate *= CPU_STEP
        stairs.append({**saturation_rate(windows, cpus), "windows": windows})
    found = sorted(s["capacity_qps"] for s in stairs)
    median = float(np.median(found))
    return {
        "method": (
            f"CPU saturation of one {cpus:g}-CPU container: open-loop Poisson windows of the feasible class mix "
            f"(autoscaler off) at rates rising x{CPU_STEP:g} from {start_qps:g} q/s until a window used "
            f"{CPU_STOP:.0%} of the quota; capacity = (quota - idle CPU) / CPU per query run, from a least-squares "
            f"fit of the container's cgroup CPU against queries run; the median of {repeats} staircases"
        ),
        "capacity_qps": round(median, 1),
        "staircases_qps": [s["capacity_qps"] for s in stairs],
        "min_qps": found[0],
        "max_qps": found[-1],
        "spread_over_median": round((found[-1] - found[0]) / median, 3) if median else None,
        "staircases": stairs,
    }


def cpu_usage(container_id: str, root: Path = CGROUP_V1) -> dict[str, float]:
    """A container's CPU seconds and CFS throttling so far, from its cgroup (empty where the files are not there).

    Whether a run's containers used their quota (``quota_used`` near 1, many periods throttled) or idled says
    whether the containers' CPU limits or something outside them (the front-end, the client) set the capacity."""
    try:
        used_ns = int((root / "cpuacct" / "docker" / container_id / "cpuacct.usage").read_text())
        stat = dict(
            line.split() for line in (root / "cpu" / "docker" / container_id / "cpu.stat").read_text().splitlines()
        )
    except (OSError, ValueError):
        return {}
    periods = int(stat.get("nr_periods", 0))
    return {
        "cpu_s": round(used_ns / 1e9, 3),
        "throttled_periods": round(int(stat.get("nr_throttled", 0)) / periods, 4) if periods else 0.0,
        "throttled_s": round(int(stat.get("throttled_time", 0)) / 1e9, 3),
    }


class _TimedProvider(DockerProvider):
    """The docker provider, recording for each container how long it took from ``docker run`` to answering /health
    (the interpreter's imports under the CPU limit, registration: what the VM level waits for) and, when it is
    removed, how long it was up and the CPU it used (``cpu_usage``). ``tag`` names the run it served."""

    def __init__(
        self, settings: Settings, docker_settings: DockerSettings, records: list[dict], origin: float, tag: str
    ) -> None:
        super().__init__(settings, docker_settings)
        self._records = records
        self._origin = origin
        self._tag = tag
        self._mine: dict[str, dict] = {}  # container id (12) -> its record

    def start_worker(self) -> WorkerHandle:
        began = time.monotonic()
        handle = super().start_worker()
        record = {
            "run": self._tag,
            "at_s": round(began - self._origin, 2),
            "start_to_healthy_s": round(time.monotonic() - began, 2),
        }
        self._records.append(record)
        self._mine[handle.meta["container"]] = record
        return handle

    def _remove(self, container: Any) -> None:
        record = self._mine.get(container.id[:12])
        if record is not None:
            up_s = time.monotonic() - self._origin - record["at_s"]
            usage = cpu_usage(container.id)
            record["up_s"] = round(up_s, 2)
            record.update(usage)
            if usage:
                record["quota_used"] = round(usage["cpu_s"] / (up_s * self._docker.cpus), 3)
        super()._remove(container)


class _TimedClient(RemoteWorkerClient):
    """A fixed deployment's HTTP client to a worker container, keeping per query the worker's own queue and service
    times and the rest of the round trip: this process's HTTP path (encode, send, the worker's server, decode) and
    its scheduling delays under load, what a container costs a query beside its CPU limit."""

    def __init__(self, worker_id: str, address: str, samples: list[tuple[float, float, float]]) -> None:
        super().__init__(worker_id, address)
        self._samples = samples

    def infer(self, variant: VariantInfo, inputs: dict[str, np.ndarray], deadline_s: float | None) -> InferResult:
        began = time.perf_counter()
        result = super().infer(variant, inputs, deadline_s)
        round_trip = (time.perf_counter() - began) * 1000.0
        self._samples.append((result.queue_ms, result.service_ms, round_trip - result.queue_ms - result.service_ms))
        return result


def _stop_on_sigterm() -> None:
    """SIGTERM (``kill``, ``timeout``) unwinds like Ctrl-C, so that ``close`` removes the containers."""

    def handler(signum: int, _frame: Any) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handler)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def remove_orphans(client: docker.DockerClient) -> list[str]:
    """Remove the containers of earlier trace runs whose process is gone (``orphaned_clusters``); their names."""
    containers = client.containers.list(all=True, filters={"label": CLUSTER_LABEL}, ignore_removed=True)
    gone = orphaned_clusters({c.labels.get(CLUSTER_LABEL, "") for c in containers}, _pid_alive)
    removed = []
    for container in containers:
        if container.labels.get(CLUSTER_LABEL) in gone:
            container.remove(force=True)
            removed.append(container.name)
    if removed:
        log.warning("removed %d containers an earlier trace run left behind: %s", len(removed), removed)
    return removed


class DockerDeployment(trace.Deployment):
    """Worker containers with CPU limits behind a PostgreSQL/Redis front-end in this process."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.run_id = uuid.uuid4().hex[:8]
        self.cluster = f"trace-{os.getpid()}-{self.run_id}"
        self.worker_cores = args.cpus
        self.results = "trace_docker"
        self.max_workers = args.max_workers
        self.what_is_simulated = (
            "What is simulated: the time scale is compressed as in the in-process trace (autoscaler periods of "
            "0.5 s and 1.5 s). Every worker is a container with a CPU quota, so an added worker adds CPU, but all "
            f"the quotas ({args.max_workers} × {args.cpus:g} CPUs at most), the front-end and the client "
            "share this host's cores (and other work on it: see the load averages). Cost is the price table × "
            "the containers' CPU limits × the time each was up."
        )
        self._origin = time.monotonic()
        self._database: str | None = None
        self._keep_database = False
        self._base: DockerProvider | None = None
        self._base_container: str | None = None  # the full id of the container the runs start from
        self._records: list[dict] = []  # every container: its run, start time, seconds to healthy, CPU used
        self._tag = "probe and calibration"  # the run the containers started now serve
        self._loads: list[float] = []  # a fixed deployment's first load of its variant in a fresh container, s
        self._fixed: dict[str, dict] = {}  # per fixed run: the HTTP path's share of each query's round trip
        self._scaling: dict[str, dict] = {}  # per infaas run: worker containers over time, the VM level's actions
        self._left_behind: list[str] = []
        _stop_on_sigterm()
        self._orphans = remove_orphans(docker.from_env())

    # -- the front-end --------------------------------------------------------------------------------------
    def prepare(self, zoo_dir: Path, home: Path) -> Services:
        """The zoo registered through the real pipeline, with the catalog in PostgreSQL and live state in Redis."""
        self._keep_database = self.args.home is not None
        digest = hashlib.sha1(str(home.resolve()).encode()).hexdigest()[:10]
        self._database = f"infaas_trace_{digest if self._keep_database else self.run_id}"
        admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            exists = conn.execute(text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": self._database}).first()
            if not exists:
                conn.execute(text(f'CREATE DATABASE "{self._database}"'))
        admin.dispose()
        settings = Settings(
            home=home,
            database_url=PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{self._database}",
            redis_url=REDIS_URL,
            redis_prefix=self.cluster,
            model_store=str(home / "models"),
            in_process_worker=False,  # a router-only front-end: every worker is a container
            provider="docker",
            build_variants=True,
            autoscaler="on",
            autoscaler_period_s=0.5,
            vm_autoscaler_period_s=1.5,
            idle_unload_s=15.0,
            min_workers=1,
            max_workers=self.args.max_workers,
            worker_cores=max(1, math.ceil(self.args.cpus)),
            worker_memory_mb=float(self.args.memory_mb),
            profile_max_seconds=2.0,
            heartbeat_s=0.25,
        )
        # The front-end and the client threads share this process, as in the in-process trace: its switch interval
        # is infaas serve's (at Python's 5 ms the in-process client could not send 813 of one run's queries in time).
        switch_interval.apply(settings.switch_interval_ms)
        # A database kept from an earlier run (--home) has the zoo ready: then no jobs run here, so no background
        # work (such as the cascades a build queues for its task) takes CPU from the measurements.
        services = build_services(settings, with_jobs=False)
        ready = {m.name for m in services.metadata.list_models() if m.status == "ready"}
        if {model.name for model in trace.load_zoo(zoo_dir)} <= ready:
            return services
        services.close()
        return trace.register_zoo(build_services(settings), zoo_dir)

    def _provider(self, settings: Settings, cluster: str) -> DockerProvider:
        docker_settings = DockerSettings(
            image=self.args.image, cpus=self.args.cpus, memory_mb=self.args.memory_mb, cluster=cluster
        )
        return _TimedProvider(settings, docker_settings, self._records, self._origin, self._tag)

    def start(self, services: Services) -> None:
        """One worker container, the deployment each run starts from; returns once it is registered."""
        self._base = self._provider(services.settings, self.cluster)
        handle = self._base.start_worker()  # the engine finds it in live state, as it finds any worker
        self._base_container = docker.from_env().containers.get(handle.meta["container"]).id
        _wait_registered(services, 1)

    def calibrate(
        self, services: Services, serve: trace.Serve, classes: list[trace.QueryClass], inputs: np.ndarray
    ) -> dict:
        """``cpu_capacity`` of the container ``start`` ran, then one window at that capacity for the record (how
        much of the quota it used, and the share of queries in time there)."""
        if self._base_container is None or not cpu_usage(self._base_container):
            raise SystemExit(
                f"docker mode calibrates on the container's CPU from its cgroup v1 files under {CGROUP_V1} "
                "(cpuacct/docker/<id>), which this host does not have; pass --capacity to skip the calibration"
            )
        container = self._base_container
        seeds = iter(range(self.args.seed, self.args.seed + 10_000))

        def window(rate: float) -> dict:
            seconds = max(self.args.calibrate_window, 1.3 * trace.MIN_WINDOW_QUERIES / rate)
            arrivals = trace.make_trace(classes, trace.Shape(seconds, rate, rate, rate), len(inputs), next(seeds))
            trace.fresh_engine_state(services)
            run = trace.Run("calibration", 0.0)
            before, began = cpu_usage(container)["cpu_s"], time.monotonic()
            trace.replay(arrivals, inputs, serve, run, lambda: (0, 0))
            elapsed, used = time.monotonic() - began, cpu_usage(container)["cpu_s"] - before
            counts = trace.tally(run.outcomes, seconds)
            time.sleep(trace.STAIR_PAUSE_S)  # let queues drain before the next window
            return {
                "qps": round(rate, 1),
                "queries": counts["queries"],
                "ran": sum(counts["by_status"].get(k, 0) for k in RAN),
                "seconds": round(elapsed, 3),
                "cpu_s": round(used, 3),
                "quota_used": round(used / (elapsed * self.args.cpus), 3),
                "in_time": round(counts["in_time"] / counts["queries"], 4) if counts["queries"] else 1.0,
                "not_ok": {k: v for k, v in counts["by_status"].items() if k != "ok"},
            }

        result = cpu_capacity(
            window, cpus=self.args.cpus, start_qps=self.args.calibrate_start, repeats=self.args.calibrate_repeats
        )
        result["at_capacity"] = window(result["capacity_qps"])
        return result

    def stop(self, services: Services) -> None:
        """Stop every worker container of this front-end (SIGTERM: each deregisters), then its clients."""
        if self._base is not None:
            self._base.close()
            self._base = None
        services.engine.workers.stop()
        _wait_registered(services, 0)

    # -- setups ---------------------------------------------------------------------------------------------
    def run_infaas(
        self,
        services: Services,
        arrivals: list[trace.Arrival],
        inputs: np.ndarray,
        config: PolicyConfig,
        level: float,
        fair_share: trace.FairShare | None = None,
        infeasible: trace.Collection[str] = (),
    ) -> trace.Run:
        """Setup (a): one worker container to start from; the VM level adds and removes containers.

        With the VM level's timing for containers (``CONTAINER_VM_TIMING``), not for VMs."""
        self._tag = f"infaas {level:g}x"
        config = replace(config, **CONTAINER_VM_TIMING)
        self.start(services)
        trace.fresh_engine_state(services, fair_share)
        provider = self._base
        assert provider is not None
        scaler = Autoscaler(services, provider=provider, config=config, stats_window_s=3.0)
        cpu, wall = time.process_time(), time.monotonic()
        try:
            run = trace.run_infaas_with(services, scaler, arrivals, inputs, level, infeasible)
            cpu, wall = time.process_time() - cpu, time.monotonic() - wall
        finally:
            self.stop(services)  # scaler.stop() stopped the containers it owned; this removes any left
        run.worker_cores = self.worker_cores
        counts = [(t, w) for t, w, _r in run.samples]
        changes = [(round(t, 1), w) for i, (t, w) in enumerate(counts) if i == 0 or w != counts[i - 1][1]]
        key = f"infaas {level:g}x"
        if key in self._scaling:  # the burst pair runs at a level already run
            key = f"{key} (run {len(self._scaling) + 1})"
        self._scaling[key] = {
            "vm_timing": CONTAINER_VM_TIMING,
            "workers_over_time": changes,  # (trace seconds, worker containers registered)
            "reversals": reversals(counts),
            # This process's CPU (engine, autoscaler, HTTP clients, the client) per second, warm-up to drain.
            "front_end_cores": round(cpu / wall, 3),
            "vm_actions": [
                (d["t_s"], d["action"], d["outcome"])
                for d in run.decisions
                if d["level"] == "vm" and d["action"] != "keep_worker"
            ],
        }
        return run

    def run_fixed(
        self,
        name: str,
        services: Services,
        variant: VariantInfo,
        workers: int,
        replicas: int,
        arrivals: list[trace.Arrival],
        inputs: np.ndarray,
        level: float,
    ) -> trace.Run:
        """Setups (b) and (c): ``workers`` containers (at most ``--max-workers``), ``replicas`` spread over them.

        They register under a live-state prefix of their own, so the front-end's selector and autoscaler never
        see them; queries go to them through their HTTP clients, least outstanding first.
        """
        if name == "fixed-peak":
            # The peak's replicas are counted at the profile (a whole core each); a container holds one replica at
            # its quota's share of a core, so the peak needs that many more containers (still at most the ceiling).
            workers = max(workers, math.ceil(replicas / min(1.0, self.args.cpus)))
        workers = min(workers, self.max_workers)
        replicas = max(replicas, workers)
        self._tag = f"{name} {level:g}x"
        fixed_settings = services.settings.model_copy(update={"redis_prefix": f"{self.cluster}-{name}"})
        provider = self._provider(fixed_settings, f"{self.cluster}-f")
        samples: list[tuple[float, float, float]] = []
        started: list[threading.Thread] = []
        handles: list[WorkerHandle] = []
        lock = threading.Lock()

        def start_one() -> None:
            handle = provider.start_worker()
            with lock:
                handles.append(handle)

        try:
            for _ in range(workers):  # started side by side: each takes seconds to import and register
                started.append(threading.Thread(target=start_one))
                started[-1].start()
            for t in started:
                t.join()
            if len(handles) != workers:
                raise RuntimeError(f"{name}: {workers - len(handles)} of {workers} worker containers did not start")
            pool = [_TimedClient(h.id, h.address, samples) for h in handles]
            for client in pool:
                began = time.monotonic()
                client.load(variant)
                self._loads.append(round(time.monotonic() - began, 3))
            loaded = workers
            for i in range(replicas - workers):
                try:
                    pool[i % workers].add_replica(variant)
                    loaded += 1
                except WorkerError as exc:  # the container's budget is full: the run says how many it had
                    log.warning("%s: replica %d not added: %s", name, i + workers + 1, exc)
            cpu, wall = time.process_time(), time.monotonic()
            run = trace.run_fixed_on(name, pool, variant, loaded, arrivals, inputs, level)
            cpu, wall = time.process_time() - cpu, time.monotonic() - wall
            for client in pool:
                client.close()
        finally:
            provider.close()
        queue, service, http = ([s[k] for s in samples] for k in range(3))
        self._fixed[f"{name} {level:g}x"] = {
            "variant": variant.key,
            "workers": workers,
            "replicas": loaded,
            "profiled_service_ms": round(ProfileCurve.of(variant).service_ms(trace.ROWS), 3),
            "service_ms": percentiles(service),
            "queue_ms": percentiles(queue),
            "http_path_ms": percentiles(http),
            "front_end_cores": round(cpu / wall, 3),
        }
        run.worker_cores = self.worker_cores
        return run

    # -- the report -----------------------------------------------------------------------------------------
    def describe(self) -> dict:
        client = docker.from_env()
        image = client.images.get(self.args.image)
        return {
            "provider": "docker",
            "image": self.args.image,
            "image_id": image.id[:19],
            "engine": client.version().get("Version"),
            "cpus_per_worker": self.args.cpus,
            "memory_mb_per_worker": self.args.memory_mb,
            "max_workers": self.max_workers,
            "front_end": "this process: PostgreSQL catalog, Redis live state, no in-process worker",
            "wall_s": round(time.monotonic() - self._origin, 1),
            "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
            "containers": {
                "started": len(self._records),
                "start_to_healthy_s": percentiles([r["start_to_healthy_s"] for r in self._records]),
                "each": self._records,
                "first_load_s": percentiles(self._loads),
                "left_behind_after_close": self._left_behind,
                "orphans_removed_at_start": self._orphans,
            },
            "fixed_runs": self._fixed,
            "infaas_scaling": self._scaling,
        }

    def close(self, services: Services | None) -> None:
        """Remove every container, Redis key and (unless ``--home`` keeps it) the database this run made.

        Each container is removed on its own (one failure does not keep the others), and what is still listed
        afterwards is logged and reported (``left_behind_after_close``)."""
        client = docker.from_env()
        for container in self._containers(client):
            try:
                container.remove(force=True)
            except docker.errors.DockerException as exc:
                log.error("could not remove container %s: %s", container.name, exc)
        self._left_behind = [c.name for c in self._containers(client)]
        if self._left_behind:
            log.error("containers left behind: %s", self._left_behind)
        if services is not None:
            services.close()
        keys = redis.Redis.from_url(REDIS_URL)
        for key in keys.scan_iter(match=f"{self.cluster}*", count=1000):
            keys.delete(key)
        keys.close()
        if self._database and not self._keep_database:
            admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
            with admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{self._database}" WITH (FORCE)'))
            admin.dispose()

    def _containers(self, client: docker.DockerClient) -> list[Any]:
        listed = client.containers.list(all=True, filters={"label": CLUSTER_LABEL}, ignore_removed=True)
        return [c for c in listed if c.labels.get(CLUSTER_LABEL, "").startswith(self.cluster)]


def _wait_registered(services: Services, count: int, timeout_s: float = 30.0) -> None:
    """Until live state lists ``count`` workers (a stopped container's entry goes when it deregisters)."""
    deadline = time.monotonic() + timeout_s
    while len(services.engine.live.workers()) != count:
        if time.monotonic() > deadline:
            log.warning("live state lists %d workers, not %d", len(services.engine.live.workers()), count)
            return
        time.sleep(0.1)
