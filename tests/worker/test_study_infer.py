"""The infer stage on a study job: only the chosen series are read, and phases that cannot be aligned are refused."""

from __future__ import annotations

import shutil
from pathlib import Path

import pydicom
from sqlalchemy.engine import Engine
from sqlmodel import col, select

from listener.completion import CompletionPolicy, scan
from listener.eligibility import EligibilityRules
from listener.study import StudyPolicy
from tace.app.synthetic_ct import liver_study
from tace.contract import ContractSource
from tace.db import Job, JobState, Prediction, session_scope
from tace.storage import Storage
from tests.support.ingest import ingest_files
from worker.context import WorkerContext
from worker.infer import run_infer


def test_phases_in_different_frames_of_reference_fail_the_job_with_the_reason(
    make_settings, sqlite_engine: Engine, three_phase_checkpoint: Path, tmp_path: Path
) -> None:
    checkpoint = three_phase_checkpoint
    settings = make_settings(
        model_checkpoint=checkpoint, device="cpu", broker_url="memory://", required_features=[]
    )
    storage = Storage(settings.data_dir)
    storage.ensure()
    study = liver_study("siemens", tmp_path / "s", size=16, dose_report=False)
    for path in study["delayed"].paths:
        ds = pydicom.dcmread(path)
        ds.FrameOfReferenceUID = "1.2.826.0.1.3680043.10.777"
        ds.save_as(path)
    ingest_files(sqlite_engine, storage, [p for s in study.values() for p in s.paths])
    policy = CompletionPolicy(
        0.0, 0.0, EligibilityRules(min_slices=8), StudyPolicy(ContractSource(checkpoint))
    )
    scan(sqlite_engine, policy)
    with session_scope(sqlite_engine) as session:
        (job,) = session.exec(select(Job)).all()
    assert job.id is not None
    assert run_infer(WorkerContext(settings, sqlite_engine), job.id) == "failed"
    with session_scope(sqlite_engine) as session:
        failed = session.get(Job, job.id)
        assert failed is not None and failed.state == JobState.failed
        assert failed.error is not None
        assert failed.error.startswith("volume: phases are not in one frame of reference (arterial ")
        assert failed.error.endswith("delayed 1.2.826.0.1.3680043.10.777)")


def test_a_three_phase_study_is_predicted_from_its_three_chosen_series_only(
    make_settings, sqlite_engine: Engine, three_phase_checkpoint: Path, tmp_path: Path
) -> None:
    settings = make_settings(
        model_checkpoint=three_phase_checkpoint, device="cpu", broker_url="memory://", required_features=[]
    )
    storage = Storage(settings.data_dir)
    storage.ensure()
    study = liver_study("philips", tmp_path / "p", size=16, dose_report=False)
    ingest_files(sqlite_engine, storage, [p for s in study.values() for p in s.paths])
    policy = CompletionPolicy(
        0.0, 0.0, EligibilityRules(min_slices=8), StudyPolicy(ContractSource(three_phase_checkpoint))
    )
    scan(sqlite_engine, policy)
    with session_scope(sqlite_engine) as session:
        (job,) = session.exec(select(Job)).all()
    assert job.id is not None and job.selection is not None
    chosen = {s["used_for"]: s["series_instance_uid"] for s in job.selection["series"] if s["used_for"]}
    assert set(chosen) == {"arterial", "portal_venous", "delayed"}
    assert chosen["portal_venous"] == study["portal_venous"].series_instance_uid
    assert chosen["delayed"] == study["delayed"].series_instance_uid
    assert run_infer(WorkerContext(settings, sqlite_engine), job.id) == "predicted"
    with session_scope(sqlite_engine) as session:
        prediction = session.exec(select(Prediction).where(Prediction.job_id == job.id)).one()
    sr = pydicom.dcmread(storage.resolve(prediction.sr_path))
    evidence = {
        s.SeriesInstanceUID for s in sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence
    }
    assert evidence == set(chosen.values()), "the instances read, from the three chosen series only"
    texts = [item.TextValue for item in _walk(sr) if "TextValue" in item]
    (inputs,) = [t for t in texts if t.startswith("Used as ")]
    lines = inputs.split("\r\n")
    assert [line.split(":")[0] for line in lines[:3]] == [
        "Used as arterial phase",
        "Used as portal venous phase",
        "Used as delayed phase",
    ]
    assert "Not used: series 1 'Survey': localizer (scout) series" in lines


def _walk(dataset: pydicom.Dataset) -> list[pydicom.Dataset]:
    items = []
    for item in dataset.get("ContentSequence", []):
        items.append(item)
        items.extend(_walk(item))
    return items


def test_a_study_selected_for_a_replaced_checkpoint_is_selected_again_for_the_new_one(
    make_settings,
    sqlite_engine: Engine,
    demo_checkpoint: Path,
    three_phase_checkpoint: Path,
    tmp_path: Path,
) -> None:
    checkpoint = tmp_path / "model.safetensors"
    shutil.copy(demo_checkpoint, checkpoint)
    settings = make_settings(
        model_checkpoint=checkpoint, device="cpu", broker_url="memory://", required_features=[]
    )
    storage = Storage(settings.data_dir)
    storage.ensure()
    full = liver_study("ge", tmp_path / "full", size=16, dose_report=False, patient_id="SYN0001")
    venous = liver_study(
        "ge",
        tmp_path / "pv",
        size=16,
        dose_report=False,
        patient_id="SYN0002",
        seed=1,
        phases=("portal_venous",),
    )
    ingest_files(
        sqlite_engine, storage, [p for study in (full, venous) for s in study.values() for p in s.paths]
    )
    policy = CompletionPolicy(
        0.0, 0.0, EligibilityRules(min_slices=8), StudyPolicy(ContractSource(checkpoint))
    )
    scan(sqlite_engine, policy)
    with session_scope(sqlite_engine) as session:
        first = {job.study_id: job for job in session.exec(select(Job)).all()}
    assert len(first) == 2
    ctx = WorkerContext(settings, sqlite_engine)
    assert ctx.predictor.meta.input_contract.phases == ("any",)

    shutil.copy(three_phase_checkpoint, checkpoint)
    for job in first.values():
        assert job.id is not None
        assert run_infer(ctx, job.id) == "failed"
    with session_scope(sqlite_engine) as session:
        refused = session.get(Job, next(iter(first.values())).id)
        assert refused is not None and refused.error is not None
        assert refused.error.startswith("study: the model changed: this study was selected for any, ")
        assert "the checkpoint now reads arterial, portal_venous, delayed" in refused.error

    scan(sqlite_engine, policy)
    with session_scope(sqlite_engine) as session:
        latest = {
            job.study_id: job
            for job in session.exec(select(Job).order_by(col(Job.id))).all()
            if job.id not in {j.id for j in first.values()}
        }
    assert set(latest) == set(first), "each study has one new job, and no more on the next scan"
    full_job = next(job for job in latest.values() if job.error is None)
    venous_job = next(job for job in latest.values() if job.error is not None)
    assert full_job.id is not None and full_job.selection is not None
    assert full_job.selection["phases"] == ["arterial", "portal_venous", "delayed"]
    assert venous_job.state == JobState.failed
    assert venous_job.error == (
        "study: no complete eligible arterial or delayed series (the model needs arterial, portal venous, "
        "delayed) (for the checkpoint now configured); no SR"
    )
    scan(sqlite_engine, policy)
    with session_scope(sqlite_engine) as session:
        assert len(session.exec(select(Job)).all()) == 4
    assert run_infer(ctx, full_job.id) == "predicted"
