"""The deployment files are checked without a Docker engine: compose structure and install extras."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
import yaml

from infaas.config import Settings

DOCKER = Path(__file__).resolve().parents[2] / "docker"
IMAGES_SCRIPT = DOCKER / "images.sh"
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
        # Images come from `make images` (docker/images.sh), built from wheels, not from a compose build context.
        image = service["image"].split(":")[0]
        assert image == f"infaas-{'worker' if name == 'jobs' else name}", name
        assert (DOCKER / f"Dockerfile.{image.removeprefix('infaas-')}").is_file()
    assert compose["services"]["api"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert compose["services"]["jobs"]["command"][:2] == ["infaas", "jobs"]
    assert compose["services"]["gpu-worker"]["profiles"] == ["gpu"]
    assert {"store", "pgdata", "redisdata"} <= set(compose["volumes"])


def _install_lines(dockerfile: Path) -> list[str]:
    """The ``pip install`` commands of a Dockerfile that install the project (continuation lines joined)."""
    text = dockerfile.read_text().replace("\\\n", " ")
    return [line for line in text.splitlines() if re.search(r"\bpip install\b.*infaas\[", line)]


@pytest.mark.parametrize(
    ("name", "extra"),
    [("Dockerfile.api", "cpu"), ("Dockerfile.worker", "cpu"), ("Dockerfile.gpu-worker", "gpu")],
)
def test_dockerfiles_install_exactly_one_onnxruntime_build(name: str, extra: str) -> None:
    lines = _install_lines(DOCKER / name)
    assert len(lines) == 1, lines
    extras = re.findall(r'"?(?:\.|infaas)\[([a-z,]+)\]"?', lines[0])
    assert extras and set(extras[0].split(",")) == {extra}, lines[0]
    assert "onnxruntime" not in re.sub(r"! \S*pip show onnxruntime", "", lines[0])
    other = {"cpu": "gpu", "gpu": "cpu"}[extra]
    assert f"[{other}" not in lines[0] and f",{other}" not in lines[0]
    # The dependencies installed before the project are the wheels docker/images.sh built for the same extra.
    image = name.removeprefix("Dockerfile.")
    case = re.search(rf"^\s*(?:[a-z-]+ \| )?{image}(?: \| [a-z-]+)?\) build [^;]*", IMAGES_SCRIPT.read_text(), re.M)
    assert case and f" {extra} " in case.group(0), image


def test_cpu_and_gpu_extras_carry_different_onnxruntime_builds() -> None:
    extras = tomllib.loads((DOCKER.parent / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    cpu = {re.split(r"[<>=\[]", d)[0] for d in extras["cpu"]}
    gpu = {re.split(r"[<>=\[]", d)[0] for d in extras["gpu"]}
    assert "onnxruntime" in cpu and "onnxruntime-gpu" not in cpu
    assert "onnxruntime-gpu" in gpu and "onnxruntime" not in gpu


ROUTER_ONLY = {"INFAAS_IN_PROCESS_WORKER", "INFAAS_MIN_WORKERS", "INFAAS_MAX_WORKERS"}


def _readme_front_end_env() -> dict[str, str]:
    """The ``VAR=value`` assignments on the README's scale-out ``infaas serve`` line."""
    readme = (DOCKER.parent / "README.md").read_text()
    scale_out = readme.split("## Scale-out", 1)[1].split("\n## ", 1)[0]
    (line,) = [line for line in scale_out.splitlines() if re.search(r"\bINFAAS_[A-Z_]+=\S+ .*\binfaas serve\b", line)]
    return dict(re.findall(r"\b(INFAAS_[A-Z_]+)=(\S+)", line))


def test_front_ends_are_router_only_in_the_readme_and_in_compose_alike() -> None:
    readme = _readme_front_end_env()
    api = _compose()["services"]["api"]["environment"]
    assert ROUTER_ONLY <= set(readme)
    assert {k: str(api.get(k)) for k in ROUTER_ONLY} == {k: readme[k] for k in ROUTER_ONLY}
    settings = Settings.model_validate({k.removeprefix("INFAAS_").lower(): readme[k] for k in ROUTER_ONLY})
    assert (settings.in_process_worker, settings.min_workers, settings.max_workers) == (False, 0, 0)


@pytest.mark.parametrize("name", ["Dockerfile.worker", "Dockerfile.gpu-worker"])
def test_worker_images_listen_where_front_ends_in_other_containers_reach_them(name: str) -> None:
    text = (DOCKER / name).read_text()
    (cmd,) = [line for line in text.splitlines() if line.startswith("CMD ")]
    assert "infaas worker" in cmd and "--host 0.0.0.0" in cmd
    # The port and the advertised URL come from the environment, with defaults: no extra arguments needed.
    assert re.search(r"INFAAS_WORKER_PORT=(\d+)", text).group(1) == "8101"
    assert '--port \\"$INFAAS_WORKER_PORT\\"' in cmd
    assert "${INFAAS_WORKER_ADVERTISE:-http://$(hostname -i):$INFAAS_WORKER_PORT}" in cmd
