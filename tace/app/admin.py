"""Read models for administrators: what `tace jobs` and the admin API show.

They carry the patient hash, never the patient's name or ID, so they can be
printed, logged and shown on screens without the role that allows identifiers.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import date, datetime, timedelta
from functools import cache
from typing import Any

import sqlalchemy as sa
from sqlmodel import Session, col, select

from tace.db import Job, JobEvent, JobState, LabObservation, Prediction, Series, Study, table
from tace.display import missing_text, probability_text

_REJECTED_SHOWN = 50
STATE_WORDS = {JobState.no_destination.value: "predicted, no destination"}
"""States whose name alone would mislead a reader; the rest read as their name."""


def state_words(state: str) -> str:
    return STATE_WORDS.get(str(state), str(state).replace("_", " "))


@cache
def feature_labels() -> Mapping[str, tuple[str, bool]]:
    """The schema's words for each feature (``serum albumin``), and whether it is a number."""
    from model.schema import FeatureKind, FeatureSchema

    return {
        name: (spec.label, spec.kind is FeatureKind.continuous)
        for name, spec in FeatureSchema.load().by_name().items()
    }


def feature_label(name: str) -> str:
    return feature_labels().get(name, (name.replace("_", " "), True))[0]


def _shown_value(name: str, value: Mapping[str, Any]) -> float | str | None:
    """Coded features as sent (``M``); numbers in the canonical unit (the text is the raw value)."""
    number = value.get("value")
    numeric = feature_labels().get(name, ("", True))[1]
    if value.get("text") and (not numeric or number is None or math.isnan(number)):
        return str(value["text"])
    return None if number is None or math.isnan(number) else float(number)


@dataclass(frozen=True)
class PredictionSummary:
    label: str
    probability: float
    demo_model: bool
    model_version: str


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
    prediction: PredictionSummary | None = None


@dataclass(frozen=True)
class JobEventView:
    at: datetime
    state: str
    stage: str
    detail: str | None


@dataclass(frozen=True)
class FeatureUsed:
    name: str
    value: float | str | None
    unit: str | None
    observed_at: str | None
    source: str | None
    label: str


@dataclass(frozen=True)
class RejectedValue:
    """A clinical value of this patient the feed refused, and why (never given to the model)."""

    feature: str | None
    code: str | None
    value: str | None
    unit: str | None
    observed_at: datetime | None
    source: str
    reason: str


@dataclass(frozen=True)
class SeriesDecision:
    """One series of the job's study: its contrast phase with the evidence, and whether it was read."""

    series_number: int | None
    series_description: str | None
    series_instance_uid: str
    phase: str | None
    confidence: str | None
    evidence: str | None
    used_for: str | None
    reason: str


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
    not_before: datetime | None = None
    labs_deadline: datetime | None = None
    """When a job waiting for labs stops waiting (then: impute or fail, by policy)."""
    features_used: list[FeatureUsed] = field(default_factory=list)
    features_missing: list[str] = field(default_factory=list)
    features_rejected: list[RejectedValue] = field(default_factory=list)
    clinical_missing: str | None = None
    """``3 of 43 clinical values missing: ...`` in the schema's words, for a predicted job."""
    probability: str | None = None
    """The probability as people read it (``>0.999``, never ``1.000``)."""
    series_decisions: list[SeriesDecision] = field(default_factory=list)
    no_sr_reason: str | None = None
    """Why this study has no SR from this job (a missing phase, a refusal, a newer job), else None."""
    predecessor_job_id: int | None = None


def _summary(job: Job, series: Series, study: Study, prediction: Prediction | None = None) -> JobSummary:
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
        prediction=(
            PredictionSummary(
                prediction.label, prediction.probability, prediction.demo_model, prediction.model_version
            )
            if prediction is not None
            else None
        ),
    )


def _jobs_with_series() -> Any:
    return (
        select(Job, Series, Study)
        .join(Series, col(Series.id) == Job.series_id)
        .join(Study, col(Study.id) == Series.study_id)
    )


def _filtered(
    query: Any,
    *,
    state: JobState | None,
    since: datetime | None,
    patient_hash: str | None,
    series_instance_uid: str | None,
    search: str | None,
) -> Any:
    if state is not None:
        query = query.where(Job.state == state)
    if since is not None:
        query = query.where(col(Job.updated_at) >= since)
    if patient_hash is not None:
        query = query.where(Study.patient_hash == patient_hash)
    if series_instance_uid is not None:
        query = query.where(Series.series_instance_uid == series_instance_uid)
    if search:
        text = search.strip()
        query = query.where(
            sa.or_(
                col(Study.patient_hash).startswith(text, autoescape=True),
                col(Series.series_instance_uid).startswith(text, autoescape=True),
            )
        )
    return query


def list_jobs(
    session: Session,
    *,
    state: JobState | None = None,
    since: datetime | None = None,
    patient_hash: str | None = None,
    series_instance_uid: str | None = None,
    search: str | None = None,
    limit: int = 100,
    offset: int = 0,
) -> list[JobSummary]:
    """Newest first; ``search`` matches the start of a patient hash or a series UID."""
    query = _filtered(
        select(Job, Series, Study, Prediction)
        .join(Series, col(Series.id) == Job.series_id)
        .join(Study, col(Study.id) == Series.study_id)
        .outerjoin(Prediction, col(Prediction.job_id) == Job.id),
        state=state,
        since=since,
        patient_hash=patient_hash,
        series_instance_uid=series_instance_uid,
        search=search,
    )
    query = query.order_by(col(Job.id).desc()).offset(offset).limit(limit)
    return [_summary(*row) for row in session.exec(query).all()]


def count_jobs(session: Session, *, state: JobState | None = None, search: str | None = None) -> int:
    query = _filtered(
        select(sa.func.count())
        .select_from(Job)
        .join(Series, col(Series.id) == Job.series_id)
        .join(Study, col(Study.id) == Series.study_id),
        state=state,
        since=None,
        patient_hash=None,
        series_instance_uid=None,
        search=search,
    )
    return int(session.exec(query).one())


def job_counts(session: Session) -> dict[str, int]:
    """Jobs per state, every state listed (zero included) in the state machine's order."""
    rows = session.exec(select(Job.state, sa.func.count()).group_by(Job.state)).all()
    found = {str(state): int(count) for state, count in rows}
    return {state.value: found.get(state.value, 0) for state in JobState}


def _features_used(prediction: Prediction | None) -> list[FeatureUsed]:
    if prediction is None or not prediction.features:
        return []
    used = []
    for name, value in prediction.features.items():
        if value is None:
            continue
        used.append(
            FeatureUsed(
                name,
                _shown_value(name, value),
                value.get("unit"),
                value.get("observed_at"),
                value.get("source"),
                feature_label(name),
            )
        )
    return used


def _rejected(session: Session, patient_hash: str, before: datetime) -> list[RejectedValue]:
    labs = table(LabObservation)
    rows = session.execute(
        sa.select(labs)
        .where(
            labs.c.patient_hash == patient_hash,
            labs.c.rejected_reason.is_not(None),
            labs.c.superseded_at.is_(None),
            labs.c.received_at <= before,
        )
        .order_by(labs.c.id.desc())
        .limit(_REJECTED_SHOWN)
    ).all()
    return [
        RejectedValue(
            row.feature,
            row.code,
            row.raw_value,
            row.raw_unit,
            row.observed_at,
            f"{row.source_kind} {row.source_id}",
            row.rejected_reason,
        )
        for row in rows
    ]


def _series_decisions(session: Session, job: Job) -> list[SeriesDecision]:
    """From the job's recorded selection; jobs made before studies were selected: the study's series."""
    if job.selection:
        return [
            SeriesDecision(
                item.get("series_number"),
                item.get("description"),
                item["series_instance_uid"],
                item.get("phase"),
                item.get("confidence"),
                item.get("evidence"),
                item.get("used_for"),
                item.get("reason", ""),
            )
            for item in job.selection.get("series", [])
        ]
    rows = session.exec(
        select(Series).where(Series.study_id == job.study_id).order_by(col(Series.series_number))
    ).all()
    return [
        SeriesDecision(
            s.series_number,
            s.series_description,
            s.series_instance_uid,
            s.phase,
            s.phase_confidence,
            s.phase_evidence,
            "any" if s.id == job.series_id else None,
            "used" if s.id == job.series_id else (s.ineligible_reason or "not this job's series"),
        )
        for s in rows
    ]


def _no_sr_reason(job: Job, study: Study) -> str | None:
    if job.state == JobState.failed:
        return job.error
    if job.state == JobState.superseded:
        return f"superseded by job {job.superseded_by_id} (the study changed or was replayed)"
    return None


def job_detail(
    session: Session, job_id: int, *, labs_deadline_seconds: float | None = None
) -> JobDetail | None:
    """One job; with ``labs_deadline_seconds`` a job waiting for labs says until when it waits."""
    row = session.exec(_jobs_with_series().where(Job.id == job_id)).first()
    if row is None:
        return None
    job, series, study = row
    events = session.exec(select(JobEvent).where(JobEvent.job_id == job_id).order_by(col(JobEvent.id))).all()
    prediction = session.exec(select(Prediction).where(Prediction.job_id == job_id)).first()
    waiting = job.state == JobState.waiting_for_labs and labs_deadline_seconds is not None
    return JobDetail(
        job=_summary(job, series, study, prediction),
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
        not_before=job.not_before,
        labs_deadline=(job.created_at + timedelta(seconds=labs_deadline_seconds or 0) if waiting else None),
        features_used=_features_used(prediction),
        features_missing=list(prediction.missing_features or []) if prediction is not None else [],
        features_rejected=_rejected(session, study.patient_hash, job.updated_at),
        clinical_missing=(
            missing_text(
                [feature_label(name) for name in prediction.missing_features or []], len(feature_labels())
            )
            if prediction is not None
            else None
        ),
        probability=probability_text(prediction.probability) if prediction is not None else None,
        series_decisions=_series_decisions(session, job),
        no_sr_reason=_no_sr_reason(job, study),
        predecessor_job_id=job.predecessor_job_id,
    )


def sr_file(session: Session, job_id: int) -> str | None:
    """The stored SR of a job, relative to the data dir (it carries the patient's identifiers)."""
    prediction = session.exec(select(Prediction).where(Prediction.job_id == job_id)).first()
    return prediction.sr_path if prediction is not None else None


def to_jsonable(value: Any) -> Any:
    """Dataclasses, datetimes and enums as plain JSON values."""
    if hasattr(value, "__dataclass_fields__"):
        return to_jsonable(asdict(value))
    if isinstance(value, dict):
        return {k: to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, datetime | date):
        return value.isoformat()
    return value


DELIVERY_CHANNELS = {
    "sr": "SR",
    "rejection": "rejection note",
    "hl7_result": "HL7 ORU^R01",
    "fhir_report": "FHIR DiagnosticReport",
}
"""What each kind of delivery is, in the words of the job page and `tace jobs show`."""


def deliveries(session: Session, job_id: int) -> list[dict[str, Any]]:
    """Every delivery of the job's results (SR, rejection note, EHR channels), with its channel in words."""
    from tace.db import Delivery

    rows = session.exec(select(Delivery).where(Delivery.job_id == job_id).order_by(col(Delivery.id))).all()
    return [
        {
            "channel": DELIVERY_CHANNELS.get(str(row.kind), str(row.kind)),
            **row.model_dump(exclude={"id", "job_id"}),
        }
        for row in rows
    ]


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
