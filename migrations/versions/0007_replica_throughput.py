"""profile replica throughput: rows/s of 1, 2, ... replicas of a variant serving together (issue 15 point 3)

The profiler measures what a second replica on the same cores really adds instead of the selector and the
autoscaler assuming it doubles throughput. Profiles measured before this revision have none (null): they are
read as scaling linearly, as before.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01 23:50:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("profiles", schema=None) as batch_op:
        batch_op.add_column(sa.Column("replica_throughput", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("profiles", schema=None) as batch_op:
        batch_op.drop_column("replica_throughput")
