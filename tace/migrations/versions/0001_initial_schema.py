"""Initial schema: studies, series, instances, jobs and their timeline, labs, predictions.

Timestamps are stored as naive UTC (tace.db.UTCDateTime adds the zone on read);
study and observation times are the site's local time as DICOM and HL7 give them.

Revision ID: 0001
Revises:
Create Date: 2026-11-26 14:54:32.583010
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "labobservation",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("patient_id", sa.String(length=64), nullable=False),
        sa.Column("issuer_of_patient_id", sa.String(length=64), nullable=True),
        sa.Column("patient_hash", sa.String(length=32), nullable=False),
        sa.Column("feature", sa.String(length=64), nullable=True),
        sa.Column("code", sa.String(length=64), nullable=True),
        sa.Column("code_system", sa.String(length=32), nullable=True),
        sa.Column("raw_value", sa.String(), nullable=True),
        sa.Column("raw_unit", sa.String(length=64), nullable=True),
        sa.Column("value", sa.Float(), nullable=True),
        sa.Column("unit", sa.String(length=64), nullable=True),
        sa.Column("comparator", sa.String(length=2), nullable=True),
        sa.Column("result_status", sa.String(length=1), nullable=False),
        sa.Column("observed_at", sa.DateTime(), nullable=True),
        sa.Column("received_at", sa.DateTime(), nullable=False),
        sa.Column("source_kind", sa.String(length=8), nullable=False),
        sa.Column("source_id", sa.String(length=200), nullable=False),
        sa.Column("rejected_reason", sa.String(), nullable=True),
        sa.Column("superseded_at", sa.DateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("labobservation", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_labobservation_feature"), ["feature"], unique=False)
        batch_op.create_index(batch_op.f("ix_labobservation_observed_at"), ["observed_at"], unique=False)
        batch_op.create_index(batch_op.f("ix_labobservation_patient_hash"), ["patient_hash"], unique=False)

    op.create_table(
        "study",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("study_instance_uid", sa.String(length=64), nullable=False),
        sa.Column("patient_id", sa.String(length=64), nullable=True),
        sa.Column("issuer_of_patient_id", sa.String(length=64), nullable=True),
        sa.Column("patient_hash", sa.String(length=32), nullable=False),
        sa.Column("patient_name", sa.String(length=324), nullable=True),
        sa.Column("patient_birth_date", sa.String(length=8), nullable=True),
        sa.Column("patient_sex", sa.String(length=16), nullable=True),
        sa.Column("study_datetime", sa.DateTime(), nullable=True),
        sa.Column("accession_number", sa.String(length=16), nullable=True),
        sa.Column("study_description", sa.String(length=64), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("study", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_study_patient_hash"), ["patient_hash"], unique=False)
        batch_op.create_index(batch_op.f("ix_study_study_instance_uid"), ["study_instance_uid"], unique=True)

    op.create_table(
        "series",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("series_instance_uid", sa.String(length=64), nullable=False),
        sa.Column("study_id", sa.Integer(), nullable=False),
        sa.Column("modality", sa.String(length=16), nullable=True),
        sa.Column("series_number", sa.Integer(), nullable=True),
        sa.Column("series_description", sa.String(length=64), nullable=True),
        sa.Column(
            "state",
            sa.Enum(
                "receiving",
                "complete",
                "ineligible",
                name="seriesstate",
                native_enum=False,
                length=24,
            ),
            nullable=False,
        ),
        sa.Column("ineligible_reason", sa.String(), nullable=True),
        sa.Column("instance_count", sa.Integer(), nullable=False),
        sa.Column("total_bytes", sa.BigInteger(), nullable=False),
        sa.Column("open_associations", sa.Integer(), nullable=False),
        sa.Column("generation", sa.Integer(), nullable=False),
        sa.Column("first_received_at", sa.DateTime(), nullable=True),
        sa.Column("last_received_at", sa.DateTime(), nullable=True),
        sa.Column("released_at", sa.DateTime(), nullable=True),
        sa.Column("completed_at", sa.DateTime(), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["study_id"],
            ["study.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("series", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_series_series_instance_uid"), ["series_instance_uid"], unique=True
        )
        batch_op.create_index(batch_op.f("ix_series_state"), ["state"], unique=False)
        batch_op.create_index(batch_op.f("ix_series_study_id"), ["study_id"], unique=False)

    op.create_table(
        "instance",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("sop_instance_uid", sa.String(length=64), nullable=False),
        sa.Column("sop_class_uid", sa.String(length=64), nullable=False),
        sa.Column("series_id", sa.Integer(), nullable=False),
        sa.Column("instance_number", sa.Integer(), nullable=True),
        sa.Column("transfer_syntax_uid", sa.String(length=64), nullable=False),
        sa.Column("path", sa.String(), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("calling_ae", sa.String(length=16), nullable=True),
        sa.Column("received_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["series_id"],
            ["series.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("instance", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_instance_series_id"), ["series_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_instance_sop_instance_uid"), ["sop_instance_uid"], unique=True)

    op.create_table(
        "job",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("series_id", sa.Integer(), nullable=False),
        sa.Column("generation", sa.Integer(), nullable=False),
        sa.Column(
            "state",
            sa.Enum(
                "received",
                "queued",
                "running",
                "waiting_for_labs",
                "predicted",
                "sent",
                "failed",
                "superseded",
                name="jobstate",
                native_enum=False,
                length=24,
            ),
            nullable=False,
        ),
        sa.Column(
            "stage",
            sa.Enum("infer", "send", name="stage", native_enum=False, length=24),
            nullable=False,
        ),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("lost_leases", sa.Integer(), nullable=False),
        sa.Column("publish_count", sa.Integer(), nullable=False),
        sa.Column("lease", sa.String(length=64), nullable=True),
        sa.Column("error", sa.String(), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.Column("published_at", sa.DateTime(), nullable=True),
        sa.Column("started_at", sa.DateTime(), nullable=True),
        sa.Column("heartbeat_at", sa.DateTime(), nullable=True),
        sa.Column("finished_at", sa.DateTime(), nullable=True),
        sa.Column("not_before", sa.DateTime(), nullable=True),
        sa.Column("superseded_by_id", sa.Integer(), nullable=True),
        sa.ForeignKeyConstraint(
            ["series_id"],
            ["series.id"],
        ),
        sa.ForeignKeyConstraint(
            ["superseded_by_id"],
            ["job.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("series_id", "generation", name="uq_job_series_gen"),
    )
    with op.batch_alter_table("job", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_job_series_id"), ["series_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_job_state"), ["state"], unique=False)

    op.create_table(
        "jobevent",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("job_id", sa.Integer(), nullable=False),
        sa.Column("at", sa.DateTime(), nullable=False),
        sa.Column(
            "state",
            sa.Enum(
                "received",
                "queued",
                "running",
                "waiting_for_labs",
                "predicted",
                "sent",
                "failed",
                "superseded",
                name="jobstate",
                native_enum=False,
                length=24,
            ),
            nullable=False,
        ),
        sa.Column(
            "stage",
            sa.Enum("infer", "send", name="stage", native_enum=False, length=24),
            nullable=False,
        ),
        sa.Column("detail", sa.String(), nullable=True),
        sa.ForeignKeyConstraint(
            ["job_id"],
            ["job.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("jobevent", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_jobevent_job_id"), ["job_id"], unique=False)

    op.create_table(
        "prediction",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("job_id", sa.Integer(), nullable=False),
        sa.Column("probability", sa.Float(), nullable=False),
        sa.Column("label", sa.String(length=32), nullable=False),
        sa.Column("model_name", sa.String(length=64), nullable=False),
        sa.Column("model_version", sa.String(length=64), nullable=False),
        sa.Column("checkpoint_sha256", sa.String(length=64), nullable=False),
        sa.Column("demo_model", sa.Boolean(), nullable=False),
        sa.Column("features", sa.JSON(), nullable=True),
        sa.Column("missing_features", sa.JSON(), nullable=True),
        sa.Column("timings", sa.JSON(), nullable=True),
        sa.Column("sr_sop_instance_uid", sa.String(length=64), nullable=True),
        sa.Column("sr_series_instance_uid", sa.String(length=64), nullable=True),
        sa.Column("sr_path", sa.String(), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["job_id"],
            ["job.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("prediction", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_prediction_job_id"), ["job_id"], unique=True)


def downgrade() -> None:
    with op.batch_alter_table("prediction", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_prediction_job_id"))

    op.drop_table("prediction")
    with op.batch_alter_table("jobevent", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_jobevent_job_id"))

    op.drop_table("jobevent")
    with op.batch_alter_table("job", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_job_state"))
        batch_op.drop_index(batch_op.f("ix_job_series_id"))

    op.drop_table("job")
    with op.batch_alter_table("instance", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_instance_sop_instance_uid"))
        batch_op.drop_index(batch_op.f("ix_instance_series_id"))

    op.drop_table("instance")
    with op.batch_alter_table("series", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_series_study_id"))
        batch_op.drop_index(batch_op.f("ix_series_state"))
        batch_op.drop_index(batch_op.f("ix_series_series_instance_uid"))

    op.drop_table("series")
    with op.batch_alter_table("study", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_study_study_instance_uid"))
        batch_op.drop_index(batch_op.f("ix_study_patient_hash"))

    op.drop_table("study")
    with op.batch_alter_table("labobservation", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_labobservation_patient_hash"))
        batch_op.drop_index(batch_op.f("ix_labobservation_observed_at"))
        batch_op.drop_index(batch_op.f("ix_labobservation_feature"))

    op.drop_table("labobservation")
