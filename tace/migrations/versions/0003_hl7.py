"""HL7 messages as received; observation identity, message link and text values.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "hl7message",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("sender", sa.String(length=200), nullable=False),
        sa.Column("control_id", sa.String(length=199), nullable=False),
        sa.Column("message_type", sa.String(length=20), nullable=True),
        sa.Column("version", sa.String(length=20), nullable=True),
        sa.Column("processing_id", sa.String(length=4), nullable=True),
        sa.Column("patient_hash", sa.String(length=32), nullable=True),
        sa.Column("raw", sa.LargeBinary(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("ack_code", sa.String(length=2), nullable=False),
        sa.Column("detail", sa.String(), nullable=True),
        sa.Column("observations", sa.Integer(), nullable=False),
        sa.Column("received_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("sender", "control_id", name="uq_hl7_sender_control"),
    )
    with op.batch_alter_table("hl7message", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_hl7message_patient_hash"), ["patient_hash"], unique=False)
    with op.batch_alter_table("labobservation", schema=None) as batch_op:
        batch_op.add_column(sa.Column("observation_key", sa.String(length=300), nullable=True))
        batch_op.add_column(sa.Column("message_id", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("value_text", sa.String(), nullable=True))
        batch_op.create_index(
            batch_op.f("ix_labobservation_observation_key"), ["observation_key"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_labobservation_message_id"), ["message_id"], unique=False)
        batch_op.create_foreign_key("fk_labobservation_message", "hl7message", ["message_id"], ["id"])
        batch_op.create_unique_constraint("uq_lab_source", ["source_kind", "source_id"])


def downgrade() -> None:
    with op.batch_alter_table("labobservation", schema=None) as batch_op:
        batch_op.drop_constraint("uq_lab_source", type_="unique")
        batch_op.drop_constraint("fk_labobservation_message", type_="foreignkey")
        batch_op.drop_index(batch_op.f("ix_labobservation_message_id"))
        batch_op.drop_index(batch_op.f("ix_labobservation_observation_key"))
        batch_op.drop_column("value_text")
        batch_op.drop_column("message_id")
        batch_op.drop_column("observation_key")
    op.drop_table("hl7message")
