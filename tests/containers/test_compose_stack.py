"""The compose stack, for real: PostgreSQL, Redis, the API, two workers and the jobs worker as containers.

Two zoo models are registered from the host with the CLI (their variants are built by the jobs container). The
selector places a variant that is loaded nowhere on the worker with the most free memory, so the second model's
first query lands on the worker the first model is not on, and from then on /v1/infer and OIP queries of both
models are served by both worker containers (each answer names its worker). One worker container is then killed
(SIGKILL, no drain) under load: every query still gets its answer (the engine retries a query once on another
worker when its worker cannot be reached, which loads the model there) and the other worker serves on.
Everything the stack created is removed afterwards.

One model alone stays on one worker: the selector keeps choosing the loaded instance (no load to pay), and the
model-level autoscaler places a replica on another worker only when the first worker has no room for it, which a
model this small never fills from two cores of clients.
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

pytestmark = [pytest.mark.integration, pytest.mark.timeout(2400)]

MODELS = ("digits-logreg", "digits-logreg-b")  # the zoo's logistic regression, trained on two data splits


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
    """Two logistic regressions of the zoo, registered with the CLI from the host one after the other (the jobs
    container builds one model at a time; a registration's model check beside another's build took over its 30 s
    limit at load average 14); the validation inputs."""
    from infaas.examples.graphs import mlp_graph
    from infaas.examples.zoo import TASK, _save, _train_logreg, load_digits_split

    out = tmp_path_factory.mktemp("zoo")
    env = {**stack.env, "INFAAS_URL": stack.url}
    for seed, name in enumerate(MODELS):
        x_train, y_train, x_val, y_val = load_digits_split(seed)
        model = _save(out, name, mlp_graph([_train_logreg(x_train, y_train)], name), "logreg", x_val, y_val, None)
        cli = [sys.executable, "-m", "infaas", "register", str(model.onnx_path), "--name", name, "--task", TASK]
        # The second model is only there to be placed: profiling one batch size keeps its build short.
        cli += ["--validation", str(model.validation_path), "--max-batch", "1" if seed else "4", "--wait"]
        printed = _run(cli, env, timeout=900)  # 3 to over 10 min each at load average 14-30 here
        assert f"model {name}: ready" in printed, printed
    return x_val.astype(np.float32)


def _query(client: httpx.Client, stack: Stack, row: np.ndarray, model: str, oip: bool) -> tuple[int, str | None]:
    """One query, /v1/infer or OIP: (status, worker that served it)."""
    headers = {"Authorization": f"Bearer {stack.key}"}
    if oip:
        body = {"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": row.tolist()}]}
        response = client.post(f"{stack.url}/v2/models/{model}/infer", json=body, headers=headers)
        worker = response.json()["parameters"]["worker"] if response.status_code == 200 else None
    else:
        body = {"model": model, "inputs": {"input": [row.tolist()]}}
        response = client.post(f"{stack.url}/v1/infer", json=body, headers=headers)
        worker = response.json()["served_by"]["worker"] if response.status_code == 200 else None
    return response.status_code, worker


def _load(stack: Stack, rows: np.ndarray, seconds: float, threads: int = 6) -> list[tuple[float, int, str | None]]:
    """Closed-loop load, each model half /v1/infer and half OIP: (send time, status, worker) of every query."""
    stop = time.monotonic() + seconds
    results: list[tuple[float, int, str | None]] = []
    lock = threading.Lock()

    def loop(n: int) -> None:
        with httpx.Client(timeout=30) as client:
            i = n
            while time.monotonic() < stop:
                sent = time.monotonic()
                try:
                    model = MODELS[(i // 2) % len(MODELS)]
                    status, worker = _query(client, stack, rows[i % len(rows)], model, oip=i % 2 == 1)
                except httpx.HTTPError as exc:
                    status, worker = 0, repr(exc)
                with lock:
                    results.append((sent, status, worker))
                i += threads

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(loop, range(threads)))
    return results


def _wait_for_instance(stack: Stack, model: str, timeout_s: float = 30) -> None:
    """Until live state (as the front-end reads it) lists an instance of ``model`` on some worker."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if any(i["variant_key"].startswith(f"{model}/") for w in _workers(stack) for i in w["instances"]):
            return
        time.sleep(0.2)
    raise AssertionError(f"no instance of {model} in live state within {timeout_s:g} s: {_workers(stack)}")


def test_both_workers_serve_and_killing_one_under_load_loses_no_query(stack: Stack, registered: np.ndarray) -> None:
    containers = stack.worker_containers()
    assert len(containers) == 2
    # A worker is named <hostname>-<port>, and a container's hostname is its short id.
    container_of = {}
    for w in _workers(stack):
        (container,) = [c for c in containers if w["id"].startswith(c[:12])]
        container_of[w["id"]] = container

    # Each model's first query alone: the first model is placed on one worker, then the second on the other, which
    # has more free memory once the first model's instance is counted there (the selector's cold-placement rule).
    first: dict[str, str | None] = {}
    with httpx.Client(timeout=30) as client:
        for model in MODELS:
            status, first[model] = _query(client, stack, registered[0], model, oip=False)
            assert status == 200, status
            _wait_for_instance(stack, model)
    assert len(set(first.values())) == 2, f"both models were placed on one worker: {first}"

    warm = _load(stack, registered, seconds=6)
    assert warm and all(status == 200 for _, status, _ in warm), Counter(s for _, s, _ in warm)
    served = Counter(worker for _, _, worker in warm)
    assert set(served) == set(container_of) and min(served.values()) > 0, f"queries per worker: {served}"

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
    assert docker("inspect", "-f", "{{.State.Running}}", container_of[victim]).strip() == "false"
    print(f"warm: {len(warm)} queries {dict(served)}; under kill: {len(under_kill)} queries, all 200")
