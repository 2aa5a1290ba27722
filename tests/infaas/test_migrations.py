"""Alembic migrations build the schema on SQLite and real PostgreSQL, and match the ORM models."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect

from infaas.db.migrate import upgrade
from infaas.db.models import Base
from tests.pg import temporary_database

TABLES = {"models", "variants", "profiles", "decisions", "jobs", "api_keys", "work_items", "alembic_version"}


def _check(url: str) -> None:
    upgrade(url)
    engine = create_engine(url)
    try:
        assert TABLES <= set(inspect(engine).get_table_names())
        with engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata)
        assert diff == [], f"migrations and models differ: {diff}"
        upgrade(url)  # idempotent: a second upgrade is a no-op
    finally:
        engine.dispose()


def test_migrations_on_sqlite(tmp_path: Path) -> None:
    _check(f"sqlite:///{tmp_path / 'm.db'}")


@pytest.mark.integration
def test_migrations_on_postgresql() -> None:
    with temporary_database() as url:
        _check(url)
