"""The infer stage in-process: stored series + labs policy -> waiting, failed or predicted."""

from __future__ import annotations

import datetime as dt
import sys
from pathlib import Path

import pytest
from sqlmodel import select

from listener.completion import CompletionPolicy, complete_series
from listener.eligibility import EligibilityRules
from listener.ingest import AssociationLedger, Ingestor
from tace.app.bench.pipeline import run_pipeline_benchmark
from tace.db import Job, JobState, Prediction, Series, session_scope, utcnow
from tace.storage import Storage
from worker import pipeline
from worker.context import WorkerContext
from worker.infer import run_infer
from worker.one_case import predict_folder


@pytest.fixture
def stored_job(make_settings, sqlite_engine, ct_series, tmp_path: Path):
    storage = Storage(make_settings().data_dir)
    storage.ensure()
    ingestor = Ingestor(sqlite_engine, storage, min_free_bytes=0)
    ledger = AssociationLedger(association_id=None, calling_ae="TEST")
    import shutil

    import pydicom

    for path in ct_series(slices=10, rows=48, columns=48, patient_id="INF0001"):
        staged = storage.staging_dir / path.name
        shutil.copy(path, staged)
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        assert ingestor.store(
            staged, sop_class_uid=ds.SOPClassUID, sop_instance_uid=ds.SOPInstanceUID, ledger=ledger
        ).ok
    with session_scope(sqlite_engine) as session:
        series = session.exec(select(Series)).one()
    policy = CompletionPolicy(30, 1, EligibilityRules(min_slices=8))
    assert complete_series(sqlite_engine, series.id, series.last_received_at, policy) == "complete"
    with session_scope(sqlite_engine) as session:
        return session.exec(select(Job)).one().id


def _context(make_settings, engine, checkpoint: Path, **settings) -> WorkerContext:
    return WorkerContext(
        make_settings(
            model_checkpoint=checkpoint,
            device="cpu",
            broker_url="memory://",
            required_features=["albumin"],
            **settings,
        ),
        engine,
    )


def _job(engine, job_id: int) -> Job:
    with session_scope(engine) as session:
        return session.get(Job, job_id)


def test_missing_required_labs_wait_until_the_deadline(
    make_settings, sqlite_engine, demo_checkpoint, stored_job
):
    context = _context(
        make_settings, sqlite_engine, demo_checkpoint, labs_deadline_seconds=600, labs_retry_seconds=45
    )
    assert run_infer(context, stored_job) == "waiting_for_labs"
    job = _job(sqlite_engine, stored_job)
    assert job.state == JobState.waiting_for_labs
    assert dt.timedelta(seconds=40) < job.not_before - utcnow() <= dt.timedelta(seconds=45)


def test_after_the_deadline_fail_policy_fails_with_the_missing_names(
    make_settings, sqlite_engine, demo_checkpoint, stored_job
):
    context = _context(
        make_settings, sqlite_engine, demo_checkpoint, labs_deadline_seconds=0, labs_missing_policy="fail"
    )
    assert run_infer(context, stored_job) == "failed"
    assert _job(sqlite_engine, stored_job).error == (
        "labs: missing after 0 s: albumin (no labs received for this patient ID, under any issuer)"
    )


def test_after_the_deadline_impute_policy_predicts_and_lists_what_was_missing(
    make_settings, sqlite_engine, demo_checkpoint, stored_job
):
    context = _context(make_settings, sqlite_engine, demo_checkpoint, labs_deadline_seconds=0)
    assert run_infer(context, stored_job) == "predicted"
    with session_scope(sqlite_engine) as session:
        prediction = session.exec(select(Prediction)).one()
    assert "albumin" in prediction.missing_features and prediction.demo_model
    assert set(prediction.timings) >= {"read_volume", "features", "model", "sr"}
    assert (Storage(context.settings.data_dir).root / prediction.sr_path).is_file()
    assert run_infer(context, stored_job) == "not claimed", "a duplicate delivery does nothing"


def test_a_job_waiting_for_labs_decodes_no_pixel(
    make_settings, sqlite_engine, demo_checkpoint, stored_job, monkeypatch: pytest.MonkeyPatch
):
    """Labs come first: every retry of a waiting job would otherwise decode the whole series again."""
    decoded: list[int] = []
    real_read_volume = pipeline.read_volume

    def counting_read_volume(paths, **options):
        decoded.append(len(paths))
        return real_read_volume(paths, **options)

    monkeypatch.setattr(pipeline, "read_volume", counting_read_volume)
    waiting = _context(make_settings, sqlite_engine, demo_checkpoint, labs_deadline_seconds=600)
    assert run_infer(waiting, stored_job) == "waiting_for_labs"
    assert decoded == []
    with session_scope(sqlite_engine) as session:
        job = session.get(Job, stored_job)
        job.not_before = utcnow()
    past_deadline = _context(make_settings, sqlite_engine, demo_checkpoint, labs_deadline_seconds=0)
    assert run_infer(past_deadline, stored_job) == "predicted"
    assert decoded == [10], "decoded once, when the case could finally be predicted"


def test_the_infer_stage_tace_predict_and_the_benchmark_share_one_pipeline(
    make_settings, sqlite_engine, demo_checkpoint, stored_job, ct_series, tmp_path: Path, monkeypatch
):
    callers: list[str] = []
    real_run_case = pipeline.run_case

    def recording_run_case(case, **options):
        callers.append(sys._getframe(1).f_globals["__name__"])
        return real_run_case(case, **options)

    monkeypatch.setattr(pipeline, "run_case", recording_run_case)
    context = _context(make_settings, sqlite_engine, demo_checkpoint, labs_deadline_seconds=0)
    assert run_infer(context, stored_job) == "predicted"
    folder = tmp_path / "one"
    ct_series(folder, slices=6, rows=48, columns=48)
    predict_folder(context.settings, demo_checkpoint, folder)
    lines = list(run_pipeline_benchmark(series=2, slices=2, device="cpu"))
    assert lines[-1].startswith("pipeline time / bare model time")
    assert set(callers) == {"worker.infer", "worker.one_case", "tace.app.bench.pipeline"}
