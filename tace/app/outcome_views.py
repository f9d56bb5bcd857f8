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

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _views(engine: Engine, condition: sa.ColumnElement[bool], limit: int | None) -> list[OutcomeView]:
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
        )
        for row in rows
    ]


def unlinked_outcomes(engine: Engine, limit: int | None = None) -> list[OutcomeView]:
    outcomes = table(Outcome)
    return _views(engine, outcomes.c.link_state.in_((LinkState.unmatched, LinkState.ambiguous)), limit)


def recent_outcomes(engine: Engine, limit: int = 50) -> list[OutcomeView]:
    return _views(engine, sa.true(), limit)
