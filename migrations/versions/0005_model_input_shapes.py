"""model input shapes: the shape each input with a dynamic non-batch dimension was checked at

Registration now finds a shape a model with dynamic spatial or sequence dimensions runs at (the owner's
``--input-shape``, the exporter's metadata, or common sizes; ``infaas.input_shapes``) and records it, so
builds profile and make synthetic data at it.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01 21:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Models registered before this revision were checked at size 1 and record no shape: builds keep the
    # default size for their dynamic dimensions.
    with op.batch_alter_table("models", schema=None) as batch_op:
        batch_op.add_column(sa.Column("input_shapes", sa.JSON(), server_default=sa.text("'{}'"), nullable=False))


def downgrade() -> None:
    with op.batch_alter_table("models", schema=None) as batch_op:
        batch_op.drop_column("input_shapes")
