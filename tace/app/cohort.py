"""`tace cohort export`: a training manifest from the gateway's own linked cases.

One case per linked prediction (judged by its first linked assessment): the
series the job predicted on (its folder in the data dir, which `tace train`
reads as a DICOM series), the clinical values the model was given at
prediction time (canonical units, so no unit headers), and the mRECIST response
as the label. Provenance (patient hash, study UID, dates) goes to a separate
``provenance.csv`` keyed by case ID, since a manifest's columns are features.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from tace.db import Job, LinkState, Outcome, Prediction, Series, Study, table
from tace.outcomes import PREDICTED_STATES, active


@dataclass(frozen=True)
class ExportResult:
    manifest: Path
    provenance: Path
    cases: int
    skipped: list[str]


def _cell(value: object, categories: tuple[str, ...] | None) -> str:
    """A stored value as a manifest cell; a coded value stored as its index is written as its category."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if categories and isinstance(value, int | float):
        index = int(value)
        return categories[index] if 0 <= index < len(categories) else ""
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def export_cohort(engine: Engine, data_dir: Path, out: Path, schema: object) -> ExportResult:
    """Write ``out/manifest.csv`` and ``out/provenance.csv``; ``schema`` is a model FeatureSchema."""
    from model.schema import FeatureKind, FeatureSchema

    assert isinstance(schema, FeatureSchema)
    outcomes, job, series, study, prediction = (
        table(Outcome),
        table(Job),
        table(Series),
        table(Study),
        table(Prediction),
    )
    with engine.connect() as connection:
        rows = connection.execute(
            sa.select(
                outcomes.c.id.label("outcome_id"),
                outcomes.c.response,
                outcomes.c.assessed_on,
                outcomes.c.tace_date,
                outcomes.c.patient_hash,
                job.c.id.label("job_id"),
                job.c.state,
                series.c.series_instance_uid,
                study.c.study_instance_uid,
                study.c.study_datetime,
                prediction.c.features,
                prediction.c.model_version,
            )
            .select_from(
                outcomes.join(job, job.c.id == outcomes.c.job_id)
                .join(series, series.c.id == job.c.series_id)
                .join(study, study.c.id == series.c.study_id)
                .join(prediction, prediction.c.job_id == job.c.id)
            )
            .where(active(), outcomes.c.link_state.in_((LinkState.linked, LinkState.manual)))
            .order_by(outcomes.c.assessed_on, outcomes.c.id)
        ).all()
    out.mkdir(parents=True, exist_ok=True)
    manifest, provenance = out / "manifest.csv", out / "provenance.csv"
    skipped: list[str] = []
    seen: set[int] = set()
    specs = schema.features
    with manifest.open("w", newline="") as m_handle, provenance.open("w", newline="") as p_handle:
        m_writer, p_writer = csv.writer(m_handle), csv.writer(p_handle)
        m_writer.writerow(["case_id", "label", "volume", *(spec.name for spec in specs)])
        p_writer.writerow(
            [
                "case_id",
                "patient_hash",
                "study_instance_uid",
                "study_date",
                "tace_date",
                "assessed_on",
                "model_version",
            ]
        )
        for row in rows:
            if row.job_id in seen:
                continue
            seen.add(row.job_id)
            if row.state not in PREDICTED_STATES:
                skipped.append(f"job {row.job_id}: {row.state}, its prediction is no longer current")
                continue
            folder = data_dir / "dicom" / row.study_instance_uid / row.series_instance_uid
            if not folder.is_dir():
                skipped.append(f"job {row.job_id}: series folder {folder} is gone")
                continue
            features = row.features or {}
            values = []
            for spec in specs:
                entry = features.get(spec.name) or {}
                coded = spec.categories if spec.kind is FeatureKind.nominal else None
                values.append(_cell(entry.get("value"), coded))
            case_id = f"job{row.job_id}"
            m_writer.writerow([case_id, row.response, str(folder), *values])
            p_writer.writerow(
                [
                    case_id,
                    row.patient_hash,
                    row.study_instance_uid,
                    row.study_datetime.date().isoformat() if row.study_datetime else "",
                    row.tace_date.isoformat() if row.tace_date else "",
                    row.assessed_on.isoformat(),
                    row.model_version,
                ]
            )
    return ExportResult(manifest, provenance, len(seen) - len(skipped), skipped)
