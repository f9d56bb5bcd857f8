"""Outcomes (mRECIST after TACE) linked to predictions; the threshold each prediction used.

Revision ID: 0007_outcomes
Revises: 0006
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007_outcomes"
down_revision = "0006_hl7_conflicts"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "outcome",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("patient_id", sa.String(length=64), nullable=False),
        sa.Column("issuer_of_patient_id", sa.String(length=64), nullable=True),
        sa.Column("patient_hash", sa.String(length=32), nullable=False),
        sa.Column("tace_date", sa.Date(), nullable=True),
        sa.Column("assessed_on", sa.Date(), nullable=False),
        sa.Column("response", sa.String(length=2), nullable=True),
        sa.Column("result_status", sa.String(length=1), nullable=False),
        sa.Column("source_kind", sa.String(length=8), nullable=False),
        sa.Column("source_id", sa.String(length=200), nullable=False),
        sa.Column("outcome_key", sa.String(length=300), nullable=False),
        sa.Column("message_id", sa.Integer(), nullable=True),
        sa.Column("received_at", sa.DateTime(), nullable=False),
        sa.Column("superseded_at", sa.DateTime(), nullable=True),
        sa.Column("link_state", sa.String(length=24), nullable=False),
        sa.Column("link_detail", sa.String(), nullable=True),
        sa.Column("job_id", sa.Integer(), nullable=True),
        sa.Column("linked_at", sa.DateTime(), nullable=True),
        sa.ForeignKeyConstraint(["message_id"], ["hl7message.id"]),
        sa.ForeignKeyConstraint(["job_id"], ["job.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("source_kind", "source_id", name="uq_outcome_source"),
    )
    with op.batch_alter_table("outcome", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_outcome_patient_hash"), ["patient_hash"], unique=False)
        batch_op.create_index(batch_op.f("ix_outcome_outcome_key"), ["outcome_key"], unique=False)
        batch_op.create_index(batch_op.f("ix_outcome_message_id"), ["message_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_outcome_link_state"), ["link_state"], unique=False)
        batch_op.create_index(batch_op.f("ix_outcome_job_id"), ["job_id"], unique=False)
    with op.batch_alter_table("prediction", schema=None) as batch_op:
        batch_op.add_column(sa.Column("threshold", sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("prediction", schema=None) as batch_op:
        batch_op.drop_column("threshold")
    op.drop_table("outcome")
