"""Orthanc's DICOMweb plugin as the archive: the send stage delivers the SR, and the rejection
note of a superseding job, by STOW-RS; with authentication on, a 401 without credentials
fails the job for good; an archive that is down is retried until it is back."""

from __future__ import annotations

import base64
import datetime as dt
import html
import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from prometheus_client import REGISTRY
from pydantic import SecretStr
from sqlalchemy.engine import Engine
from sqlmodel import select

from listener.completion import CompletionPolicy, complete_series
from listener.eligibility import EligibilityRules
from tace.app.api.app import create_app
from tace.app.replay import replay_job
from tace.db import Delivery, Job, JobState, Prediction, Series, Stage, session_scope, utcnow
from tace.settings import DicomwebDestination, Settings, parse_destination
from tace.storage import Storage
from tests.conftest import product_log_file
from tests.support.ingest import ingest_files
from tests.support.orthanc import Orthanc
from tests.support.processes import tace_env
from tests.support.sr_file import write_sr
from worker.context import WorkerContext
from worker.infer import run_infer
from worker.send import run_send, store_sr

pytestmark = pytest.mark.slow

COMPREHENSIVE_3D_SR = "1.2.840.10008.5.1.4.1.1.88.34"
KEY_OBJECT_SELECTION = "1.2.840.10008.5.1.4.1.1.88.59"


@pytest.fixture
def web_orthanc(tmp_path: Path) -> Iterator[Orthanc]:
    server = Orthanc(tmp_path / "orthanc", dicomweb_servers={}).start()
    yield server
    server.stop()


def _predicted_job(
    make_settings: Callable[..., Settings],
    engine: Engine,
    ct_series: Callable[..., list[Path]],
    checkpoint: Path,
    destination: str,
    **settings: object,
) -> tuple[WorkerContext, int]:
    """A CT series through the listener's ingest and completion, then the model: a job ready to send."""
    context = WorkerContext(
        make_settings(
            model_checkpoint=checkpoint,
            device="cpu",
            broker_url="memory://",
            required_features="none",
            destinations=destination,
            **settings,
        ),
        engine,
    )
    storage = Storage(context.settings.data_dir)
    storage.ensure()
    ingest_files(engine, storage, ct_series(slices=10, rows=48, columns=48, patient_id="WEB0001"))
    with session_scope(engine) as session:
        series = session.exec(select(Series)).one()
    policy = CompletionPolicy(30, 1, EligibilityRules(min_slices=8))
    assert complete_series(engine, series.id, series.last_received_at, policy) == "complete"
    with session_scope(engine) as session:
        job_id = session.exec(select(Job)).one().id
    assert run_infer(context, job_id) == "predicted"
    return context, job_id


def _deliveries(engine: Engine, job_id: int) -> list[tuple[str, str, str, int]]:
    with session_scope(engine) as session:
        rows = session.exec(select(Delivery).where(Delivery.job_id == job_id).order_by(Delivery.id)).all()
        return [(r.destination, str(r.kind), str(r.state), r.attempts) for r in rows]


def _sr_uid(engine: Engine, job_id: int) -> str:
    with session_scope(engine) as session:
        return session.exec(select(Prediction).where(Prediction.job_id == job_id)).one().sr_sop_instance_uid


def test_orthanc_gets_the_sr_and_for_a_superseding_job_the_rejection_note_by_stow_rs(
    web_orthanc: Orthanc, make_settings, sqlite_engine: Engine, ct_series, demo_checkpoint: Path
) -> None:
    url = web_orthanc.dicomweb_url
    context, first = _predicted_job(make_settings, sqlite_engine, ct_series, demo_checkpoint, url)
    assert run_send(context, first) == "sent"
    (sr,) = web_orthanc.sr_instances()
    tags = web_orthanc.instance_tags(sr)
    assert (tags["SOPClassUID"], tags["SOPInstanceUID"]) == (
        COMPREHENSIVE_3D_SR,
        _sr_uid(sqlite_engine, first),
    )
    assert _deliveries(sqlite_engine, first) == [(url, "sr", "delivered", 1)]

    second = replay_job(
        sqlite_engine, first, Stage.infer, new_generation=True, stall_seconds=300, reason="test"
    ).replayed_as
    assert run_infer(context, second) == "predicted"
    assert run_send(context, second) == "sent"
    by_class = {
        web_orthanc.instance_tags(i)["SOPInstanceUID"]: web_orthanc.instance_tags(i)["SOPClassUID"]
        for i in web_orthanc.instances("SR") + web_orthanc.instances("KO")
    }
    (note_uid,) = [uid for uid, sop_class in by_class.items() if sop_class == KEY_OBJECT_SELECTION]
    assert by_class == {
        _sr_uid(sqlite_engine, first): COMPREHENSIVE_3D_SR,
        _sr_uid(sqlite_engine, second): COMPREHENSIVE_3D_SR,
        note_uid: KEY_OBJECT_SELECTION,
    }
    assert _deliveries(sqlite_engine, second) == [
        (url, "sr", "delivered", 1),
        (url, "rejection", "delivered", 1),
    ]
    with session_scope(sqlite_engine) as session:
        job = session.get(Job, second)
        assert job is not None and job.state == JobState.sent and job.predecessor_job_id == first
    sends = REGISTRY.get_sample_value("tace_sr_sends_total", {"destination": url, "outcome": "delivered"})
    assert sends == 3.0, "the SR of each job and the rejection note, counted under the URL"

    shown = subprocess.run(
        [sys.executable, "-m", "tace", "jobs", "show", str(second)],
        env=tace_env(data_dir=context.settings.data_dir),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert shown.returncode == 0, shown.stderr
    assert f"    SR -> {url}: delivered, 1, HTTP 200 OK, stored" in shown.stdout
    assert f"    rejection note -> {url}: delivered, 1, HTTP 200 OK, stored" in shown.stdout
    as_json = subprocess.run(
        [sys.executable, "-m", "tace", "jobs", "show", str(second), "--json"],
        env=tace_env(data_dir=context.settings.data_dir),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert [(d["destination"], d["kind"]) for d in json.loads(as_json.stdout)["deliveries"]] == [
        (url, "sr"),
        (url, "rejection"),
    ]
    client = TestClient(
        create_app(Settings(data_dir=context.settings.data_dir, api_token=SecretStr("t0ken")), sqlite_engine)
    )
    assert client.post("/login", data={"token": "t0ken"}, follow_redirects=False).status_code == 303
    page = html.unescape(client.get(f"/jobs/{second}").text)
    assert f'<td data-label="Object">rejection note</td><td data-label="Destination">{url}</td>' in page


def test_orthanc_with_authentication_refuses_for_good_without_credentials_and_takes_them(
    tmp_path: Path, ct_series
) -> None:
    orthanc = Orthanc(tmp_path / "orthanc", dicomweb_servers={}, users={"tace": "pacs-pass"}).start()
    try:
        sr = write_sr(ct_series, tmp_path / "sr.dcm")
        destination = parse_destination(orthanc.dicomweb_url)
        anonymous = store_sr(Settings(data_dir=tmp_path / "data"), destination, sr)
        wrong = store_sr(
            Settings(
                data_dir=tmp_path / "data", dicomweb_username="tace", dicomweb_password=SecretStr("nope")
            ),
            destination,
            sr,
        )
        assert orthanc.sr_instances() == []
        right = store_sr(
            Settings(
                data_dir=tmp_path / "data", dicomweb_username="tace", dicomweb_password=SecretStr("pacs-pass")
            ),
            destination,
            sr,
        )
        (instance,) = orthanc.sr_instances()
        tags = orthanc.instance_tags(instance)
        password_file = tmp_path / "pacs-password"
        password_file.write_text("pacs-pass\n")
        again = store_sr(
            Settings(data_dir=tmp_path / "data", dicomweb_token=SecretStr("a-token-orthanc-ignores")),
            DicomwebDestination(url=orthanc.dicomweb_url, username="tace", password_file=password_file),
            sr,
        )
    finally:
        orthanc.stop()
    for refused in (anonymous, wrong):
        assert (refused.delivered, refused.transient, refused.status) == (False, False, None)
        assert refused.detail == (
            "HTTP 401 Unauthorized (no or wrong credentials (TACE_DICOMWEB_TOKEN, "
            "TACE_DICOMWEB_USERNAME/PASSWORD or token_file))"
        )
    assert (right.delivered, right.detail) == (True, "HTTP 200 OK, stored")
    assert again.delivered, "the destination's own basic credentials win over the global bearer token"
    assert tags["SOPClassUID"] == COMPREHENSIVE_3D_SR
    assert "pacs-pass" not in anonymous.detail + wrong.detail + right.detail


def test_a_job_refused_with_401_fails_naming_the_destination_and_the_status_and_logs_no_password(
    tmp_path: Path,
    make_settings,
    sqlite_engine: Engine,
    ct_series,
    demo_checkpoint: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    orthanc = Orthanc(tmp_path / "orthanc", dicomweb_servers={}, users={"tace": "pacs-pass"}).start()
    try:
        context, job_id = _predicted_job(
            make_settings,
            sqlite_engine,
            ct_series,
            demo_checkpoint,
            orthanc.dicomweb_url,
            dicomweb_username="tace",
            dicomweb_password="an-old-pass",
        )
        assert run_send(context, job_id) == "failed"
    finally:
        orthanc.stop()
    logged = product_log_file(tmp_path_factory).read_text()
    assert f'"destination": "{orthanc.dicomweb_url}"' in logged, "the send was logged (at debug level)"
    assert "an-old-pass" not in logged and base64.b64encode(b"tace:an-old-pass").decode() not in logged
    with session_scope(sqlite_engine) as session:
        job = session.get(Job, job_id)
        assert job is not None
        assert (
            job.error
            == f"send: {orthanc.dicomweb_url} refused: HTTP 401 Unauthorized (no or wrong credentials"
            + (" (TACE_DICOMWEB_TOKEN, TACE_DICOMWEB_USERNAME/PASSWORD or token_file))")
        )
    assert _deliveries(sqlite_engine, job_id) == [(orthanc.dicomweb_url, "sr", "failed", 1)]


def test_an_archive_that_is_down_is_retried_with_backoff_and_gets_the_sr_once_it_is_up(
    tmp_path: Path, make_settings, sqlite_engine: Engine, ct_series, demo_checkpoint: Path
) -> None:
    orthanc = Orthanc(tmp_path / "orthanc", dicomweb_servers={})
    context, job_id = _predicted_job(
        make_settings,
        sqlite_engine,
        ct_series,
        demo_checkpoint,
        orthanc.dicomweb_url,
        send_retry_max_seconds=60,
    )
    before = utcnow()
    assert run_send(context, job_id) == "retrying"
    with session_scope(sqlite_engine) as session:
        job = session.get(Job, job_id)
        assert job is not None
        assert job.state == JobState.predicted and job.stage == Stage.send
        assert job.error is not None and job.error.startswith("retrying in ")
        assert f"(attempt 1): {orthanc.dicomweb_url}: cannot connect: Connection refused" in job.error
        assert job.not_before is not None and job.not_before > before + dt.timedelta(seconds=2)
    assert _deliveries(sqlite_engine, job_id) == [(orthanc.dicomweb_url, "sr", "retrying", 1)]
    orthanc.start()
    try:
        assert run_send(context, job_id) == "sent"
        assert len(orthanc.sr_instances()) == 1
    finally:
        orthanc.stop()
    assert _deliveries(sqlite_engine, job_id) == [(orthanc.dicomweb_url, "sr", "delivered", 2)]
    with sqlite_engine.connect() as connection:
        state = connection.execute(
            sa.select(Job.__table__.c.state).where(Job.__table__.c.id == job_id)
        ).scalar()
    assert str(state) == "sent"
