"""Live input drift of the active checkpoint: recent predictions against its training cohort.

Clinical features by their values as the model saw them; images by the per-series
statistics (``model.image_stats``) stored with each prediction.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from tace.db import Prediction, table

NO_DISTRIBUTION = "no training distribution in this checkpoint"
NO_IMAGE_DISTRIBUTION = "no image statistics of the training cohort in this checkpoint"


@dataclass
class DriftReport:
    model_version: str
    predictions: int
    features: list[dict[str, Any]] = field(default_factory=list)
    note: str | None = None
    images: list[dict[str, Any]] = field(default_factory=list)
    image_note: str | None = None

    @property
    def major(self) -> list[str]:
        from model.drift import PSI_MAJOR

        return [f["feature"] for f in self.features if f["psi"] is not None and f["psi"] > PSI_MAJOR] + [
            f"image {i['statistic']}" for i in self.images if i["psi"] is not None and i["psi"] > PSI_MAJOR
        ]

    def as_dict(self) -> dict[str, Any]:
        return {
            "model_version": self.model_version,
            "predictions": self.predictions,
            "features": self.features,
            "note": self.note,
            "images": self.images,
            "image_note": self.image_note,
            "major_drift": self.major,
        }


def live_rows(
    engine: Engine, model_version: str, limit: int
) -> tuple[list[dict[str, object]], list[dict[str, Any]]]:
    """The clinical values and image statistics of the latest ``limit`` predictions of one model version."""
    prediction = table(Prediction)
    with engine.connect() as connection:
        stored = connection.execute(
            sa.select(prediction.c.features, prediction.c.image_stats)
            .where(prediction.c.model_version == model_version)
            .order_by(prediction.c.id.desc())
            .limit(limit)
        ).all()
    clinical = [
        {name: (entry or {}).get("value") for name, entry in (row.features or {}).items()} for row in stored
    ]
    return clinical, [row.image_stats for row in stored if row.image_stats]


def drift_report(engine: Engine, meta: Any, limit: int = 500) -> DriftReport:
    """Drift of ``meta``'s (a CheckpointMeta) version over its latest predictions."""
    from model.drift import feature_drift
    from model.image_stats import image_drift

    rows, images = live_rows(engine, meta.version, limit)
    report = DriftReport(meta.version, len(rows))
    if meta.training_distribution is None:
        report.note = NO_DISTRIBUTION
        report.image_note = NO_IMAGE_DISTRIBUTION
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
    trained_images = meta.training_distribution.get("images")
    if trained_images is None:
        report.image_note = NO_IMAGE_DISTRIBUTION
    elif not images:
        report.image_note = "no image statistics recorded with these predictions"
    else:
        report.images = image_drift(trained_images, images)
    return report
