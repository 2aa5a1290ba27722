"""Real infaas deployments for crash tests: processes started from the ``infaas`` command, killed with
SIGKILL and restarted on the same port, so a client keeps one URL across crashes.

``embedded`` is the default a new user gets (one ``infaas serve``: SQLite, a local model folder,
in-process worker and jobs). ``scaled_out`` is the README's scale-out recipe on loopback: a router-only
front-end, an ``infaas jobs --pool solo`` Celery worker and an ``infaas worker``, over PostgreSQL, Redis
(live state and broker) and one model folder shared by all three.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from tests.s3server import free_port

ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 60.0  # a cold start on a loaded two-core machine; a normal one takes about 1.6 s

# Short heartbeats, leases, grace periods and profiles keep each case cheap (a tiny model builds in about
# half a second): a dead process's work is resumed within lease + period (2.5 s), and what a cut-short
# registration left behind is swept 3 s after it was written, instead of the production defaults' minutes.
# More attempts per work item than one case has kills: an item the test's own kills interrupt every time
# still has attempts left, so "failed after N attempts" in a case is a bug, not the attempt limit at work
# (tests/infaas cover the limit itself).
WORK_MAX_ATTEMPTS = 12
COMMON_ENV = {
    "INFAAS_WORK_MAX_ATTEMPTS": str(WORK_MAX_ATTEMPTS),
    "INFAAS_WORK_LEASE_S": "2",
    "INFAAS_RECOVERY_PERIOD_S": "0.5",
    "INFAAS_ORPHAN_GRACE_S": "3",
    "INFAAS_AUTOSCALER": "off",
    # Cascade decisions over a 30-model task outlast the 45 s recovery bound; they are tested in
    # tests/variant_generator/test_cascades.py and tests/api/test_cascades_api.py, not under kills.
    "INFAAS_CASCADES": "0",
    "INFAAS_PROFILE_RUNS": "5",
    "INFAAS_PROFILE_MAX_SECONDS": "1",
    "INFAAS_WORKER_CORES": "1",
    "INFAAS_HEARTBEAT_S": "0.5",
    "INFAAS_HEARTBEAT_TTL_S": "2",
}


class ProcessDied(AssertionError):
    """A process exited while it was expected to start or run."""


@dataclass
class Process:
    """One ``python -m infaas ...`` process that can be killed and started again with the same arguments."""

    name: str
    args: list[str]
    env: dict[str, str]
    log_path: Path
    ready: Callable[[], bool]
    popen: subprocess.Popen[bytes] | None = None
    starts: int = 0

    def start(self) -> None:
        """Start it and wait until ``ready`` says it serves."""
        with open(self.log_path, "ab") as log:
            log.write(f"\n===== start {self.starts + 1} of {self.name} =====\n".encode())
            log.flush()
            # Its own session, so SIGKILL reaches anything it started and nothing else.
            self.popen = subprocess.Popen(
                [sys.executable, "-m", "infaas", *self.args],
                env=self.env,
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.starts += 1
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if self.popen.poll() is not None:
                raise ProcessDied(f"{self.name} exited with {self.popen.returncode}:\n{self.log_tail()}")
            try:
                if self.ready():
                    return
            except (httpx.HTTPError, OSError):
                pass
            if time.monotonic() > deadline:
                raise ProcessDied(f"{self.name} did not become ready in {START_TIMEOUT_S:g} s:\n{self.log_tail()}")
            time.sleep(0.05)

    @property
    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def kill(self) -> None:
        """SIGKILL: no shutdown handler, no flush, no goodbye (what an OOM kill or a power cut does)."""
        self._signal(signal.SIGKILL)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after ten seconds."""
        if not self.running:
            return
        self._signal(signal.SIGTERM, wait_s=10.0)

    def _signal(self, sig: int, wait_s: float = 15.0) -> None:
        assert self.popen is not None
        try:
            os.killpg(self.popen.pid, sig)
        except ProcessLookupError:
            pass
        try:
            self.popen.wait(wait_s)
        except subprocess.TimeoutExpired:
            os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait(15)

    def log_tail(self, chars: int = 4000) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return text[-chars:]


@dataclass
class Deployment:
    """Processes sharing one database and one model folder, reached through one front-end URL."""

    kind: str
    root: Path
    url: str
    store: Path
    database_url: str
    processes: dict[str, Process] = field(default_factory=dict)

    @property
    def victims(self) -> list[str]:
        """The processes a crash test may kill."""
        return list(self.processes)

    def kill(self, name: str) -> None:
        self.processes[name].kill()

    def start(self, name: str) -> None:
        self.processes[name].start()

    def ensure_running(self) -> None:
        """Restart any process that died on its own (the test reports it through ``crashed``)."""
        for process in self.processes.values():
            if not process.running:
                process.start()

    def logs(self, chars: int = 3000) -> str:
        """The end of every process's log, for an assertion message."""
        return "\n".join(f"--- {p.name} ({p.log_path}) ---\n{p.log_tail(chars)}" for p in self.processes.values())

    def stop(self) -> None:
        for process in reversed(list(self.processes.values())):
            process.stop()


def child_env(overrides: Mapping[str, str]) -> dict[str, str]:
    """This environment without any ``INFAAS_`` setting of the developer's, plus ``overrides``."""
    return {k: v for k, v in os.environ.items() if not k.startswith("INFAAS_")} | COMMON_ENV | dict(overrides)


def _answers(url: str) -> Callable[[], bool]:
    return lambda: httpx.get(url, timeout=2).status_code == 200


@contextmanager
def embedded(root: Path, extra_env: Mapping[str, str] | None = None) -> Iterator[Deployment]:
    """One ``infaas serve`` on the embedded default in ``root``."""
    home = root / "home"
    (root / "tmp").mkdir(parents=True, exist_ok=True)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = child_env({"INFAAS_HOME": str(home), "TMPDIR": str(root / "tmp"), **(extra_env or {})})
    serve = Process("serve", ["serve", "--port", str(port)], env, root / "serve.log", _answers(f"{url}/v1/models"))
    deployment = Deployment("embedded", root, url, home / "models", f"sqlite:///{home / 'infaas.db'}", {"serve": serve})
    try:
        serve.start()
        yield deployment
    finally:
        deployment.stop()


@contextmanager
def scaled_out(
    root: Path, database_url: str, redis_url: str, extra_env: Mapping[str, str] | None = None
) -> Iterator[Deployment]:
    """A router-only front-end, a Celery worker (solo pool) and a remote worker over PostgreSQL and Redis.

    ``redis_url`` names a Redis database this deployment may use alone (live state and broker).
    """
    (root / "tmp").mkdir(parents=True, exist_ok=True)
    serve_port, worker_port = free_port(), free_port()
    url = f"http://127.0.0.1:{serve_port}"
    store = root / "store"
    shared = {
        "INFAAS_DATABASE_URL": database_url,
        "INFAAS_REDIS_URL": redis_url,
        "INFAAS_BROKER_URL": redis_url,
        "INFAAS_MODEL_STORE": str(store),
        "INFAAS_JOBS_QUEUE": f"infaas-crash-{uuid.uuid4().hex[:8]}",
        # A message whose Celery worker was killed comes back after 2 s (jobs here take well under that).
        "INFAAS_BROKER_VISIBILITY_TIMEOUT_S": "2",
        # Router-only front-end, as the README's recipe: queries go to the remote worker.
        "INFAAS_IN_PROCESS_WORKER": "false",
        "INFAAS_MIN_WORKERS": "0",
        "INFAAS_MAX_WORKERS": "0",
        "TMPDIR": str(root / "tmp"),
        **(extra_env or {}),
    }

    def env(name: str) -> dict[str, str]:
        return child_env({**shared, "INFAAS_HOME": str(root / f"home-{name}")})

    jobs_log = root / "jobs.log"
    processes = {
        "serve": Process(
            "serve",
            ["serve", "--port", str(serve_port)],
            env("serve"),
            root / "serve.log",
            _answers(f"{url}/v1/models"),
        ),
        "jobs": Process(
            "jobs",
            ["jobs", "--pool", "solo"],
            env("jobs"),
            jobs_log,
            # Celery logs "<name> ready." once per start, when it consumes.
            lambda: jobs_log.read_text(errors="replace").count(" ready.") >= processes["jobs"].starts,
        ),
        "worker": Process(
            "worker",
            ["worker", "--port", str(worker_port), "--id", "crash-worker"],
            env("worker"),
            root / "worker.log",
            _answers(f"http://127.0.0.1:{worker_port}/health"),
        ),
    }
    deployment = Deployment("scaled-out", root, url, store, database_url, processes)
    try:
        for process in processes.values():
            process.start()
        yield deployment
    finally:
        deployment.stop()
