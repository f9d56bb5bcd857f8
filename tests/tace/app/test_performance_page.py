"""The admin page's performance view: plots, drift table, outcomes, warning banner, PHI and CSRF."""

from __future__ import annotations

import dataclasses
import datetime as dt
import html
import logging
import re
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr
from sqlalchemy.engine import Engine

from model.checkpoint import load_checkpoint, save_checkpoint
from tace import phi
from tace.app.api.app import create_app
from tests.support.outcomes import add_prediction, seed_site_cases, write_site_checkpoint


@pytest.fixture
def site_checkpoint(demo_checkpoint: Path, tmp_path: Path) -> Path:
    return write_site_checkpoint(demo_checkpoint, tmp_path / "site.safetensors")


def _login(client: TestClient, token: str) -> str:
    assert client.post("/login", data={"token": token}, follow_redirects=False).status_code == 303
    match = re.search(r'name="csrf_token" value="([^"]+)"', client.get("/performance").text)
    assert match
    return match.group(1)


def test_performance_page_shows_plots_drift_warnings_and_links_with_csrf(
    make_settings, sqlite_engine: Engine, site_checkpoint: Path
) -> None:
    settings = make_settings(
        api_token=SecretStr("operator-secret"),
        api_phi_token=SecretStr("phi-secret"),
        model_checkpoint=site_checkpoint,
    )
    outcome_id, job_id = seed_site_cases(sqlite_engine)
    client = TestClient(create_app(settings, sqlite_engine))
    assert client.get("/performance", follow_redirects=False).status_code == 303
    csrf = _login(client, "operator-secret")
    page = client.get("/performance").text
    assert "Model site-1: 12 linked outcomes, 6 progressive" in page
    assert re.search(r'id="roc-site-1" alt="[^"]+" width="330" src="data:image/png;base64,iVBORw0KGgo', page)
    assert 'id="calibration-site-1"' in page
    assert "lies below the validated 0.90 (95% CI 0.85-0.95)" in page
    assert "input drift: PSI over 0.25 for albumin" in page
    assert re.search(
        r"<td data-label=\"Feature\">albumin</td><td data-label=\"Missing\">14%</td>", page
    )  # 2 of 14 without
    assert f'id="unlinked-{outcome_id}"' in page and "predictions on 2 different studies" in page
    assert phi.patient_hash("PAGEX", None) in page and "PAGEX" not in page and "PAGE1" not in page

    refused = client.post(f"/outcomes/{outcome_id}/link", data={"job_id": job_id}, follow_redirects=False)
    assert refused.status_code == 403
    linked = client.post(
        f"/outcomes/{outcome_id}/link", data={"job_id": job_id, "csrf_token": csrf}, follow_redirects=True
    )
    assert f"outcome {outcome_id} linked to job {job_id}" in linked.text
    assert "Every outcome is linked." in linked.text

    api = client.get("/api/performance", headers={"Authorization": "Bearer operator-secret"}).json()
    assert api["versions"][0]["auc"]["value"] == 0.0 and "PAGE" not in str(api["recent"])
    gauges = client.get("/metrics").text
    assert 'tace_outcomes_linked{model_version="site-1"} 13.0' in gauges  # with the one linked by hand
    assert float(re.search(r'tace_model_auc_lower\{model_version="site-1"\} (\S+)', gauges).group(1)) < 0.1
    assert "tace_outcomes_unlinked 0.0" in gauges
    assert float(re.search(r'tace_input_drift_psi\{feature="albumin"\} (\S+)', gauges).group(1)) > 0.25
    phi_client = TestClient(create_app(settings, sqlite_engine))
    _login(phi_client, "phi-secret")
    assert "(PAGE1)" in phi_client.get("/performance").text


def test_a_checkpoint_without_a_training_distribution_says_so(
    make_settings, sqlite_engine: Engine, demo_checkpoint: Path, tmp_path: Path
) -> None:
    loaded = load_checkpoint(demo_checkpoint)
    old = tmp_path / "old.safetensors"
    save_checkpoint(old, loaded.model, dataclasses.replace(loaded.meta, training_distribution=None))
    settings = make_settings(api_token=SecretStr("operator-secret"), model_checkpoint=old)
    add_prediction(
        sqlite_engine,
        patient_id="OLD1",
        study_date=dt.date(2026, 1, 5),
        probability=0.5,
        model_version=loaded.meta.version,
    )
    client = TestClient(create_app(settings, sqlite_engine))
    _login(client, "operator-secret")
    page = client.get("/performance").text
    assert '<span id="drift-note">no training distribution in this checkpoint</span>' in page
    assert 'id="no-outcomes"' in page


def test_the_auc_alert_logs_a_warning_and_shows_a_banner_only_with_enough_outcomes(
    make_settings, sqlite_engine: Engine, site_checkpoint: Path, caplog: pytest.LogCaptureFixture
) -> None:
    seed_site_cases(sqlite_engine)  # 12 linked outcomes scored the wrong way round: AUC 0 (CI 0-0)
    banner = 'role="alert"><strong>Warning:</strong> model site-1: the live AUC\'s 95% CI lower bound 0.00'

    def page(**settings: object) -> str:
        app = create_app(make_settings(api_token=SecretStr("operator-secret"), **settings), sqlite_engine)
        client = TestClient(app)
        _login(client, "operator-secret")
        return html.unescape(client.get("/performance").text)

    with caplog.at_level(logging.WARNING):
        assert banner not in page(model_checkpoint=site_checkpoint)  # 12 outcomes, 30 needed by default
    assert "performance.auc_alert" not in caplog.text
    with caplog.at_level(logging.WARNING):
        assert banner not in page(
            model_checkpoint=site_checkpoint,
            performance_alert_min_outcomes=12,
            performance_alert_auc_lower=0.0,
        )
    assert "performance.auc_alert" not in caplog.text
    with caplog.at_level(logging.WARNING):
        shown = page(model_checkpoint=site_checkpoint, performance_alert_min_outcomes=12)
    assert (
        banner + " is under the alert level 0.60 (TACE_PERFORMANCE_ALERT_AUC_LOWER), on 12 linked outcomes"
        in shown
    )
    alerts = [
        r for r in caplog.records if isinstance(r.msg, dict) and r.msg["event"] == "performance.auc_alert"
    ]
    assert len(alerts) == 2  # one per rendering: the login's look at the page and this one
    for record in alerts:
        assert record.levelno == logging.WARNING
        assert {k: record.msg[k] for k in ("model_version", "outcomes", "auc_low", "alert_below")} == {
            "model_version": "site-1",
            "outcomes": 12,
            "auc_low": 0.0,
            "alert_below": 0.6,
        }
    assert "PAGE" not in caplog.text
