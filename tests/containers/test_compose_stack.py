"""The compose stack, for real: PostgreSQL, Redis, the API, two workers and the jobs worker as containers.

A zoo model is registered from the host with the CLI (its variants are built by the jobs container), /v1/infer and
OIP queries are served by both worker containers, and one worker container is killed (SIGKILL, no drain) under
load: every query still gets its answer (the engine retries a query once on another worker when its worker
cannot be reached) and the other worker serves on. Everything the stack created is removed afterwards.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import httpx
import numpy as np
import pytest

from tests.containers.engine import COMPOSE_FILE, ROOT, docker, ensure_images, leftovers, unique_name
from tests.s3server import free_port

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

MODEL = "digits-logreg"


@dataclass
class Stack:
    url: str
    key: str
    compose: list[str]
    env: dict[str, str]

    def worker_containers(self) -> list[str]:
        return _run([*self.compose, "ps", "-q", "worker"], self.env).split()


def _run(cmd: list[str], env: dict[str, str], timeout: float = 120) -> str:
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    assert done.returncode == 0, f"{' '.join(cmd)}: exit {done.returncode}\n{done.stderr[-3000:]}"
    return done.stdout


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    ensure_images("postgres", "redis", "api", "worker")
    project = unique_name("infaasct")
    key = secrets.token_hex(24)
    port = free_port()  # the host's own PostgreSQL (5432) and Redis (6379) stay untouched: only the API is published
    env = {
        **os.environ,
        "INFAAS_ADMIN_KEY": key,
        "INFAAS_API_PORT": str(port),
        "INFAAS_IMAGE_TAG": "local",
        "INFAAS_POSTGRES_IMAGE": "infaas-postgres:local",
        "INFAAS_REDIS_IMAGE": "infaas-redis:local",
    }
    compose = ["docker-compose", "-p", project, "-f", str(COMPOSE_FILE)]
    stack = Stack(f"http://127.0.0.1:{port}", key, compose, env)
    try:
        _run([*compose, "up", "-d", "--scale", "worker=2"], env, timeout=300)
        _wait_for_workers(stack, 2, timeout_s=120)
        yield stack
    finally:
        logs = subprocess.run([*compose, "logs", "--tail", "40"], env=env, capture_output=True, text=True, timeout=60)
        print(logs.stdout[-8000:])  # shown when the test failed
        _run([*compose, "down", "-v", "--remove-orphans", "--timeout", "10"], env, timeout=180)
    left = leftovers(f"com.docker.compose.project={project}")
    assert left == {"container": [], "volume": [], "network": []}, left


def _workers(stack: Stack) -> list[dict]:
    response = httpx.get(f"{stack.url}/v1/stats", headers={"Authorization": f"Bearer {stack.key}"}, timeout=10)
    response.raise_for_status()
    return [w for w in response.json()["workers"] if w.get("state", "ready") != "dead"]


def _wait_for_workers(stack: Stack, count: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    seen: list[dict] | str = []
    while time.monotonic() < deadline:
        try:
            seen = _workers(stack)
            if len(seen) >= count:
                return
        except httpx.HTTPError as exc:
            seen = repr(exc)
        time.sleep(1)
    raise AssertionError(f"{count} workers did not register within {timeout_s:g} s: {seen}")


@pytest.fixture(scope="module")
def registered(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> np.ndarray:
    """The zoo's logistic regression, registered with the CLI from the host; its validation inputs."""
    from infaas.examples.graphs import mlp_graph
    from infaas.examples.zoo import TASK, _save, _train_logreg, load_digits_split

    out = tmp_path_factory.mktemp("zoo")
    x_train, y_train, x_val, y_val = load_digits_split(0)
    model = _save(out, MODEL, mlp_graph([_train_logreg(x_train, y_train)], MODEL), "logreg", x_val, y_val, None)
    cli = [sys.executable, "-m", "infaas", "register", str(model.onnx_path), "--name", MODEL, "--task", TASK]
    cli += ["--validation", str(model.validation_path), "--max-batch", "4", "--wait"]
    env = {**stack.env, "INFAAS_URL": stack.url}
    printed = _run(cli, env, timeout=240)
    assert f"model {MODEL}: ready" in printed, printed
    return x_val.astype(np.float32)


def _query(client: httpx.Client, stack: Stack, row: np.ndarray, oip: bool) -> tuple[int, str | None]:
    """One query, /v1/infer or OIP: (status, worker that served it)."""
    headers = {"Authorization": f"Bearer {stack.key}"}
    if oip:
        body = {"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": row.tolist()}]}
        response = client.post(f"{stack.url}/v2/models/{MODEL}/infer", json=body, headers=headers)
        worker = response.json()["parameters"]["worker"] if response.status_code == 200 else None
    else:
        body = {"model": MODEL, "inputs": {"input": [row.tolist()]}}
        response = client.post(f"{stack.url}/v1/infer", json=body, headers=headers)
        worker = response.json()["served_by"]["worker"] if response.status_code == 200 else None
    return response.status_code, worker


def _load(stack: Stack, rows: np.ndarray, seconds: float, threads: int = 6) -> list[tuple[float, int, str | None]]:
    """Closed-loop load, half /v1/infer and half OIP: (send time, status, worker) of every query."""
    stop = time.monotonic() + seconds
    results: list[tuple[float, int, str | None]] = []
    lock = threading.Lock()

    def loop(n: int) -> None:
        with httpx.Client(timeout=30) as client:
            i = n
            while time.monotonic() < stop:
                sent = time.monotonic()
                try:
                    status, worker = _query(client, stack, rows[i % len(rows)], oip=i % 2 == 1)
                except httpx.HTTPError as exc:
                    status, worker = 0, repr(exc)
                with lock:
                    results.append((sent, status, worker))
                i += threads

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(loop, range(threads)))
    return results


def test_both_workers_serve_and_killing_one_under_load_loses_no_query(stack: Stack, registered: np.ndarray) -> None:
    containers = stack.worker_containers()
    assert len(containers) == 2
    # A worker is named <hostname>-<port>, and a container's hostname is its short id.
    container_of = {}
    for w in _workers(stack):
        (container,) = [c for c in containers if w["id"].startswith(c[:12])]
        container_of[w["id"]] = container

    warm = _load(stack, registered, seconds=6)
    assert warm and all(status == 200 for _, status, _ in warm), Counter(s for _, s, _ in warm)
    served = Counter(worker for _, _, worker in warm)

    # Kill the busier worker's container 2 s into a load run.
    victim = served.most_common(1)[0][0]
    (survivor,) = set(container_of) - {victim}
    killer = threading.Timer(2.0, lambda: docker("kill", container_of[victim]))
    killed_at = time.monotonic() + 2.0
    killer.start()
    under_kill = _load(stack, registered, seconds=10)
    killer.join()

    statuses = Counter(status for _, status, _ in under_kill)
    assert statuses == {200: len(under_kill)}, f"queries lost when a worker died: {statuses}"
    after = [worker for sent, _, worker in under_kill if sent > killed_at + 1.0]
    assert after and set(after) == {survivor}, Counter(after)
    # Both workers served: the victim before it died (the busier one), the survivor after.
    assert set(served) | set(after) == set(container_of)
    assert docker("inspect", "-f", "{{.State.Running}}", container_of[victim]).strip() == "false"
    print(f"warm: {len(warm)} queries {dict(served)}; under kill: {len(under_kill)} queries, all 200")
