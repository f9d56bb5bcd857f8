"""Predictions on studies of named patients, the rows outcomes are linked to."""

from __future__ import annotations

import datetime as dt
import itertools

from sqlalchemy.engine import Engine

from tace import phi
from tace.db import Job, JobState, Prediction, Series, SeriesState, Stage, Study, session_scope

_counter = itertools.count(1)


def add_prediction(
    engine: Engine,
    *,
    patient_id: str,
    study_date: dt.date,
    probability: float,
    issuer: str | None = None,
    model_version: str = "site-1",
    threshold: float | None = 0.5,
    state: JobState = JobState.sent,
    same_study_as: int | None = None,
    features: dict[str, object] | None = None,
) -> int:
    """A study (or a new series of job ``same_study_as``'s study) with one predicted job; the job id."""
    n = next(_counter)
    with session_scope(engine) as session:
        study_id = None
        if same_study_as is not None:
            earlier = session.get(Job, same_study_as)
            assert earlier is not None
            study_id = session.get(Series, earlier.series_id).study_id
        if study_id is None:
            study = Study(
                study_instance_uid=f"1.2.826.0.1.3680043.10.9.{n}",
                patient_id=patient_id,
                issuer_of_patient_id=issuer,
                patient_hash=phi.patient_hash(patient_id, issuer),
                study_datetime=dt.datetime.combine(study_date, dt.time(9, 30)),
            )
            session.add(study)
            session.flush()
            assert study.id is not None
            study_id = study.id
        series = Series(
            series_instance_uid=f"1.2.826.0.1.3680043.10.8.{n}",
            study_id=study_id,
            modality="CT",
            state=SeriesState.complete,
            instance_count=40,
            generation=1,
        )
        session.add(series)
        session.flush()
        assert series.id is not None
        job = Job(series_id=series.id, state=state, stage=Stage.send)
        session.add(job)
        session.flush()
        assert job.id is not None
        session.add(
            Prediction(
                job_id=job.id,
                probability=probability,
                label="disease_control" if probability >= (threshold or 0.5) else "progressive_disease",
                model_name="CLDCA",
                model_version=model_version,
                checkpoint_sha256="0" * 64,
                threshold=threshold,
                features=features,
            )
        )
        return job.id
