"""Drop series columns nothing reads: completion asks the association records instead.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("series") as batch:
        batch.drop_column("open_associations")
        batch.drop_column("released_at")


def downgrade() -> None:
    with op.batch_alter_table("series") as batch:
        batch.add_column(sa.Column("open_associations", sa.Integer(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("released_at", sa.DateTime(), nullable=True))
