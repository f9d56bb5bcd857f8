"""Results to the EHR: ORU^R01 over MLLP and a FHIR DiagnosticReport, from the send stage.

The receivers are real (a socket with MLLP framing, an HTTP server doing
conditional updates) and record what arrived; hl7apy and fhir.resources, not
our builders, judge what was sent.
"""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import hl7
import pytest
from fastapi.testclient import TestClient
from fhir.resources.R4B.diagnosticreport import DiagnosticReport
from fhir.resources.R4B.observation import Observation
from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.exceptions import ValidationError as HL7apyValidationError
from hl7apy.parser import parse_message
from pydantic import SecretStr
from sqlalchemy.engine import Engine
from sqlmodel import select

from listener.completion import CompletionPolicy, complete_series
from listener.eligibility import EligibilityRules
from tace.app.api.app import create_app
from tace.app.replay import replay_job
from tace.db import (
    Delivery,
    DeliveryState,
    Job,
    JobState,
    Prediction,
    Series,
    Stage,
    Study,
    session_scope,
    utcnow,
)
from tace.jobs import claim, create_study_job, finish
from tace.metrics import metric
from tace.settings import SettingsError, load_settings
from tace.tls import server_tls_context
from tests.factories import add_series
from tests.support.certificates import make_certificates
from tests.support.ehr_receivers import FhirServer, MllpReceiver
from tests.support.ingest import ingest_files
from tests.support.listener import storescu
from tests.support.pacs import ScriptedPacs
from tests.support.processes import tace_env
from tests.support.services import free_port, require_tool
from worker.context import WorkerContext
from worker.ehr_result import EhrResult
from worker.hl7_result import build_oru
from worker.infer import run_infer
from worker.send import run_send
from worker.sr import sr_identity

TOKEN = "s3cret-bearer-token"


@pytest.fixture
def mllp() -> Iterator[MllpReceiver]:
    receiver = MllpReceiver().start()
    yield receiver
    receiver.stop()


@pytest.fixture
def fhir() -> Iterator[FhirServer]:
    server = FhirServer(token=TOKEN).start()
    yield server
    server.stop()


@pytest.fixture
def context(make_settings, sqlite_engine: Engine) -> Callable[..., WorkerContext]:
    def build(**settings: Any) -> WorkerContext:
        return WorkerContext(
            make_settings(broker_url="memory://", send_retry_max_seconds=1, **settings), sqlite_engine
        )

    return build


def _predicted(
    engine: Engine, *, series_id: int | None = None, generation: int = 1, model_version: str = "1.0.0"
) -> int:
    """A job of a study with the patient's identifiers, predicted and ready to send."""
    series_id = series_id or add_series(engine)
    with session_scope(engine) as session:
        series = session.get(Series, series_id)
        study = session.get(Study, series.study_id)
        study.patient_id, study.issuer_of_patient_id = "EHR0001", "HOSP"
        study.patient_name, study.patient_birth_date, study.patient_sex = "Doe^Jane", "19600102", "F"
        study.accession_number, study.study_datetime = "ACC77", dt.datetime(2026, 3, 4, 10, 20, 30)
        job = create_study_job(
            session,
            study_id=study.id,
            series_id=series_id,
            generation=generation,
            selection={},
            detail="test",
        )
        job_id, study_uid = job.id, study.study_instance_uid
    lease = claim(engine, job_id, Stage.infer, stall_seconds=60)
    assert lease is not None
    identity = sr_identity(study_uid, model_version, generation)
    with session_scope(engine) as session:
        session.add(
            Prediction(
                job_id=job_id,
                probability=0.734,
                label="disease_control",
                model_name="CLDCA",
                model_version=model_version,
                checkpoint_sha256="0" * 64,
                demo_model=True,
                threshold=0.5,
                sr_sop_instance_uid=identity.sop_instance_uid,
                sr_series_instance_uid=identity.series_instance_uid,
                sr_path=f"dicom/{study_uid}/sr.dcm",
            )
        )
    finish(engine, lease, JobState.predicted, stage=Stage.send)
    return job_id


def _job(engine: Engine, job_id: int) -> Job:
    with session_scope(engine) as session:
        return session.get(Job, job_id)


def _deliveries(engine: Engine, job_id: int) -> dict[str, Delivery]:
    with session_scope(engine) as session:
        return {str(d.kind): d for d in session.exec(select(Delivery).where(Delivery.job_id == job_id))}


def _strict(message: str) -> Any:
    parsed = parse_message(message, validation_level=VALIDATION_LEVEL.STRICT, find_groups=True)
    assert parsed.validate()
    return parsed


def _obx_statuses(message: str) -> set[str]:
    return {str(obx(11)) for obx in hl7.parse(message).segments("OBX")}


def test_oru_and_report_are_delivered_once_and_validate(
    context, sqlite_engine: Engine, mllp: MllpReceiver, fhir: FhirServer
) -> None:
    job_id = _predicted(sqlite_engine)
    ctx = context(
        hl7_result_destination=f"127.0.0.1:{mllp.port}", fhir_base_url=fhir.base_url, fhir_token=TOKEN
    )
    assert run_send(ctx, job_id) == "sent"
    job = _job(sqlite_engine, job_id)
    assert job.state == JobState.sent
    rows = _deliveries(sqlite_engine, job_id)
    assert {k: (r.destination, str(r.state)) for k, r in rows.items()} == {
        "hl7_result": (f"127.0.0.1:{mllp.port}", "delivered"),
        "fhir_report": (fhir.base_url, "delivered"),
    }
    (message,) = mllp.received
    parsed = _strict(message)
    assert parsed.msh.msh_9.value == "ORU^R01^ORU_R01"
    patient = parsed.oru_r01_patient_result.oru_r01_patient
    assert patient.pid.pid_3.value == "EHR0001^^^HOSP^MR" and patient.pid.pid_5.value == "Doe^Jane"
    order = parsed.oru_r01_patient_result.oru_r01_order_observation
    assert order.obr.obr_2.value == "ACC77^PACS" and order.obr.obr_7.value == "20260304102030"
    assert order.obr.obr_25.value == "F"
    values = {str(o.obx.obx_3.obx_3_1.value): o.obx.obx_5.value for o in order.oru_r01_observation}
    assert values == {
        "TACE-RESP": "DC^Disease control (CR+PR+SD)^99TACE",
        "TACE-PDC": "0.734",
        "TACE-THR": "0.500",
        "TACE-MODEL": "CLDCA 1.0.0",
    }
    notes = [n.nte_3.value for n in order.nte]
    assert notes[0].startswith("Research use only") and "synthetic data" in notes[1]
    assert _obx_statuses(message) == {"F"}
    (report,) = fhir.reports.values()
    validated = DiagnosticReport.model_validate(report)
    assert validated.status == "final"
    observation = Observation.model_validate(report["contained"][0])
    assert observation.valueCodeableConcept.coding[0].code == "DC"
    assert observation.valueCodeableConcept.coding[0].system == "urn:tace:99TACE"
    probability = observation.component[0].valueQuantity
    assert (float(probability.value), probability.system, probability.code) == (
        0.734,
        "http://unitsofmeasure.org",
        "1",
    )
    with session_scope(sqlite_engine) as session:
        study_uid = session.get(Study, session.get(Series, job.series_id).study_id).study_instance_uid
    assert observation.derivedFrom[0].identifier.value == f"urn:oid:{study_uid}"
    assert observation.device.reference == "#model" and report["contained"][1]["resourceType"] == "Device"
    assert report["subject"]["identifier"] == {"value": "EHR0001", "assigner": {"display": "HOSP"}}
    assert fhir.requests[0]["authorization"] == f"Bearer {TOKEN}"
    assert metric("sends").labels(destination=fhir.base_url, outcome="delivered")._value.get() >= 1


def test_ae_then_aa_and_503_then_201_give_one_result_each(
    context, sqlite_engine: Engine, mllp: MllpReceiver, fhir: FhirServer
) -> None:
    mllp.script = ["AE", "WRONG_ID", "SILENT", "HANG"]
    fhir.script = [503, 429]
    job_id = _predicted(sqlite_engine)
    ctx = context(
        hl7_result_destination=f"127.0.0.1:{mllp.port}",
        fhir_base_url=fhir.base_url,
        fhir_token=TOKEN,
        hl7_result_timeout_seconds=1,
    )
    assert run_send(ctx, job_id) == "retrying"
    job = _job(sqlite_engine, job_id)
    assert job.state == JobState.predicted and job.not_before > utcnow()
    assert "AE for TACE" in job.error and "interface engine busy" in job.error
    assert "HTTP 503: scripted 503" in job.error
    assert run_send(ctx, job_id) == "retrying"
    assert "names control ID 'SOMEONE-ELSE', not ours" in _job(sqlite_engine, job_id).error
    assert run_send(ctx, job_id) == "retrying"
    assert "connection closed before an ACK" in _job(sqlite_engine, job_id).error
    assert run_send(ctx, job_id) == "retrying"
    assert "no ACK within 1 s for TACE" in _job(sqlite_engine, job_id).error
    assert run_send(ctx, job_id) == "sent"
    assert len(mllp.received) == 5 and len(set(mllp.received)) == 1, "every attempt is the same message"
    assert [len(v) for v in mllp.results.values()] == [1]
    assert len(fhir.reports) == 1 and fhir.reports["1"]["meta"]["versionId"] == "1"
    rows = _deliveries(sqlite_engine, job_id)
    assert (rows["hl7_result"].attempts, rows["fhir_report"].attempts) == (5, 3)
    assert run_send(ctx, job_id) == "not claimed"


def test_a_receiver_that_comes_up_later_and_a_lost_fhir_answer_never_duplicate(
    context, sqlite_engine: Engine, fhir: FhirServer
) -> None:
    port = free_port()
    job_id = _predicted(sqlite_engine)
    ctx = context(hl7_result_destination=f"127.0.0.1:{port}", fhir_base_url=fhir.base_url, fhir_token=TOKEN)
    assert run_send(ctx, job_id) == "retrying"
    assert "cannot deliver TACE" in _job(sqlite_engine, job_id).error
    assert len(fhir.reports) == 1
    # The FHIR server stored the report but its answer was lost: the retry updates that one report.
    with session_scope(sqlite_engine) as session:
        row = session.exec(select(Delivery).where(Delivery.kind == "fhir_report")).one()
        row.state = DeliveryState.retrying
        session.add(row)
    receiver = MllpReceiver().start(port)
    try:
        assert run_send(ctx, job_id) == "sent"
    finally:
        receiver.stop()
    assert [len(v) for v in receiver.results.values()] == [1]
    assert len(fhir.reports) == 1 and fhir.reports["1"]["meta"]["versionId"] == "2"


def test_ar_fails_the_job_with_the_reason_and_a_replay_delivers_it_once(
    context, sqlite_engine: Engine, mllp: MllpReceiver
) -> None:
    mllp.script = ["AR"]
    job_id = _predicted(sqlite_engine)
    ctx = context(hl7_result_destination=f"127.0.0.1:{mllp.port}")
    assert run_send(ctx, job_id) == "failed"
    job = _job(sqlite_engine, job_id)
    assert job.state == JobState.failed
    assert job.error.startswith(f"send: HL7 127.0.0.1:{mllp.port} refused: AR for TACE")
    assert job.error.endswith(": unknown receiving application")
    assert mllp.results == {}
    replay_job(sqlite_engine, job_id, Stage.send, new_generation=False, stall_seconds=60, reason="fixed")
    assert run_send(ctx, job_id) == "sent"
    assert [len(v) for v in mllp.results.values()] == [1]
    assert _deliveries(sqlite_engine, job_id)["hl7_result"].attempts == 2


def test_fhir_refusals_are_permanent_with_the_operation_outcome(
    context, sqlite_engine: Engine, fhir: FhirServer
) -> None:
    fhir.script = [422]
    fhir.refusal = "no record of Doe^Jane born 19600102:"
    job_id = _predicted(sqlite_engine)
    assert run_send(context(fhir_base_url=fhir.base_url, fhir_token=TOKEN), job_id) == "failed"
    # Scrubbing is per process: other tests' patients may be redacted too, so only ours is checked.
    error = _job(sqlite_engine, job_id).error or ""
    assert error.startswith(f"send: FHIR {fhir.base_url} refused: HTTP 422: no ") and error.endswith(": 422")
    assert "[redacted]^[redacted] born [redacted]" in error, (
        "an identifier the server quotes is scrubbed from the job (and the log, which the session scans)"
    )
    assert "Jane" not in _deliveries(sqlite_engine, job_id)["fhir_report"].detail, "nor from the delivery row"
    other = _predicted(sqlite_engine)
    assert run_send(context(fhir_base_url=fhir.base_url, fhir_token="wrong"), other) == "failed"
    error = _job(sqlite_engine, other).error
    assert error.endswith("HTTP 401: bearer token missing or wrong") and "wrong" not in error.split(":")[0]
    assert fhir.reports == {}


def test_a_superseding_job_sends_a_correction_to_the_same_order_and_report(
    context, sqlite_engine: Engine, mllp: MllpReceiver, fhir: FhirServer, tmp_path: Path
) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    ctx = context(
        hl7_result_destination=f"127.0.0.1:{mllp.port}",
        fhir_base_url=fhir.base_url,
        fhir_token_file=token_file,
    )
    first = _predicted(sqlite_engine)
    assert run_send(ctx, first) == "sent"
    second = _predicted(sqlite_engine, series_id=_job(sqlite_engine, first).series_id, generation=2)
    token_file.rename(tmp_path / "rotating")
    assert run_send(ctx, second) == "retrying"
    assert "cannot read TACE_FHIR_TOKEN_FILE: No such file or directory" in _job(sqlite_engine, second).error
    (tmp_path / "rotating").rename(token_file)
    assert run_send(ctx, second) == "sent"
    original, correction = mllp.received
    parsed = _strict(correction)
    order = parsed.oru_r01_patient_result.oru_r01_order_observation
    assert order.obr.obr_25.value == "C" and _obx_statuses(correction) == {"C"}
    first_order = hl7.parse(original).segment("OBR")
    assert str(hl7.parse(correction).segment("OBR")(3)) == str(first_order(3)), "the same filler order"
    assert hl7.parse(correction).segment("MSH")(10) != hl7.parse(original).segment("MSH")(10)
    assert len(fhir.reports) == 1
    report = DiagnosticReport.model_validate(fhir.reports["1"])
    assert report.status == "amended" and fhir.reports["1"]["meta"]["versionId"] == "2"
    assert Observation.model_validate(fhir.reports["1"]["contained"][0]).status == "amended"


def test_ehr_settings_name_the_variable_and_never_show_a_token(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match=r"^TACE_HL7_RESULT_DESTINATION='ehr': 'ehr' is not of the form"):
        load_settings(data_dir=tmp_path, hl7_result_destination="ehr")
    with pytest.raises(SettingsError, match=r"^TACE_FHIR_BASE_URL='ftp://x': must be an http"):
        load_settings(data_dir=tmp_path, fhir_base_url="ftp://x")
    with pytest.raises(SettingsError, match=r"without credentials") as with_password:
        load_settings(data_dir=tmp_path, fhir_base_url="https://me:pa55@ehr.example/fhir")
    assert str(with_password.value).startswith("TACE_FHIR_BASE_URL='https://***@ehr.example/fhir': ")
    token_file = tmp_path / "token"
    token_file.write_text("from-file")
    with pytest.raises(SettingsError) as both:
        load_settings(data_dir=tmp_path, fhir_token=TOKEN, fhir_token_file=token_file)
    assert "TACE_FHIR_TOKEN_FILE" in str(both.value) and TOKEN not in str(both.value)
    with pytest.raises(SettingsError, match="TACE_HL7_RESULT_SENDING_FACILITY"):
        load_settings(data_dir=tmp_path, hl7_result_sending_facility="A|B")
    settings = load_settings(data_dir=tmp_path, fhir_base_url="https://ehr.example/fhir/", fhir_token=TOKEN)
    assert settings.fhir_base_url == "https://ehr.example/fhir" and TOKEN not in repr(settings)


def test_a_study_through_infer_and_send_reaches_the_pacs_hl7_and_fhir_and_shows_per_channel(
    make_settings,
    sqlite_engine: Engine,
    demo_checkpoint: Path,
    ct_series,
    data_dir: Path,
    mllp: MllpReceiver,
    fhir: FhirServer,
) -> None:
    """The worker's own stages on a stored study; the PACS first refuses for now, the EHR channels accept."""
    pacs = ScriptedPacs(plan=[0xA700]).start()
    ctx = WorkerContext(
        make_settings(
            model_checkpoint=demo_checkpoint,
            device="cpu",
            broker_url="memory://",
            required_features=["albumin"],
            labs_deadline_seconds=0,
            send_retry_max_seconds=1,
            destinations=pacs.destination,
            hl7_result_destination=f"127.0.0.1:{mllp.port}",
            fhir_base_url=fhir.base_url,
            fhir_token=TOKEN,
        ),
        sqlite_engine,
    )
    ctx.storage.ensure()
    try:
        ingest_files(
            sqlite_engine, ctx.storage, ct_series(slices=10, rows=48, columns=48, patient_id="EHR0002")
        )
        with session_scope(sqlite_engine) as session:
            series = session.exec(select(Series)).one()
        policy = CompletionPolicy(30, 1, EligibilityRules(min_slices=8))
        assert complete_series(sqlite_engine, series.id, series.last_received_at, policy) == "complete"
        with session_scope(sqlite_engine) as session:
            job_id = session.exec(select(Job.id)).one()
        assert run_infer(ctx, job_id) == "predicted"
        assert run_send(ctx, job_id) == "retrying"
        assert {k: str(r.state) for k, r in _deliveries(sqlite_engine, job_id).items()} == {
            "sr": "retrying",
            "hl7_result": "delivered",
            "fhir_report": "delivered",
        }
        assert run_send(ctx, job_id) == "sent"
        assert (len(mllp.received), len(fhir.requests), len(pacs.stored)) == (1, 1, 1)
        _strict(mllp.received[0])
        newer = replay_job(
            sqlite_engine, job_id, Stage.infer, new_generation=True, stall_seconds=60, reason="rerun"
        ).replayed_as
        assert run_infer(ctx, newer) == "predicted"
        assert run_send(ctx, newer) == "sent"
    finally:
        pacs.stop()
    assert _obx_statuses(_strict(mllp.received[1]).to_er7()) == {"C"}
    assert len(fhir.reports) == 1 and fhir.reports["1"]["status"] == "amended"
    shown = subprocess.run(
        [sys.executable, "-m", "tace", "jobs", "show", str(newer)],
        env=tace_env(data_dir=data_dir),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert shown.returncode == 0, shown.stderr
    assert f"    HL7 ORU^R01 -> 127.0.0.1:{mllp.port}: delivered, 1, AA for TACE" in shown.stdout
    assert f"    FHIR DiagnosticReport -> {fhir.base_url}: delivered, 1, HTTP 200 (" in shown.stdout
    assert f"    SR -> {pacs.destination}: delivered, 1, status 0x0000" in shown.stdout
    assert "result delivered to HL7" in shown.stdout
    as_json = subprocess.run(
        [sys.executable, "-m", "tace", "jobs", "show", str(newer), "--json"],
        env=tace_env(data_dir=data_dir),
        capture_output=True,
        text=True,
        timeout=120,
    )
    channels = {d["channel"]: d["state"] for d in json.loads(as_json.stdout)["deliveries"]}
    assert channels == {
        "SR": "delivered",
        "rejection note": "failed",
        "HL7 ORU^R01": "delivered",
        "FHIR DiagnosticReport": "delivered",
    }, "this scripted PACS takes no Key Object Selection, so the earlier SR is not withdrawn there"


def test_the_job_page_and_the_sends_counter_show_each_channel(
    context, make_settings, sqlite_engine: Engine, mllp: MllpReceiver, fhir: FhirServer
) -> None:
    mllp.script = ["AE"]
    job_id = _predicted(sqlite_engine)
    ctx = context(
        hl7_result_destination=f"127.0.0.1:{mllp.port}", fhir_base_url=fhir.base_url, fhir_token=TOKEN
    )
    assert run_send(ctx, job_id) == "retrying"
    assert run_send(ctx, job_id) == "sent"
    client = TestClient(create_app(make_settings(api_token=SecretStr("operator-secret")), sqlite_engine))
    assert client.post("/login", data={"token": "operator-secret"}, follow_redirects=False).status_code == 303
    page = client.get(f"/jobs/{job_id}").text
    assert (
        f'<td data-label="Object">HL7 ORU^R01</td><td data-label="Destination">127.0.0.1:{mllp.port}</td>'
        in page
    )
    assert (
        f'<td data-label="Object">FHIR DiagnosticReport</td><td data-label="Destination">{fhir.base_url}</td>'
        in page
    )
    assert "EHR0001" not in page, "the AE text and details carry no patient identifier"
    counts = {
        (name, outcome): metric("sends").labels(destination=name, outcome=outcome)._value.get()
        for name in (f"127.0.0.1:{mllp.port}", fhir.base_url)
        for outcome in ("retrying", "delivered", "failed")
    }
    assert counts == {
        (f"127.0.0.1:{mllp.port}", "retrying"): 1,
        (f"127.0.0.1:{mllp.port}", "delivered"): 1,
        (f"127.0.0.1:{mllp.port}", "failed"): 0,
        (fhir.base_url, "retrying"): 0,
        (fhir.base_url, "delivered"): 1,
        (fhir.base_url, "failed"): 0,
    }, "the sends counter that /metrics sums over processes"


@pytest.mark.slow
def test_storescu_to_the_gateway_gives_one_sr_in_orthanc_one_oru_and_one_report(
    gateway, ct_series, mllp: MllpReceiver, fhir: FhirServer
) -> None:
    """The processes of a deployment (listener, Redis, Celery worker) with the EHR busy once."""
    require_tool("storescu", "/usr/bin/storescu")
    mllp.script = ["AE"]
    system = gateway(
        send_retry_max_seconds=1,
        hl7_result_destination=f"127.0.0.1:{mllp.port}",
        fhir_base_url=fhir.base_url,
        fhir_token=TOKEN,
    )
    system.start_listener()
    system.start_worker()
    result = storescu(system.dicom_port, ct_series(slices=12, rows=64, columns=64, patient_id="MRN0815"))
    assert result.returncode == 0, result.stderr
    job = system.wait_for_state("sent", timeout=120)
    assert len(system.orthanc.sr_instances()) == 1
    assert len(mllp.received) == 2 and [len(v) for v in mllp.results.values()] == [1]
    parsed = _strict(mllp.received[-1])
    # this PACS sends no IssuerOfPatientID: its patients are the default issuer's, HOSP, and PID-3 says so
    assert parsed.oru_r01_patient_result.oru_r01_patient.pid.pid_3.value == "MRN0815^^^HOSP^MR"
    (report,) = fhir.reports.values()
    assert DiagnosticReport.model_validate(report).status == "final"
    assert {k: (r.state, r.attempts) for k, r in _deliveries(system.engine, job.id).items()} == {
        "sr": ("delivered", 1),
        "hl7_result": ("delivered", 2),
        "fhir_report": ("delivered", 1),
    }


def test_a_correction_only_where_the_earlier_result_arrived(
    context, sqlite_engine: Engine, mllp: MllpReceiver, fhir: FhirServer
) -> None:
    mllp.script = ["AR"]
    ctx = context(
        hl7_result_destination=f"127.0.0.1:{mllp.port}", fhir_base_url=fhir.base_url, fhir_token=TOKEN
    )
    first = _predicted(sqlite_engine)
    assert run_send(ctx, first) == "failed"
    second = _predicted(sqlite_engine, series_id=_job(sqlite_engine, first).series_id, generation=2)
    assert run_send(ctx, second) == "sent"
    message = mllp.received[-1]
    assert str(hl7.parse(message).segment("OBR")(25)) == "F" and _obx_statuses(message) == {"F"}
    assert fhir.reports["1"]["status"] == "amended" and fhir.reports["1"]["meta"]["versionId"] == "2"


def test_a_later_job_corrects_the_studys_one_report_even_after_a_failed_job_and_a_new_model(
    context, sqlite_engine: Engine, mllp: MllpReceiver, fhir: FhirServer
) -> None:
    ctx = context(
        hl7_result_destination=f"127.0.0.1:{mllp.port}", fhir_base_url=fhir.base_url, fhir_token=TOKEN
    )
    first = _predicted(sqlite_engine)
    assert run_send(ctx, first) == "sent"
    series_id = _job(sqlite_engine, first).series_id
    mllp.script = ["AR"]
    second = _predicted(sqlite_engine, series_id=series_id, generation=2)
    assert run_send(ctx, second) == "failed", "the EHR refused the second result for good"
    third = _predicted(sqlite_engine, series_id=series_id, generation=3, model_version="2.0.0")
    assert run_send(ctx, third) == "sent"
    original, refused, latest = mllp.received
    orders = [hl7.parse(m).segment("OBR") for m in (original, refused, latest)]
    assert len({str(order(3)) for order in orders}) == 1, "one order for the study, whichever model"
    assert str(orders[2](25)) == "C" and _obx_statuses(latest) == {"C"}, "the first job's result is corrected"
    assert "CLDCA 2.0.0" in latest
    assert list(fhir.reports) == ["1"], "one report for the study"
    assert fhir.reports["1"]["status"] == "amended" and fhir.reports["1"]["meta"]["versionId"] == "3"


def test_a_study_without_a_patient_id_sends_nothing_to_the_ehr(
    context, sqlite_engine: Engine, mllp: MllpReceiver, fhir: FhirServer
) -> None:
    ctx = context(
        hl7_result_destination=f"127.0.0.1:{mllp.port}", fhir_base_url=fhir.base_url, fhir_token=TOKEN
    )
    job_id = _predicted(sqlite_engine)
    with session_scope(sqlite_engine) as session:
        study = session.get(Study, session.get(Series, _job(sqlite_engine, job_id).series_id).study_id)
        study.patient_id = " "
    assert run_send(ctx, job_id) == "failed"
    assert mllp.received == [] and fhir.reports == {}
    assert "the study has no patient ID; not sent" in (_job(sqlite_engine, job_id).error or "")


def test_an_answer_that_is_no_hl7_message_is_retried_not_a_crash(
    context, sqlite_engine: Engine, mllp: MllpReceiver
) -> None:
    mllp.script = ["NAK-TEXT"]
    ctx = context(hl7_result_destination=f"127.0.0.1:{mllp.port}")
    job_id = _predicted(sqlite_engine)
    assert run_send(ctx, job_id) == "retrying"
    assert "is not an ACK" in (_deliveries(sqlite_engine, job_id)["hl7_result"].detail or "")


def test_delimiters_in_identifiers_are_escaped_and_hl7apy_would_catch_a_missing_status() -> None:
    result = EhrResult(
        job_id=1,
        study_instance_uid="1.2.3",
        patient_id="A|B^C&D~E",
        assigning_authority="HOSP&LAB",
        patient_id_type="MR",
        patient_name="O'Neil&Co^Ann",
        patient_birth_date=None,
        patient_sex=None,
        accession_number=None,
        study_datetime=None,
        label="progressive_disease",
        probability=0.2,
        threshold=None,
        model_name="CLDCA",
        model_version="2",
        demo_model=False,
        predicted_at=dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC),
        sr_sop_instance_uid="1.2.3.4",
        sr_series_instance_uid="1.2.3.5",
        corrects=frozenset(),
    )
    message = build_oru(
        result,
        corrected=False,
        sending_application="TACE",
        sending_facility="",
        receiving_application="",
        receiving_facility="",
    )
    parsed = _strict(message)
    pid = hl7.parse(message).segment("PID")
    assert hl7.parse(message).unescape(str(pid(3)(1)(1))) == "A|B^C&D~E"
    assert parsed.oru_r01_patient_result.oru_r01_patient.pid.pid_3.pid_3_4.value == "HOSP\\T\\LAB"
    notes = [n.nte_3.value for n in parsed.oru_r01_patient_result.oru_r01_order_observation.nte]
    assert notes == ["Research use only; not for clinical decisions."], (
        "no synthetic-data note for a real model"
    )
    assert "PD^Progressive disease^99TACE" in message and "MSH|^~\\&|TACE|||" in message
    without_status = message.replace("||||||F|||", "|||||||||", 1)
    with pytest.raises(HL7apyValidationError, match="OBX_11"):
        parse_message(without_status, validation_level=VALIDATION_LEVEL.STRICT, find_groups=True).validate()


def test_both_channels_over_tls_with_a_client_certificate_and_an_unknown_ca_is_retried(
    context, sqlite_engine: Engine, tmp_path: Path
) -> None:
    pki = make_certificates(tmp_path / "pki")
    server = server_tls_context(pki.server_cert, pki.server_key, pki.ca, require_client_cert=True)
    mllp = MllpReceiver(tls=server).start()
    fhir = FhirServer(token=TOKEN, tls=server).start()
    try:
        job_id = _predicted(sqlite_engine)
        untrusting = context(
            hl7_result_destination=f"127.0.0.1:{mllp.port}",
            hl7_result_tls=True,
            fhir_base_url=fhir.base_url,
            fhir_token=TOKEN,
        )
        assert run_send(untrusting, job_id) == "retrying"
        error = _job(sqlite_engine, job_id).error
        assert error.count("CERTIFICATE_VERIFY_FAILED") == 2, error
        assert mllp.received == [] and fhir.requests == []
        client = {"cert": pki.client_cert, "key": pki.client_key, "ca": pki.ca}
        trusting = context(
            hl7_result_destination=f"127.0.0.1:{mllp.port}",
            hl7_result_tls=True,
            hl7_result_tls_ca=client["ca"],
            hl7_result_tls_cert=client["cert"],
            hl7_result_tls_key=client["key"],
            fhir_base_url=fhir.base_url,
            fhir_token=TOKEN,
            fhir_tls_ca=client["ca"],
            fhir_tls_cert=client["cert"],
            fhir_tls_key=client["key"],
        )
        assert run_send(trusting, job_id) == "sent"
    finally:
        mllp.stop()
        fhir.stop()
    assert [len(v) for v in mllp.results.values()] == [1] and len(fhir.reports) == 1
    assert fhir.base_url.startswith("https://")


def test_a_receiver_that_always_says_try_again_fails_the_job_after_the_attempt_limit(
    context, sqlite_engine: Engine, mllp: MllpReceiver
) -> None:
    mllp.script = ["AE", "AE"]
    ctx = context(hl7_result_destination=f"127.0.0.1:{mllp.port}", send_max_attempts=2)
    job_id = _predicted(sqlite_engine)
    assert run_send(ctx, job_id) == "retrying"
    assert run_send(ctx, job_id) == "failed"
    detail = _deliveries(sqlite_engine, job_id)["hl7_result"].detail or ""
    assert detail.startswith("gave up after 2 attempts (TACE_SEND_MAX_ATTEMPTS): AE for TACE")
    assert "gave up after 2 attempts" in (_job(sqlite_engine, job_id).error or "")
