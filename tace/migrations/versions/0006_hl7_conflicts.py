"""HL7 control-ID conflicts: a reused control ID with other content is kept and flagged.

Revision ID: 0006_hl7_conflicts
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006_hl7_conflicts"
down_revision = "0005"
branch_labels = None
depends_on = None

_UNFLAGGED = sa.text("conflict_of IS NULL")


def upgrade() -> None:
    with op.batch_alter_table("hl7message", schema=None) as batch_op:
        batch_op.add_column(sa.Column("conflict_of", sa.Integer(), nullable=True))
        batch_op.create_foreign_key("fk_hl7message_conflict_of", "hl7message", ["conflict_of"], ["id"])
        batch_op.drop_constraint("uq_hl7_sender_control", type_="unique")
    op.create_index(
        "uq_hl7_sender_control",
        "hl7message",
        ["sender", "control_id"],
        unique=True,
        sqlite_where=_UNFLAGGED,
        postgresql_where=_UNFLAGGED,
    )


def downgrade() -> None:
    op.execute(sa.text("DELETE FROM hl7message WHERE conflict_of IS NOT NULL"))
    op.drop_index("uq_hl7_sender_control", table_name="hl7message")
    with op.batch_alter_table("hl7message", schema=None) as batch_op:
        batch_op.create_unique_constraint("uq_hl7_sender_control", ["sender", "control_id"])
        batch_op.drop_constraint("fk_hl7message_conflict_of", type_="foreignkey")
        batch_op.drop_column("conflict_of")
