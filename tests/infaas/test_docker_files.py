"""The deployment files are checked without a Docker engine: compose structure and install extras."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
import yaml

DOCKER = Path(__file__).resolve().parents[2] / "docker"
INFAAS_ENV = {"INFAAS_DATABASE_URL", "INFAAS_REDIS_URL", "INFAAS_BROKER_URL", "INFAAS_MODEL_STORE"}


def _compose() -> dict:
    return yaml.safe_load((DOCKER / "compose.yaml").read_text())


def test_compose_names_every_service_with_a_healthcheck() -> None:
    services = _compose()["services"]
    assert {"api", "worker", "jobs", "redis", "postgres"} <= set(services)
    for name, service in services.items():
        assert service.get("healthcheck", {}).get("test"), f"{name} has no healthcheck"


def test_compose_wires_infaas_services_to_shared_backends() -> None:
    compose = _compose()
    for name in ("api", "worker", "jobs", "gpu-worker"):
        service = compose["services"][name]
        assert INFAAS_ENV <= set(service["environment"]), name
        assert service["environment"]["INFAAS_MODEL_STORE"].startswith("/data")
        assert "store:/data" in service["volumes"], name
        assert (
            DOCKER.parent / service["build"]["context"].replace("..", ".") / service["build"]["dockerfile"]
        ).is_file()
    assert compose["services"]["api"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert compose["services"]["jobs"]["command"][:2] == ["infaas", "jobs"]
    assert compose["services"]["gpu-worker"]["profiles"] == ["gpu"]
    assert {"store", "pgdata", "redisdata"} <= set(compose["volumes"])


def _install_lines(dockerfile: Path) -> list[str]:
    """The ``pip install`` commands of a Dockerfile (continuation lines joined)."""
    text = dockerfile.read_text().replace("\\\n", " ")
    return [line for line in text.splitlines() if re.search(r"\bpip install\b", line)]


@pytest.mark.parametrize(
    ("name", "extra"),
    [("Dockerfile.api", "cpu"), ("Dockerfile.worker", "cpu"), ("Dockerfile.gpu-worker", "gpu")],
)
def test_dockerfiles_install_exactly_one_onnxruntime_build(name: str, extra: str) -> None:
    lines = _install_lines(DOCKER / name)
    assert len(lines) == 1, lines
    extras = re.findall(r'"?\.\[([a-z,]+)\]"?', lines[0])
    assert extras and set(extras[0].split(",")) == {extra}, lines[0]
    assert "onnxruntime" not in lines[0].replace("! pip show onnxruntime", "")
    other = {"cpu": "gpu", "gpu": "cpu"}[extra]
    assert f"[{other}" not in lines[0] and f",{other}" not in lines[0]


def test_cpu_and_gpu_extras_carry_different_onnxruntime_builds() -> None:
    extras = tomllib.loads((DOCKER.parent / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    cpu = {re.split(r"[<>=\[]", d)[0] for d in extras["cpu"]}
    gpu = {re.split(r"[<>=\[]", d)[0] for d in extras["gpu"]}
    assert "onnxruntime" in cpu and "onnxruntime-gpu" not in cpu
    assert "onnxruntime-gpu" in gpu and "onnxruntime" not in gpu
