"""Processes killed with SIGKILL at chosen points of registration and deletion, and ``infaas serve`` killed in
the middle of a variant build (issue 13's reproduction): after a restart, everything is either whole or
gone, and nothing stays ``building``.

Each registration or deletion runs in a child process that kills itself (SIGKILL: no ``finally``, no
clean-up) at one step of the sequence documented in ``infaas.registration``. The next process on the same
home recovers through its own maintenance thread, exactly as a restarted server would.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from infaas.config import Settings
from infaas.db.models import ModelStatus, WorkState
from infaas.model_store.local import TEMP_PREFIX
from infaas.registration import RegistrationRequest, delete_model, register_model
from infaas.services import Services, build_services
from tests.factories import wait_for, write_mlp, write_validation
from tests.s3server import free_port

ROOT = Path(__file__).resolve().parents[2]
# Cascades off: these tests count the work a registration leaves (one build), not the task's cascade decision.
QUICK = {"profile_runs": 3, "profile_max_seconds": 0.05, "worker_cores": 1, "autoscaler": "off", "cascades": False}
# Short leases and grace so recovery happens within a test; the child uses the same ones.
RECOVERY = {"work_lease_s": 0.6, "recovery_period_s": 0.2, "orphan_grace_s": 0.5}


def _settings(home: Path, build_variants: bool) -> Settings:
    return Settings(home=home, build_variants=build_variants, **QUICK, **RECOVERY)  # type: ignore[arg-type]


def _die(*_args: Any, **_kwargs: Any) -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _kill_at(services: Services, step: str) -> None:
    """Make the child die (SIGKILL) when the sequence reaches ``step``."""
    assert services.jobs is not None
    if step == "row inserted, nothing written":
        services.store.put_bytes = _die  # type: ignore[method-assign]
    elif step == "model file half-written":
        os.replace = _die  # the local store's rename onto the key: the temporary file is written and fsynced
    elif step == "model written, validation set not":
        services.store.put_file = _die  # type: ignore[method-assign]
    elif step == "files written, not committed":
        services.metadata.complete_registration = _die  # type: ignore[method-assign]
    elif step == "committed, build not handed over":
        services.jobs.dispatch = _die  # type: ignore[method-assign]
    elif step == "deletion marked, files not removed":
        services.store.delete_prefix = _die  # type: ignore[method-assign]
    elif step == "files removed, rows not":
        services.metadata.delete_model = _die  # type: ignore[method-assign]
    else:
        raise AssertionError(f"unknown step {step!r}")


def _child(home: str, model: str, validation: str, step: str, register_first: bool) -> None:
    """Register (and, for deletion steps, then delete) ``mlp``, dying at ``step``."""
    services = build_services(_settings(Path(home), build_variants=not register_first))
    request = RegistrationRequest(
        name="mlp", task="classification", model_path=Path(model), validation_path=Path(validation)
    )
    if register_first:
        register_model(services, request)
        _kill_at(services, step)
        delete_model(services, "mlp")
    else:
        _kill_at(services, step)
        register_model(services, request)
    raise AssertionError(f"the child passed {step!r} alive")


def _run_child(tmp_path: Path, step: str, register_first: bool) -> Path:
    home = tmp_path / "home"
    model, validation = write_mlp(tmp_path / "mlp.onnx"), write_validation(tmp_path / "val.npz")
    process = multiprocessing.get_context("spawn").Process(
        target=_child, args=(str(home), str(model), str(validation), step, register_first)
    )
    process.start()
    process.join(60)
    assert process.exitcode == -signal.SIGKILL, f"the child did not die at {step!r} (exit {process.exitcode})"
    return home


@pytest.fixture
def recovered() -> Iterator[Callable[[Path, bool], Services]]:
    """Opens the services of a restarted process on a home (its maintenance thread recovers); closes them."""
    opened: list[Services] = []

    def open_(home: Path, build_variants: bool = True) -> Services:
        opened.append(build_services(_settings(home, build_variants)))
        return opened[-1]

    yield open_
    for services in opened:
        services.close()


def _left_behind(home: Path) -> str | None:
    """The status the dead child left ``mlp`` in, read without recovering anything."""
    services = build_services(_settings(home, build_variants=False), with_jobs=False)
    try:
        model = services.metadata.get_model("mlp")
        return model.status if model else None
    finally:
        services.close()


def _stored(services: Services) -> list[str]:
    """Every file under the store's root, temporary ones included."""
    root = Path(services.store.uri("models")).parent
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


@pytest.mark.parametrize(
    "step",
    [
        "row inserted, nothing written",
        "model file half-written",
        "model written, validation set not",
        "files written, not committed",
    ],
)
def test_a_registration_killed_before_its_commit_leaves_nothing(
    tmp_path: Path, step: str, recovered: Callable[..., Services]
) -> None:
    home = _run_child(tmp_path, step, register_first=False)
    assert _left_behind(home) == ModelStatus.REGISTERING
    if step == "model file half-written":  # what it left: a temporary file, never the key itself
        left = [p.name for p in (home / "models").rglob("*") if p.is_file()]
        assert len(left) == 1 and left[0].startswith(TEMP_PREFIX), left
    services = recovered(home)
    gone = wait_for(lambda: not services.metadata.model_exists("mlp") and not _stored(services), 10, interval_s=0.1)
    assert gone, (services.metadata.get_model("mlp"), _stored(services))
    assert services.metadata.list_work_items() == []


def test_a_registration_killed_after_its_commit_is_built_to_ready(
    tmp_path: Path, recovered: Callable[..., Services]
) -> None:
    home = _run_child(tmp_path, "committed, build not handed over", register_first=False)
    assert _left_behind(home) == ModelStatus.PENDING
    services = recovered(home)
    model = wait_for(
        lambda: services.metadata.get_model("mlp"), 60, until=lambda m: m and m.status == ModelStatus.READY
    )
    assert model is not None and model.status == ModelStatus.READY, model
    # The build marks the model ready, then its runner marks the work item done: poll for the second step too.
    [item] = wait_for(
        services.metadata.list_work_items, 10, until=lambda items: items and items[0].state == WorkState.DONE
    )
    assert item.task == "build_variants" and item.state == WorkState.DONE and item.attempts == 1
    assert {"models/mlp/model.onnx", "models/mlp/validation.npz"} <= set(_stored(services))


@pytest.mark.parametrize("step", ["deletion marked, files not removed", "files removed, rows not"])
def test_a_deletion_killed_half_way_is_finished(tmp_path: Path, step: str, recovered: Callable[..., Services]) -> None:
    home = _run_child(tmp_path, step, register_first=True)
    assert _left_behind(home) == ModelStatus.DELETING
    services = recovered(home, build_variants=False)
    gone = wait_for(lambda: not services.metadata.model_exists("mlp") and not _stored(services), 10, interval_s=0.1)
    assert gone, (services.metadata.get_model("mlp"), _stored(services))


# -- the reproduction: infaas serve killed during a variant build ----------------------------


def _serve(home: Path, port: int, log: Path) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("INFAAS_")}
    env |= {f"INFAAS_{k.upper()}": str(v) for k, v in {**QUICK, **RECOVERY, "home": home}.items()}
    with open(log, "ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "infaas", "serve", "--port", str(port)],
            env=env,
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def _up(url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    def answers() -> bool:
        assert process.poll() is None, log.read_text()[-3000:]
        try:
            return httpx.get(f"{url}/v1/models", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    assert wait_for(answers, 60, interval_s=0.1), log.read_text()[-3000:]


def test_infaas_serve_killed_during_a_variant_build_resumes_it_after_a_restart(tmp_path: Path) -> None:
    home, port, log = tmp_path / "home", free_port(), tmp_path / "serve.log"
    url = f"http://127.0.0.1:{port}"
    model, validation = write_mlp(tmp_path / "mlp.onnx"), write_validation(tmp_path / "val.npz")
    server = _serve(home, port, log)
    try:
        _up(url, server, log)
        with open(model, "rb") as model_file, open(validation, "rb") as validation_file:
            response = httpx.post(
                f"{url}/v1/models",
                data={"name": "mlp", "task": "classification"},
                files={"model": ("mlp.onnx", model_file), "validation": ("val.npz", validation_file)},
                timeout=60,
            )
        assert response.status_code == 201, response.text
        building = wait_for(
            lambda: httpx.get(f"{url}/v1/models/mlp", timeout=5).json(),
            60,
            until=lambda m: m["status"] == "building" and m["variants"],
            interval_s=0.02,
        )
        assert building["status"] == "building", building
        server.send_signal(signal.SIGKILL)
        server.wait(15)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait(15)

    server = _serve(home, port, log)
    try:
        _up(url, server, log)
        restarted = time.monotonic()
        model_after = wait_for(
            lambda: httpx.get(f"{url}/v1/models/mlp", timeout=5).json(),
            90,
            until=lambda m: m["status"] in {"ready", "failed"},
            interval_s=0.2,
        )
        assert model_after["status"] == "ready", model_after
        print(f"killed build resumed to ready {time.monotonic() - restarted:.1f}s after the restarted server answered")
        names = [v["name"] for v in model_after["variants"]]
        assert len(names) == len(set(names)) and all(v["status"] != "building" for v in model_after["variants"])
        answer = httpx.post(f"{url}/v1/infer", json={"model": "mlp", "inputs": {"x": [[0.5] * 8]}}, timeout=30)
        assert answer.status_code == 200, answer.text
        assert "resuming work item" in log.read_text()
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(15)
