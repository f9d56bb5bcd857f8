"""Studies, not series: a routed liver study gives one job, reading the series the contract asks for.

Real ingest into SQLite and PostgreSQL, the completion scanner and the study
evaluation in its transaction; no network (the end-to-end tests send the same
studies with storescu to a running gateway and Orthanc).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlmodel import select

from listener.completion import CompletionPolicy, scan
from listener.eligibility import EligibilityRules
from listener.study import StudyPolicy
from tace.app.synthetic_ct import VENDOR_STYLES, StudySeries, liver_study
from tace.contract import ContractSource
from tace.db import (
    Delivery,
    DeliveryKind,
    DeliveryState,
    Job,
    JobEvent,
    JobState,
    Series,
    Study,
    session_scope,
)
from tace.storage import Storage
from tests.support.contract import with_contract
from tests.support.ingest import ingest_files


def _files(study: dict[str, StudySeries], *roles: str) -> list[Path]:
    return [p for role in roles or study for p in study[role].paths]


def _policy(study: StudyPolicy | None = None) -> CompletionPolicy:
    return CompletionPolicy(
        0.0, 0.0, EligibilityRules(min_slices=8), study or StudyPolicy(quiet_seconds=3600)
    )


def _jobs(engine: Engine) -> list[Job]:
    with session_scope(engine) as session:
        return list(session.exec(select(Job).order_by(Job.id)).all())


@pytest.fixture
def storage(data_dir: Path) -> Storage:
    store = Storage(data_dir)
    store.ensure()
    return store


@pytest.mark.parametrize("vendor", sorted(VENDOR_STYLES))
def test_vendor_study_gives_one_job_reading_portal_venous_and_says_why_not_the_rest(
    vendor: str, sqlite_engine: Engine, storage: Storage, tmp_path: Path
) -> None:
    study = liver_study(vendor, tmp_path / vendor, size=16)
    ingest_files(sqlite_engine, storage, _files(study))
    scan(sqlite_engine, _policy())
    (job,) = _jobs(sqlite_engine)
    assert job.selection is not None
    by_uid = {s["series_instance_uid"]: s for s in job.selection["series"]}
    chosen = [s for s in job.selection["series"] if s["used_for"]]
    assert [s["series_instance_uid"] for s in chosen] == [study["portal_venous"].series_instance_uid]
    assert chosen[0]["reason"] == "used as portal venous phase"
    assert by_uid[study["localizer"].series_instance_uid]["reason"] == "localizer (scout) series"
    assert by_uid[study["reformat"].series_instance_uid]["reason"] == (
        "coronal DERIVED reformat, no axial ORIGINAL/PRIMARY slices"
    )
    assert (
        by_uid[study["arterial"].series_instance_uid]["reason"] == "arterial phase; portal venous preferred"
    )
    assert by_uid[study["delayed"].series_instance_uid]["reason"] == "delayed phase; portal venous preferred"
    assert by_uid[study["non_contrast"].series_instance_uid]["phase"] == "non_contrast"
    assert study["dose_report"].series_instance_uid not in by_uid, "a dose report is not an image; not stored"
    with session_scope(sqlite_engine) as session:
        arterial = session.exec(
            select(Series).where(Series.series_instance_uid == study["arterial_thin"].series_instance_uid)
        ).one()
        assert (arterial.phase, arterial.phase_confidence) == ("arterial", "high")
        assert arterial.tags is not None and arterial.tags["slice_thickness"] == VENDOR_STYLES[vendor].thin
        assert job.series_id == by_uid[study["portal_venous"].series_instance_uid]["series_id"]


def test_three_phase_contract_prefers_the_thickness_nearest_training_and_explains_it(
    sqlite_engine: Engine, storage: Storage, tmp_path: Path, demo_checkpoint: Path
) -> None:
    checkpoint = with_contract(
        demo_checkpoint,
        tmp_path / "three.safetensors",
        {"phases": ["arterial", "portal_venous", "delayed"], "slice_thickness_mm": [3, 5], "min_slices": 4},
    )
    study = liver_study("ge", tmp_path / "ge", size=16)
    ingest_files(sqlite_engine, storage, _files(study))
    scan(sqlite_engine, _policy(StudyPolicy(ContractSource(checkpoint), quiet_seconds=3600)))
    (job,) = _jobs(sqlite_engine)
    assert job.selection is not None
    chosen = {s["used_for"]: s["series_instance_uid"] for s in job.selection["series"] if s["used_for"]}
    assert chosen == {
        "arterial": study["arterial"].series_instance_uid,
        "portal_venous": study["portal_venous"].series_instance_uid,
        "delayed": study["delayed"].series_instance_uid,
    }
    assert job.selection["reference"] == "portal_venous"
    thin = next(
        s
        for s in job.selection["series"]
        if s["series_instance_uid"] == study["arterial_thin"].series_instance_uid
    )
    assert thin["reason"] == "5 mm of series 4 is nearer the trained 3-5 mm than 1.25 mm"


def test_missing_phase_waits_then_is_recorded_ineligible_naming_it(
    engine: Engine, storage: Storage, tmp_path: Path, demo_checkpoint: Path
) -> None:
    checkpoint = with_contract(
        demo_checkpoint,
        tmp_path / "pv.safetensors",
        {"phases": ["portal_venous"], "slice_thickness_mm": [0, None], "min_slices": 1},
    )
    study = liver_study("siemens", tmp_path / "s", size=16, phases=("non_contrast", "arterial", "delayed"))
    ingest_files(engine, storage, _files(study))
    waiting = StudyPolicy(ContractSource(checkpoint), quiet_seconds=3600)
    scan(engine, _policy(waiting))
    assert _jobs(engine) == []
    with session_scope(engine) as session:
        (row,) = session.exec(select(Study)).all()
        assert row.ineligible_reason == (
            "no complete eligible portal venous series (the model needs portal venous)"
        )
    scan(engine, _policy(StudyPolicy(ContractSource(checkpoint), quiet_seconds=0.001)))
    (job,) = _jobs(engine)
    assert job.state == JobState.failed
    assert job.error == (
        "study: no complete eligible portal venous series (the model needs portal venous) after 0.001 s; no SR"
    )
    scan(engine, _policy(StudyPolicy(ContractSource(checkpoint), quiet_seconds=0.001)))
    assert len(_jobs(engine)) == 1, "recorded once, not at every scan"


def _deliver(engine: Engine, job_id: int) -> None:
    with session_scope(engine) as session:
        session.add(
            Delivery(
                job_id=job_id,
                destination="PACS@127.0.0.1:104",
                kind=DeliveryKind.sr,
                sop_instance_uid="1.2.3.4",
                state=DeliveryState.delivered,
            )
        )
        job = session.get(Job, job_id)
        assert job is not None
        job.state = JobState.sent
        session.add(job)


def test_late_phase_after_the_sr_supersedes_with_a_predecessor_and_a_late_scout_does_not(
    engine: Engine, storage: Storage, tmp_path: Path
) -> None:
    full = liver_study("philips", tmp_path / "p", size=16)
    early = [p for role in ("localizer", "non_contrast", "arterial", "delayed") for p in full[role].paths]
    ingest_files(engine, storage, early)
    scan(engine, _policy())
    (first,) = _jobs(engine)
    assert first.selection is not None
    assert [s["used_for"] for s in first.selection["series"] if s["used_for"]] == ["any"]
    assert first.series_id == next(
        s["series_id"]
        for s in first.selection["series"]
        if s["series_instance_uid"] == full["delayed"].series_instance_uid
    )
    assert first.id is not None
    _deliver(engine, first.id)

    ingest_files(engine, storage, full["portal_venous"].paths)
    scan(engine, _policy())
    old, new = _jobs(engine)
    assert (old.state, old.superseded_by_id) == (JobState.superseded, new.id)
    assert new.predecessor_job_id == first.id and new.generation == 2
    with session_scope(engine) as session:
        details = [e.detail for e in session.exec(select(JobEvent).where(JobEvent.job_id == new.id))]
    assert details[0] == "study changed: series 5 'Portal venous phase 5mm' arrived"

    ingest_files(engine, storage, full["reformat"].paths)
    scan(engine, _policy())
    assert len(_jobs(engine)) == 2, "a series the model does not read changes nothing"


def test_resent_series_with_other_pixels_is_a_study_change_the_same_bytes_are_not(
    engine: Engine, storage: Storage, tmp_path: Path
) -> None:
    study = liver_study("canon", tmp_path / "c", size=16, dose_report=False)
    ingest_files(engine, storage, _files(study))
    scan(engine, _policy())
    (first,) = _jobs(engine)
    assert first.id is not None
    _deliver(engine, first.id)
    ingest_files(engine, storage, study["portal_venous"].paths)
    scan(engine, _policy())
    assert len(_jobs(engine)) == 1, "a repeated send with identical bytes is no change"

    changed = pydicom.dcmread(study["portal_venous"].paths[3])
    pixels = changed.pixel_array.copy()
    pixels[:4, :4] = np.uint16(2000)
    changed.PixelData = pixels.tobytes()
    replacement = tmp_path / "replacement.dcm"
    changed.save_as(replacement)
    ingest_files(engine, storage, [replacement])
    scan(engine, _policy())
    old, new = _jobs(engine)
    assert old.state == JobState.superseded and new.predecessor_job_id == first.id
    with session_scope(engine) as session:
        details = [e.detail for e in session.exec(select(JobEvent).where(JobEvent.job_id == new.id))]
        assert details[0] == "study changed: series 5 'PVP 5.0 FC18' changed (resent with other content)"
        generations = session.execute(sa.select(Study.__table__.c.generation)).scalars().all()
    assert generations == [2]
