"""The infer stage in-process: stored series + labs policy -> waiting, failed or predicted."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from pydicom.dataset import Dataset
from sqlmodel import select

from listener.completion import CompletionPolicy, complete_series
from listener.eligibility import EligibilityRules
from listener.ingest import AssociationLedger, Ingestor
from tace.app.bench.pipeline import run_pipeline_benchmark
from tace.db import Job, JobState, Prediction, Series, session_scope, utcnow
from tace.storage import Storage
from worker import pipeline, prefetch
from worker.context import WorkerContext
from worker.infer import run_infer
from worker.one_case import predict_folder


@pytest.fixture
def stored_job(store_job):
    return store_job()


@pytest.fixture
def store_job(make_settings, sqlite_engine, ct_series):
    """Store a series through the listener's ingest and complete it; ``header`` edits every file first."""

    def store(header: Callable[[Dataset], None] | None = None, **spec: object) -> int:
        return _store_job(make_settings, sqlite_engine, ct_series, header, spec)

    return store


def _store_job(make_settings, sqlite_engine, ct_series, header, spec) -> int:
    storage = Storage(make_settings().data_dir)
    storage.ensure()
    ingestor = Ingestor(sqlite_engine, storage, min_free_bytes=0)
    ledger = AssociationLedger(association_id=None, calling_ae="TEST")
    import shutil

    import pydicom

    for path in ct_series(**{"slices": 10, "rows": 48, "columns": 48, "patient_id": "INF0001", **spec}):
        if header is not None:
            edited = pydicom.dcmread(path)
            header(edited)
            edited.save_as(path)
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
        "labs: missing after 0 s: serum albumin (no labs received for this patient ID, under any issuer)"
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
    monkeypatch.setattr(prefetch, "read_volume", counting_read_volume)
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
    assert any(line.startswith("pipeline time / bare model time") for line in lines)
    assert set(callers) == {"worker.infer", "worker.one_case", "tace.app.bench.pipeline"}


def _sr_texts(path: Path) -> dict[str, str]:
    import pydicom

    sr = pydicom.dcmread(path)
    group = sr.ContentSequence[-1].ContentSequence[0].ContentSequence
    return {
        item.ConceptNameCodeSequence[0].CodeMeaning: item.TextValue
        for item in group
        if item.ValueType == "TEXT"
    }


def _dciodvfy_errors(path: Path) -> list[str]:
    from tests.support.services import require_tool

    verify = subprocess.run([require_tool("dciodvfy"), str(path)], capture_output=True, text=True)
    return [line for line in (verify.stdout + verify.stderr).splitlines() if line.startswith("Error")]


def _break_demographics(ds: Dataset) -> None:
    del ds.AccessionNumber
    ds.PatientBirthDate = "1958-08-17"
    ds.PatientName = "Quill Jane"
    ds.PatientSex = "male"
    ds.StudyID = "S" * 20


def test_a_non_conformant_ct_header_is_predicted_with_a_valid_sr(
    make_settings, sqlite_engine, demo_checkpoint, store_job
):
    """Issue 15.3: these headers used to fail the job with "internal error ..." after inference."""
    job_id = store_job(header=_break_demographics)
    context = _context(make_settings, sqlite_engine, demo_checkpoint, labs_deadline_seconds=0)
    assert run_infer(context, job_id) == "predicted", _job(sqlite_engine, job_id).error
    with session_scope(sqlite_engine) as session:
        prediction = session.exec(select(Prediction)).one()
    path = Storage(context.settings.data_dir).root / prediction.sr_path
    assert _dciodvfy_errors(path) == []
    import pydicom

    sr = pydicom.dcmread(path)
    assert (sr.PatientBirthDate, str(sr.PatientName), sr.PatientSex, sr.AccessionNumber, sr.StudyID) == (
        "19580817",
        "Quill Jane^",
        "M",
        "",
        "",
    )


def test_sr_and_job_page_name_missing_values_in_words_and_take_sex_from_the_ct(
    make_settings, sqlite_engine, demo_checkpoint, store_job
):
    job_id = store_job(patient_sex="F")
    context = _context(make_settings, sqlite_engine, demo_checkpoint, labs_deadline_seconds=0)
    assert run_infer(context, job_id) == "predicted"
    with session_scope(sqlite_engine) as session:
        prediction = session.exec(select(Prediction)).one()
    assert "sex" not in prediction.missing_features
    assert prediction.features["sex"]["source"] == "CT header PatientSex"
    missing = len(prediction.missing_features)
    texts = _sr_texts(Storage(context.settings.data_dir).root / prediction.sr_path)
    assert texts["Missing clinical features"].startswith(f"{missing} of 43 clinical values missing: ")
    assert "serum albumin" in texts["Missing clinical features"]
    assert "_" not in texts["Missing clinical features"]
    assert texts["Clinical values used"] == "sex F (no observation date; CT header PatientSex)"

    from tace.app.admin import job_detail

    with session_scope(sqlite_engine) as session:
        detail = job_detail(session, job_id)
    assert detail.clinical_missing == texts["Missing clinical features"]
    assert [(f.label, f.value, f.source) for f in detail.features_used] == [
        ("sex", "F", "CT header PatientSex")
    ]


def test_labs_used_are_in_the_sr_with_their_observation_dates(
    make_settings, sqlite_engine, demo_checkpoint, store_job, tmp_path: Path
):
    from hl7_clinical.codes import CodeMap
    from hl7_clinical.csv_import import import_csv
    from model.schema import FeatureSchema

    job_id = store_job()
    labs = tmp_path / "labs.csv"
    labs.write_text("patient_id,date,albumin,wbc\nINF0001,2026-01-14 07:20,3.1,5.2\n")
    definitions = FeatureSchema.load().by_name()
    report = import_csv(sqlite_engine, labs, definitions, CodeMap.load(definitions), default_issuer=None)
    assert report.problems == []
    context = _context(make_settings, sqlite_engine, demo_checkpoint, labs_deadline_seconds=0)
    assert run_infer(context, job_id) == "predicted"
    with session_scope(sqlite_engine) as session:
        prediction = session.exec(select(Prediction)).one()
    used = _sr_texts(Storage(context.settings.data_dir).root / prediction.sr_path)["Clinical values used"]
    lines = used.split("\r\n")
    assert "serum albumin 3.1 g/dL (observed 2026-01-14 07:20; CSV labs.csv line 2)" in lines
    assert "white blood cells 5.2 10*3/uL (observed 2026-01-14 07:20; CSV labs.csv line 2)" in lines


def test_nothing_sent_without_a_destination_is_not_called_sent(
    make_settings, sqlite_engine, demo_checkpoint, stored_job
):
    from tace.app.admin import job_detail, state_words
    from worker.send import run_send

    context = _context(make_settings, sqlite_engine, demo_checkpoint, labs_deadline_seconds=0)
    assert not context.settings.destinations
    assert run_infer(context, stored_job) == "predicted"
    assert run_send(context, stored_job) == "no_destination"
    job = _job(sqlite_engine, stored_job)
    assert job.state == JobState.no_destination and job.finished_at is not None
    with session_scope(sqlite_engine) as session:
        detail = job_detail(session, stored_job)
    assert detail.events[-1].detail.startswith("nothing sent: no destination configured (TACE_DESTINATIONS)")
    assert state_words(job.state) == "predicted, no destination"


def test_the_infer_stage_reads_the_next_queued_job_while_the_model_runs(
    make_settings, sqlite_engine, demo_checkpoint, stored_job
):
    with session_scope(sqlite_engine) as session:
        first = session.get(Job, stored_job)
        assert first is not None
        fields = first.model_dump(exclude={"id"})
        fields.update(state=JobState.queued, generation=first.generation + 1)
        session.add(Job(**fields))
    with session_scope(sqlite_engine) as session:
        second = max(session.exec(select(Job.id)).all())
    context = _context(
        make_settings, sqlite_engine, demo_checkpoint, labs_deadline_seconds=0, worker_prefetch="on"
    )
    assert run_infer(context, stored_job) == "predicted"
    assert context.prefetch.hits == 0
    assert run_infer(context, second) == "predicted"
    assert context.prefetch.hits == 1, "the second job's series was read during the first job's model"
