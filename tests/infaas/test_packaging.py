"""What a user meets first: the ``infaas`` command on a plain ``pip install infaas``."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from collections.abc import Callable
from pathlib import Path

import pytest

from infaas.cli import MISSING_ONNXRUNTIME

ROOT = Path(__file__).resolve().parents[2]


def _console_script() -> list[str]:
    """``python -c`` running the function ``pyproject.toml`` installs as the ``infaas`` command."""
    target = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]["infaas"]
    module, function = target.split(":")
    return [sys.executable, "-c", f"import sys; sys.argv[0] = 'infaas'; from {module} import {function}; {function}()"]


def _run(command: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)


@pytest.fixture
def without_onnxruntime(tmp_path: Path) -> dict[str, str]:
    """An environment where ``import onnxruntime`` fails as it does when neither extra is installed."""
    shadow = tmp_path / "shadow" / "onnxruntime"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text(
        "raise ModuleNotFoundError(\"No module named 'onnxruntime'\", name='onnxruntime')\n"
    )
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(shadow.parent), str(ROOT)]),
        "INFAAS_HOME": str(tmp_path / "home"),
    }


@pytest.mark.parametrize("entry", ["console script", "python -m infaas"])
@pytest.mark.parametrize("args", [["serve", "--port", "1"], ["worker", "--port", "1"]], ids=["serve", "worker"])
def test_a_command_needing_onnxruntime_names_the_extra_without_a_traceback(
    entry: str, args: list[str], without_onnxruntime: dict[str, str]
) -> None:
    command = _console_script() if entry == "console script" else [sys.executable, "-m", "infaas"]
    result = _run([*command, *args], without_onnxruntime)
    assert result.returncode != 0
    assert result.stderr.strip() == MISSING_ONNXRUNTIME
    assert "Traceback" not in result.stderr + result.stdout


def test_commands_that_do_not_need_onnxruntime_still_run(without_onnxruntime: dict[str, str]) -> None:
    result = _run([sys.executable, "-m", "infaas", "--help"], without_onnxruntime)
    assert result.returncode == 0, result.stderr
    assert "serve" in result.stdout


def _demo_server() -> list[str]:
    from infaas.demo import server_command

    return server_command(1)


def _autoscaler_worker() -> list[str]:
    from autoscaler.providers.local import LocalProvider
    from infaas.config import Settings

    return LocalProvider(Settings()).command(1)


@pytest.mark.parametrize("command", [_demo_server, _autoscaler_worker], ids=["make demo's server", "local provider"])
def test_the_cli_subprocesses_infaas_starts_raise_no_python_warning(
    command: Callable[[], list[str]], tmp_path: Path
) -> None:
    """``--help`` stops before serving: what is checked is how the command is launched and imported."""
    env = {**os.environ, "PYTHONWARNINGS": "error", "INFAAS_HOME": str(tmp_path / "home")}
    result = _run([*command(), "--help"], env)
    assert result.returncode == 0, result.stderr
    assert "Warning" not in result.stderr


DOCS = [ROOT / "README.md", ROOT / "benchmarks" / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


@pytest.mark.skipif(not (ROOT / ".git").exists(), reason="not a git checkout")
@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_image_a_doc_shows_is_a_file_git_keeps(doc: Path) -> None:
    for target in re.findall(r"\]\(([^)\s]+\.(?:png|svg|jpe?g|gif))\)", doc.read_text()):
        image = (doc.parent / target).resolve()
        assert image.is_file(), f"{doc.name} shows {target}, which does not exist"
        tracked = subprocess.run(["git", "ls-files", "--error-unmatch", str(image)], cwd=ROOT, capture_output=True)
        assert tracked.returncode == 0, f"{doc.name} shows {target}, which git does not track (.gitignore?)"
