"""Issue 14, items 1, 2 and 4 against a real ``infaas serve`` process: a tenant uploads models that never answer
or allocate at run time, and .npz bombs as validation set and job input. Each gets a 4xx that names the
limit, nothing is stored, no temporary folder or process is left behind, and the server's own memory (its
peak resident set, ``VmHWM``) and its answers to others stay what they were -- also while an attack runs.

The limits are small here (3 s, 256 MB, 32 MB of arrays) so the whole file takes about half a minute.
"""

from __future__ import annotations

import io
import os
import statistics
import subprocess
import sys
import threading
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import psutil
import pytest
from numpy.lib import format as npy_format

from tests.factories import TASK, mlp_model, wait_for, write_validation
from tests.infaas import runtime_bombs
from tests.s3server import free_port

ROOT = Path(__file__).resolve().parents[2]
ADMIN_KEY = "hostile-server-admin-key"
CHECK_TIMEOUT_S = 3.0
MB = 2**20


@dataclass
class Server:
    url: str
    process: subprocess.Popen[bytes]
    alice: dict[str, str]
    admin: dict[str, str]
    tmpdir: Path
    store: Path
    log: Path

    @property
    def ps(self) -> psutil.Process:
        return psutil.Process(self.process.pid)

    def peak_rss_mb(self) -> float:
        """The server process's peak resident set so far (``VmHWM``): catches a spike between two samples."""
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        raise AssertionError("no VmHWM")

    def register(self, name: str, model: bytes, validation: bytes | None = None) -> httpx.Response:
        files = {"model": ("m.onnx", model, "application/octet-stream")}
        if validation is not None:
            files["validation"] = ("v.npz", validation, "application/octet-stream")
        return httpx.post(
            f"{self.url}/v1/models",
            data={"name": name, "task": TASK, "max_batch": "4"},
            files=files,
            headers=self.alice,
            timeout=60,
        )

    def query_ms(self) -> float:
        """One query to alice's healthy model; its latency (the answer is checked)."""
        started = time.perf_counter()
        response = httpx.post(
            f"{self.url}/v1/infer",
            json={"model": "alice.healthy", "inputs": {"x": [[0.5] * 8]}},
            headers=self.alice,
            timeout=10,
        )
        assert response.status_code == 200, response.text
        return (time.perf_counter() - started) * 1000

    def live_ms(self) -> float:
        started = time.perf_counter()
        assert httpx.get(f"{self.url}/v2/health/live", timeout=10).status_code == 200
        return (time.perf_counter() - started) * 1000

    def nothing_left(self, name: str) -> None:
        """No row, no stored file, no temporary folder, no process still working for the attack."""
        assert httpx.get(f"{self.url}/v1/models/{name}", headers=self.alice).status_code == 404
        assert not list(self.store.glob(f"models/{name}*")), list(self.store.glob(f"models/{name}*"))
        assert not [p.name for p in self.tmpdir.iterdir() if p.name.startswith(("infaas-sandbox-", "infaas-register-"))]
        busy = wait_for(self._busy_descendants, 5.0, until=lambda b: not b)
        assert not busy, busy

    def _busy_descendants(self) -> list[str]:
        children = self.ps.children(recursive=True)
        for child in children:
            child.cpu_percent(None)
        time.sleep(0.3)
        return [f"{c.pid} {c.name()}" for c in children if c.is_running() and c.cpu_percent(None) > 50]


def _start(tmp: Path) -> Server:
    port = free_port()
    tmpdir = tmp / "tmp"
    tmpdir.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("INFAAS_")}
    env.update(
        INFAAS_HOME=str(tmp / "home"),
        INFAAS_ADMIN_KEY=ADMIN_KEY,
        INFAAS_AUTOSCALER="off",
        INFAAS_CHECK_TIMEOUT_S=str(CHECK_TIMEOUT_S),
        INFAAS_CHECK_MEMORY_MB="256",
        INFAAS_MAX_ARRAY_MB="32",
        INFAAS_PROFILE_RUNS="3",
        INFAAS_PROFILE_MAX_SECONDS="0.3",
        INFAAS_WORKER_CORES="1",
        INFAAS_MAX_REGISTRATIONS_PER_HOUR="1000",
        TMPDIR=str(tmpdir),
    )
    log = tmp / "server.log"
    with open(log, "wb") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "infaas", "serve", "--port", str(port)],
            env=env,
            cwd=ROOT,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        if process.poll() is not None:
            raise AssertionError(f"server exited: {log.read_text()[-3000:]}")
        try:
            return httpx.get(f"{url}/v2/health/live", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    assert wait_for(up, 60, interval_s=0.2), log.read_text()[-3000:]
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    created = httpx.post(f"{url}/v1/admin/keys", json={"tenant": "alice"}, headers=admin)
    assert created.status_code == 201, created.text
    alice = {"Authorization": f"Bearer {created.json()['secret']}"}
    return Server(url, process, alice, admin, tmpdir, tmp / "home" / "models", log)


def _ready(server: Server, name: str) -> None:
    def status() -> str:
        return httpx.get(f"{server.url}/v1/models/{name}", headers=server.alice).json()["status"]

    assert wait_for(status, 60, until=lambda s: s in {"ready", "failed"}, interval_s=0.2) == "ready"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    started = _start(tmp_path_factory.mktemp("hostile-server"))
    try:
        response = started.register("healthy", mlp_model().SerializeToString())
        assert response.status_code == 201, response.text
        _ready(started, "alice.healthy")
        yield started
    finally:
        started.process.terminate()
        try:
            started.process.wait(15)
        except subprocess.TimeoutExpired:
            started.process.kill()
            started.process.wait(5)


def _baseline_ms(server: Server) -> float:
    return statistics.median(server.query_ms() for _ in range(7))


# -- item 1: a registration check that never ends ------------------------------------------------------------


@pytest.mark.parametrize(
    "bomb",
    [
        pytest.param(lambda: runtime_bombs.loop_with_trip_count(runtime_bombs.TRIP_COUNT_2_62), id="trip-count-2^62"),
        pytest.param(lambda: runtime_bombs.loop_with_trip_count(runtime_bombs.TRIP_COUNT_10_12), id="trip-count-10^12"),
        pytest.param(runtime_bombs.loop_driven_by_condition, id="condition-driven"),
    ],
)
def test_endless_loop_is_stopped_and_others_are_served_meanwhile(
    server: Server,
    bomb,
    request: pytest.FixtureRequest,  # noqa: ANN001
) -> None:
    baseline = _baseline_ms(server)
    outcome: dict[str, httpx.Response] = {}
    cpu_before = sum(server.ps.cpu_times()[:2])
    started = time.monotonic()
    attack = threading.Thread(target=lambda: outcome.setdefault("r", server.register("spin", bomb())))
    attack.start()
    during: list[float] = []
    while attack.is_alive() and time.monotonic() - started < CHECK_TIMEOUT_S - 0.3:
        during.append(server.query_ms())
        during.append(server.live_ms())
        time.sleep(0.05)
    attack.join(30)
    elapsed = time.monotonic() - started
    server_cpu_s = sum(server.ps.cpu_times()[:2]) - cpu_before  # the server's own threads, not the check's child
    response = outcome["r"]
    assert response.status_code == 422, response.text
    assert response.json()["code"] == "limit_exceeded"
    assert "did not finish within 3 s (INFAAS_CHECK_TIMEOUT_S)" in response.json()["detail"]
    assert CHECK_TIMEOUT_S <= elapsed < CHECK_TIMEOUT_S + 3
    print(
        f"\n{request.node.callspec.id}: 422 after {elapsed:.2f} s; server CPU {server_cpu_s:.2f} s meanwhile; "
        f"queries: baseline {baseline:.1f} ms, worst during the attack {max(during):.1f} ms ({len(during)} calls)"
    )
    assert during and max(during) < max(20 * baseline, 500), (baseline, during)
    assert server_cpu_s < 0.8 * elapsed  # the loop spun in the child, not in the server
    server.nothing_left("alice.spin")


# -- item 4: shapes computed at run time ---------------------------------------------------------------------


@pytest.mark.parametrize("build", [runtime_bombs.constant_of_shape_at_run_time, runtime_bombs.expand_at_run_time])
def test_run_time_shape_is_stopped_at_the_memory_limit(server: Server, build) -> None:  # noqa: ANN001
    peak_before = server.peak_rss_mb()
    response = server.register("grow", build(20000))  # float32 [20000, 20000]: 1.6 GB on zeros
    assert response.status_code == 422, response.text
    assert "needed more memory than its limit of 256 MB (INFAAS_CHECK_MEMORY_MB)" in response.json()["detail"]
    grew = server.peak_rss_mb() - peak_before
    print(f"\n{build.__name__}(20000): 422; server peak RSS {peak_before:.0f} MB, grew {grew:.1f} MB")
    assert grew < 100
    server.nothing_left("alice.grow")
    server.query_ms()


def test_allocation_from_an_input_value_is_a_clear_error_at_query_time(server: Server) -> None:
    """Harmless on zeros, so it registers; a query whose value asks for 4 TB gets a 4xx, not a 500.

    ONNX Runtime has no per-session cap on CPU memory, so a value that asks for less than the host has is
    served (the issue's 1.9 GB); see ``infaas/onnx_check.py``.
    """
    assert server.register("by-value", runtime_bombs.allocation_from_input_value()).status_code == 201
    _ready(server, "alice.by-value")
    peak_before = server.peak_rss_mb()
    response = httpx.post(
        f"{server.url}/v1/infer",
        json={"model": "alice.by-value", "inputs": {"x": [1e6]}},
        headers=server.alice,
        timeout=30,
    )
    assert 400 <= response.status_code < 500, response.text
    assert "could not run" in response.json()["detail"]
    assert server.peak_rss_mb() - peak_before < 100
    server.query_ms()


# -- item 2: decompression bombs -----------------------------------------------------------------------------


def _zeros_npz(name: str, shape: tuple[int, ...]) -> bytes:
    """float32 zeros of ``shape`` as a DEFLATE-compressed .npz, streamed (never held in memory)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
        with archive.open(f"{name}.npy", "w", force_zip64=True) as member:
            npy_format.write_array_header_1_0(member, {"descr": "<f4", "fortran_order": False, "shape": shape})
            left, chunk = int(np.prod(shape)) * 4, bytes(16 * MB)
            while left:
                member.write(chunk[: min(left, len(chunk))])
                left -= min(left, len(chunk))
    return buffer.getvalue()


def test_validation_bomb_is_refused_from_its_headers(server: Server, tmp_path: Path) -> None:
    bomb = _zeros_npz("x", (32 * MB, 8))  # 1 GB of float32 zeros fitting the model's input
    assert len(bomb) < 8 * MB
    peak_before = server.peak_rss_mb()
    response = server.register("bombed", mlp_model().SerializeToString(), validation=bomb)
    assert response.status_code == 413, response.text
    detail = response.json()["detail"]
    assert "array 'x' is 1,024.0 MB" in detail and "limit of 32.0 MB (INFAAS_MAX_ARRAY_MB)" in detail, detail
    grew = server.peak_rss_mb() - peak_before
    print(f"\nvalidation bomb ({len(bomb) / MB:.1f} MB → 1 GB): 413; server peak RSS grew {grew:.1f} MB")
    assert grew < 100
    server.nothing_left("alice.bombed")
    # An honest validation set still registers.
    honest = write_validation(tmp_path / "v.npz").read_bytes()
    assert server.register("honest", mlp_model().SerializeToString(), validation=honest).status_code == 201


def test_job_input_bomb_is_refused_from_its_headers(server: Server) -> None:
    bomb = _zeros_npz("x", (16 * MB, 8))  # 512 MB, the shape the model takes
    peak_before = server.peak_rss_mb()
    response = httpx.post(
        f"{server.url}/v1/jobs",
        data={"model": "alice.healthy"},
        files={"input": ("in.npz", bomb, "application/octet-stream")},
        headers=server.alice,
        timeout=60,
    )
    assert response.status_code == 413, response.text
    assert "array 'x' is 512.0 MB" in response.json()["detail"]
    grew = server.peak_rss_mb() - peak_before
    print(f"\njob input bomb ({len(bomb) / MB:.1f} MB → 512 MB): 413; server peak RSS grew {grew:.1f} MB")
    assert grew < 100
    assert httpx.get(f"{server.url}/v1/jobs", headers=server.alice).json() in ([], {"jobs": []})
    server.query_ms()
