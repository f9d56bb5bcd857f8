"""Predictions on studies of named patients, the rows outcomes are linked to."""

from __future__ import annotations

import dataclasses
import datetime as dt
import itertools
from pathlib import Path

from sqlalchemy.engine import Engine

from model.checkpoint import load_checkpoint, save_checkpoint
from model.drift import training_distribution
from tace import phi
from tace.db import Job, JobState, Outcome, Prediction, Series, SeriesState, Stage, Study, session_scope

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


def add_outcome(engine: Engine, patient_id: str, assessed_on: dt.date, response: str) -> None:
    """An mRECIST outcome as a CSV import stores it (no issuer), for the linker to find."""
    with session_scope(engine) as session:
        session.add(
            Outcome(
                patient_id=patient_id,
                patient_hash=phi.patient_hash(patient_id, None),
                assessed_on=assessed_on,
                response=response,
                source_kind="csv",
                source_id=f"test:{patient_id}:{assessed_on}",
                outcome_key=f"csv:{assessed_on}",
            )
        )


def write_site_checkpoint(demo_checkpoint: Path, path: Path) -> Path:
    """The demo network with a validated AUC of 0.90 (0.85-0.95) and albumin around 4 g/dL in training."""
    loaded = load_checkpoint(demo_checkpoint)
    rows = [{"albumin": 3.6 + 0.01 * i} for i in range(80)]
    meta = dataclasses.replace(
        loaded.meta,
        version="site-1",
        validation={
            "method": "cross-validated",
            "auc": {"value": 0.9, "low": 0.85, "high": 0.95},
            "cases": 80,
        },
        training_distribution=training_distribution(loaded.meta.schema, rows),
    )
    save_checkpoint(path, loaded.model, meta)
    return path


def seed_site_cases(engine: Engine) -> tuple[int, int]:
    """12 linked cases scored the wrong way round (AUC 0), albumin far below training; one ambiguous outcome."""
    for index in range(12):
        progression = index % 2 == 0
        add_prediction(
            engine,
            patient_id=f"PAGE{index}",
            study_date=dt.date(2026, 1, 5),
            probability=0.8 if progression else 0.2,
            features={"albumin": {"value": 2.4, "unit": "g/dL"}},
        )
        with session_scope(engine) as session:
            session.add(
                Outcome(
                    patient_id=f"PAGE{index}",
                    patient_hash=phi.patient_hash(f"PAGE{index}", None),
                    assessed_on=dt.date(2026, 3, 1),
                    response="PD" if progression else "SD",
                    source_kind="csv",
                    source_id=f"page:{index}",
                    outcome_key="csv:2026-03-01",
                )
            )
    first = add_prediction(engine, patient_id="PAGEX", study_date=dt.date(2025, 12, 20), probability=0.5)
    add_prediction(engine, patient_id="PAGEX", study_date=dt.date(2026, 1, 10), probability=0.5)
    with session_scope(engine) as session:
        outcome = Outcome(
            patient_id="PAGEX",
            patient_hash=phi.patient_hash("PAGEX", None),
            assessed_on=dt.date(2026, 3, 1),
            response="CR",
            source_kind="csv",
            source_id="page:x",
            outcome_key="csv:2026-03-01",
        )
        session.add(outcome)
        session.flush()
        assert outcome.id is not None
        return outcome.id, first
