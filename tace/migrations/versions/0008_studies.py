"""Studies, not series: phase decisions per series, study jobs, rejection-note deliveries.

Revision ID: 0008_studies
Revises: 0007_outcomes
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008_studies"
down_revision = "0007_outcomes"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("study", schema=None) as batch_op:
        batch_op.add_column(sa.Column("generation", sa.Integer(), nullable=False, server_default="0"))
        batch_op.add_column(sa.Column("ineligible_reason", sa.String(), nullable=True))
    with op.batch_alter_table("series", schema=None) as batch_op:
        batch_op.add_column(sa.Column("tags", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("phase", sa.String(length=24), nullable=True))
        batch_op.add_column(sa.Column("phase_confidence", sa.String(length=8), nullable=True))
        batch_op.add_column(sa.Column("phase_evidence", sa.String(), nullable=True))
    with op.batch_alter_table("job", schema=None) as batch_op:
        batch_op.add_column(sa.Column("study_id", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("selection", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("predecessor_job_id", sa.Integer(), nullable=True))
        batch_op.create_foreign_key("fk_job_study_id", "study", ["study_id"], ["id"])
        batch_op.create_foreign_key("fk_job_predecessor_job_id", "job", ["predecessor_job_id"], ["id"])
        batch_op.create_index("ix_job_study_id", ["study_id"])
    op.execute(
        sa.text(
            "UPDATE job SET study_id = (SELECT series.study_id FROM series WHERE series.id = job.series_id)"
        )
    )
    with op.batch_alter_table("delivery", schema=None) as batch_op:
        batch_op.add_column(sa.Column("kind", sa.String(length=24), nullable=False, server_default="sr"))
        batch_op.drop_constraint("uq_delivery_job_destination", type_="unique")
        batch_op.create_unique_constraint(
            "uq_delivery_job_destination_kind", ["job_id", "destination", "kind"]
        )


def downgrade() -> None:
    op.execute(sa.text("DELETE FROM delivery WHERE kind <> 'sr'"))
    with op.batch_alter_table("delivery", schema=None) as batch_op:
        batch_op.drop_constraint("uq_delivery_job_destination_kind", type_="unique")
        batch_op.create_unique_constraint("uq_delivery_job_destination", ["job_id", "destination"])
        batch_op.drop_column("kind")
    with op.batch_alter_table("job", schema=None) as batch_op:
        batch_op.drop_index("ix_job_study_id")
        batch_op.drop_constraint("fk_job_predecessor_job_id", type_="foreignkey")
        batch_op.drop_constraint("fk_job_study_id", type_="foreignkey")
        batch_op.drop_column("predecessor_job_id")
        batch_op.drop_column("selection")
        batch_op.drop_column("study_id")
    with op.batch_alter_table("series", schema=None) as batch_op:
        for column in ("phase_evidence", "phase_confidence", "phase", "tags"):
            batch_op.drop_column(column)
    with op.batch_alter_table("study", schema=None) as batch_op:
        batch_op.drop_column("ineligible_reason")
        batch_op.drop_column("generation")
