"""The admin API in-process: authentication, roles, replay, health and metrics."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr
from sqlalchemy.engine import Engine

from tace.app.api.app import create_app
from tace.db import JobState, Stage, Study, session_scope
from tace.jobs import claim, finish
from tests.factories import add_jobs


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
