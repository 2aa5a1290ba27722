"""model rewrites: what registration changed in an upload to serve it (e.g. a ZipMap unwrapped)

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01 17:55:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Models registered before this revision were stored as uploaded: no rewrites.
    with op.batch_alter_table("models", schema=None) as batch_op:
        batch_op.add_column(sa.Column("rewrites", sa.JSON(), server_default=sa.text("'[]'"), nullable=False))


def downgrade() -> None:
    with op.batch_alter_table("models", schema=None) as batch_op:
        batch_op.drop_column("rewrites")
