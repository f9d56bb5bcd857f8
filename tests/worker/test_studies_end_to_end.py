"""Studies, not series, with real peers: DCMTK storescu, the listener, Redis, a CPU worker, Orthanc.

Vendor-style liver studies (localizer, non-contrast, thin and thick arterial,
portal venous, delayed, a coronal reformat and a dose report) each give one SR
whose evidence is the series the model read; a study missing the phase the
checkpoint needs gets none and says which; a late phase gives a second SR that
names its predecessor and a rejection note that withdraws the first.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pydicom
import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from tace.app.api.app import create_app
from tace.app.synthetic_ct import VENDOR_STYLES, StudySeries, liver_study
from tace.settings import Settings
from tests.support.contract import with_contract
from tests.support.gateway import Gateway
from tests.support.listener import storescu
from tests.support.services import require_tool, wait_until

pytestmark = pytest.mark.slow


def _send(gateway: Gateway, study: dict[str, StudySeries], *roles: str) -> None:
    files = [p for role in roles or study for p in study[role].paths]
    result = storescu(gateway.dicom_port, files, extra=["-R"])
    assert result.returncode == 0, result.stderr


def _dciodvfy_errors(path: Path) -> list[str]:
    verify = subprocess.run([require_tool("dciodvfy"), str(path)], capture_output=True, text=True)
    return [line for line in (verify.stdout + verify.stderr).splitlines() if line.startswith("Error")]


def _evidence_series(sr: pydicom.Dataset) -> set[str]:
    return {
        item.SeriesInstanceUID
        for item in sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence
    }


def _study_uid(study: dict[str, StudySeries]) -> str:
    return str(pydicom.dcmread(study["localizer"].paths[0], stop_before_pixels=True).StudyInstanceUID)


def _jobs_show(gateway: Gateway, job_id: int, *extra: str) -> str:
    shown = subprocess.run(
        [sys.executable, "-m", "tace", "jobs", "show", str(job_id), *extra],
        env=gateway.env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert shown.returncode == 0, shown.stderr
    return shown.stdout


def test_four_vendor_studies_give_one_sr_each_from_the_portal_venous_series(gateway, tmp_path: Path) -> None:
    system = gateway()
    system.start_listener()
    system.start_worker()
    studies = {
        vendor: liver_study(vendor, tmp_path / vendor, size=32, seed=n, patient_id=f"VEND{n:04d}")
        for n, vendor in enumerate(sorted(VENDOR_STYLES))
    }
    for study in studies.values():
        _send(system, study)
    wait_until(
        lambda: len([j for j in system.jobs() if str(j.state) == "sent"]) == 4 or None,
        300,
        what=f"four sent jobs (jobs: {[(j.id, str(j.state), j.error) for j in system.jobs()]})",
    )
    assert len(system.jobs()) == 4, "one job per study, not one per eligible series"
    instances = system.orthanc.sr_instances()
    assert len(instances) == 4
    by_study = {}
    for instance in instances:
        path = system.orthanc.download(instance, tmp_path / f"{instance}.dcm")
        by_study[pydicom.dcmread(path).StudyInstanceUID] = path
    for vendor, study in studies.items():
        path = by_study[_study_uid(study)]
        assert _evidence_series(pydicom.dcmread(path)) == {study["portal_venous"].series_instance_uid}, vendor
        assert _dciodvfy_errors(path) == [], vendor
    siemens = by_study[_study_uid(studies["siemens"])]
    text = subprocess.run(
        [require_tool("dsrdump"), "+U8", "+Pl", str(siemens)], capture_output=True, text=True
    ).stdout
    assert "Used as portal venous phase: series 5 'Venös  5.0  Br40'" in text
    assert "Not used: series 1 'Topogramm  0.6  T20f': localizer (scout) series" in text
    assert "Not used: series 3 'Arteriell  1.0  Br40': arterial phase; portal venous preferred" in text
    assert "Not used: series 4 'Arteriell  5.0  Br40': arterial phase; portal venous preferred" in text
    assert (
        "Not used: series 7 'Venös  3.0  Br40 COR': coronal DERIVED reformat, no axial ORIGINAL/PRIMARY slices"
        in text
    )
    pv = studies["siemens"]["portal_venous"].series_instance_uid
    job_id = next(
        j.id for j in system.jobs() if any(s["series_instance_uid"] == pv for s in j.selection["series"])
    )
    shown = _jobs_show(system, job_id)
    assert "series of the study (phase, confidence: evidence -> use)" in shown
    assert (
        "portal_venous, high: acquired 70 s after Contrast/Bolus Start Time (0018,1042), "
        "in the portal venous window [55, 110) s -> used as portal venous phase"
    ) in shown


def test_missing_phase_gives_no_sr_and_names_the_phase(
    gateway, tmp_path: Path, demo_checkpoint: Path
) -> None:
    checkpoint = with_contract(
        demo_checkpoint,
        tmp_path / "pv.safetensors",
        {"phases": ["portal_venous"], "slice_thickness_mm": [0, None], "min_slices": 1},
    )
    system = gateway(study_quiet_seconds=2)
    system.settings["model_checkpoint"] = checkpoint
    system.start_listener()
    system.start_worker()
    study = liver_study("ge", tmp_path / "ge", size=32, phases=("non_contrast", "arterial", "delayed"))
    _send(system, study)
    failed = system.wait_for_state("failed", timeout=120)
    expected = (
        "study: no complete eligible portal venous series (the model needs portal venous) after 2 s; no SR"
    )
    assert failed.error == expected
    assert system.orthanc.sr_instances() == []
    shown = json.loads(_jobs_show(system, failed.id, "--json"))
    assert shown["no_sr_reason"] == expected
    assert {s["series_description"]: s["phase"] for s in shown["series_decisions"]}[
        "ARTERIAL 1.25mm"
    ] == "arterial"
    client = TestClient(
        create_app(Settings(data_dir=system.data_dir, api_token=SecretStr("t0ken")), system.engine)
    )
    api = client.get(f"/api/jobs/{failed.id}", headers={"Authorization": "Bearer t0ken"}).json()
    assert api["no_sr_reason"] == expected
    assert [s["reason"] for s in api["series_decisions"] if s["series_description"] == "DELAYED 5mm"] == [
        "delayed phase not read by the model"
    ]
    assert client.post("/login", data={"token": "t0ken"}, follow_redirects=False).status_code == 303
    page = client.get(f"/jobs/{failed.id}").text
    assert 'id="series-decisions"' in page and "delayed phase not read by the model" in page


def test_late_phase_after_the_sr_gives_a_second_sr_naming_its_predecessor_and_withdraws_the_first(
    gateway, tmp_path: Path
) -> None:
    system = gateway()
    system.start_listener()
    system.start_worker()
    study = liver_study("philips", tmp_path / "p", size=32)
    _send(system, study, "localizer", "non_contrast", "arterial_thin", "arterial", "delayed")
    first = system.wait_for_state("sent", timeout=180)
    (first_instance,) = system.orthanc.sr_instances()
    old = pydicom.dcmread(system.orthanc.download(first_instance, tmp_path / "first.dcm"))
    assert _evidence_series(old) == {study["delayed"].series_instance_uid}

    _send(system, study, "portal_venous")
    second = wait_until(
        lambda: next((j for j in system.jobs() if j.id != first.id and str(j.state) == "sent"), None),
        180,
        what=f"the second SR (jobs: {[(j.id, str(j.state), j.error) for j in system.jobs()]})",
    )
    assert str(system.job(first.id).state) == "superseded"
    assert second.predecessor_job_id == first.id
    new_instance = next(i for i in system.orthanc.sr_instances() if i != first_instance)
    new_path = system.orthanc.download(new_instance, tmp_path / "second.dcm")
    new = pydicom.dcmread(new_path)
    assert _evidence_series(new) == {study["portal_venous"].series_instance_uid}
    predecessor = new.PredecessorDocumentsSequence[0].ReferencedSeriesSequence[0].ReferencedSOPSequence[0]
    assert predecessor.ReferencedSOPInstanceUID == old.SOPInstanceUID
    (note_instance,) = system.orthanc.instances("KO")
    note_path = system.orthanc.download(note_instance, tmp_path / "note.dcm")
    note = pydicom.dcmread(note_path)
    assert note.ConceptNameCodeSequence[0].CodeValue == "113001"
    rejected = note.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]
    assert rejected.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == old.SOPInstanceUID
    assert _dciodvfy_errors(new_path) == [] and _dciodvfy_errors(note_path) == []
    events = system.events(second.id)
    assert events[0] == ("received", "study changed: series 5 'Portal venous phase 5mm' arrived")
    assert "withdrawn (IOCM rejection note) at 1 destination(s)" in (events[-1][1] or "")
    assert f"replaces job {first.id}" in _jobs_show(system, second.id)


def test_a_three_phase_checkpoint_gets_one_sr_from_arterial_portal_venous_and_delayed(
    gateway, tmp_path: Path, three_phase_checkpoint: Path
) -> None:
    system = gateway()
    system.settings["model_checkpoint"] = three_phase_checkpoint
    system.start_listener()
    system.start_worker()
    study = liver_study("ge", tmp_path / "ge", size=32)
    _send(system, study)
    job = system.wait_for_state("sent", timeout=240)
    assert len(system.jobs()) == 1
    chosen = {s["used_for"]: s["series_instance_uid"] for s in job.selection["series"] if s["used_for"]}
    assert set(chosen) == {"arterial", "portal_venous", "delayed"}
    (instance,) = system.orthanc.sr_instances()
    path = system.orthanc.download(instance, tmp_path / "sr.dcm")
    assert _evidence_series(pydicom.dcmread(path)) == set(chosen.values())
    assert _dciodvfy_errors(path) == []
    text = subprocess.run(
        [require_tool("dsrdump"), "+U8", "+Pl", str(path)], capture_output=True, text=True
    ).stdout
    assert (
        "Used as arterial phase: series " in text and "Used as delayed phase: series 6 'DELAYED 5mm'" in text
    )
