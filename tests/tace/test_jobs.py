from __future__ import annotations

import threading
import time
from datetime import timedelta

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlmodel import col, select

from tace.db import Job, JobEvent, JobState, Series, Stage, session_scope, utcnow
from tace.jobs import (
    Heartbeat,
    LeaseLost,
    claim,
    create_job,
    create_study_job,
    finish,
    heartbeat,
    mark_published,
    reset_for_replay,
)
from tests.factories import add_jobs, add_series


def _job(engine: Engine, job_id: int) -> Job:
    with session_scope(engine) as session:
        job = session.get(Job, job_id)
        assert job is not None
        return job


def _events(engine: Engine, job_id: int) -> list[tuple[str, str]]:
    with session_scope(engine) as session:
        rows = session.exec(
            select(JobEvent).where(JobEvent.job_id == job_id).order_by(col(JobEvent.id))
        ).all()
        return [(str(e.state), str(e.stage)) for e in rows]


def _age_heartbeat(engine: Engine, job_id: int, seconds: float) -> None:
    with session_scope(engine) as session:
        session.execute(
            sa.update(Job)
            .where(col(Job.id) == job_id)
            .values(heartbeat_at=utcnow() - timedelta(seconds=seconds))
        )


def test_happy_path_records_every_transition(engine: Engine) -> None:
    (job_id,) = add_jobs(engine, 1)
    assert mark_published(engine, job_id, JobState.received)
    lease = claim(engine, job_id, Stage.infer, stall_seconds=60)
    assert lease is not None and lease.attempt == 1
    finish(engine, lease, JobState.predicted, stage=Stage.send)
    send = claim(engine, job_id, Stage.send, stall_seconds=60)
    assert send is not None
    finish(engine, send, JobState.sent)
    job = _job(engine, job_id)
    assert job.state == JobState.sent and job.finished_at is not None and job.lease is None
    assert _events(engine, job_id) == [
        ("received", "infer"),
        ("queued", "infer"),
        ("running", "infer"),
        ("predicted", "send"),
        ("running", "send"),
        ("sent", "send"),
    ]


def test_a_live_lease_cannot_be_claimed_twice(engine: Engine) -> None:
    (job_id,) = add_jobs(engine, 1)
    first = claim(engine, job_id, Stage.infer, stall_seconds=60)
    assert first is not None
    assert claim(engine, job_id, Stage.infer, stall_seconds=60) is None
    assert claim(engine, job_id, Stage.send, stall_seconds=60) is None


def test_a_silent_worker_loses_its_lease_and_cannot_complete(engine: Engine) -> None:
    (job_id,) = add_jobs(engine, 1)
    dead = claim(engine, job_id, Stage.infer, stall_seconds=30)
    assert dead is not None
    _age_heartbeat(engine, job_id, 31)
    successor = claim(engine, job_id, Stage.infer, stall_seconds=30)
    assert successor is not None and successor.attempt == 2
    assert not heartbeat(engine, dead)
    with pytest.raises(LeaseLost):
        finish(engine, dead, JobState.sent)
    finish(engine, successor, JobState.sent)
    job = _job(engine, job_id)
    assert (job.state, job.attempts, job.lost_leases) == (JobState.sent, 2, 1)
    assert [e for e in _events(engine, job_id) if e[0] == "sent"] == [("sent", "infer")]


def test_gives_up_after_repeated_silent_workers(engine: Engine) -> None:
    (job_id,) = add_jobs(engine, 1)
    for _ in range(2):
        assert claim(engine, job_id, Stage.infer, stall_seconds=30, max_lost_leases=3) is not None
        _age_heartbeat(engine, job_id, 31)
    assert claim(engine, job_id, Stage.infer, stall_seconds=30, max_lost_leases=3) is not None
    _age_heartbeat(engine, job_id, 31)
    assert claim(engine, job_id, Stage.infer, stall_seconds=30, max_lost_leases=3) is None
    job = _job(engine, job_id)
    assert job.state == JobState.failed
    assert job.error == "gave up: 3 workers went silent on this job"


def test_concurrent_claims_have_exactly_one_winner(engine: Engine) -> None:
    job_ids = add_jobs(engine, 5)
    winners: list[tuple[int, str]] = []
    lock = threading.Lock()

    def contend(job_id: int) -> None:
        lease = claim(engine, job_id, Stage.infer, stall_seconds=60)
        if lease is not None:
            with lock:
                winners.append((job_id, lease.token))

    threads = [threading.Thread(target=contend, args=(j,)) for j in job_ids for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(j for j, _ in winners) == sorted(job_ids)


def test_a_new_generation_supersedes_the_live_job(engine: Engine) -> None:
    series_id = add_series(engine)
    with session_scope(engine) as session:
        first = create_job(session, series_id, generation=1)
    lease = claim(engine, first.id, Stage.infer, stall_seconds=60)
    assert lease is not None
    with session_scope(engine) as session:
        series = session.get(Series, series_id)
        second = create_job(session, series_id, generation=2)
    assert _job(engine, first.id).state == JobState.superseded
    assert _job(engine, first.id).superseded_by_id == second.id
    with pytest.raises(LeaseLost):
        finish(engine, lease, JobState.predicted)
    assert series is not None


def test_a_study_that_can_no_longer_be_predicted_keeps_its_delivered_job(engine: Engine) -> None:
    """A change that leaves the study unready records why, and withdraws nothing it cannot replace."""
    series_id = add_series(engine)
    with session_scope(engine) as session:
        series = session.get(Series, series_id)
        assert series is not None
        study_id = series.study_id
        delivered = create_study_job(
            session, study_id=study_id, series_id=series_id, generation=1, selection={}, detail="ready"
        )
        delivered.state = JobState.sent
    with session_scope(engine) as session:
        failed = create_study_job(
            session,
            study_id=study_id,
            series_id=series_id,
            generation=2,
            selection={},
            detail="study changed",
            error="study: no complete eligible portal venous series",
        )
    assert _job(engine, delivered.id).state == JobState.sent
    assert _job(engine, failed.id).state == JobState.failed
    with session_scope(engine) as session:
        ready_again = create_study_job(
            session, study_id=study_id, series_id=series_id, generation=3, selection={}, detail="ready"
        )
    assert _job(engine, delivered.id).state == JobState.superseded
    assert _job(engine, delivered.id).superseded_by_id == ready_again.id


def test_heartbeat_thread_keeps_the_lease_and_reports_loss(engine: Engine) -> None:
    (job_id,) = add_jobs(engine, 1)
    lease = claim(engine, job_id, Stage.infer, stall_seconds=60)
    assert lease is not None
    before = _job(engine, job_id).heartbeat_at
    with Heartbeat(engine, lease, interval_seconds=0.05) as beat:
        time.sleep(0.3)
        assert not beat.lost.is_set()
        assert _job(engine, job_id).heartbeat_at > before
        with session_scope(engine) as session:
            session.execute(sa.update(Job).where(col(Job.id) == job_id).values(lease="someone-else"))
        assert beat.lost.wait(2)


def test_replay_puts_a_failed_job_back_in_the_outbox(engine: Engine) -> None:
    (job_id,) = add_jobs(engine, 1)
    lease = claim(engine, job_id, Stage.infer, stall_seconds=60)
    assert lease is not None
    finish(engine, lease, JobState.failed, error="volume: duplicate slice positions")
    with session_scope(engine) as session:
        job = session.get(Job, job_id)
        assert job is not None
        reset_for_replay(session, job, Stage.infer, "replayed by admin")
    job = _job(engine, job_id)
    assert (job.state, job.error, job.published_at) == (JobState.received, None, None)
    assert claim(engine, job_id, Stage.infer, stall_seconds=60) is not None


def test_new_labs_wake_jobs_waiting_for_that_patient_only(engine: Engine) -> None:
    from tace.db import Study
    from tace.jobs import wake_waiting_jobs

    mine, other = add_jobs(engine, 2)
    later = utcnow() + timedelta(hours=1)
    for job_id in (mine, other):
        lease = claim(engine, job_id, Stage.infer, stall_seconds=60)
        assert lease is not None
        finish(engine, lease, JobState.waiting_for_labs, not_before=later)
    with session_scope(engine) as session:
        series_id = session.get(Job, mine).series_id
        study_id = session.get(Series, series_id).study_id
        patient_hash = session.get(Study, study_id).patient_hash
    with engine.begin() as connection:
        assert wake_waiting_jobs(connection, patient_hash) == 1
    assert _job(engine, mine).not_before <= utcnow()
    assert _job(engine, other).not_before == later
