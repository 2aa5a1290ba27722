"""Fixtures shared by the core's Redis-backed tests."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from tests.redis_server import delete_keys


@pytest.fixture
def prefix() -> Iterator[str]:
    """A unique Redis key prefix, every key under it deleted afterwards."""
    name = f"infaas-test-{uuid.uuid4().hex[:10]}"
    yield name
    delete_keys(f"{name}:")
