"""Series in, SR out, with real peers: DCMTK storescu, the listener, Redis, a CPU worker, Orthanc."""

from __future__ import annotations

import html
import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import pydicom
import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from pydantic import SecretStr
from pydicom.uid import generate_uid

from tace.app.api.app import create_app
from tace.db import Instance, Prediction
from tace.settings import Settings
from tests.support.gateway import Gateway
from tests.support.hl7_messages import oru
from tests.support.listener import storescu
from tests.support.services import require_tool, wait_until

pytestmark = pytest.mark.slow

LABS = [
    "OBX|1|NM|1751-7^Albumin^LN||31|g/L|||||F|||20260114072000",
    "OBX|2|NM|1975-2^Bilirubin.total^LN||34.2|umol/L|||||F|||20260114072000",
]


def _send_ct(gateway: Gateway, files: list[Path]) -> None:
    result = storescu(gateway.dicom_port, files)
    assert result.returncode == 0, result.stderr


def _mllp(gateway: Gateway, message: str) -> str:
    with socket.create_connection(("127.0.0.1", gateway.hl7_port), timeout=10) as sock:
        sock.sendall(b"\x0b" + message.encode() + b"\x1c\r")
        data = b""
        while not data.endswith(b"\x1c\r"):
            data += sock.recv(65536)
    return data.decode()


def _prediction(gateway: Gateway, job_id: int) -> sa.Row:
    table = Prediction.__table__
    with gateway.engine.connect() as connection:
        return connection.execute(sa.select(table).where(table.c.job_id == job_id)).one()


def test_storescu_to_orthanc_sr_in_the_same_study_valid_and_readable(
    gateway, ct_series, tmp_path: Path
) -> None:
    dciodvfy, dsrdump = require_tool("dciodvfy"), require_tool("dsrdump")
    require_tool("storescu", "/usr/bin/storescu")
    system = gateway()
    system.start_listener()
    system.start_worker()
    files = ct_series(slices=20, rows=128, columns=128, patient_id="MRN4711")
    _send_ct(system, files)
    job = system.wait_for_state("sent", timeout=120)

    (instance,) = system.orthanc.sr_instances()
    tags = system.orthanc.instance_tags(instance)
    ct = pydicom.dcmread(files[0], stop_before_pixels=True)
    assert tags["StudyInstanceUID"] == ct.StudyInstanceUID
    assert tags["SeriesInstanceUID"] != ct.SeriesInstanceUID
    sr_file = system.orthanc.download(instance, tmp_path / "from-orthanc.dcm")
    verify = subprocess.run([dciodvfy, str(sr_file)], capture_output=True, text=True)
    assert [line for line in (verify.stdout + verify.stderr).splitlines() if line.startswith("Error")] == []
    dump = subprocess.run([dsrdump, "+Pl", str(sr_file)], capture_output=True, text=True).stdout
    prediction = _prediction(system, job.id)
    assert f'"Probability of disease control")="{round(prediction.probability, 4):g}"' in dump
    # the threshold the label was decided at is kept with the prediction (live performance uses it)
    assert prediction.threshold is not None
    assert f'"Decision threshold for disease control")="{round(prediction.threshold, 4):g}"' in dump
    code = "DC" if prediction.label == "disease_control" else "PD"
    assert f"({code},99TACE," in dump
    assert 'TEXT:(,,"Algorithm Name")="CLDCA"' in dump
    assert f'TEXT:(,,"Algorithm Version")="{prediction.model_version}"' in dump
    assert prediction.demo_model and "trained on synthetic data" in dump
    stored = system.data_dir / prediction.sr_path
    assert pydicom.dcmread(stored).SOPInstanceUID == tags["SOPInstanceUID"] == prediction.sr_sop_instance_uid
    shown = subprocess.run(
        [sys.executable, "-m", "tace", "jobs", "show", str(job.id), "--json"],
        env=system.env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    detail = json.loads(shown.stdout)
    assert [e["state"] for e in detail["events"]] == [
        "received",
        "queued",
        "running",
        "predicted",
        "running",
        "sent",
    ]
    assert set(detail["prediction"]["timings"]) >= {"read_volume", "features", "model", "sr"}


def test_labs_sent_before_the_ct_are_the_model_input(gateway, ct_series) -> None:
    system = gateway()
    system.start_hl7()
    system.start_listener()
    system.start_worker()
    ack = _mllp(system, oru("LABS0042", LABS, patient="PID|1||MRN4711^^^HOSP^MR||Doe^Jane"))
    assert "MSA|AA|LABS0042" in ack
    _send_ct(system, ct_series(slices=12, rows=64, columns=64, patient_id="MRN4711"))
    job = system.wait_for_state("sent", timeout=120)
    features = _prediction(system, job.id).features
    assert features["albumin"]["value"] == pytest.approx(3.1)
    assert features["albumin"]["source"] == "HL7 LABS0042 from LABSYS^HOSP, OBX 1"
    assert features["total_bilirubin"]["value"] == pytest.approx(2.0, rel=1e-3)
    assert "albumin" not in _prediction(system, job.id).missing_features


def test_labs_arriving_after_the_ct_wake_the_waiting_job(gateway, ct_series) -> None:
    system = gateway(required_features="albumin", labs_retry_seconds=60, labs_deadline_seconds=600)
    system.start_hl7()
    system.start_listener()
    system.start_worker()
    _send_ct(system, ct_series(slices=12, rows=64, columns=64, patient_id="MRN5555"))
    waiting = system.wait_for_state("waiting_for_labs", timeout=120)
    assert waiting.error is None
    expected = "waiting for labs: serum albumin (no labs received for this patient ID, under any issuer)"
    assert ("waiting_for_labs", expected) in system.events(waiting.id)
    time.sleep(10)
    assert str(system.job(waiting.id).state) == "waiting_for_labs"
    sent_at = time.monotonic()
    ack = _mllp(system, oru("LATE0001", LABS[:1], patient="PID|1||MRN5555^^^HOSP^MR"))
    assert "MSA|AA|" in ack
    system.wait_for_state("sent", timeout=45, job_id=waiting.id)
    assert time.monotonic() - sent_at < 45, "woken by the labs, not by the 60 s retry"
    assert _prediction(system, waiting.id).features["albumin"]["source"].startswith("HL7 LATE0001")


def test_labs_under_an_authority_explain_the_wait_then_match_once_the_mapping_is_set(
    gateway, ct_series, tmp_path: Path
) -> None:
    """A lab that sends PID-3 with an assigning authority and a PACS that sends no IssuerOfPatientID."""
    system = gateway(required_features="albumin", labs_retry_seconds=2, labs_deadline_seconds=600)
    system.settings.pop("default_issuer")
    system.start_hl7()
    system.start_listener()
    system.start_worker()
    ack = _mllp(system, oru("ISS0001", LABS[:1], patient="PID|1||NC0001^^^HOSP^MR||Doe^Jane"))
    assert "MSA|AA|ISS0001" in ack
    _send_ct(system, ct_series(slices=12, rows=64, columns=64, patient_id="NC0001"))
    waiting = system.wait_for_state("waiting_for_labs", timeout=120)
    expected = (
        "waiting for labs: serum albumin (no labs for this patient without an issuer; labs for the same patient "
        'ID exist under issuer HOSP (1 value(s); if they are the same patient, set TACE_HL7_AUTHORITY_ISSUERS="HOSP="))'
    )
    assert ("waiting_for_labs", expected) in system.events(waiting.id)
    shown = subprocess.run(
        [sys.executable, "-m", "tace", "jobs", "show", str(waiting.id)],
        env=system.env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert expected in shown.stdout, shown.stdout
    logged = [
        json.loads(line)
        for line in (tmp_path / "worker.log").read_text().splitlines()
        if '"job.waiting_for_labs"' in line
    ]
    assert logged and logged[-1]["why"] == expected.removeprefix("waiting for labs: serum albumin (")[:-1]
    client = TestClient(
        create_app(Settings(data_dir=system.data_dir, api_token=SecretStr("t0ken")), system.engine)
    )
    assert client.post("/login", data={"token": "t0ken"}, follow_redirects=False).status_code == 303
    assert expected in html.unescape(client.get(f"/jobs/{waiting.id}").text)

    system.stop("worker")
    system.settings["hl7_authority_issuers"] = "HOSP="
    system.start_worker()
    system.wait_for_state("sent", timeout=120, job_id=waiting.id)
    albumin = _prediction(system, waiting.id).features["albumin"]
    assert albumin["value"] == pytest.approx(3.1) and albumin["source"].startswith("HL7 ISS0001")


def test_pacs_down_then_back_gets_exactly_one_sr(gateway, ct_series) -> None:
    system = gateway(send_retry_max_seconds=2)
    system.orthanc.stop()
    system.start_listener()
    system.start_worker()
    _send_ct(system, ct_series(slices=12, rows=64, columns=64))
    retrying = wait_until(
        lambda: next((j for j in system.jobs() if j.error and j.error.startswith("retrying")), None),
        120,
        what="a send retry",
    )
    assert (
        str(retrying.state) == "predicted" and "cannot connect" in retrying.error
    ) or "not established" in retrying.error
    time.sleep(3)
    system.orthanc.start()
    system.wait_for_state("sent", timeout=90, job_id=retrying.id)
    assert len(system.orthanc.sr_instances()) == 1


def test_worker_killed_during_inference_is_redelivered_and_one_sr_arrives(gateway, ct_series) -> None:
    system = gateway()
    system.start_listener()
    doomed = system.start_worker("doomed")
    files = ct_series(slices=100, shuffle_instance_numbers=True)
    _send_ct(system, files)
    running = wait_until(
        lambda: next(
            (j for j in system.jobs() if str(j.state) == "running" and str(j.stage) == "infer"), None
        ),
        120,
        interval=0.02,
        what="inference to start",
    )
    system.kill("doomed")
    assert doomed.returncode is not None
    system.start_worker("rescuer")
    system.wait_for_state("sent", timeout=180, job_id=running.id)
    assert len(system.orthanc.sr_instances()) == 1
    job = system.job(running.id)
    assert job.lost_leases == 1
    assert any(detail and "previous worker went silent" in detail for _, detail in system.events(running.id))


def test_duplicate_positions_fail_with_a_reason_and_replay_after_the_fix(
    gateway, ct_series, tmp_path: Path
) -> None:
    system = gateway()
    system.start_listener()
    system.start_worker()
    files = ct_series(slices=12, rows=64, columns=64)
    duplicate = pydicom.dcmread(files[3])
    duplicate.SOPInstanceUID = duplicate.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    extra = tmp_path / "dup.dcm"
    duplicate.save_as(extra)
    _send_ct(system, [*files, extra])
    failed = system.wait_for_state("failed", timeout=120)
    assert failed.error.startswith("volume: duplicate slice positions: 1 slice(s) share a position")
    shown = subprocess.run(
        [sys.executable, "-m", "tace", "jobs", "show", str(failed.id)],
        env=system.env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "duplicate slice positions" in shown.stdout

    table = Instance.__table__
    with system.engine.begin() as connection:
        path = connection.execute(
            sa.select(table.c.path).where(table.c.sop_instance_uid == str(duplicate.SOPInstanceUID))
        ).scalar_one()
        connection.execute(table.delete().where(table.c.sop_instance_uid == str(duplicate.SOPInstanceUID)))
    (system.data_dir / path).unlink()
    replay = subprocess.run(
        [sys.executable, "-m", "tace", "jobs", "replay", str(failed.id)],
        env=system.env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert replay.returncode == 0, replay.stderr
    system.wait_for_state("sent", timeout=120, job_id=failed.id)
    assert len(system.orthanc.sr_instances()) == 1

    again = subprocess.run(
        [sys.executable, "-m", "tace", "jobs", "replay", str(failed.id), "--from-stage", "send"],
        env=system.env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert again.returncode == 0, again.stderr
    time.sleep(1)
    system.wait_for_state("sent", timeout=60, job_id=failed.id)
    assert len(system.orthanc.sr_instances()) == 1, "a replay of the same generation adds no second SR"


def test_a_series_with_a_non_conformant_header_gets_a_valid_sr_in_orthanc(
    gateway, ct_series, tmp_path: Path
) -> None:
    """Issue 15.3 through the real path: storescu -> listener -> worker -> Orthanc."""
    dciodvfy = require_tool("dciodvfy")
    require_tool("storescu", "/usr/bin/storescu")
    system = gateway()
    system.start_listener()
    system.start_worker()
    files = ct_series(slices=12, rows=64, columns=64, patient_id="MRN6868", patient_birth_date="1958-08-17")
    for path in files:
        ds = pydicom.dcmread(path)
        del ds.AccessionNumber
        ds.PatientName = "Quill Jane"
        ds.PatientSex = "female"
        ds.save_as(path)
    _send_ct(system, files)
    job = system.wait_for_state("sent", timeout=120)
    assert job.error is None
    (instance,) = system.orthanc.sr_instances()
    sr_file = system.orthanc.download(instance, tmp_path / "from-orthanc.dcm")
    verify = subprocess.run([dciodvfy, str(sr_file)], capture_output=True, text=True)
    assert [line for line in (verify.stdout + verify.stderr).splitlines() if line.startswith("Error")] == []
    sr = pydicom.dcmread(sr_file)
    assert (sr.PatientBirthDate, str(sr.PatientName), sr.PatientSex, sr.AccessionNumber) == (
        "19580817",
        "Quill Jane^",
        "F",
        "",
    )
    assert _prediction(system, job.id).features["sex"]["source"] == "CT header PatientSex"
    worker_log = (tmp_path / "worker.log").read_text()
    assert '"attribute": "PatientBirthDate", "action": "repaired: separators removed"' in worker_log
    assert '"attribute": "AccessionNumber", "action": "added empty: absent"' in worker_log
    assert "1958-08-17" not in worker_log and "Quill" not in worker_log
