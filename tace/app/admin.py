"""Read models for administrators: what `tace jobs` and the admin API show.

They carry the patient hash, never the patient's name or ID, so they can be
printed, logged and shown on screens without the role that allows identifiers.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from sqlmodel import Session, col, select

from tace.db import Job, JobEvent, JobState, Prediction, Series, Study, table


@dataclass(frozen=True)
class JobSummary:
    id: int
    state: str
    stage: str
    generation: int
    attempts: int
    series_instance_uid: str
    patient_hash: str
    created_at: datetime
    updated_at: datetime
    error: str | None


@dataclass(frozen=True)
class JobEventView:
    at: datetime
    state: str
    stage: str
    detail: str | None


@dataclass(frozen=True)
class JobDetail:
    job: JobSummary
    study_instance_uid: str
    modality: str | None
    series_description: str | None
    instance_count: int
    published_at: datetime | None
    started_at: datetime | None
    heartbeat_at: datetime | None
    finished_at: datetime | None
    publish_count: int
    superseded_by_id: int | None
    events: list[JobEventView] = field(default_factory=list)
    prediction: dict[str, Any] | None = None


def _summary(job: Job, series: Series, study: Study) -> JobSummary:
    assert job.id is not None
    return JobSummary(
        id=job.id,
        state=str(job.state),
        stage=str(job.stage),
        generation=job.generation,
        attempts=job.attempts,
        series_instance_uid=series.series_instance_uid,
        patient_hash=study.patient_hash,
        created_at=job.created_at,
        updated_at=job.updated_at,
        error=job.error,
    )


def _jobs_with_series() -> Any:
    return (
        select(Job, Series, Study)
        .join(Series, col(Series.id) == Job.series_id)
        .join(Study, col(Study.id) == Series.study_id)
    )


def list_jobs(
    session: Session,
    *,
    state: JobState | None = None,
    since: datetime | None = None,
    patient_hash: str | None = None,
    series_instance_uid: str | None = None,
    limit: int = 100,
) -> list[JobSummary]:
    query = _jobs_with_series()
    if state is not None:
        query = query.where(Job.state == state)
    if since is not None:
        query = query.where(col(Job.updated_at) >= since)
    if patient_hash is not None:
        query = query.where(Study.patient_hash == patient_hash)
    if series_instance_uid is not None:
        query = query.where(Series.series_instance_uid == series_instance_uid)
    query = query.order_by(col(Job.id).desc()).limit(limit)
    return [_summary(job, series, study) for job, series, study in session.exec(query).all()]


def job_detail(session: Session, job_id: int) -> JobDetail | None:
    row = session.exec(_jobs_with_series().where(Job.id == job_id)).first()
    if row is None:
        return None
    job, series, study = row
    events = session.exec(select(JobEvent).where(JobEvent.job_id == job_id).order_by(col(JobEvent.id))).all()
    prediction = session.exec(select(Prediction).where(Prediction.job_id == job_id)).first()
    return JobDetail(
        job=_summary(job, series, study),
        study_instance_uid=study.study_instance_uid,
        modality=series.modality,
        series_description=series.series_description,
        instance_count=series.instance_count,
        published_at=job.published_at,
        started_at=job.started_at,
        heartbeat_at=job.heartbeat_at,
        finished_at=job.finished_at,
        publish_count=job.publish_count,
        superseded_by_id=job.superseded_by_id,
        events=[JobEventView(e.at, str(e.state), str(e.stage), e.detail) for e in events],
        prediction=(prediction.model_dump(exclude={"id", "job_id"}) if prediction is not None else None),
    )


def to_jsonable(value: Any) -> Any:
    """Dataclasses, datetimes and enums as plain JSON values."""
    if hasattr(value, "__dataclass_fields__"):
        return to_jsonable(asdict(value))
    if isinstance(value, dict):
        return {k: to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, datetime):
        return value.isoformat()
    return value


def deliveries(session: Session, job_id: int) -> list[dict[str, Any]]:
    from tace.db import Delivery

    rows = session.exec(select(Delivery).where(Delivery.job_id == job_id).order_by(col(Delivery.id))).all()
    return [row.model_dump(exclude={"id", "job_id"}) for row in rows]


def patient_identity(session: Session, job_id: int) -> dict[str, Any] | None:
    """Identifiers of a job's patient: only for callers whose role allows them."""
    row = session.exec(_jobs_with_series().where(Job.id == job_id)).first()
    if row is None:
        return None
    study = row[2]
    return {
        "patient_id": study.patient_id,
        "issuer_of_patient_id": study.issuer_of_patient_id,
        "patient_name": study.patient_name,
        "patient_birth_date": study.patient_birth_date,
        "accession_number": study.accession_number,
    }


def list_series(session: Session, *, state: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
    query = select(Series, Study).join(Study, col(Study.id) == Series.study_id)
    if state is not None:
        query = query.where(Series.state == state)
    rows = session.exec(query.order_by(col(Series.id).desc()).limit(limit)).all()
    return [
        {
            "id": series.id,
            "series_instance_uid": series.series_instance_uid,
            "study_instance_uid": study.study_instance_uid,
            "patient_hash": study.patient_hash,
            "modality": series.modality,
            "series_description": series.series_description,
            "state": str(series.state),
            "ineligible_reason": series.ineligible_reason,
            "instance_count": series.instance_count,
            "generation": series.generation,
            "last_received_at": series.last_received_at,
            "completed_at": series.completed_at,
        }
        for series, study in rows
    ]


def list_associations(session: Session, *, limit: int = 100) -> list[dict[str, Any]]:
    from tace.db import Association

    rows = session.exec(select(Association).order_by(col(Association.id).desc()).limit(limit)).all()
    return [row.model_dump() for row in rows]


def lab_status(session: Session, patient_hash: str) -> dict[str, Any]:
    """Per feature: how many values, the latest observation time, and rejections; no identifiers."""
    import sqlalchemy as sa

    from tace.db import LabObservation

    labs = table(LabObservation)
    rows = session.execute(
        sa.select(
            labs.c.feature,
            sa.func.count(),
            sa.func.max(labs.c.observed_at),
            sa.func.sum(sa.case((labs.c.rejected_reason.is_not(None), 1), else_=0)),
        )
        .where(labs.c.patient_hash == patient_hash, labs.c.superseded_at.is_(None))
        .group_by(labs.c.feature)
    ).all()
    return {
        "patient_hash": patient_hash,
        "features": {
            (feature or "(unmapped)"): {"values": count, "latest": latest, "rejected": int(rejected or 0)}
            for feature, count, latest, rejected in rows
        },
    }


def list_srs(session: Session, *, limit: int = 100) -> list[dict[str, Any]]:
    rows = session.exec(
        select(Prediction, Job, Series)
        .join(Job, col(Job.id) == Prediction.job_id)
        .join(Series, col(Series.id) == Job.series_id)
        .order_by(col(Prediction.id).desc())
        .limit(limit)
    ).all()
    return [
        {
            "job_id": job.id,
            "job_state": str(job.state),
            "series_instance_uid": series.series_instance_uid,
            "sr_sop_instance_uid": prediction.sr_sop_instance_uid,
            "sr_path": prediction.sr_path,
            "label": prediction.label,
            "probability": prediction.probability,
            "model_version": prediction.model_version,
            "demo_model": prediction.demo_model,
            "created_at": prediction.created_at,
        }
        for prediction, job, series in rows
    ]
