"""Associations and which series they carried; instance image type, plane and frames.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

_OUTCOME = sa.Enum(
    "open", "released", "aborted", "rejected", name="associationoutcome", native_enum=False, length=24
)


def upgrade() -> None:
    op.create_table(
        "association",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("listener", sa.String(length=128), nullable=False),
        sa.Column("peer_host", sa.String(length=64), nullable=False),
        sa.Column("peer_port", sa.Integer(), nullable=True),
        sa.Column("calling_ae", sa.String(length=16), nullable=True),
        sa.Column("called_ae", sa.String(length=16), nullable=True),
        sa.Column("tls", sa.Boolean(), nullable=False),
        sa.Column("outcome", _OUTCOME, nullable=False),
        sa.Column("reason", sa.String(), nullable=True),
        sa.Column("instances_stored", sa.Integer(), nullable=False),
        sa.Column("instances_discarded", sa.Integer(), nullable=False),
        sa.Column("instances_failed", sa.Integer(), nullable=False),
        sa.Column("bytes_received", sa.BigInteger(), nullable=False),
        sa.Column("discarded_by_class", sa.JSON(), nullable=True),
        sa.Column("started_at", sa.DateTime(), nullable=False),
        sa.Column("ended_at", sa.DateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("association", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_association_listener"), ["listener"], unique=False)
        batch_op.create_index(batch_op.f("ix_association_outcome"), ["outcome"], unique=False)
        batch_op.create_index(batch_op.f("ix_association_ended_at"), ["ended_at"], unique=False)
    op.create_table(
        "seriesassociation",
        sa.Column("series_id", sa.Integer(), nullable=False),
        sa.Column("association_id", sa.Integer(), nullable=False),
        sa.Column("first_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(["association_id"], ["association.id"]),
        sa.ForeignKeyConstraint(["series_id"], ["series.id"]),
        sa.PrimaryKeyConstraint("series_id", "association_id"),
    )
    with op.batch_alter_table("seriesassociation", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_seriesassociation_association_id"), ["association_id"], unique=False
        )
    with op.batch_alter_table("instance", schema=None) as batch_op:
        batch_op.add_column(sa.Column("image_type", sa.String(length=200), nullable=True))
        batch_op.add_column(sa.Column("plane", sa.String(length=16), nullable=True))
        batch_op.add_column(sa.Column("frames", sa.Integer(), nullable=False, server_default="1"))


def downgrade() -> None:
    with op.batch_alter_table("instance", schema=None) as batch_op:
        batch_op.drop_column("frames")
        batch_op.drop_column("plane")
        batch_op.drop_column("image_type")
    op.drop_table("seriesassociation")
    op.drop_table("association")
