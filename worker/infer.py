"""The infer stage: a completed series and its labs -> a prediction and a stored SR.

Every refusal (unreadable volume, labs missing past the deadline) ends the job
as failed with a reason an administrator can read in `tace jobs show`; labs that
may still come put the job in ``waiting_for_labs`` instead.
"""

from __future__ import annotations

import datetime as dt
import io
import time
from dataclasses import dataclass, field
from pathlib import Path

import sqlalchemy as sa
from sqlmodel import Session, col, select

from hl7_clinical.features import ClinicalFeatures, clinical_features
from hl7_clinical.identity import effective_issuer
from model.predictor import PredictionResult
from model.schema import SchemaError
from tace.db import Instance, Job, JobState, Prediction, Series, Stage, Study, session_scope, utcnow
from tace.jobs import Lease, finish, mark_published
from tace.logging import get_logger
from tace.metrics import metric
from tace.queue import BrokerUnavailable
from tace.storage import atomic_write
from worker.context import WorkerContext
from worker.sr import SrContent, build_sr, sr_identity
from worker.stage import run_claimed
from worker.volume import VolumeError, read_volume

log = get_logger("tace.worker.infer")


@dataclass
class Timer:
    stages: dict[str, float] = field(default_factory=dict)

    def __call__(self, name: str) -> _Stage:
        return _Stage(self, name)


class _Stage:
    def __init__(self, timer: Timer, name: str) -> None:
        self._timer, self._name = timer, name

    def __enter__(self) -> None:
        self._start = time.perf_counter()

    def __exit__(self, *exc: object) -> None:
        self._timer.stages[self._name] = round(time.perf_counter() - self._start, 4)


@dataclass(frozen=True)
class _Case:
    job: Job
    series: Series
    study: Study
    paths: list[Path]


def _load(ctx: WorkerContext, job_id: int) -> _Case:
    with session_scope(ctx.engine) as session:
        job = session.get(Job, job_id)
        assert job is not None
        series = session.get(Series, job.series_id)
        assert series is not None
        study = session.get(Study, series.study_id)
        assert study is not None
        paths = [
            ctx.storage.resolve(p)
            for p in session.exec(
                select(Instance.path).where(Instance.series_id == series.id).order_by(col(Instance.id))
            )
        ]
        return _Case(job, series, study, paths)


def study_time(study: Study, series: Series) -> dt.datetime:
    """The time labs are assembled for: the study date, else when the series arrived (local time)."""
    if study.study_datetime is not None:
        return study.study_datetime
    arrived = series.first_received_at or utcnow()
    return arrived.astimezone().replace(tzinfo=None)


def run_infer(ctx: WorkerContext, job_id: int) -> str:
    """Claim and run the infer stage; returns what happened (for logs and tests)."""
    outcome = run_claimed(ctx, job_id, Stage.infer, lambda lease: _infer(ctx, lease))
    if outcome == "predicted":
        try:
            ctx.publisher(job_id, Stage.send)
            mark_published(ctx.engine, job_id, JobState.predicted)
        except BrokerUnavailable:
            log.warning("job.send_publish_deferred", note="the relay will publish it")
    return outcome


def _infer(ctx: WorkerContext, lease: Lease) -> str:
    settings = ctx.settings
    timer = Timer()
    case = _load(ctx, lease.job_id)
    with timer("read_volume"):
        try:
            volume = read_volume(case.paths, executor=ctx.decode_pool)
        except VolumeError as exc:
            finish(ctx.engine, lease, JobState.failed, error=f"volume: {exc}")
            log.warning("job.volume_refused", reason=str(exc))
            return "failed"
    predictor = ctx.predictor
    with timer("features"):
        issuer = effective_issuer(case.study.issuer_of_patient_id, settings.default_issuer)
        features = clinical_features(
            ctx.engine,
            patient_id=case.study.patient_id or "",
            issuer=issuer,
            patient_hash=case.study.patient_hash,
            at=study_time(case.study, case.series),
            definitions=ctx.definitions,
        )
    missing_required = [name for name in settings.required_features if name in features.missing]
    if missing_required:
        waited = (utcnow() - case.job.created_at).total_seconds()
        remaining = settings.labs_deadline_seconds - waited
        if remaining > 0:
            retry_at = utcnow() + dt.timedelta(seconds=min(settings.labs_retry_seconds, remaining))
            finish(
                ctx.engine,
                lease,
                JobState.waiting_for_labs,
                not_before=retry_at,
                detail=f"waiting for labs: {', '.join(missing_required)}",
            )
            log.info(
                "job.waiting_for_labs",
                missing=missing_required,
                retry_in=round(min(settings.labs_retry_seconds, remaining)),
            )
            return "waiting_for_labs"
        if settings.labs_missing_policy == "fail":
            names = ", ".join(missing_required)
            reason = f"labs: missing after {settings.labs_deadline_seconds:.0f} s: {names}"
            finish(ctx.engine, lease, JobState.failed, error=reason)
            return "failed"
    with timer("model"):
        try:
            result = predictor.predict(volume.hu, features.model_input())
        except SchemaError as exc:
            finish(ctx.engine, lease, JobState.failed, error=f"features: {exc}")
            return "failed"
    with timer("sr"):
        identity = sr_identity(case.series.series_instance_uid, result.model_version, case.job.generation)
        sr = build_sr(
            volume.headers,
            SrContent.of(result),
            identity,
        )
        buffer = io.BytesIO()
        sr.save_as(buffer, enforce_file_format=True)
        path = ctx.storage.sr_path(case.study.study_instance_uid, identity.sop_instance_uid)
        atomic_write(path, buffer.getvalue(), ctx.storage.staging_dir)
    timings = {**timer.stages, **{f"model.{k}": round(v, 4) for k, v in result.timings.items()}}
    with Session(ctx.engine, expire_on_commit=False) as session, session.begin():
        _save_prediction(
            session,
            lease.job_id,
            result,
            features,
            identity.sop_instance_uid,
            identity.series_instance_uid,
            ctx.storage.relative(path),
            timings,
        )
        finish(
            ctx.engine,
            lease,
            JobState.predicted,
            stage=Stage.send,
            detail=f"{result.label} p={result.probability:.3f}",
            session=session,
        )
    for stage, seconds in timer.stages.items():
        metric("stage").labels(stage=stage).observe(seconds)
    log.info(
        "job.predicted",
        label=result.label,
        probability=round(result.probability, 4),
        demo=result.demo,
        missing=len(result.missing_features),
        timings=timings,
    )
    return "predicted"


def _save_prediction(
    session: Session,
    job_id: int,
    result: PredictionResult,
    features: ClinicalFeatures,
    sop_uid: str,
    series_uid: str,
    path: str,
    timings: dict[str, float],
) -> None:
    session.execute(sa.delete(Prediction).where(col(Prediction.job_id) == job_id))
    session.add(
        Prediction(
            job_id=job_id,
            probability=result.probability,
            label=result.label,
            model_name=result.model_name,
            model_version=result.model_version,
            checkpoint_sha256=result.checkpoint_sha256,
            demo_model=result.demo,
            features=features.provenance(),
            missing_features=list(result.missing_features),
            timings=timings,
            sr_sop_instance_uid=sop_uid,
            sr_series_instance_uid=series_uid,
            sr_path=path,
        )
    )
