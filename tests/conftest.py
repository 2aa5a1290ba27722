"""Shared fixtures: a fresh embedded-mode home per test, an app client, tiny models."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from infaas.config import Settings
from infaas.services import Services, build_services
from tests.factories import write_mlp, write_validation


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """Embedded default in a temp home; variant builds off unless a test turns them on."""
    return Settings(home=tmp_path / "home", build_variants=False, autoscaler="off")


@pytest.fixture
def services(settings: Settings) -> Iterator[Services]:
    built = build_services(settings)
    yield built
    built.close()


@pytest.fixture
def client(settings: Settings, services: Services) -> Iterator[TestClient]:
    with TestClient(create_app(settings, services=services)) as test_client:
        yield test_client


@pytest.fixture
def mlp_path(tmp_path: Path) -> Path:
    return write_mlp(tmp_path / "mlp.onnx")


@pytest.fixture
def validation_path(tmp_path: Path) -> Path:
    return write_validation(tmp_path / "val.npz")
