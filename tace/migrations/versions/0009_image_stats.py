"""Per-prediction image statistics (slice count, thickness, body HU summary) for image drift.

Revision ID: 0009_image_stats
Revises: 0008_studies
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009_image_stats"
down_revision = "0008_studies"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("prediction", schema=None) as batch_op:
        batch_op.add_column(sa.Column("image_stats", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("prediction", schema=None) as batch_op:
        batch_op.drop_column("image_stats")
