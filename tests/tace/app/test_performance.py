"""Live performance against hand-computed values, drift against a stored training distribution."""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
import re
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr
from sqlalchemy.engine import Engine
from sqlmodel import select

from model.checkpoint import load_checkpoint, read_meta, save_checkpoint
from model.drift import feature_drift, psi, training_distribution
from model.image_stats import image_distribution, volume_statistics
from model.schema import FeatureSchema
from tace.app.api.app import create_app
from tace.app.drift import drift_report
from tace.app.performance import evaluate_version, performance
from tace.db import Prediction, session_scope
from tace.outcomes import LinkWindow, relink
from tests.support.outcomes import add_outcome, add_prediction

WINDOW = LinkWindow(4, 16)
# control (CR/PR/SD) = 1, progression (PD) = 0; P(disease control) as the model stored it
CASES = [("PR", 0.9), ("CR", 0.8), ("SD", 0.4), ("PD", 0.5), ("PD", 0.2)]


def test_performance_matches_hand_computed_auc_sensitivity_specificity_brier(engine: Engine) -> None:
    study, assessed = dt.date(2026, 1, 5), dt.date(2026, 3, 1)
    for index, (response, probability) in enumerate(CASES):
        job = add_prediction(engine, patient_id=f"PERF{index}", study_date=study, probability=probability)
        # a second model version on the same study is scored against the same outcome
        add_prediction(
            engine,
            patient_id=f"PERF{index}",
            study_date=study,
            probability=1 - probability,
            model_version="site-2",
            threshold=None,
            same_study_as=job,
        )
        add_outcome(engine, f"PERF{index}", assessed, response)
        # a later assessment of the same patient does not count twice
        add_outcome(engine, f"PERF{index}", assessed + dt.timedelta(weeks=8), "PD")
    with engine.begin() as connection:
        relink(connection, WINDOW)
    first, second = performance(engine, min_outcomes=5, checkpoint_thresholds={"site-2": 0.5})
    assert (first.model_version, first.outcomes, first.progressions, first.threshold) == ("site-1", 5, 2, 0.5)
    # AUC: of the 3 x 2 (control, progression) pairs, the control case scores higher in 5
    assert first.auc is not None and first.auc["value"] == pytest.approx(5 / 6)
    assert first.auc["low"] <= 5 / 6 <= first.auc["high"]
    # at 0.5, progression is predicted for 0.4 and 0.2: one of two progressions found,
    # two of three controls kept
    assert first.sensitivity == pytest.approx(1 / 2) and first.specificity == pytest.approx(2 / 3)
    assert first.brier == pytest.approx((0.01 + 0.04 + 0.36 + 0.25 + 0.04) / 5)
    assert [(b["predicted"], b["observed"], b["count"]) for b in first.calibration] == [
        (0.2, 0.0, 1),
        (0.4, 1.0, 1),
        (0.5, 0.0, 1),
        (0.8, 1.0, 1),
        (0.9, 1.0, 1),
    ]
    assert second.model_version == "site-2" and second.auc["value"] == pytest.approx(1 / 6)
    assert second.threshold == 0.5  # not stored with the predictions: the checkpoint's


def test_too_few_or_one_class_is_said_instead_of_a_number() -> None:
    from tace.app.performance import ScoredCase

    def case(control: int, p: float) -> ScoredCase:
        return ScoredCase(1, 1, "v", p, 0.5, control, dt.date(2026, 1, 1), dt.datetime(2026, 1, 1))

    few = evaluate_version("v", [case(1, 0.7), case(0, 0.2)], min_outcomes=10)
    assert few.auc is None and few.notes == [
        "too few linked outcomes: 2 of the 10 needed (TACE_PERFORMANCE_MIN_OUTCOMES)"
    ]
    one_class = evaluate_version("v", [case(1, 0.7)] * 3, min_outcomes=3)
    assert one_class.auc is None and one_class.sensitivity is None
    assert one_class.notes == ["one class only (disease control): no AUC, sensitivity or specificity"]
    assert one_class.brier == pytest.approx(0.09)


def test_psi_by_hand_and_drift_against_a_training_summary() -> None:
    # PSI of (0.5, 0.5) -> (0.25, 0.75): (0.25-0.5) ln(0.5) + (0.75-0.5) ln(1.5)
    assert psi([0.5, 0.5], [0.25, 0.75]) == pytest.approx(-0.25 * math.log(0.5) + 0.25 * math.log(1.5))
    schema = FeatureSchema.load(None)
    rng = np.random.default_rng(0)
    training = [{"albumin": float(v)} for v in rng.normal(3.8, 0.4, 400).clip(1.5, 6)]
    summary = training_distribution(schema, training)
    albumin = summary["features"]["albumin"]
    assert albumin["missing"] == 0 and len(albumin["edges"]) == 9
    assert summary["features"]["afp"]["missing"] == 1.0
    same = feature_drift(
        schema, summary, [{"albumin": float(v)} for v in rng.normal(3.8, 0.4, 400).clip(1.5, 6)]
    )
    shifted = feature_drift(
        schema, summary, [{"albumin": float(v)} for v in rng.normal(2.6, 0.4, 200).clip(1.5, 6)] + [{}] * 200
    )
    by_name = {d.feature: d for d in same}
    assert by_name["albumin"].psi < 0.1
    moved = {d.feature: d for d in shifted}["albumin"]
    assert moved.psi > 0.25 and moved.missing == 0.5 and moved.training_missing == 0.0


def test_the_90_day_window_superseded_jobs_and_no_destination(sqlite_engine: Engine) -> None:
    import sqlalchemy as sa

    from tace.db import Job, JobState, Prediction, utcnow

    study = dt.date(2026, 1, 5)
    recent = add_prediction(
        sqlite_engine, patient_id="WIN1", study_date=study, probability=0.7, state=JobState.no_destination
    )
    old = add_prediction(sqlite_engine, patient_id="WIN2", study_date=study, probability=0.3)
    replaced = add_prediction(
        sqlite_engine, patient_id="WIN3", study_date=study, probability=0.5, state=JobState.superseded
    )
    for patient in ("WIN1", "WIN2", "WIN3"):
        add_outcome(sqlite_engine, patient, dt.date(2026, 3, 1), "PR")
    with sqlite_engine.begin() as connection:
        connection.execute(
            sa.update(Prediction.__table__)
            .where(Prediction.__table__.c.job_id == old)
            .values(created_at=utcnow() - dt.timedelta(days=91))
        )
        relink(connection, WINDOW)
        states = dict(connection.execute(sa.select(Job.__table__.c.id, Job.__table__.c.state)).all())
    assert states[replaced] == JobState.superseded
    (everything,) = performance(sqlite_engine, window="all", min_outcomes=2)
    (last_90,) = performance(sqlite_engine, window="90d", min_outcomes=2)
    assert everything.outcomes == 2 and last_90.outcomes == 1
    assert last_90.y_score == [0.7] and recent not in (old, replaced)


def test_image_statistics_by_hand_and_image_drift_in_the_report_the_cli_and_the_page(
    tmp_path: Path, make_settings, sqlite_engine: Engine, demo_checkpoint: Path
) -> None:
    # 2 slices of 4 x 4: half air (-1000, not body), the body voxels 0, 10, ..., 150 HU
    volume = np.full((2, 4, 4), -1000.0, dtype=np.float32)
    volume[:, :2, :] = np.arange(16, dtype=np.float32).reshape(2, 2, 4) * 10
    stats = volume_statistics(volume, 2.5)
    assert stats == {
        "slices": 2.0,
        "slice_thickness_mm": 2.5,
        "body_hu_mean": 75.0,
        "body_hu_p10": 15.0,
        "body_hu_p50": 75.0,
        "body_hu_p90": 135.0,
    }
    assert volume_statistics(np.full((3, 4, 4), -1000.0), None)["body_hu_mean"] is None

    # training series of 40-59 slices at 1-2 mm; live ones of 8 slices at 5 mm: a major shift
    training = [
        {"slices": 40.0 + i, "slice_thickness_mm": 1.0 + (i % 2), "body_hu_mean": 50.0} for i in range(20)
    ]
    loaded = load_checkpoint(demo_checkpoint)
    summary = {**training_distribution(loaded.meta.schema, []), "images": image_distribution(training)}
    checkpoint = tmp_path / "images.safetensors"
    save_checkpoint(checkpoint, loaded.model, dataclasses.replace(loaded.meta, training_distribution=summary))
    for n in range(4):
        job = add_prediction(
            sqlite_engine,
            patient_id=f"IMG{n}",
            study_date=dt.date(2026, 1, 5),
            probability=0.5,
            model_version=loaded.meta.version,
        )
        with session_scope(sqlite_engine) as session:
            prediction = session.exec(select(Prediction).where(Prediction.job_id == job)).one()
            prediction.image_stats = {"slices": 8.0, "slice_thickness_mm": 5.0, "body_hu_mean": 50.0}
    report = drift_report(sqlite_engine, read_meta(checkpoint))
    rows = {r["statistic"]: r for r in report.images}
    # PSI over 10 bins: all live series in the lowest bin (training share 0.1), the other 9 floored at 1e-4
    expected = (1 - 0.1) * math.log(1 / 0.1) + 9 * (1e-4 - 0.1) * math.log(1e-4 / 0.1)
    assert rows["slices"]["psi"] == pytest.approx(expected)
    assert (rows["slices"]["live_median"], rows["slices"]["training_median"]) == (8.0, 49.5)
    assert rows["body_hu_mean"]["psi"] == pytest.approx(0.0)
    assert rows["body_hu_p50"]["psi"] is None and rows["body_hu_p50"]["missing"] == 1.0
    assert report.major == ["image slices", "image slice_thickness_mm"]

    settings = make_settings(api_token=SecretStr("operator-secret"), model_checkpoint=checkpoint)
    client = TestClient(create_app(settings, sqlite_engine))
    assert client.post("/login", data={"token": "operator-secret"}, follow_redirects=False).status_code == 303
    page = client.get("/performance").text
    assert re.search(
        r'<tr class="state-failed"><td data-label="Statistic">slices</td><td data-label="Live">8.0</td>'
        r'<td data-label="Training">49.5</td><td data-label="PSI">([0-9.]+)</td>',
        page,
    )
    assert "input drift: PSI over 0.25 for image slices, image slice_thickness_mm" in page
    gauge = re.search(r'tace_image_drift_psi\{statistic="slices"\} (\S+)', client.get("/metrics").text)
    assert gauge and float(gauge.group(1)) == pytest.approx(expected)
