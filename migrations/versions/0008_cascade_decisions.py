"""cascade decisions: every cascade considered for a task, kept or not, why, with the numbers (issue 16)

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02 00:10:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "cascade_decisions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("task", sa.String(length=128), nullable=False),
        sa.Column("owner", sa.String(length=128), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("cheap", sa.String(length=255), nullable=False),
        sa.Column("expensive", sa.String(length=255), nullable=False),
        sa.Column("kept", sa.Boolean(), nullable=False),
        sa.Column("variant", sa.String(length=255), nullable=True),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("numbers", sa.JSON(), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("cascade_decisions", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_cascade_decisions_task"), ["task"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("cascade_decisions", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_cascade_decisions_task"))
    op.drop_table("cascade_decisions")
