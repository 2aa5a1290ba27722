"""``infaas serve --workers 2`` for real: two processes on one port, a model registered through one is served by both.

Each query opens a new connection, which the kernel hands to one of the two processes' ``SO_REUSEPORT`` sockets
by a hash of its address: 16 fresh connections all reaching one process has probability 2**-15, and a process
whose catalog never heard of the registration answers 404.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.factories import mlp_model, upload_model, wait_for, write_validation
from tests.s3server import free_port

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def group(tmp_path: Path) -> Iterator[str]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("INFAAS_")}
    env.update(
        INFAAS_HOME=str(tmp_path / "home"),
        INFAAS_AUTOSCALER="off",
        INFAAS_PROFILE_RUNS="5",
        INFAAS_PROFILE_MAX_SECONDS="1",
        INFAAS_CASCADES="false",
    )
    log = tmp_path / "serve.log"
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "infaas", "serve", "--port", str(port), "--workers", "2"],
            env=env,
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"serve exited: {log.read_text()[-3000:]}")
        try:
            return httpx.get(f"{url}/v2/health/ready", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        assert wait_for(up, 60.0, interval_s=0.2), log.read_text()[-3000:]
        yield url
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(15)


def _statuses(url: str, count: int) -> list[int]:
    """``count`` queries, each on a connection of its own."""
    body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 8], "data": [0.5] * 8}]}
    statuses = []
    for _ in range(count):
        with httpx.Client(timeout=30) as client:
            statuses.append(client.post(f"{url}/v2/models/mlp/infer", json=body).status_code)
    return statuses


@pytest.mark.integration
def test_a_model_registered_through_one_process_is_served_by_both(group: str, tmp_path: Path) -> None:
    # Both processes build their catalog now, before the model exists.
    assert set(_statuses(group, 16)) == {404}
    validation = write_validation(tmp_path / "val.npz").read_bytes()
    with httpx.Client(base_url=group, timeout=60) as client:
        answer = upload_model(client, "mlp", mlp_model().SerializeToString(), validation=validation)
    assert answer.status_code == 201, answer.text
    model = wait_for(
        lambda: httpx.get(f"{group}/v1/models/mlp", timeout=10).json(),
        180.0,
        until=lambda m: m["status"] in {"ready", "failed"},
        interval_s=0.5,
    )
    assert model["status"] == "ready", model
    # The other process hears of the last change within a poll (0.2 s); a second is plenty.
    statuses = wait_for(lambda: _statuses(group, 16), 2.0, until=lambda s: set(s) == {200}, interval_s=0.2)
    assert statuses == [200] * 16
