"""Outcomes as the CLI and the admin page list them: patient hash only, never the patient ID."""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict, dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from tace.db import LinkState, Outcome, table
from tace.outcomes import active


@dataclass(frozen=True)
class OutcomeView:
    id: int
    patient_hash: str
    tace_date: dt.date | None
    assessed_on: dt.date
    response: str
    link_state: str
    link_detail: str | None
    job_id: int | None
    source: str
    patient_id: str | None = None
    """Only for the phi role."""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _views(
    engine: Engine, condition: sa.ColumnElement[bool], limit: int | None, identifiers: bool
) -> list[OutcomeView]:
    outcomes = table(Outcome)
    query = (
        sa.select(outcomes)
        .where(active(), condition)
        .order_by(outcomes.c.assessed_on.desc(), outcomes.c.id.desc())
    )
    if limit is not None:
        query = query.limit(limit)
    with engine.connect() as connection:
        rows = connection.execute(query).all()
    return [
        OutcomeView(
            id=row.id,
            patient_hash=row.patient_hash,
            tace_date=row.tace_date,
            assessed_on=row.assessed_on,
            response=row.response,
            link_state=str(row.link_state),
            link_detail=row.link_detail,
            job_id=row.job_id,
            source=f"{row.source_kind} {row.source_id}",
            patient_id=row.patient_id if identifiers else None,
        )
        for row in rows
    ]


def unlinked_outcomes(
    engine: Engine, limit: int | None = None, *, identifiers: bool = False
) -> list[OutcomeView]:
    outcomes = table(Outcome)
    condition = outcomes.c.link_state.in_((LinkState.unmatched, LinkState.ambiguous))
    return _views(engine, condition, limit, identifiers)


def recent_outcomes(engine: Engine, limit: int = 50, *, identifiers: bool = False) -> list[OutcomeView]:
    return _views(engine, sa.true(), limit, identifiers)
