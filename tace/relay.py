"""The outbox relay: the database says what must be done, the relay tells the broker.

Jobs are written in the same transaction as the series they belong to, so nothing
depends on the broker being up at that moment. The relay publishes new jobs, and
re-publishes any job that the broker lost: published but never started, started
but silent (no heartbeat), or waiting for labs whose retry time came. Publication
is at least once; workers claim jobs with leases (:mod:`tace.jobs`) so duplicates
are harmless.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlmodel import col, select

from tace.db import Job, JobState, Stage, session_scope, utcnow
from tace.jobs import mark_published
from tace.logging import get_logger
from tace.queue import BrokerUnavailable

log = get_logger("tace.relay")

PublishFn = Callable[[int, Stage], None]
_MAX_BACKOFF_FACTOR = 8


@dataclass
class RelayPass:
    published: int = 0
    republished: int = 0
    broker_errors: int = 0

    @property
    def idle(self) -> bool:
        return not (self.published or self.republished or self.broker_errors)


class Relay:
    def __init__(
        self,
        engine: Engine,
        publish: PublishFn,
        *,
        stall_seconds: float,
        batch_size: int = 200,
    ) -> None:
        self._engine = engine
        self._publish = publish
        self._stall = timedelta(seconds=stall_seconds)
        self._batch = batch_size

    def _due(self, now: datetime) -> list[tuple[int, JobState, Stage, bool]]:
        """Jobs to (re)publish, with the state they must still be in when marked."""
        stale = now - self._stall
        with session_scope(self._engine) as session:
            ready = sa.or_(col(Job.not_before).is_(None), col(Job.not_before) <= now)
            fresh = session.exec(
                select(Job.id, Job.state, Job.stage)
                .where(
                    sa.or_(
                        sa.and_(col(Job.state).in_([JobState.received, JobState.predicted]), ready),
                        sa.and_(
                            col(Job.state) == JobState.waiting_for_labs,
                            col(Job.not_before) <= now,
                        ),
                    ),
                    col(Job.published_at).is_(None),
                )
                .order_by(col(Job.id))
                .limit(self._batch)
            ).all()
            waiting = session.exec(
                select(Job)
                .where(
                    sa.or_(
                        col(Job.state) == JobState.queued,
                        sa.and_(col(Job.state) == JobState.predicted, ready),
                        sa.and_(
                            col(Job.state) == JobState.running,
                            sa.or_(col(Job.heartbeat_at).is_(None), col(Job.heartbeat_at) < stale),
                        ),
                        sa.and_(
                            col(Job.state) == JobState.waiting_for_labs,
                            col(Job.not_before) <= now,
                        ),
                    ),
                    col(Job.published_at).is_not(None),
                    col(Job.published_at) < stale,
                )
                .order_by(col(Job.id))
                .limit(self._batch)
            ).all()
        due: list[tuple[int, JobState, Stage, bool]] = []
        for job_id, state, stage in fresh:
            assert job_id is not None
            due.append((job_id, JobState(state), Stage(stage), False))
        for job in waiting:
            assert job.id is not None and job.published_at is not None
            factor = min(2 ** max(job.publish_count - 1, 0), _MAX_BACKOFF_FACTOR)
            if job.state == JobState.running or job.published_at < now - self._stall * factor:
                due.append((job.id, JobState(job.state), Stage(job.stage), True))
        return due

    def run_once(self) -> RelayPass:
        result = RelayPass()
        for job_id, state, stage, again in self._due(utcnow()):
            try:
                self._publish(job_id, stage)
            except BrokerUnavailable as exc:
                result.broker_errors += 1
                log.warning("relay.broker_unavailable", job_id=job_id, error=str(exc))
                break
            if mark_published(self._engine, job_id, state):
                if again:
                    result.republished += 1
                    log.info("relay.republished", job_id=job_id, stage=stage, state=state)
                else:
                    result.published += 1
                    log.info("relay.published", job_id=job_id, stage=stage)
        return result

    def run(self, stop: threading.Event, interval_seconds: float) -> None:
        """Poll until ``stop`` is set; a database or broker outage only delays work."""
        log.info("relay.started", interval_seconds=interval_seconds)
        while not stop.is_set():
            try:
                outcome = self.run_once()
            except sa.exc.OperationalError as exc:
                log.warning("relay.database_unavailable", error=str(exc.orig or exc).splitlines()[0])
                outcome = RelayPass(broker_errors=1)
            if outcome.idle or outcome.broker_errors:
                stop.wait(interval_seconds)
        log.info("relay.stopped")
