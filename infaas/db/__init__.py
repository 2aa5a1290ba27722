"""Metadata database: ORM models, engine/session factory and Alembic migration runner."""
