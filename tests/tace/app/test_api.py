"""The admin API in-process: authentication, roles, sessions and CSRF, replay, pages, health and metrics."""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from pydantic import SecretStr
from sqlalchemy.engine import Engine

from tace import phi
from tace.app.api.app import create_app
from tace.db import (
    Job,
    JobEvent,
    JobState,
    LabObservation,
    Prediction,
    Series,
    Stage,
    Study,
    session_scope,
    utcnow,
)
from tace.jobs import claim, finish
from tace.settings import Settings
from tests.factories import add_jobs

OPERATOR = {"Authorization": "Bearer operator-secret"}
PHI = {"Authorization": "Bearer phi-secret"}


@pytest.fixture
def client(make_settings, sqlite_engine: Engine) -> TestClient:
    settings = make_settings(api_token=SecretStr("operator-secret"), api_phi_token=SecretStr("phi-secret"))
    return TestClient(create_app(settings, sqlite_engine))


def _failed_job(engine: Engine) -> int:
    (job_id,) = add_jobs(engine, 1)
    lease = claim(engine, job_id, Stage.infer, stall_seconds=60)
    assert lease is not None
    finish(engine, lease, JobState.failed, error="volume: mixed orientation")
    with session_scope(engine) as session:
        study = session.get(Study, 1)
        study.patient_name = "Doe^Jane"
        session.add(study)
    return job_id


@pytest.mark.parametrize("header", [None, "Bearer wrong", "Basic b3BlcmF0b3Itc2VjcmV0", "Bearer "])
def test_missing_and_wrong_tokens_are_refused_everywhere(client: TestClient, header: str | None) -> None:
    headers = {"Authorization": header} if header else {}
    for path in ("/api/jobs", "/api/jobs/1", "/api/series", "/api/associations", "/api/labs/abc", "/api/srs"):
        response = client.get(path, headers=headers)
        assert response.status_code == 401, path
    assert client.post("/api/jobs/1/replay", headers=headers).status_code == 401


def test_operator_sees_hashes_never_identifiers_and_phi_role_does(
    client: TestClient, sqlite_engine: Engine
) -> None:
    job_id = _failed_job(sqlite_engine)
    operator = client.get(f"/api/jobs/{job_id}", headers={"Authorization": "Bearer operator-secret"})
    assert operator.status_code == 200
    body = operator.text
    assert (
        "Doe^Jane" not in body
        and '"patient"' not in body
        and "P1" not in operator.json()["job"]["patient_hash"]
    )
    assert operator.json()["job"]["error"] == "volume: mixed orientation"
    phi = client.get(f"/api/jobs/{job_id}", headers={"Authorization": "Bearer phi-secret"}).json()
    assert phi["patient"]["patient_name"] == "Doe^Jane"
    listing = client.get("/api/jobs?state=failed", headers={"Authorization": "Bearer operator-secret"}).json()
    assert [job["id"] for job in listing] == [job_id]
    assert (
        client.get("/api/jobs?state=bogus", headers={"Authorization": "Bearer operator-secret"}).status_code
        == 400
    )


def test_replay_through_the_api(client: TestClient, sqlite_engine: Engine) -> None:
    job_id = _failed_job(sqlite_engine)
    auth = {"Authorization": "Bearer operator-secret"}
    response = client.post(f"/api/jobs/{job_id}/replay?from_stage=infer", headers=auth)
    assert response.json() == {"job_id": job_id, "replayed_as": job_id, "stage": "infer"}
    assert client.get(f"/api/jobs/{job_id}", headers=auth).json()["job"]["state"] == "received"
    assert client.post(f"/api/jobs/{job_id}/replay?from_stage=send", headers=auth).status_code == 409
    assert client.post("/api/jobs/999/replay", headers=auth).status_code == 404


def test_pages_need_a_session_and_do_not_show_names(client: TestClient, sqlite_engine: Engine) -> None:
    job_id = _failed_job(sqlite_engine)
    assert client.get("/", follow_redirects=False).headers["location"] == "/login"
    refused = client.post("/login", data={"token": "nope"}, follow_redirects=False)
    assert refused.headers["location"].startswith("/login?error=")
    logged = client.post("/login", data={"token": "operator-secret"}, follow_redirects=False)
    assert logged.status_code == 303
    page = client.get(f"/jobs/{job_id}")
    assert "volume: mixed orientation" in page.text and "Doe^Jane" not in page.text
    assert "Research use only" in page.text


def test_health_and_metrics_are_open(client: TestClient, sqlite_engine: Engine) -> None:
    add_jobs(sqlite_engine, 2)
    health = client.get("/healthz")
    assert health.status_code == 200 and health.json() == {"database": "ok", "broker": "ok", "storage": "ok"}
    metrics = client.get("/metrics").text
    assert 'tace_jobs{state="received"} 2.0' in metrics
    assert "tace_queue_depth 2.0" in metrics


def test_health_reports_a_broker_that_is_down(make_settings, sqlite_engine: Engine) -> None:
    settings = make_settings(broker_url="redis://127.0.0.1:1/0")
    response = TestClient(create_app(settings, sqlite_engine)).get("/healthz")
    assert response.status_code == 503
    assert response.json()["broker"] != "ok" and response.json()["database"] == "ok"


def _login(client: TestClient, token: str = "operator-secret") -> str:
    """Log in through the form as a browser does; returns the page's CSRF token."""
    assert client.post("/login", data={"token": token}, follow_redirects=False).status_code == 303
    page = client.get("/")
    match = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
    return match.group(1) if match else ""


def _set_patient(engine: Engine, job_id: int, **identifiers: str) -> None:
    with session_scope(engine) as session:
        job = session.get(Job, job_id)
        study = session.get(Study, session.get(Series, job.series_id).study_id)
        for name, value in identifiers.items():
            setattr(study, name, value)
        session.add(study)


def _timeline(engine: Engine, job_id: int) -> list[str]:
    with session_scope(engine) as session:
        events = session.execute(sa.select(JobEvent.detail).where(JobEvent.job_id == job_id)).scalars().all()
        return [str(e) for e in events]


def test_a_job_error_holding_a_birth_date_reaches_no_role_without_phi(
    client: TestClient, sqlite_engine: Engine
) -> None:
    """Seen: an SR builder error quoting the birth date, shown by /api/jobs and the jobs page."""
    phi.forget_all()  # a worker process that has read no dataset yet
    (job_id,) = add_jobs(sqlite_engine, 1)
    _set_patient(
        sqlite_engine, job_id, patient_id="MRN5555", patient_name="Doe^Jane", patient_birth_date="19570311"
    )
    lease = claim(sqlite_engine, job_id, Stage.infer, stall_seconds=60)
    assert lease is not None
    error = (
        "infer: internal error ValueError: PatientBirthDate '1957-03-11' (19570311) of Doe^Jane, "
        "MRN5555 is not a valid DA value"
    )
    finish(sqlite_engine, lease, JobState.failed, error=error)
    _login(client)
    responses = {
        "/api/jobs": client.get("/api/jobs", headers=OPERATOR).text,
        "/api/jobs/ID": client.get(f"/api/jobs/{job_id}", headers=OPERATOR).text,
        "/": client.get("/").text,
        "/jobs/ID": client.get(f"/jobs/{job_id}").text,
    }
    for where, text in responses.items():
        for secret in ("19570311", "1957-03-11", "Doe^Jane", "Doe", "Jane", "MRN5555"):
            assert secret not in text, (where, secret)
        assert "infer: internal error ValueError: PatientBirthDate" in text, where
    with session_scope(sqlite_engine) as session:
        stored = session.get(Job, job_id).error
    assert stored.count(phi.REDACTED) == 5
    assert not any("Doe" in detail or "19570311" in detail for detail in _timeline(sqlite_engine, job_id))
    phi_view = client.get(f"/api/jobs/{job_id}", headers=PHI).json()
    assert phi_view["patient"]["patient_birth_date"] == "19570311"


def test_a_cross_site_form_post_with_the_session_cookie_replays_nothing(
    client: TestClient, sqlite_engine: Engine
) -> None:
    job_id = _failed_job(sqlite_engine)
    csrf = _login(client)
    before = _timeline(sqlite_engine, job_id)
    with session_scope(sqlite_engine) as session:
        jobs_before = session.execute(sa.select(sa.func.count()).select_from(Job)).scalar_one()
    attacks = [
        # a page on another site (or another port of this host: the same "site" for SameSite=Strict)
        ({"Origin": "http://127.0.0.1:8042"}, {"from_stage": "infer", "new_generation": "true"}),
        ({"Origin": "null"}, {"from_stage": "infer", "new_generation": "true"}),
        ({"Referer": "http://evil.example/replay.html"}, {"from_stage": "infer"}),
        # no origin header at all, no CSRF token
        ({}, {"from_stage": "infer", "new_generation": "true"}),
        # a token that is not this session's
        ({}, {"from_stage": "infer", "csrf_token": csrf[:-2] + "xx"}),
        # the right token from another origin
        ({"Origin": "http://evil.example"}, {"from_stage": "infer", "csrf_token": csrf}),
    ]
    for headers, form in attacks:
        response = client.post(f"/jobs/{job_id}/replay", data=form, headers=headers, follow_redirects=False)
        assert response.status_code == 403, (headers, form)
        assert "Refused" in response.text
    assert _timeline(sqlite_engine, job_id) == before
    with session_scope(sqlite_engine) as session:
        assert session.get(Job, job_id).state == JobState.failed
        assert session.execute(sa.select(sa.func.count()).select_from(Job)).scalar_one() == jobs_before
    own = client.post(
        f"/jobs/{job_id}/replay",
        data={"from_stage": "infer", "csrf_token": csrf},
        headers={"Origin": "http://testserver"},
        follow_redirects=False,
    )
    assert (
        own.status_code == 303 and own.headers["location"] == f"/jobs/{job_id}?message=replaying+from+infer"
    )
    with session_scope(sqlite_engine) as session:
        assert session.get(Job, job_id).state == JobState.received


def test_logout_and_login_refuse_other_origins(client: TestClient) -> None:
    assert (
        client.post(
            "/login", data={"token": "operator-secret"}, headers={"Origin": "http://evil.example"}
        ).status_code
        == 403
    )
    assert "tace_session" not in client.cookies
    _login(client)
    assert client.post("/logout", headers={"Origin": "http://evil.example"}).status_code == 403
    assert client.get("/", follow_redirects=False).status_code == 200


def test_the_session_cookie_is_signed_and_is_not_the_token(
    make_settings, sqlite_engine: Engine, client: TestClient
) -> None:
    response = client.post("/login", data={"token": "operator-secret"}, follow_redirects=False)
    cookie = response.cookies["tace_session"]
    header = response.headers["set-cookie"].lower()
    assert "operator-secret" not in cookie and "httponly" in header and "samesite=strict" in header
    assert "secure" not in header.replace("samesite", "")
    assert client.get("/", follow_redirects=False).status_code == 200

    def page_with(value: str) -> int:
        other = TestClient(client.app, cookies={"tace_session": value})
        return other.get("/", follow_redirects=False).status_code

    assert page_with("operator-secret") == 303  # the old cookie, holding the token itself
    assert page_with(cookie[:-3] + ("aaa" if not cookie.endswith("aaa") else "bbb")) == 303
    assert page_with(cookie) == 200
    rotated = make_settings(api_token=SecretStr("new-operator-secret"))
    assert (
        TestClient(create_app(rotated, sqlite_engine), cookies={"tace_session": cookie})
        .get("/", follow_redirects=False)
        .status_code
        == 303
    )
    over_tls = TestClient(client.app, base_url="https://gateway.example")
    secure = over_tls.post("/login", data={"token": "operator-secret"}, follow_redirects=False)
    assert "; secure" in secure.headers["set-cookie"].lower()
    assert client.get("/").headers["x-frame-options"] == "DENY"


def test_job_ids_beyond_64_bits_are_refused_not_crashed(
    make_settings, sqlite_engine: Engine, client: TestClient
) -> None:
    client = TestClient(client.app, raise_server_exceptions=False)
    csrf = _login(client)
    huge = 2**64 + 5
    for job_id in (huge, 2**63, 0, -1):
        answers = [
            client.get(f"/api/jobs/{job_id}", headers=OPERATOR),
            client.post(f"/api/jobs/{job_id}/replay", headers=OPERATOR),
            client.get(f"/api/jobs/{job_id}/sr", headers=PHI),
            client.get(f"/jobs/{job_id}"),
            client.get(f"/jobs/{job_id}/sr"),
            client.post(f"/jobs/{job_id}/replay", data={"csrf_token": csrf}, follow_redirects=False),
        ]
        assert [a.status_code for a in answers] == [422] * 6, job_id
    assert client.get(f"/api/jobs/{2**63 - 1}", headers=OPERATOR).status_code == 404
    assert client.get(f"/jobs/{2**63 - 1}").status_code == 404
    assert client.get("/api/jobs?limit=100000000000000000000", headers=OPERATOR).status_code == 422
    assert client.get("/?page=100000000000000000000").status_code == 422


def test_jobs_are_counted_per_state_searched_and_paged(client: TestClient, sqlite_engine: Engine) -> None:
    ids = add_jobs(sqlite_engine, 53)
    failed = _failed_job(sqlite_engine)
    counts = client.get("/api/jobs/counts", headers=OPERATOR).json()
    assert counts["received"] == 53 and counts["failed"] == 1 and counts["sent"] == 0
    listing = client.get("/api/jobs?limit=20&offset=20", headers=OPERATOR)
    assert listing.headers["x-total-count"] == "54"
    assert [j["id"] for j in listing.json()] == sorted([*ids, failed], reverse=True)[20:40]
    with session_scope(sqlite_engine) as session:
        job = session.get(Job, ids[7])
        series = session.get(Series, job.series_id)
        study = session.get(Study, series.study_id)
        study.patient_hash = patient_hash = "c0ffee0123456789"
        session.add(study)
        series_uid = series.series_instance_uid
    for query in (series_uid, patient_hash, patient_hash[:8]):
        found = client.get("/api/jobs", params={"q": query}, headers=OPERATOR).json()
        assert [j["id"] for j in found] == [ids[7]], query
    assert client.get("/api/jobs", params={"q": "%"}, headers=OPERATOR).json() == []

    _login(client)
    first = client.get("/").text
    assert 'id="count-received">53<' in first and 'id="count-failed">1<' in first
    assert "jobs 1-50 of 54 (page 1 of 2)" in first and 'id="page-older" href="/?page=2"' in first
    second = client.get("/?page=2").text
    assert "jobs 51-54 of 54" in second and f'id="job-{ids[0]}"' in second
    assert f'id="job-{ids[-1]}"' not in second
    searched = client.get("/", params={"q": patient_hash}).text
    assert f'id="job-{ids[7]}"' in searched and searched.count('<tr id="job-') == 1
    only_failed = client.get("/?state=failed").text
    assert only_failed.count('<tr id="job-') == 1 and "UTC" in only_failed


def _predicted_job(engine: Engine, sr_path: str | None, demo: bool = True) -> int:
    (job_id,) = add_jobs(engine, 1)
    lease = claim(engine, job_id, Stage.infer, stall_seconds=60)
    with session_scope(engine) as session:
        session.add(
            Prediction(
                job_id=job_id,
                probability=0.8123,
                label="disease_control",
                model_name="CLDCA",
                model_version="demo-1",
                checkpoint_sha256="0" * 64,
                demo_model=demo,
                features={
                    "albumin": {
                        "value": 3.9,
                        "unit": "g/dL",
                        "source": "HL7 LAB1 from LIS, OBX 1",
                        "status": "F",
                        "observed_at": "2024-05-01T08:00:00",
                        "comparator": None,
                    },
                    "afp": None,
                },
                missing_features=["afp"],
                sr_sop_instance_uid="1.2.3.4",
                sr_series_instance_uid="1.2.3.5",
                sr_path=sr_path,
            )
        )
        finish(engine, lease, JobState.predicted, stage=Stage.send, session=session)
    return job_id


def test_the_job_page_shows_prediction_features_and_the_sr_only_to_phi(
    make_settings, sqlite_engine: Engine, data_dir: Path
) -> None:
    settings = make_settings(api_token=SecretStr("operator-secret"), api_phi_token=SecretStr("phi-secret"))
    app = create_app(settings, sqlite_engine)
    sr = data_dir / "sr" / "1.2.3" / "1.2.3.4.dcm"
    sr.parent.mkdir(parents=True)
    sr.write_bytes(b"\0" * 128 + b"DICM sr bytes")
    job_id = _predicted_job(sqlite_engine, "sr/1.2.3/1.2.3.4.dcm")
    with session_scope(sqlite_engine) as session:
        patient_hash = session.execute(sa.select(Study.patient_hash)).scalars().first()
        session.add(
            LabObservation(
                patient_id="P0",
                patient_hash=patient_hash,
                feature="creatinine",
                code="2160-0",
                raw_value="abc",
                raw_unit="mg/dL",
                source_kind="hl7",
                source_id="LAB2:3",
                rejected_reason="value 'abc' is not a number",
                received_at=utcnow() - timedelta(minutes=5),
            )
        )
    operator = TestClient(app)
    _login(operator)
    page = operator.get(f"/jobs/{job_id}").text
    assert "disease control (probability of disease control 0.812)" in page and "DEMO model" in page
    assert "1 used, 1 missing (imputed), 1 rejected value(s)" in page
    assert "<strong>Missing:</strong> 1 of 43 clinical values missing: alpha-fetoprotein" in page
    assert '<td data-label="Feature">serum albumin</td>' in page
    assert "HL7 LAB1 from LIS, OBX 1" in page and "value &#39;abc&#39; is not a number" in page
    assert "download needs the phi role" in page and "/sr" not in page.split('id="sr"')[1].split("</dd>")[0]
    listing = operator.get("/").text
    assert 'class="demo"' in listing and "disease control 0.812" in listing
    assert operator.get(f"/jobs/{job_id}/sr").status_code == 403
    assert operator.get(f"/api/jobs/{job_id}/sr", headers=OPERATOR).status_code == 403
    assert operator.get(f"/api/jobs/{job_id}/sr").status_code == 401

    doctor = TestClient(app)
    _login(doctor, "phi-secret")
    assert 'id="sr-download" href="/jobs/' in doctor.get(f"/jobs/{job_id}").text
    download = doctor.get(f"/jobs/{job_id}/sr")
    assert download.status_code == 200 and download.content == sr.read_bytes()
    assert download.headers["content-type"] == "application/dicom"
    assert f'filename="job-{job_id}-sr.dcm"' in download.headers["content-disposition"]
    assert doctor.get(f"/api/jobs/{job_id}/sr", headers=PHI).content == sr.read_bytes()


def test_a_job_waiting_for_labs_shows_its_deadline(make_settings, sqlite_engine: Engine) -> None:
    settings = make_settings(api_token=SecretStr("operator-secret"), labs_deadline_seconds=5400)
    client = TestClient(create_app(settings, sqlite_engine))
    (job_id,) = add_jobs(sqlite_engine, 1)
    lease = claim(sqlite_engine, job_id, Stage.infer, stall_seconds=60)
    finish(
        sqlite_engine,
        lease,
        JobState.waiting_for_labs,
        not_before=utcnow() + timedelta(seconds=60),
        detail="waiting for labs: albumin, afp",
    )
    with session_scope(sqlite_engine) as session:
        created = session.get(Job, job_id).created_at
    detail = client.get(f"/api/jobs/{job_id}", headers=OPERATOR).json()
    assert detail["labs_deadline"] == (created + timedelta(seconds=5400)).isoformat()
    _login(client)
    deadline = client.get(f"/jobs/{job_id}").text.split('id="labs-deadline">')[1].split("</dd>")[0]
    assert f"{(created + timedelta(seconds=5400)):%Y-%m-%d %H:%M:%S} UTC" in deadline
    assert "(in 90 min)" in deadline or "(in 89 min)" in deadline
    assert "waiting for labs: albumin, afp" in deadline


def test_the_api_binds_loopback_unless_configured(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings().api_bind_host == "127.0.0.1"
    assert Settings().bind_host == "0.0.0.0"  # DICOM and HL7: scanners and lab systems are remote
    monkeypatch.setenv("TACE_API_BIND_HOST", "0.0.0.0")
    assert Settings().api_bind_host == "0.0.0.0"
