"""Live performance per model version: stored predictions scored against linked outcomes.

The numbers are model.metrics' (the training report's): AUC with a stratified
bootstrap 95% CI, sensitivity and specificity for progression at the threshold
the prediction was decided at, Brier score and calibration in probability
deciles. Each prediction is judged by the first assessment linked to it (the
first post-TACE CT is what mRECIST response after TACE means); each model version
is scored on its own predictions. A version with too few outcomes, or with one
class only, gets the reason instead of a number.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from tace.db import Job, LinkState, Outcome, Prediction, Series, table, utcnow
from tace.logging import get_logger
from tace.outcomes import PREDICTED_STATES, PROGRESSION, active

log = get_logger(__name__)

WINDOWS = {"90d": dt.timedelta(days=90), "all": None}


@dataclass(frozen=True)
class ScoredCase:
    """One prediction with the outcome that judges it; ``control`` is 1 for CR/PR/SD, 0 for PD."""

    outcome_id: int
    job_id: int
    model_version: str
    probability: float
    threshold: float | None
    control: int
    assessed_on: dt.date
    predicted_at: dt.datetime


def scored_cases(engine: Engine, since: dt.datetime | None = None) -> list[ScoredCase]:
    """Every current prediction on a linked study, paired with its first linked outcome."""
    outcomes, job, series, prediction = table(Outcome), table(Job), table(Series), table(Prediction)
    linked_job, linked_series = job.alias("linked_job"), series.alias("linked_series")
    query = (
        sa.select(
            outcomes.c.id.label("outcome_id"),
            outcomes.c.response,
            outcomes.c.assessed_on,
            job.c.id.label("job_id"),
            prediction.c.model_version,
            prediction.c.probability,
            prediction.c.threshold,
            prediction.c.created_at,
        )
        .select_from(
            outcomes.join(linked_job, linked_job.c.id == outcomes.c.job_id)
            .join(linked_series, linked_series.c.id == linked_job.c.series_id)
            .join(series, series.c.study_id == linked_series.c.study_id)
            .join(job, job.c.series_id == series.c.id)
            .join(prediction, prediction.c.job_id == job.c.id)
        )
        .where(
            active(),
            outcomes.c.link_state.in_((LinkState.linked, LinkState.manual)),
            job.c.state.in_(PREDICTED_STATES),
        )
        .order_by(outcomes.c.assessed_on, outcomes.c.id, job.c.id)
    )
    if since is not None:
        query = query.where(prediction.c.created_at >= since)
    with engine.connect() as connection:
        rows = connection.execute(query).all()
    newest: dict[tuple[int, str], Any] = {}
    for row in rows:
        newest[(row.outcome_id, row.model_version)] = row
    first: dict[tuple[int, str], ScoredCase] = {}
    for row in sorted(newest.values(), key=lambda r: (r.assessed_on, r.outcome_id)):
        key = (row.job_id, row.model_version)
        if key in first:
            continue
        first[key] = ScoredCase(
            outcome_id=row.outcome_id,
            job_id=row.job_id,
            model_version=row.model_version,
            probability=float(row.probability),
            threshold=row.threshold,
            control=0 if row.response == PROGRESSION else 1,
            assessed_on=row.assessed_on,
            predicted_at=row.created_at,
        )
    return list(first.values())


@dataclass
class VersionPerformance:
    model_version: str
    outcomes: int
    progressions: int
    threshold: float | None
    auc: dict[str, float] | None = None
    sensitivity: float | None = None
    specificity: float | None = None
    brier: float | None = None
    calibration: list[dict[str, float]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    y_true: list[int] = field(default_factory=list, repr=False)
    y_score: list[float] = field(default_factory=list, repr=False)

    def as_dict(self) -> dict[str, Any]:
        return {
            "model_version": self.model_version,
            "outcomes": self.outcomes,
            "progressions": self.progressions,
            "threshold": self.threshold,
            "auc": self.auc,
            "sensitivity": self.sensitivity,
            "specificity": self.specificity,
            "brier": self.brier,
            "calibration": self.calibration,
            "notes": self.notes,
        }


def _number(value: float) -> float | None:
    return None if math.isnan(value) else value


def evaluate_version(
    version: str,
    cases: Iterable[ScoredCase],
    *,
    min_outcomes: int,
    fallback_threshold: float | None = None,
    resamples: int = 1000,
) -> VersionPerformance:
    from model.metrics import bootstrap_auc, calibration_bins, classification_metrics

    chosen = list(cases)
    y = np.array([c.control for c in chosen], dtype=int)
    p = np.array([c.probability for c in chosen], dtype=np.float64)
    thresholds = {c.threshold for c in chosen if c.threshold is not None}
    threshold = thresholds.pop() if len(thresholds) == 1 else None
    if threshold is None and not thresholds:
        threshold = fallback_threshold
    result = VersionPerformance(
        version, len(chosen), int((y == 0).sum()), threshold, y_true=y.tolist(), y_score=p.tolist()
    )
    if len(chosen) < min_outcomes:
        result.notes.append(
            f"too few linked outcomes: {len(chosen)} of the {min_outcomes} needed "
            "(TACE_PERFORMANCE_MIN_OUTCOMES)"
        )
        return result
    result.brier = _number(float(classification_metrics(y, p).brier))
    result.calibration = [
        {"predicted": predicted, "observed": observed, "count": count}
        for predicted, observed, count in calibration_bins(y, p, 10)
    ]
    if y.min() == y.max():
        only = "progressive disease" if y[0] == 0 else "disease control"
        result.notes.append(f"one class only ({only}): no AUC, sensitivity or specificity")
        return result
    aucs, _ = bootstrap_auc(y, [p], resamples=resamples)
    result.auc = aucs[0].as_dict()
    if threshold is None:
        result.notes.append(
            "the decision threshold is not recorded for these predictions: no sensitivity or specificity"
        )
        return result
    metrics = classification_metrics(y, p, threshold)
    result.sensitivity = _number(metrics.sensitivity)
    result.specificity = _number(metrics.specificity)
    return result


def performance(
    engine: Engine,
    *,
    window: str = "all",
    model_version: str | None = None,
    min_outcomes: int = 10,
    checkpoint_thresholds: dict[str, float] | None = None,
) -> list[VersionPerformance]:
    """One entry per model version with linked outcomes (or the one asked for), newest window first."""
    span = WINDOWS[window]
    since = utcnow() - span if span is not None else None
    cases = scored_cases(engine, since)
    versions = sorted({c.model_version for c in cases} | ({model_version} if model_version else set()))
    if model_version is not None:
        versions = [model_version]
    return [
        evaluate_version(
            version,
            (c for c in cases if c.model_version == version),
            min_outcomes=min_outcomes,
            fallback_threshold=(checkpoint_thresholds or {}).get(version),
        )
        for version in versions
    ]


def auc_alerts(results: Iterable[VersionPerformance], *, auc_lower: float, min_outcomes: int) -> list[str]:
    """One line per version whose live AUC's lower 95% bound is under ``auc_lower``, each logged.

    Only versions with at least ``min_outcomes`` scored outcomes count: with fewer the
    interval is too wide for its lower bound to say anything. The log line carries the
    version and the figures, never a patient.
    """
    alerts = []
    for result in results:
        if result.auc is None or result.outcomes < min_outcomes or result.auc["low"] >= auc_lower:
            continue
        log.warning(
            "performance.auc_alert",
            model_version=result.model_version,
            outcomes=result.outcomes,
            auc=round(result.auc["value"], 4),
            auc_low=round(result.auc["low"], 4),
            alert_below=auc_lower,
        )
        alerts.append(
            f"model {result.model_version}: the live AUC's 95% CI lower bound {result.auc['low']:.2f} "
            f"is under the alert level {auc_lower:.2f} (TACE_PERFORMANCE_ALERT_AUC_LOWER), "
            f"on {result.outcomes} linked outcomes"
        )
    return alerts
