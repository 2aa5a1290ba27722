"""The Docker engine and the infaas images for the container tests, made ready the way `make images` does.

``docker/images.sh`` installs docker.io when it is missing, starts ``dockerd`` when nothing answers, makes the
Debian base image once and builds only the layers that changed, so these tests run on a clean CI machine (as
root) with nothing set up. An engine that cannot be had is a failure with the reason, never a skip: the
container tests are what show the images work.
"""

from __future__ import annotations

import subprocess
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
IMAGES_SCRIPT = ROOT / "docker" / "images.sh"
COMPOSE_FILE = ROOT / "docker" / "compose.yaml"
# Fresh machine (2 cores): Debian base 1.5-3.8 min, wheels ~1 min, api image ~2 min, PostgreSQL and Redis beside it.
BUILD_TIMEOUT_S = 600


def ensure_images(*names: str) -> None:
    """Build (or find cached) ``infaas-<name>:local`` for each name; fail the test with the script's output."""
    try:
        done = subprocess.run(
            [str(IMAGES_SCRIPT), *names], capture_output=True, text=True, timeout=BUILD_TIMEOUT_S, cwd=ROOT
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"docker/images.sh {' '.join(names)} ran past {BUILD_TIMEOUT_S} s: {exc.stderr!s:.2000}")
    if done.returncode != 0:
        lines = [line for line in done.stderr.splitlines() if not line.startswith(("WARNING: Location", "INFO: pip"))]
        pytest.fail(
            "the Docker engine or the infaas images are not available (docker/images.sh exit "
            f"{done.returncode}):\n" + "\n".join(lines[-30:])
        )


def docker(*args: str, timeout: float = 60, check: bool = True) -> str:
    """Run the docker CLI; its stdout."""
    done = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)
    if check and done.returncode != 0:
        raise AssertionError(f"docker {' '.join(args)}: exit {done.returncode}: {done.stderr.strip()}")
    return done.stdout


def unique_name(prefix: str) -> str:
    """A name no other run on this engine uses (tests of several checkouts may share one engine)."""
    return f"{prefix}{uuid.uuid4().hex[:8]}"


def leftovers(label: str) -> dict[str, list[str]]:
    """Containers, volumes and networks carrying ``label`` (``key=value``): what a teardown must have removed."""
    return {
        kind: docker(kind, "ls", "-q", *(["-a"] if kind == "container" else []), "--filter", f"label={label}").split()
        for kind in ("container", "volume", "network")
    }
