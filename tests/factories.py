"""Rows that many tests need: a study with a series, and jobs on it."""

from __future__ import annotations

import itertools

from sqlalchemy.engine import Engine

from tace.db import Job, Series, SeriesState, Study, session_scope, utcnow
from tace.jobs import create_job

_counter = itertools.count(1)


def add_series(engine: Engine, *, state: SeriesState = SeriesState.complete) -> int:
    """A completed series of a fresh study; returns the series id."""
    n = next(_counter)
    with session_scope(engine) as session:
        study = Study(
            study_instance_uid=f"1.2.826.0.1.3680043.10.1.{n}",
            patient_id=f"P{n}",
            patient_hash=f"hash{n:012d}",
        )
        session.add(study)
        session.flush()
        assert study.id is not None
        series = Series(
            series_instance_uid=f"1.2.826.0.1.3680043.10.2.{n}",
            study_id=study.id,
            modality="CT",
            state=state,
            instance_count=100,
            generation=1,
            completed_at=utcnow(),
        )
        session.add(series)
        session.flush()
        assert series.id is not None
        return series.id


def add_jobs(engine: Engine, count: int) -> list[int]:
    """``count`` committed jobs, each on its own series, in state received."""
    ids = []
    for _ in range(count):
        series_id = add_series(engine)
        with session_scope(engine) as session:
            job: Job = create_job(session, series_id, generation=1)
            assert job.id is not None
            ids.append(job.id)
    return ids
