"""Deciding that a series is complete, and queueing its study's job in the same transaction.

DICOM has no "end of series" message. A series is complete when no instance
arrived for ``series_quiet_seconds``, or ``release_grace_seconds`` after every
association that carried it ended and the last to carry an instance was
*released*. An aborted association (a sender or listener that died) means the
sender will probably resend, so only the quiet timer completes such a series.
Completion state lives in the database, so a restarted listener picks up where
the old one stopped.
"""

from __future__ import annotations

import enum
import os
import socket
import threading
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlmodel import Session

from listener.eligibility import EligibilityRules, ineligibility
from listener.study import StudyPolicy, evaluate_study, expire_waiting_studies, reselect_after_model_change
from tace.contract import ContractError
from tace.db import Association, AssociationOutcome, Series, SeriesAssociation, SeriesState, table, utcnow
from tace.logging import get_logger, unit_of_work
from tace.metrics import metric

log = get_logger("tace.listener.completion")


@dataclass(frozen=True)
class CompletionPolicy:
    quiet_seconds: float
    grace_seconds: float
    rules: EligibilityRules
    study: StudyPolicy = field(default_factory=StudyPolicy)


class Completion(enum.StrEnum):
    complete = "complete"
    """Eligible; if it made its study ready, the study's job was created in the same transaction."""
    ineligible = "ineligible"
    """Recorded with the reason; its study is evaluated all the same."""


def _candidates(engine: Engine, policy: CompletionPolicy, now: datetime) -> list[tuple[int, datetime]]:
    series, link, assoc = table(Series), table(SeriesAssociation), table(Association)
    open_links = (
        sa.select(sa.func.count())
        .select_from(link.join(assoc, assoc.c.id == link.c.association_id))
        .where(link.c.series_id == series.c.id, assoc.c.ended_at.is_(None))
        .scalar_subquery()
    )
    last_release = (
        sa.select(sa.func.max(assoc.c.ended_at))
        .select_from(link.join(assoc, assoc.c.id == link.c.association_id))
        .where(link.c.series_id == series.c.id, assoc.c.outcome == AssociationOutcome.released)
        .scalar_subquery()
    )
    quiet = series.c.last_received_at <= now - timedelta(seconds=policy.quiet_seconds)
    released = sa.and_(
        open_links == 0,
        last_release.is_not(None),
        last_release >= series.c.last_received_at,
        last_release <= now - timedelta(seconds=policy.grace_seconds),
    )
    with engine.connect() as connection:
        rows = connection.execute(
            sa.select(series.c.id, series.c.last_received_at).where(
                series.c.state == SeriesState.receiving,
                series.c.last_received_at.is_not(None),
                sa.or_(quiet, released),
            )
        ).all()
    return [(row[0], row[1]) for row in rows]


def complete_series(
    engine: Engine, series_id: int, seen_last: datetime, policy: CompletionPolicy
) -> Completion | None:
    """Complete one series (and create its job) unless an instance arrived meanwhile.

    Returns None when another scanner or a new
    instance got there first. The compare-and-set on ``last_received_at`` makes
    concurrent scanners and late instances safe.
    """
    series_table = table(Series)
    with Session(engine) as session, session.begin():
        connection = session.connection()
        row = connection.execute(
            sa.select(
                series_table.c.modality,
                series_table.c.series_description,
                series_table.c.generation,
                series_table.c.series_instance_uid,
                series_table.c.study_id,
            )
            .where(series_table.c.id == series_id, series_table.c.state == SeriesState.receiving)
            .with_for_update()
        ).first()
        if row is None:
            return None
        reason = ineligibility(connection, series_id, row.modality, row.series_description, policy.rules)
        now = utcnow()
        values: dict[str, object] = {"completed_at": now}
        if reason is None:
            values.update(state=SeriesState.complete, generation=row.generation + 1, ineligible_reason=None)
        else:
            values.update(state=SeriesState.ineligible, ineligible_reason=reason)
        updated = connection.execute(
            series_table.update()
            .where(
                series_table.c.id == series_id,
                series_table.c.state == SeriesState.receiving,
                series_table.c.last_received_at == seen_last,
            )
            .values(**values)
        )
        if updated.rowcount != 1:
            return None
        with unit_of_work(series=row.series_instance_uid, series_id=series_id):
            if reason is not None:
                log.info("series.ineligible", reason=reason)
            else:
                log.info("series.complete", generation=row.generation + 1)
            evaluate_study(session, row.study_id, policy.study)
            return Completion.complete if reason is None else Completion.ineligible


def scan(engine: Engine, policy: CompletionPolicy) -> None:
    for series_id, seen_last in _candidates(engine, policy, utcnow()):
        outcome = complete_series(engine, series_id, seen_last, policy)
        if outcome is not None:
            metric("series").labels(result=outcome.value).inc()
    expire_waiting_studies(engine, policy.study)
    reselect_after_model_change(engine, policy.study)


def run_scanner(
    engine: Engine, policy: CompletionPolicy, stop: threading.Event, interval: float = 0.5
) -> None:
    while not stop.is_set():
        try:
            scan(engine, policy)
        except sa.exc.OperationalError as exc:
            log.warning("completion.database_unavailable", error=str(exc.orig or exc).splitlines()[0])
        except ContractError as exc:
            log.error(
                "completion.contract_unreadable", error=str(exc), note="studies wait until it is readable"
            )
        stop.wait(interval)


def listener_identity() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def close_orphaned_associations(engine: Engine) -> int:
    """Associations left open by a listener process of this host that no longer runs.

    Their series then complete after the grace period instead of waiting for the
    quiet timeout; a killed listener loses nothing that it acknowledged.
    """
    associations = table(Association)
    host = socket.gethostname()
    with engine.begin() as connection:
        rows = connection.execute(
            sa.select(associations.c.id, associations.c.listener).where(
                associations.c.ended_at.is_(None), associations.c.listener.like(f"{host}:%")
            )
        ).all()
        dead = [row.id for row in rows if not process_alive(int(row.listener.rsplit(":", 1)[1]))]
        if dead:
            connection.execute(
                associations.update()
                .where(associations.c.id.in_(dead))
                .values(
                    ended_at=utcnow(), outcome=AssociationOutcome.aborted, reason="listener process ended"
                )
            )
    if dead:
        log.warning("associations.orphaned_closed", count=len(dead))
    return len(dead)
