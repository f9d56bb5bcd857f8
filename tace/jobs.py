"""Job state machine: transitions, leases and heartbeats.

Delivery through the broker is at least once, so the same job may reach two
workers. A worker therefore *claims* a job with a compare-and-set update that
hands it a lease token, proves it is alive with heartbeats, and can only finish
the job while it still holds the lease. A worker that went silent loses the lease
to the next claim; when it wakes up its completion is refused, so a job never
completes twice.
"""

from __future__ import annotations

import threading
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from tace import phi
from tace.db import (
    TERMINAL_JOB_STATES,
    Delivery,
    DeliveryKind,
    DeliveryState,
    Job,
    JobEvent,
    JobState,
    Series,
    Stage,
    Study,
    session_scope,
    table,
    utcnow,
)

_READY_STATES: dict[Stage, tuple[JobState, ...]] = {
    Stage.infer: (JobState.received, JobState.queued, JobState.waiting_for_labs),
    Stage.send: (JobState.predicted,),
}


class LeaseLost(Exception):
    """Another worker took the job over (this one was presumed dead) or it was superseded."""


@dataclass(frozen=True)
class Lease:
    job_id: int
    token: str
    stage: Stage
    attempt: int


def _event(session: Session, job_id: int, state: JobState, stage: Stage, detail: str | None) -> None:
    session.add(JobEvent(job_id=job_id, state=state, stage=stage, detail=_scrubbed(detail), at=utcnow()))


def _scrubbed(text: str | None) -> str | None:
    """Job errors and timelines are shown to roles without identifiers: scrub before storing."""
    return phi.scrub(text) if text else text


def _protect_patient(session: Session, job_id: int) -> None:
    """Register the job's patient identifiers in this process before its errors are written.

    A worker learns them from the datasets it reads, but an error can be raised
    before (or without) any read, and the send stage never parses the CT at all.
    """
    row = session.execute(
        sa.select(col(Study.patient_id), col(Study.patient_name), col(Study.patient_birth_date))
        .join(Series, col(Series.study_id) == Study.id)
        .join(Job, col(Job.series_id) == Series.id)
        .where(col(Job.id) == job_id)
    ).first()
    if row is not None:
        phi.protect(*row)


def create_job(session: Session, series_id: int, generation: int, detail: str | None = None) -> Job:
    """Create the job of a newly completed series generation, superseding live older ones.

    Runs inside the caller's transaction so that completing the series and creating
    its job commit together (the outbox pattern).
    """
    series = session.get(Series, series_id)
    study_id = series.study_id if series is not None else None
    job = Job(series_id=series_id, study_id=study_id, generation=generation, state=JobState.received)
    session.add(job)
    session.flush()
    assert job.id is not None
    _event(session, job.id, JobState.received, Stage.infer, detail)
    older = session.exec(
        select(Job).where(
            col(Job.series_id) == series_id,
            Job.id != job.id,
            col(Job.state).not_in(list(TERMINAL_JOB_STATES)),
        )
    ).all()
    for previous in older:
        assert previous.id is not None
        previous.state = JobState.superseded
        previous.superseded_by_id = job.id
        previous.lease = None
        previous.updated_at = previous.finished_at = utcnow()
        _event(session, previous.id, JobState.superseded, previous.stage, f"superseded by job {job.id}")
    return job


def delivered_predecessor(session: Session, study_id: int, before: int) -> int | None:
    """The latest earlier job of the study whose SR reached at least one destination.

    Asked when a job is created and again when it is sent: an earlier job's send
    that was under way when this one was created may have delivered since.
    """
    return session.exec(
        select(Job.id)
        .join(Delivery, col(Delivery.job_id) == Job.id)
        .where(
            col(Job.study_id) == study_id,
            col(Job.id) < before,
            col(Delivery.kind) == DeliveryKind.sr,
            col(Delivery.state) == DeliveryState.delivered,
        )
        .order_by(col(Job.id).desc())
        .limit(1)
    ).first()


MODEL_CHANGED = "study: the model changed"
"""How a study job the worker refused because the checkpoint now reads other phases begins its error;
the listener selects such studies again for the current checkpoint."""


def refresh_predecessor(session: Session, job: Job) -> int | None:
    """The job's predecessor as it stands now, recorded on the job if an earlier send delivered since."""
    if job.study_id is not None and job.id is not None:
        latest = delivered_predecessor(session, job.study_id, job.id)
        if latest is not None and latest != job.predecessor_job_id:
            job.predecessor_job_id = latest
    return job.predecessor_job_id


_DELIVERED = frozenset({JobState.predicted, JobState.sent, JobState.no_destination})


def create_study_job(
    session: Session,
    *,
    study_id: int,
    series_id: int,
    generation: int,
    selection: dict[str, object],
    detail: str,
    error: str | None = None,
) -> Job:
    """The job of a study at one generation, superseding every earlier job of the study.

    Runs in the caller's transaction (the series completion that made the study
    ready: the outbox rule). ``error`` records a study that cannot be predicted
    (a phase the model needs never came) as a failed job, so lists and
    `tace jobs show` say why it got no SR; such a job leaves an earlier predicted
    or delivered job in place, as nothing replaces its SR. An earlier job whose SR
    was delivered becomes the predecessor: the new SR names it and withdraws it when sent.
    """
    now = utcnow()
    failed = error is not None
    job = Job(
        series_id=series_id,
        study_id=study_id,
        generation=generation,
        selection=selection,
        state=JobState.failed if failed else JobState.received,
        error=_scrubbed(error),
        finished_at=now if failed else None,
    )
    session.add(job)
    session.flush()
    assert job.id is not None
    _event(session, job.id, JobState.received, Stage.infer, detail)
    if failed:
        _event(session, job.id, JobState.failed, Stage.infer, error)
    else:
        job.predecessor_job_id = delivered_predecessor(session, study_id, job.id)
    older = session.exec(
        select(Job).where(
            col(Job.study_id) == study_id, Job.id != job.id, col(Job.state) != JobState.superseded
        )
    ).all()
    for previous in older:
        assert previous.id is not None
        if failed and previous.state in _DELIVERED:
            # No new SR will replace it, so the one in the PACS stays the study's answer.
            continue
        previous.state = JobState.superseded
        previous.superseded_by_id = job.id
        previous.lease = None
        previous.updated_at = now
        previous.finished_at = previous.finished_at or now
        _event(session, previous.id, JobState.superseded, previous.stage, f"superseded by job {job.id}")
    return job


def claim(
    engine: Engine,
    job_id: int,
    stage: Stage,
    *,
    stall_seconds: float,
    max_lost_leases: int = 3,
) -> Lease | None:
    """Take the job for ``stage`` if it is ready, or if its last worker went silent.

    Returns ``None`` when another worker holds a live lease or the job is past this
    stage; the caller acknowledges the message and does nothing.
    """
    now = utcnow()
    stale_before = now - timedelta(seconds=stall_seconds)
    token = uuid.uuid4().hex
    ready = sa.and_(col(Job.stage) == stage, col(Job.state).in_(_READY_STATES[stage]))
    stale = sa.and_(
        col(Job.stage) == stage,
        col(Job.state) == JobState.running,
        sa.or_(col(Job.heartbeat_at).is_(None), col(Job.heartbeat_at) < stale_before),
    )
    with session_scope(engine) as session:
        job = session.get(Job, job_id)
        if job is None:
            return None
        took_over = job.state == JobState.running
        if took_over and job.lost_leases + 1 >= max_lost_leases:
            reason = f"gave up: {job.lost_leases + 1} workers went silent on this job"
            gave_up = session.connection().execute(
                sa.update(Job)
                .where(col(Job.id) == job_id, stale)
                .values(
                    state=JobState.failed,
                    error=reason,
                    lease=None,
                    updated_at=now,
                    finished_at=now,
                    lost_leases=Job.lost_leases + 1,
                )
            )
            if gave_up.rowcount == 1:
                _event(session, job_id, JobState.failed, stage, reason)
            return None
        result = session.connection().execute(
            sa.update(Job)
            .where(col(Job.id) == job_id, sa.or_(ready, stale))
            .values(
                state=JobState.running,
                lease=token,
                attempts=Job.attempts + 1,
                lost_leases=Job.lost_leases + (1 if took_over else 0),
                started_at=now,
                heartbeat_at=now,
                updated_at=now,
                not_before=None,
            )
        )
        if result.rowcount != 1:
            return None
        session.refresh(job)
        _protect_patient(session, job_id)
        detail = f"attempt {job.attempts}" + (" (previous worker went silent)" if took_over else "")
        _event(session, job_id, JobState.running, stage, detail)
        return Lease(job_id=job_id, token=token, stage=stage, attempt=job.attempts)


def heartbeat(engine: Engine, lease: Lease) -> bool:
    """Prove the worker is alive; ``False`` means the lease was lost and work must stop."""
    with session_scope(engine) as session:
        result = session.connection().execute(
            sa.update(Job)
            .where(
                col(Job.id) == lease.job_id, col(Job.lease) == lease.token, col(Job.state) == JobState.running
            )
            .values(heartbeat_at=utcnow())
        )
        return result.rowcount == 1


def finish(
    engine: Engine,
    lease: Lease,
    state: JobState,
    *,
    stage: Stage | None = None,
    detail: str | None = None,
    error: str | None = None,
    not_before: datetime | None = None,
    session: Session | None = None,
) -> None:
    """End this lease by moving the job to ``state``; raise :class:`LeaseLost` if not held.

    Pass ``session`` to commit the transition together with the caller's own rows
    (the prediction, say), so that both land or neither does.
    """
    if state == JobState.running:
        raise ValueError("finish() cannot move a job to running; use claim()")
    now = utcnow()
    next_stage = stage or lease.stage

    def apply(target: Session) -> None:
        _protect_patient(target, lease.job_id)
        values: dict[str, object] = {
            "state": state,
            "stage": next_stage,
            "lease": None,
            "updated_at": now,
            "error": _scrubbed(error),
            "not_before": not_before,
        }
        if state in TERMINAL_JOB_STATES:
            values["finished_at"] = now
        if state in (JobState.predicted, JobState.waiting_for_labs):
            values["published_at"] = None
        statement = (
            sa.update(Job)
            .where(
                col(Job.id) == lease.job_id, col(Job.lease) == lease.token, col(Job.state) == JobState.running
            )
            .values(**values)
        )
        if target.connection().execute(statement).rowcount != 1:
            raise LeaseLost(f"job {lease.job_id}: lease lost before it could become {state}")
        _event(target, lease.job_id, state, next_stage, error or detail)

    if session is not None:
        apply(session)
        return
    with session_scope(engine) as own:
        apply(own)


def mark_published(engine: Engine, job_id: int, from_state: JobState) -> bool:
    """Record a publication; a job still ``received`` becomes ``queued``."""
    now = utcnow()
    values: dict[str, object] = {"published_at": now, "publish_count": Job.publish_count + 1}
    if from_state == JobState.received:
        values["state"] = JobState.queued
        values["updated_at"] = now
    with session_scope(engine) as session:
        result = session.connection().execute(
            sa.update(Job).where(col(Job.id) == job_id, col(Job.state) == from_state).values(**values)
        )
        if result.rowcount == 1 and from_state == JobState.received:
            _event(session, job_id, JobState.queued, Stage.infer, None)
        return result.rowcount == 1


def reset_for_replay(session: Session, job: Job, stage: Stage, reason: str) -> None:
    """Put a job back in the outbox at ``stage``; the relay publishes it."""
    assert job.id is not None
    job.state = JobState.received if stage == Stage.infer else JobState.predicted
    job.stage = stage
    job.lease = None
    job.error = None
    job.lost_leases = 0
    job.published_at = None
    job.finished_at = None
    job.not_before = None
    job.updated_at = utcnow()
    session.add(job)
    _event(session, job.id, job.state, stage, reason)


class Heartbeat:
    """Beats in a background thread while a task runs; ``lost`` is set if the lease goes."""

    def __init__(self, engine: Engine, lease: Lease, interval_seconds: float) -> None:
        self._engine = engine
        self._lease = lease
        self._interval = interval_seconds
        self._stop = threading.Event()
        self.lost = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"heartbeat-{lease.job_id}", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                alive = heartbeat(self._engine, self._lease)
            except sa.exc.OperationalError:
                continue
            if not alive:
                self.lost.set()
                return

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _waiting_for_patient() -> sa.Select[tuple[int]]:
    job, series, study = table(Job), table(Series), table(Study)
    joined = job.join(series, series.c.id == job.c.series_id).join(study, study.c.id == series.c.study_id)
    return (
        sa.select(job.c.id)
        .select_from(joined)
        .where(job.c.state == JobState.waiting_for_labs, study.c.patient_hash == sa.bindparam("patient_hash"))
    )


_WAITING_FOR_PATIENT = _waiting_for_patient()


def wake_waiting_jobs(connection: sa.Connection, patient_hash: str) -> int:
    """New clinical values arrived: jobs waiting for this patient's labs are due now.

    Runs in the caller's transaction (the one that stored the values). The relay
    publishes jobs in ``waiting_for_labs`` whose ``not_before`` passed, so moving it
    to now wakes them on the next relay pass instead of the next scheduled retry.
    """
    waiting = connection.execute(_WAITING_FOR_PATIENT, {"patient_hash": patient_hash}).scalars().all()
    if not waiting:
        return 0
    job = table(Job)
    due = job.update().where(job.c.id.in_(waiting)).values(not_before=utcnow(), published_at=None)
    connection.execute(due)
    return len(waiting)
