"""accuracy and fidelity: two numbers per profile, never confused (issue 12)

Until now a profile without labels stored its agreement (``agreement``), cosine (``cosine``) or closeness
(``fidelity``) with the original model as its "accuracy". Those numbers are fidelity: they move to the new
``fidelity`` / ``fidelity_metric`` columns and the accuracy becomes unknown (``accuracy_metric`` nullable), so an
unlabelled model no longer claims 1.0. Labelled ``top1`` / ``1-rel-error`` accuracies stay (re-profile a model to
score them on rows held out from INT8 calibration).

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01 20:45:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Old metric name -> fidelity metric name ("fidelity" was 1 - relative error with the original).
_FIDELITY = {"agreement": "agreement", "cosine": "cosine", "fidelity": "1-rel-error"}
_SUFFIX = "-synthetic"


def upgrade() -> None:
    with op.batch_alter_table("profiles", schema=None) as batch_op:
        batch_op.add_column(sa.Column("fidelity", sa.Float(), nullable=True))
        batch_op.add_column(sa.Column("fidelity_metric", sa.String(length=32), nullable=True))
        batch_op.alter_column("accuracy_metric", existing_type=sa.String(length=32), nullable=True)
    profiles = sa.table(
        "profiles",
        sa.column("accuracy", sa.Float()),
        sa.column("accuracy_metric", sa.String()),
        sa.column("fidelity", sa.Float()),
        sa.column("fidelity_metric", sa.String()),
    )
    for old, new in _FIDELITY.items():
        for suffix in ("", _SUFFIX):
            op.execute(
                profiles.update()
                .where(profiles.c.accuracy_metric == old + suffix)
                .values(fidelity=profiles.c.accuracy, fidelity_metric=new + suffix, accuracy=None, accuracy_metric=None)
            )
    op.execute(
        profiles.update().where(profiles.c.accuracy_metric == "unavailable").values(accuracy_metric=None, accuracy=None)
    )


def downgrade() -> None:
    profiles = sa.table(
        "profiles",
        sa.column("accuracy", sa.Float()),
        sa.column("accuracy_metric", sa.String()),
        sa.column("fidelity", sa.Float()),
        sa.column("fidelity_metric", sa.String()),
    )
    for old, new in _FIDELITY.items():
        for suffix in ("", _SUFFIX):
            op.execute(
                profiles.update()
                .where(profiles.c.accuracy_metric.is_(None), profiles.c.fidelity_metric == new + suffix)
                .values(accuracy=profiles.c.fidelity, accuracy_metric=old + suffix)
            )
    op.execute(profiles.update().where(profiles.c.accuracy_metric.is_(None)).values(accuracy_metric="unavailable"))
    with op.batch_alter_table("profiles", schema=None) as batch_op:
        batch_op.alter_column("accuracy_metric", existing_type=sa.String(length=32), nullable=False)
        batch_op.drop_column("fidelity_metric")
        batch_op.drop_column("fidelity")
