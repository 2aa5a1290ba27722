"""``infaas serve`` and ``infaas worker`` set the interpreter's switch interval from the settings before serving."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvicorn
from pydantic import ValidationError
from typer.testing import CliRunner

from infaas.config import Settings, get_settings


@pytest.fixture
def interval() -> Iterator[None]:
    before = sys.getswitchinterval()
    get_settings.cache_clear()
    try:
        yield
    finally:
        sys.setswitchinterval(before)
        get_settings.cache_clear()


def test_serve_sets_the_switch_interval_before_serving(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, interval: None
) -> None:
    from infaas.cli.main import app

    seen: list[float] = []

    def run(*_args: object, **_kwargs: object) -> None:
        seen.append(sys.getswitchinterval())

    monkeypatch.setattr(uvicorn, "run", run)
    monkeypatch.setenv("INFAAS_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("INFAAS_SWITCH_INTERVAL_MS", "0.25")
    sys.setswitchinterval(0.005)
    result = CliRunner().invoke(app, ["serve", "--port", "1"])
    assert result.exit_code == 0, result.output
    assert seen == [pytest.approx(0.00025)]


def test_worker_sets_the_switch_interval_first(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, interval: None) -> None:
    """Set before the worker's service is built: here that build is refused (no shared live state configured)."""
    from infaas.cli.main import app

    monkeypatch.setenv("INFAAS_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("INFAAS_REDIS_URL", raising=False)
    monkeypatch.setenv("INFAAS_SWITCH_INTERVAL_MS", "0.25")
    sys.setswitchinterval(0.005)
    result = CliRunner().invoke(app, ["worker", "--port", "1"])
    assert result.exit_code == 2 and "INFAAS_REDIS_URL" in result.output
    assert sys.getswitchinterval() == pytest.approx(0.00025)


def test_the_default_is_half_a_millisecond_and_zero_is_refused() -> None:
    assert Settings().switch_interval_ms == 0.5
    with pytest.raises(ValidationError, match="switch_interval_ms"):
        Settings(switch_interval_ms=0)
