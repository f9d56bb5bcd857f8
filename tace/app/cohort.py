"""`tace cohort export`: a training manifest from the gateway's own linked cases.

One case per linked prediction (judged by its first linked assessment): the
series the job predicted on, the clinical values the model was given at
prediction time (canonical units, so no unit headers), and the mRECIST response
as the label. Provenance (patient hash, study UID, dates) goes to a separate
``provenance.csv`` keyed by case ID, since a manifest's columns are features.

A single-phase job's series is its folder in the data dir (``volume``), which
`tace train` reads as a DICOM series. A multi-phase job's phases are written as
the model read them, aligned onto the reference phase's slices (one
``volume_<phase>`` column each, ``.npy`` HU arrays): the training manifest needs
the phases of a case on one slice grid, and the gateway aligned them before
predicting, so `tace evaluate` on the export sees the gateway's input. With
``deidentify`` the DICOM series are de-identified copies (``tace.app.deidentify``)
and provenance carries pseudonyms and shifted dates instead.
"""

from __future__ import annotations

import csv
import datetime as dt
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from tace.app.deidentify import Deidentifier, DeidentifyError
from tace.db import Job, LinkState, Outcome, Prediction, Series, Study, table
from tace.outcomes import PREDICTED_STATES, active

PROVENANCE = (
    "case_id",
    "patient_hash",
    "study_instance_uid",
    "study_date",
    "tace_date",
    "assessed_on",
    "model_version",
)


@dataclass(frozen=True)
class ExportResult:
    manifest: Path
    provenance: Path
    cases: int
    skipped: list[str]


@dataclass(frozen=True)
class CohortOptions:
    since: dt.date | None = None
    """Only studies on or after this date."""
    until: dt.date | None = None
    """Only studies on or before this date."""
    deidentify: bool = False


def _cell(value: object, categories: tuple[str, ...] | None) -> str:
    """A stored value as a manifest cell; a coded value stored as its index is written as its category."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if categories and isinstance(value, int | float):
        index = int(value)
        return categories[index] if 0 <= index < len(categories) else ""
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def _linked_rows(engine: Engine, options: CohortOptions) -> list[Any]:
    outcomes, job, series, study, prediction = (
        table(Outcome),
        table(Job),
        table(Series),
        table(Study),
        table(Prediction),
    )
    query = (
        sa.select(
            outcomes.c.response,
            outcomes.c.assessed_on,
            outcomes.c.tace_date,
            outcomes.c.patient_hash,
            job.c.id.label("job_id"),
            job.c.state,
            job.c.selection,
            series.c.id.label("series_id"),
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
    )
    if options.since is not None:
        query = query.where(study.c.study_datetime >= dt.datetime.combine(options.since, dt.time()))
    if options.until is not None:
        query = query.where(
            study.c.study_datetime < dt.datetime.combine(options.until + dt.timedelta(days=1), dt.time())
        )
    with engine.connect() as connection:
        return list(connection.execute(query).all())


def chosen_phases(selection: dict[str, Any] | None) -> dict[str, str]:
    """Phase -> series UID for each phase the job read, in the model's channel order."""
    if not selection:
        return {}
    chosen = {item["used_for"]: item for item in selection.get("series", []) if item.get("used_for")}
    return {p: chosen[p]["series_instance_uid"] for p in selection.get("phases", []) if p in chosen}


def _series_files(data_dir: Path, study_uid: str, series_uid: str) -> list[Path]:
    """The stored instances of a series (the storage layout: one folder per series)."""
    folder = data_dir / "dicom" / study_uid / series_uid
    return sorted(folder.glob("*.dcm")) if folder.is_dir() else []


def _aligned_phases(files: dict[str, list[Path]], selection: dict[str, Any], out: Path) -> dict[str, Path]:
    """Each phase aligned onto the reference phase's slices, as the worker does, saved as ``.npy``."""
    from worker.align import align
    from worker.volume import read_volume

    volumes = [(phase, read_volume(paths)) for phase, paths in files.items()]
    reference = selection.get("reference") or volumes[0][0]
    min_slices = int((selection.get("contract") or {}).get("min_slices", 1))
    aligned = align(volumes, reference, min_slices=min_slices)
    out.mkdir(parents=True, exist_ok=True)
    written = {}
    for channel, (phase, _) in enumerate(volumes):
        path = out / f"{phase}.npy"
        np.save(path, np.ascontiguousarray(aligned.hu[:, channel]))
        written[phase] = path
    return written


def export_cohort(
    engine: Engine, data_dir: Path, out: Path, schema: object, options: CohortOptions | None = None
) -> ExportResult:
    """Write ``out/manifest.csv`` and ``out/provenance.csv``; ``schema`` is a model FeatureSchema."""
    from model.schema import FeatureKind, FeatureSchema
    from worker.volume import VolumeError

    assert isinstance(schema, FeatureSchema)
    options = options or CohortOptions()
    rows = _linked_rows(engine, options)
    deidentifier = Deidentifier() if options.deidentify else None
    out.mkdir(parents=True, exist_ok=True)
    skipped: list[str] = []
    seen: set[int] = set()
    cases: list[tuple[dict[str, str], list[str]]] = []
    for row in rows:
        if row.job_id in seen:
            continue
        seen.add(row.job_id)
        if row.state not in PREDICTED_STATES:
            skipped.append(f"job {row.job_id}: {row.state}, its prediction is no longer current")
            continue
        # A job ID is the gateway's own key to the patient: a de-identified export numbers its cases.
        case_id = (
            f"case{len(cases) + len(skipped) + 1:04d}" if deidentifier is not None else f"job{row.job_id}"
        )
        phases = chosen_phases(row.selection) or {"any": row.series_instance_uid}
        files = {p: _series_files(data_dir, row.study_instance_uid, uid) for p, uid in phases.items()}
        if not all(files.values()):
            skipped.append(f"job {row.job_id}: the files of its series are gone from the data dir")
            continue
        try:
            if len(files) > 1:
                arrays = _aligned_phases(files, row.selection, out / "volumes" / case_id)
                volumes = {f"volume_{phase}": str(path.relative_to(out)) for phase, path in arrays.items()}
            elif deidentifier is not None:
                (series,) = files.values()
                copy = deidentifier.copy_series(series, out / "images" / case_id, row.patient_hash)
                volumes = {"volume": str(copy.relative_to(out))}
            else:
                (series,) = files.values()
                volumes = {"volume": str(series[0].parent)}
        except (VolumeError, DeidentifyError, OSError) as exc:
            skipped.append(f"job {row.job_id}: {exc}")
            continue
        features = row.features or {}
        values = {
            spec.name: _cell(
                (features.get(spec.name) or {}).get("value"),
                spec.categories if spec.kind is FeatureKind.nominal else None,
            )
            for spec in schema.features
        }
        study_date = row.study_datetime.date() if row.study_datetime else None
        dates = [study_date, row.tace_date, row.assessed_on]
        patient, study_uid = row.patient_hash, row.study_instance_uid
        if deidentifier is not None:
            pseudonym = deidentifier.patient(row.patient_hash)
            patient, study_uid = pseudonym.name, deidentifier.uid(study_uid)
            dates = [pseudonym.date(d) if d else None for d in dates]
        provenance = [case_id, patient, study_uid, *(d.isoformat() if d else "" for d in dates)]
        cases.append(
            (
                {"case_id": case_id, "label": row.response, **volumes, **values},
                [*provenance, row.model_version],
            )
        )
    volume_columns = sorted({c for case, _ in cases for c in case if c.startswith("volume")})
    manifest, provenance_file = out / "manifest.csv", out / "provenance.csv"
    with manifest.open("w", newline="") as m_handle, provenance_file.open("w", newline="") as p_handle:
        m_writer = csv.DictWriter(
            m_handle, ["case_id", "label", *volume_columns, *(spec.name for spec in schema.features)]
        )
        m_writer.writeheader()
        p_writer = csv.writer(p_handle)
        p_writer.writerow(PROVENANCE)
        for case, provenance in cases:
            m_writer.writerow(case)
            p_writer.writerow(provenance)
    return ExportResult(manifest, provenance_file, len(cases), skipped)
