"""Studies, not series: when a study is ready, and the job that answers for it.

Runs inside the transaction of the series completion (the outbox rule): the
study row is locked, every series of the study is classified (phase, confidence,
evidence, stored on the series), the selection is made against the checkpoint's
input contract, and when every needed phase has a complete eligible series and
nothing of the study is still arriving, the study's job is created. A later
change (a late phase, a resent series with other pixels, a new reconstruction)
gives another selection and so another job, which supersedes the last; the same
selection again (a late scout, a repeated send) changes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine
from sqlmodel import Session, col, select

from listener.phases import PhaseRules, SeriesTags, classify_study
from listener.selection import Selection, SeriesFacts
from listener.selection import select as select_series
from tace.contract import LEGACY, ContractSource, ModelInputContract
from tace.db import Job, JobState, Series, SeriesState, Study, table, utcnow
from tace.jobs import MODEL_CHANGED, create_study_job
from tace.logging import get_logger

log = get_logger("tace.listener.study")


@dataclass(frozen=True)
class StudyPolicy:
    contract: ContractSource | None = None
    """None: a legacy one-phase contract (tests, or no checkpoint configured yet)."""
    rules: PhaseRules = field(default_factory=PhaseRules.default)
    quiet_seconds: float = 600.0

    def current_contract(self) -> ModelInputContract:
        return self.contract.current() if self.contract is not None else LEGACY


def _facts(connection: Connection, study_id: int) -> list[SeriesFacts]:
    series = table(Series)
    rows = connection.execute(
        sa.select(
            series.c.id,
            series.c.series_instance_uid,
            series.c.series_number,
            series.c.series_description,
            series.c.state,
            series.c.ineligible_reason,
            series.c.generation,
            series.c.instance_count,
            series.c.tags,
        ).where(series.c.study_id == study_id)
    ).all()
    return [
        SeriesFacts(
            series_id=row.id,
            series_instance_uid=row.series_instance_uid,
            series_number=row.series_number,
            description=row.series_description,
            state=str(row.state),
            ineligible_reason=row.ineligible_reason,
            generation=row.generation,
            slices=row.instance_count,
            tags=SeriesTags.from_dict(row.tags) if row.tags else None,
        )
        for row in rows
    ]


def _classify(connection: Connection, facts: list[SeriesFacts], policy: StudyPolicy) -> Selection:
    done = [f for f in facts if f.state != SeriesState.receiving and f.tags is not None]
    decisions = classify_study([f.tags for f in done if f.tags is not None], policy.rules)
    series = table(Series)
    for f in done:
        decision = decisions.get(f.series_instance_uid)
        if decision is None:
            continue
        connection.execute(
            series.update()
            .where(series.c.id == f.series_id)
            .values(
                phase=str(decision.phase),
                phase_confidence=str(decision.confidence),
                phase_evidence="; ".join([decision.evidence, *decision.conflicts]),
            )
        )
    return select_series(facts, decisions, policy.current_contract())


def _last_job(session: Session, study_id: int) -> Job | None:
    return session.exec(
        select(Job).where(col(Job.study_id) == study_id).order_by(col(Job.id).desc()).limit(1)
    ).first()


def _same_input(job: Job | None, selection: Selection) -> bool:
    if job is None or job.selection is None:
        return False
    if job.state == JobState.failed and (job.error or "").startswith("study:"):
        return False
    chosen = [s for s in job.selection.get("series", []) if s.get("used_for")]
    key = tuple(sorted((s["used_for"], s["series_instance_uid"], s["generation"]) for s in chosen))
    return key == selection.key()


def _change(job: Job | None, selection: Selection) -> str:
    if job is None or job.selection is None:
        return "study ready"
    before = {s["series_instance_uid"]: s for s in job.selection.get("series", [])}
    notes = []
    for choice in selection.chosen().values():
        old = before.get(choice.series_instance_uid)
        if old is None:
            notes.append(f"{choice.label} arrived")
        elif old["generation"] != choice.generation:
            notes.append(f"{choice.label} changed (resent with other content)")
        elif not old.get("used_for"):
            notes.append(f"{choice.label} now chosen")
    return "study changed: " + ("; ".join(notes) or "selection changed")


def evaluate_study(session: Session, study_id: int, policy: StudyPolicy) -> Job | None:
    """Classify the study's series and create its job when it is ready and its input changed."""
    connection = session.connection()
    study = table(Study)
    connection.execute(sa.select(study.c.id).where(study.c.id == study_id).with_for_update()).first()
    facts = _facts(connection, study_id)
    selection = _classify(connection, facts, policy)
    if any(f.state == SeriesState.receiving for f in facts):
        return None
    if not selection.ready:
        connection.execute(
            study.update().where(study.c.id == study_id).values(ineligible_reason=selection.missing_reason())
        )
        log.info("study.waiting_for_phase", missing=list(selection.missing))
        return None
    last = _last_job(session, study_id)
    if _same_input(last, selection):
        return None
    reference = selection.reference_series()
    assert reference is not None, "a ready selection has a reference series"
    generation = _next_generation(connection, study_id)
    job = create_study_job(
        session,
        study_id=study_id,
        series_id=reference.series_id,
        generation=generation,
        selection=selection.to_dict(),
        detail=_change(last, selection),
    )
    log.info("study.ready", job_id=job.id, generation=generation, predecessor=job.predecessor_job_id)
    return job


def _next_generation(connection: Connection, study_id: int) -> int:
    study = table(Study)
    connection.execute(
        study.update()
        .where(study.c.id == study_id)
        .values(generation=study.c.generation + 1, ineligible_reason=None)
    )
    return int(connection.execute(sa.select(study.c.generation).where(study.c.id == study_id)).scalar_one())


def _waiting_studies(connection: Connection, now: datetime, quiet_seconds: float) -> list[int]:
    study, series, job = table(Study), table(Series), table(Job)
    last_completed = (
        sa.select(sa.func.max(series.c.completed_at)).where(series.c.study_id == study.c.id).scalar_subquery()
    )
    receiving = (
        sa.select(sa.func.count())
        .where(series.c.study_id == study.c.id, series.c.state == SeriesState.receiving)
        .scalar_subquery()
    )
    job_since = (
        sa.select(sa.func.count())
        .where(job.c.study_id == study.c.id, job.c.created_at >= last_completed)
        .scalar_subquery()
    )
    rows = connection.execute(
        sa.select(study.c.id).where(
            study.c.ineligible_reason.is_not(None),
            last_completed <= now - timedelta(seconds=quiet_seconds),
            receiving == 0,
            job_since == 0,
        )
    ).all()
    return [row.id for row in rows]


def expire_waiting_studies(engine: Engine, policy: StudyPolicy) -> int:
    """Studies still missing a phase after the quiet time: recorded as a failed job naming it."""
    with engine.connect() as connection:
        waiting = _waiting_studies(connection, utcnow(), policy.quiet_seconds)
    expired = 0
    for study_id in waiting:
        with Session(engine) as session, session.begin():
            connection = session.connection()
            if study_id not in _waiting_studies(connection, utcnow(), policy.quiet_seconds):
                continue
            facts = _facts(connection, study_id)
            selection = _classify(connection, facts, policy)
            if selection.ready:
                continue
            anchor = min(
                facts,
                key=lambda f: (f.series_number if f.series_number is not None else 1 << 30, f.series_id),
            )
            reason = f"study: {selection.missing_reason()} after {policy.quiet_seconds:g} s; no SR"
            job = create_study_job(
                session,
                study_id=study_id,
                series_id=anchor.series_id,
                generation=_next_generation(connection, study_id),
                selection=selection.to_dict(),
                detail="study quiet without the phases the model needs",
                error=reason,
            )
            connection.execute(
                table(Study).update().where(table(Study).c.id == study_id).values(ineligible_reason=reason)
            )
            log.warning("study.ineligible", job_id=job.id, missing=list(selection.missing))
            expired += 1
    return expired


def _refused_for_model_change(connection: Connection) -> list[int]:
    """Studies whose latest job the worker refused because the checkpoint changed."""
    job = table(Job)
    latest = sa.select(sa.func.max(job.c.id)).where(job.c.study_id.is_not(None)).group_by(job.c.study_id)
    rows = connection.execute(
        sa.select(job.c.study_id).where(
            job.c.id.in_(latest),
            job.c.state == JobState.failed,
            job.c.error.startswith(MODEL_CHANGED),
        )
    ).all()
    return [row.study_id for row in rows]


def reselect_after_model_change(engine: Engine, policy: StudyPolicy) -> int:
    """Select again, for the checkpoint now configured, the studies the worker refused for the old one.

    Without this such a study would wait for a series that may never come. One
    that the new checkpoint cannot use (a phase it reads is missing) gets a
    failed job naming the phase, like a study that went quiet without it.
    """
    with engine.connect() as connection:
        refused = _refused_for_model_change(connection)
    selected = 0
    for study_id in refused:
        with Session(engine) as session, session.begin():
            connection = session.connection()
            if study_id not in _refused_for_model_change(connection):
                continue
            if evaluate_study(session, study_id, policy) is not None:
                selected += 1
                continue
            facts = _facts(connection, study_id)
            if not facts or any(f.state == SeriesState.receiving for f in facts):
                continue
            selection = _classify(connection, facts, policy)
            reason = f"study: {selection.missing_reason()} (for the checkpoint now configured); no SR"
            create_study_job(
                session,
                study_id=study_id,
                series_id=facts[0].series_id,
                generation=_next_generation(connection, study_id),
                selection=selection.to_dict(),
                detail="the model changed and the study lacks a phase it reads",
                error=reason,
            )
            connection.execute(
                table(Study).update().where(table(Study).c.id == study_id).values(ineligible_reason=reason)
            )
    if selected:
        log.info("study.reselected_after_model_change", studies=selected)
    return selected
