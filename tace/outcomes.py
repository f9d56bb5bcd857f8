"""Linking outcomes (mRECIST after TACE) to the predictions they judge.

An outcome belongs to the prediction for the same patient (patient hash, as
labs meet studies) whose study was taken before the TACE: on or before the TACE
date and at most ``max_weeks`` earlier when that date is known, else between
``max_weeks`` and ``min_weeks`` before the assessment. One qualifying study links;
none, or predictions on several different studies, is not guessed: the outcome
stays unlinked with the reason, for an admin to resolve (``tace outcomes link``),
and a manual link is never overwritten by the rule. Several predictions on the
one qualifying study (model versions, reruns) all judge the same CT, so the
outcome links to the newest job and every model version's prediction on that
study is scored against it.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

import sqlalchemy as sa

from tace.db import Job, JobState, LinkState, Outcome, Prediction, Series, Study, table, utcnow

MRECIST = ("CR", "PR", "SD", "PD")
PROGRESSION = "PD"
"""Progressive disease; CR, PR and SD are disease control."""
PREDICTED_STATES = (JobState.predicted, JobState.sent, JobState.no_destination)
"""Jobs whose prediction is current (superseded and failed jobs are not judged)."""


class LinkError(ValueError):
    """A manual link that cannot be made; the message says why in one line."""


@dataclass(frozen=True)
class LinkWindow:
    min_weeks: int = 4
    max_weeks: int = 16

    def study_range(self, tace_date: dt.date | None, assessed_on: dt.date) -> tuple[dt.date, dt.date]:
        """The first and last study date a qualifying prediction may have."""
        if tace_date is not None:
            return tace_date - dt.timedelta(weeks=self.max_weeks), tace_date
        return (
            assessed_on - dt.timedelta(weeks=self.max_weeks),
            assessed_on - dt.timedelta(weeks=self.min_weeks),
        )


@dataclass(frozen=True)
class Candidate:
    job_id: int
    study_id: int
    study_date: dt.date


def active() -> sa.ColumnElement[bool]:
    """Outcomes in force: not superseded by a correction, not a deletion or 'cannot be obtained'."""
    outcomes = table(Outcome)
    return sa.and_(outcomes.c.superseded_at.is_(None), outcomes.c.response.is_not(None))


def candidates(connection: sa.Connection, patient_hash: str) -> list[Candidate]:
    """The patient's current predictions (jobs predicted or sent), with their study dates."""
    job, series, study, prediction = table(Job), table(Series), table(Study), table(Prediction)
    rows = connection.execute(
        sa.select(job.c.id, study.c.id.label("study_id"), study.c.study_datetime, job.c.created_at)
        .select_from(
            job.join(series, series.c.id == job.c.series_id)
            .join(study, study.c.id == series.c.study_id)
            .join(prediction, prediction.c.job_id == job.c.id)
        )
        .where(study.c.patient_hash == patient_hash, job.c.state.in_(PREDICTED_STATES))
        .order_by(job.c.id)
    ).all()
    return [Candidate(row.id, row.study_id, (row.study_datetime or row.created_at).date()) for row in rows]


def decide(
    tace_date: dt.date | None, assessed_on: dt.date, found: Sequence[Candidate], window: LinkWindow
) -> tuple[LinkState, int | None, str]:
    """The link state, the job and the reason for one outcome."""
    first, last = window.study_range(tace_date, assessed_on)
    qualifying = [c for c in found if first <= c.study_date <= last]
    basis = f"TACE date {tace_date}" if tace_date else f"assessment {assessed_on}"
    if not qualifying:
        return (
            LinkState.unmatched,
            None,
            f"no prediction for this patient on a study between {first} and {last} ({basis})",
        )
    studies = sorted({c.study_id for c in qualifying})
    if len(studies) > 1:
        jobs = ", ".join(str(c.job_id) for c in qualifying)
        return (
            LinkState.ambiguous,
            None,
            f"predictions on {len(studies)} different studies between {first} and {last} qualify "
            f"(jobs {jobs}): resolve with `tace outcomes link`",
        )
    chosen = max(c.job_id for c in qualifying)
    return LinkState.linked, chosen, f"study of {qualifying[-1].study_date} before {basis}"


def relink(connection: sa.Connection, window: LinkWindow, patient_hash: str | None = None) -> int:
    """Apply the rule to every active outcome not linked by hand (one patient's, or all); rows changed."""
    outcomes = table(Outcome)
    query = sa.select(
        outcomes.c.id,
        outcomes.c.patient_hash,
        outcomes.c.tace_date,
        outcomes.c.assessed_on,
        outcomes.c.link_state,
        outcomes.c.job_id,
        outcomes.c.link_detail,
    ).where(active(), outcomes.c.link_state != LinkState.manual)
    if patient_hash is not None:
        query = query.where(outcomes.c.patient_hash == patient_hash)
    found: dict[str, list[Candidate]] = {}
    changed = 0
    for row in connection.execute(query).all():
        if row.patient_hash not in found:
            found[row.patient_hash] = candidates(connection, row.patient_hash)
        state, job_id, detail = decide(row.tace_date, row.assessed_on, found[row.patient_hash], window)
        if (state, job_id, detail) == (row.link_state, row.job_id, row.link_detail):
            continue
        connection.execute(
            outcomes.update()
            .where(outcomes.c.id == row.id)
            .values(
                link_state=state,
                job_id=job_id,
                link_detail=detail,
                linked_at=utcnow() if job_id is not None else None,
            )
        )
        changed += 1
    return changed


def link_manually(connection: sa.Connection, outcome_id: int, job_id: int) -> None:
    """An admin's decision: this outcome judges this job's prediction (same patient, predicted)."""
    outcomes, job, series, study = table(Outcome), table(Job), table(Series), table(Study)
    outcome = connection.execute(
        sa.select(outcomes.c.patient_hash, outcomes.c.superseded_at, outcomes.c.response).where(
            outcomes.c.id == outcome_id
        )
    ).first()
    if outcome is None:
        raise LinkError(f"no outcome {outcome_id}")
    if outcome.superseded_at is not None or outcome.response is None:
        raise LinkError(f"outcome {outcome_id} was corrected or deleted: link the one in force")
    target = connection.execute(
        sa.select(job.c.state, study.c.patient_hash)
        .select_from(
            job.join(series, series.c.id == job.c.series_id).join(study, study.c.id == series.c.study_id)
        )
        .where(job.c.id == job_id)
    ).first()
    if target is None:
        raise LinkError(f"no job {job_id}")
    if target.state not in PREDICTED_STATES:
        raise LinkError(
            f"job {job_id} is {target.state}: only a predicted, sent or no-destination job is judged"
        )
    if target.patient_hash != outcome.patient_hash:
        raise LinkError(f"job {job_id} is another patient's (patient hash {target.patient_hash})")
    connection.execute(
        outcomes.update()
        .where(outcomes.c.id == outcome_id)
        .values(
            link_state=LinkState.manual, job_id=job_id, link_detail="linked by an admin", linked_at=utcnow()
        )
    )
