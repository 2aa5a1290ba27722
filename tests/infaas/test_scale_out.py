"""Scale-out on loopback: two front-ends and two workers as real processes over PostgreSQL and Redis.

The same code as the embedded default, configured only by environment. Covers: a model registered
through one front-end is served by both with onnxruntime's outputs; a worker killed with SIGKILL
during a burst loses no query and leaves the registry within the heartbeat TTL; after every process
restarts, models, variants and profiles are still there and queries work.
"""

from __future__ import annotations

import dataclasses
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import pytest
import redis

from infaas.live_state import MemoryLiveState
from infaas.live_state.redis import RedisLiveState
from infaas.model_store import LocalModelStore
from infaas.worker import WorkerError
from infaas.worker.remote import FrameError, RemoteWorkerClient, WorkerUnavailable, decode_frame, encode_frame
from tests.factories import (
    profiles,
    reference_outputs,
    scaled_out_env,
    variant_info,
    wait_for,
    write_mlp,
    write_validation,
)
from tests.pg import temporary_database
from tests.redis_server import REDIS_URL, delete_keys, redis_up
from tests.s3server import free_port
from tests.worker_app import served_worker

HEARTBEAT_TTL_S = 2.0
ROOT = Path(__file__).resolve().parents[2]


def _servers_up() -> bool:
    if not redis_up():
        return False
    try:
        from sqlalchemy import create_engine, text

        from tests.pg import PG_ADMIN_URL

        engine = create_engine(PG_ADMIN_URL, connect_args={"connect_timeout": 2})
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        engine.dispose()
        return True
    except Exception:
        return False


needs_servers = pytest.mark.skipif(not _servers_up(), reason="needs PostgreSQL and Redis on 127.0.0.1")


def test_frames_round_trip_and_reject_malformed_bodies() -> None:
    tensors = {
        "f": np.arange(12, dtype=np.float32).reshape(3, 4),
        "i": np.array([[1, -2]], dtype=np.int64),
        "b": np.array([True, False]),
        "s": np.float64(2.5).reshape(()),
        "t": np.asfortranarray(np.ones((2, 3), dtype=np.float16)),
    }
    meta, back = decode_frame(encode_frame({"queue_ms": 1.5}, tensors))
    assert meta == {"queue_ms": 1.5}
    for name, value in tensors.items():
        assert back[name].dtype == value.dtype and np.array_equal(back[name], value)
    good = encode_frame({}, {"x": np.ones((2, 2), dtype=np.float32)})
    for bad in (b"", b"\xff\xff\xff\x7f{}", good[:-1], good.replace(b"<f4", b"|O8"), good.replace(b"[2,2]", b"[4,4]")):
        with pytest.raises(FrameError):
            decode_frame(bad)
    with pytest.raises(FrameError):
        encode_frame({}, {"o": np.array([object()])})


@pytest.fixture
def worker_url(tmp_path: Path) -> Iterator[tuple[str, LocalModelStore]]:
    """A worker app served by uvicorn in this process, over in-memory live state."""
    store = LocalModelStore(tmp_path / "store")
    live = MemoryLiveState()
    with served_worker(store, live, memory_budget_mb=100) as url:
        assert [w.address for w in live.workers()] == [url]
        yield url, store
    assert live.workers() == []  # a worker that shuts down leaves the registry


def test_remote_worker_client_serves_loads_and_reports(worker_url: tuple[str, LocalModelStore], tmp_path: Path) -> None:
    url, store = worker_url
    store.put_file("m/mlp.onnx", write_mlp(tmp_path / "mlp.onnx"))
    variant = variant_info("m", "fp32", profiles({1: 0.1}, p99_factor=2.0), artifact_key="m/mlp.onnx")
    depths: list[int] = []
    client = RemoteWorkerClient("w", url, on_depth=lambda _key, depth: depths.append(depth))
    x = np.random.default_rng(0).normal(size=(3, 8)).astype(np.float32)
    expected = reference_outputs(tmp_path / "mlp.onnx", x)
    result = client.infer(variant, {"x": x}, time.monotonic() + 5)  # first use: 409 need-variant, load, retry
    np.testing.assert_allclose(result.outputs["y"], expected, rtol=1e-5)
    assert depths == [3, 0]  # rows outstanding (the query's 3), as the worker's own instances count them
    assert client.add_replica(variant) == 2 and client.remove_replica("m/fp32") == 1
    (status,) = client.status().instances
    assert status.variant_key == "m/fp32" and status.replicas == 1
    rebuilt = dataclasses.replace(variant, id=2)  # same key, another catalog row: reloaded, not reused
    np.testing.assert_allclose(client.infer(rebuilt, {"x": x}, None).outputs["y"], expected, rtol=1e-5)
    assert client.unload("m/fp32") and not client.unload("m/fp32")
    with pytest.raises(WorkerError, match="no artifact"):
        client.load(dataclasses.replace(variant, id=3, artifact_key=None))
    with pytest.raises(WorkerUnavailable):
        RemoteWorkerClient("gone", f"http://127.0.0.1:{free_port()}").status()


@dataclass
class Cluster:
    """Processes sharing one database, one Redis prefix and one model-store folder."""

    tmp: Path
    env: dict[str, str]
    prefix: str
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    ports: dict[str, int] = field(default_factory=dict)

    def _spawn(self, name: str, args: list[str]) -> None:
        home = self.tmp / f"home-{name}"
        log = open(self.tmp / f"{name}.log", "ab")  # noqa: SIM115 - closed with the process
        self.procs[name] = subprocess.Popen(
            [sys.executable, "-m", "infaas", *args],
            env={**self.env, "INFAAS_HOME": str(home)},
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
        )

    def front_end(self, name: str) -> str:
        """Start (or restart on its old port) a front-end and wait until it answers."""
        port = self.ports.setdefault(name, free_port())
        self._spawn(name, ["serve", "--port", str(port)])
        url = f"http://127.0.0.1:{port}"
        self._wait(name, lambda: httpx.get(f"{url}/v1/models", timeout=1).status_code == 200)
        return url

    def worker(self, name: str) -> None:
        """Start (or restart on its old port) a worker and wait until it is registered."""
        port = self.ports.setdefault(name, free_port())
        self._spawn(name, ["worker", "--port", str(port), "--id", name])
        self._wait(name, lambda: name in self.registered())

    def registered(self) -> set[str]:
        """Worker ids in the shared registry right now."""
        live = RedisLiveState(REDIS_URL, self.prefix, snapshot_ttl_s=0.0)
        try:
            return {w.id for w in live.workers()}
        finally:
            live.close()

    def _wait(self, name: str, ready: Callable[[], bool], timeout_s: float = 30.0) -> None:
        def up() -> bool:
            if self.procs[name].poll() is not None:
                raise AssertionError(f"{name} exited: {(self.tmp / f'{name}.log').read_text()[-3000:]}")
            try:
                return ready()
            except (httpx.HTTPError, redis.RedisError):
                return False

        if not wait_for(up, timeout_s, interval_s=0.1):
            raise AssertionError(f"{name} not ready: {(self.tmp / f'{name}.log').read_text()[-3000:]}")

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        proc = self.procs.pop(name)
        proc.send_signal(sig)
        proc.wait(15)

    def stop_all(self) -> None:
        for name in list(self.procs):
            self.kill(name, signal.SIGTERM)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    prefix = f"infaas-test-{uuid.uuid4().hex[:10]}"
    with temporary_database() as database_url:
        env = scaled_out_env(
            database_url,
            prefix,
            tmp_path / "store",
            autoscaler="off",
            heartbeat_s=0.5,
            heartbeat_ttl_s=HEARTBEAT_TTL_S,
            profile_runs=5,
            profile_max_seconds=1,
            worker_cores=1,
        )
        built = Cluster(tmp=tmp_path, env=env, prefix=prefix)
        try:
            yield built
        finally:
            for proc in built.procs.values():
                proc.kill()
                proc.wait(15)
            delete_keys(f"{prefix}:")


def _query(url: str, x: np.ndarray) -> tuple[np.ndarray, str]:
    """Outputs and the variant that served them."""
    response = httpx.post(f"{url}/v1/infer", json={"model": "mlp", "inputs": {"x": x.tolist()}}, timeout=30)
    assert response.status_code == 200, response.text
    body = response.json()
    return np.asarray(body["outputs"]["y"], dtype=np.float32), body["served_by"]["variant"]


def _reference(store: Path, variant: str, x: np.ndarray) -> np.ndarray:
    """ONNX Runtime run directly on the artifact of the variant that served a query (the selector may
    pick an INT8 variant, whose outputs differ from FP32 by design)."""
    base = variant.removesuffix("-t1")  # thread-count variants share their base variant's file
    artifact = store / "models" / "mlp" / "variants" / f"{base}.onnx"
    return reference_outputs(artifact, x)


def _check_outputs(url: str, x: np.ndarray, store: Path) -> None:
    outputs, variant = _query(url, x)
    np.testing.assert_allclose(outputs, _reference(store, variant, x), rtol=1e-5, atol=1e-5)


def _wait_ready(url: str, timeout_s: float = 60.0) -> dict[str, object]:
    model = wait_for(
        lambda: httpx.get(f"{url}/v1/models/mlp", timeout=5).json(),
        timeout_s,
        until=lambda m: m["status"] in {"ready", "failed"},
        interval_s=0.3,
    )
    assert model["status"] in {"ready", "failed"}, f"variants not built in {timeout_s} s: {model}"
    return model


@pytest.mark.integration
@needs_servers
def test_two_front_ends_two_workers_survive_a_killed_worker_and_a_restart(cluster: Cluster) -> None:
    a = cluster.front_end("a")
    b = cluster.front_end("b")
    cluster.worker("w1")
    cluster.worker("w2")

    # B builds its candidate cache now, before the model exists: only a catalog change heard through
    # Redis can make B serve the model registered through A below.
    early = httpx.post(f"{b}/v1/infer", json={"model": "mlp", "inputs": {"x": [[0.0] * 8]}}, timeout=30)
    assert early.status_code == 404, early.text

    mlp = write_mlp(cluster.tmp / "mlp.onnx")
    validation = write_validation(cluster.tmp / "val.npz")
    with open(mlp, "rb") as model_file, open(validation, "rb") as validation_file:
        response = httpx.post(
            f"{a}/v1/models",
            data={"name": "mlp", "task": "classification", "max_batch": "4"},
            files={"model": ("mlp.onnx", model_file), "validation": ("val.npz", validation_file)},
            timeout=60,
        )
    assert response.status_code == 201, response.text
    model = _wait_ready(a)
    assert model["status"] == "ready", model
    ready = sorted(v["name"] for v in model["variants"] if v["status"] == "ready")
    assert ready

    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 8)).astype(np.float32)
    for url in (a, b):
        _check_outputs(url, x, cluster.tmp / "store")

    # A burst through both front-ends; one worker is SIGKILLed part-way through.
    inputs = [rng.normal(size=(1, 8)).astype(np.float32) for _ in range(200)]
    done = [0]
    failures: list[str] = []
    served_by: list[str] = []  # in completion order
    killed = threading.Event()
    served_after_kill: set[str] = set()

    def one(i: int) -> None:
        url = a if i % 2 else b
        try:
            response = httpx.post(
                f"{url}/v1/infer", json={"model": "mlp", "inputs": {"x": inputs[i].tolist()}}, timeout=30
            )
            if response.status_code != 200:
                failures.append(f"{response.status_code} {response.text[:200]}")
                return
            body = response.json()
            worker = body["served_by"]["worker"]
            served_by.append(worker)
            if killed.is_set():
                served_after_kill.add(worker)
            got = np.asarray(body["outputs"]["y"], dtype=np.float32)
            expected = _reference(cluster.tmp / "store", body["served_by"]["variant"], inputs[i])
            if not np.allclose(got, expected, rtol=1e-5, atol=1e-5):
                diff = float(np.max(np.abs(got - expected)))
                failures.append(f"query {i}: wrong output from {body['served_by']['variant']} (max diff {diff:.3g})")
        except httpx.HTTPError as exc:
            failures.append(f"query {i}: {exc!r}")
        finally:
            done[0] += 1

    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(one, i) for i in range(len(inputs))]
        while done[0] < 60:
            time.sleep(0.005)
        # Kill the worker that is carrying the burst, so queries are in flight on it.
        victim = Counter(served_by).most_common(1)[0][0]
        survivor = ({"w1", "w2"} - {victim}).pop()
        killed_at = time.monotonic()
        cluster.kill(victim)
        killed.set()
        for future in futures:
            future.result()
    assert failures == []
    assert survivor in served_after_kill  # the survivor took over the victim's queries
    retried = sum((cluster.tmp / f"{fe}.log").read_text().count("retrying the query") for fe in ("a", "b"))
    assert retried >= 1  # queries in flight on the victim were served again elsewhere

    while victim in cluster.registered():
        assert time.monotonic() - killed_at < HEARTBEAT_TTL_S + 3, "the dead worker is still registered"
        time.sleep(0.1)

    # Restart every process: the catalog (PostgreSQL) and the artifacts (model store) are still there.
    cluster.stop_all()
    a = cluster.front_end("a")
    b = cluster.front_end("b")
    cluster.worker("w1")
    cluster.worker("w2")
    model = httpx.get(f"{a}/v1/models/mlp", timeout=5).json()
    assert model["status"] == "ready"
    assert sorted(v["name"] for v in model["variants"] if v["status"] == "ready") == ready
    variants = httpx.get(f"{b}/v1/models/mlp/variants", timeout=5).json()
    assert all(v["profiles"] for v in variants if v["status"] == "ready")
    for url in (a, b):
        _check_outputs(url, x, cluster.tmp / "store")
