"""Replaying jobs: put them back in the outbox at a stage, never duplicating an SR.

Replaying the same generation regenerates the same SR UIDs, so a PACS that already
holds the SR sees the same object again rather than a second one. A new
generation (new SR UIDs, superseding the old job) happens only when asked for.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from tace.db import Job, JobState, Prediction, Series, Stage, Study, session_scope, utcnow
from tace.jobs import create_job, create_study_job, reset_for_replay


class ReplayRefused(ValueError):
    """This job cannot be replayed as asked; the message says why."""


class JobNotFound(ReplayRefused):
    """No job has this id."""


@dataclass(frozen=True)
class ReplayOutcome:
    job_id: int
    replayed_as: int
    stage: Stage


def _check(session: Session, job: Job, stage: Stage, stall_seconds: float) -> None:
    if (
        job.state == JobState.running
        and job.heartbeat_at
        and job.heartbeat_at > utcnow() - timedelta(seconds=stall_seconds)
    ):
        raise ReplayRefused(f"job {job.id} is running now")
    if job.state == JobState.failed and (job.error or "").startswith("study:"):
        raise ReplayRefused(f"job {job.id} has no input to replay ({job.error})")
    if job.state == JobState.superseded:
        raise ReplayRefused(f"job {job.id} was superseded by job {job.superseded_by_id}; replay that one")
    if stage == Stage.send:
        prediction = session.exec(select(Prediction).where(Prediction.job_id == job.id)).first()
        if prediction is None or prediction.sr_path is None:
            raise ReplayRefused(f"job {job.id} has no stored SR; replay it from infer")


def _new_generation(session: Session, job: Job, reason: str) -> Job:
    """The same input again under new SR UIDs; a study job stays a study job (same selection)."""
    if job.study_id is not None and job.selection is not None:
        study = session.get(Study, job.study_id)
        assert study is not None
        study.generation += 1
        study.ineligible_reason = None
        session.add(study)
        session.flush()
        return create_study_job(
            session,
            study_id=job.study_id,
            series_id=job.series_id,
            generation=study.generation,
            selection=job.selection,
            detail=f"{reason} (new generation)",
        )
    series = session.get(Series, job.series_id)
    assert series is not None
    series.generation += 1
    session.add(series)
    return create_job(session, series.id or 0, series.generation, detail=f"{reason} (new generation)")


def replay_job(
    engine: Engine, job_id: int, stage: Stage, *, new_generation: bool, stall_seconds: float, reason: str
) -> ReplayOutcome:
    with session_scope(engine) as session:
        job = session.get(Job, job_id)
        if job is None:
            raise JobNotFound(f"no job {job_id}")
        _check(session, job, Stage.infer if new_generation else stage, stall_seconds)
        if new_generation:
            successor = _new_generation(session, job, reason)
            assert successor.id is not None
            return ReplayOutcome(job_id, successor.id, Stage.infer)
        reset_for_replay(session, job, stage, reason)
        return ReplayOutcome(job_id, job_id, stage)


def select_jobs(
    engine: Engine, *, job_id: int | None = None, series_uid: str | None = None, state: JobState | None = None
) -> list[int]:
    with session_scope(engine) as session:
        query = select(Job.id).join(Series, col(Series.id) == Job.series_id)
        if job_id is not None:
            query = query.where(col(Job.id) == job_id)
        if series_uid is not None:
            query = query.where(
                Series.series_instance_uid == series_uid, col(Job.state) != JobState.superseded
            )
        if state is not None:
            query = query.where(col(Job.state) == state)
        return [i for i in session.exec(query.order_by(col(Job.id))).all() if i is not None]
