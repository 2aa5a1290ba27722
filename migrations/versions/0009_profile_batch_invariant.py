"""profile batch invariance: whether a variant's answer to a row depends on the rows batched with it (issue 15)

Dynamic INT8 computes activation scales from the whole batch, so co-batched queries change each other's answers;
the profiler now measures this and stores it on the profile, and workers and the selector read it (such a variant
is never batched, and its queue is priced one row at a time). Profiles measured before this revision are marked
batch-dependent exactly where the worker used to assume it: variants of kind ``cpu-int8-dynamic``.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-02 00:20:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("profiles", schema=None) as batch_op:
        batch_op.add_column(sa.Column("batch_invariant", sa.Boolean(), nullable=False, server_default=sa.true()))
    op.execute(
        "UPDATE profiles SET batch_invariant = false "
        "WHERE variant_id IN (SELECT id FROM variants WHERE kind = 'cpu-int8-dynamic')"
    )


def downgrade() -> None:
    with op.batch_alter_table("profiles", schema=None) as batch_op:
        batch_op.drop_column("batch_invariant")
