"""Live clinical-input drift of the active checkpoint: recent predictions against its training cohort."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from tace.db import Prediction, table

NO_DISTRIBUTION = "no training distribution in this checkpoint"


@dataclass
class DriftReport:
    model_version: str
    predictions: int
    features: list[dict[str, Any]] = field(default_factory=list)
    note: str | None = None

    @property
    def major(self) -> list[str]:
        from model.drift import PSI_MAJOR

        return [f["feature"] for f in self.features if f["psi"] is not None and f["psi"] > PSI_MAJOR]

    def as_dict(self) -> dict[str, Any]:
        return {
            "model_version": self.model_version,
            "predictions": self.predictions,
            "features": self.features,
            "note": self.note,
            "major_drift": self.major,
        }


def live_rows(engine: Engine, model_version: str, limit: int) -> list[dict[str, object]]:
    """The clinical values of the latest ``limit`` predictions of one model version, as the model saw them."""
    prediction = table(Prediction)
    with engine.connect() as connection:
        stored = (
            connection.execute(
                sa.select(prediction.c.features)
                .where(prediction.c.model_version == model_version)
                .order_by(prediction.c.id.desc())
                .limit(limit)
            )
            .scalars()
            .all()
        )
    return [
        {name: (entry or {}).get("value") for name, entry in (features or {}).items()} for features in stored
    ]


def drift_report(engine: Engine, meta: Any, limit: int = 500) -> DriftReport:
    """Drift of ``meta``'s (a CheckpointMeta) version over its latest predictions."""
    from model.drift import feature_drift

    rows = live_rows(engine, meta.version, limit)
    report = DriftReport(meta.version, len(rows))
    if meta.training_distribution is None:
        report.note = NO_DISTRIBUTION
        return report
    if not rows:
        report.note = f"no predictions of model version {meta.version} yet"
        return report
    report.features = [
        {
            "feature": d.feature,
            "missing": d.missing,
            "training_missing": d.training_missing,
            "psi": d.psi,
        }
        for d in feature_drift(meta.schema, meta.training_distribution, rows)
    ]
    return report
