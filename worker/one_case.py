"""`tace predict`: one folder of DICOM files through the worker's pipeline, without services.

What a researcher or a site's validation team runs first: the same pipeline as
the worker (:func:`worker.pipeline.run_case`), on one series, with labs from a
CSV file in a throwaway database.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from sqlalchemy.engine import Engine

from hl7_clinical.codes import CodeMap
from hl7_clinical.csv_import import ImportReport, import_csv
from hl7_clinical.identity import IdentityRules
from model.predictor import PredictionResult, Predictor
from tace import phi
from tace.db import make_engine
from tace.dicom_header import study_datetime, text
from tace.schema import upgrade_schema
from tace.settings import Settings
from worker import pipeline


class CaseRefused(ValueError):
    """The folder cannot be predicted; the message says why, in the words of the stage that refused."""


@dataclass
class OneCaseResult:
    prediction: PredictionResult
    features: dict[str, Any]
    missing: list[str]
    sr_path: Path | None
    labs_report: ImportReport | None = None
    slices: int = 0
    skipped_files: int = 0
    labs_source: str = "none"


def _case(
    settings: Settings, paths: list[Path], patient: str | None, at: dt.datetime | None
) -> pipeline.Case:
    """Who and when, from the first file's header (or the options), as the listener would record it."""
    header = Dataset()
    if paths:
        with contextlib.suppress(OSError, InvalidDicomError):
            header = pydicom.dcmread(paths[0], stop_before_pixels=True)
    phi.protect_dataset(header)
    patient_id = patient or text(header, "PatientID") or ""
    rules = IdentityRules.from_settings(settings)
    issuer = rules.issuer(text(header, "IssuerOfPatientID"))
    when = at or study_datetime(header) or dt.datetime.now()
    return pipeline.Case(
        paths,
        patient_id,
        issuer,
        phi.patient_hash(patient_id, issuer),
        when,
        lab_issuers=tuple(rules.lab_issuers(issuer)),
        patient_sex=text(header, "PatientSex"),
    )


def series_files(folder: Path, series_uid: str | None = None) -> tuple[list[Path], int]:
    """The DICOM files of one series under ``folder`` (searched recursively), and how many
    other files were skipped (a README, a DICOMDIR viewer, thumbnails: exports carry them).

    A folder holding several series is refused with their UIDs unless ``series_uid`` picks one.
    """
    by_series: dict[str, list[Path]] = {}
    skipped = 0
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        try:
            header = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SeriesInstanceUID"])
        except (OSError, InvalidDicomError):
            skipped += 1
            continue
        by_series.setdefault(text(header, "SeriesInstanceUID") or "(none)", []).append(path)
    if series_uid is not None:
        if series_uid not in by_series:
            raise CaseRefused(
                f"no series {series_uid} under {folder} (found {', '.join(by_series) or 'none'})"
            )
        return by_series[series_uid], skipped
    if len(by_series) > 1:
        listed = ", ".join(f"{uid} ({len(files)} files)" for uid, files in by_series.items())
        raise CaseRefused(f"{folder} holds {len(by_series)} series: {listed}; choose one with --series")
    return next(iter(by_series.values()), []), skipped


def predict_folder(
    settings: Settings,
    checkpoint: Path,
    folder: Path,
    *,
    gateway_labs: Engine | None = None,
    series_uid: str | None = None,
    patient: str | None = None,
    labs: Path | None = None,
    at: dt.datetime | None = None,
    sr_out: Path | None = None,
) -> OneCaseResult:
    """Labs come from ``labs`` (a CSV, in a throwaway database) if given, else from the gateway's
    database (``gateway_labs``) when there is one, else there are none and every value is imputed."""
    paths, skipped = series_files(folder, series_uid)
    case = _case(settings, paths, patient, at)
    predictor = Predictor.load(checkpoint, device=settings.device)
    definitions = predictor.meta.schema.by_name()
    report = None
    with tempfile.TemporaryDirectory(prefix="tace-predict-") as tmp:
        engine = gateway_labs
        if labs is not None or engine is None:
            engine = make_engine(f"sqlite:///{Path(tmp) / 'labs.db'}")
            upgrade_schema(engine)
        if labs is not None:
            report = import_csv(
                engine,
                labs,
                definitions,
                CodeMap.load(definitions, settings.hl7_local_codes),
                default_issuer=settings.default_issuer,
            )
        result = pipeline.run_case(
            case,
            labs=engine,
            predictor=predictor,
            labs_rule=pipeline.LabsRule(required=(), impute=True),
            decode_pool=None,
        )
        if engine is not gateway_labs:
            engine.dispose()
    if not isinstance(result, pipeline.Predicted):
        assert isinstance(result, pipeline.Refused), "nothing is required, so labs never stop a case"
        raise CaseRefused(result.reason)
    sr_path = None
    if sr_out is not None:
        sr_out.parent.mkdir(parents=True, exist_ok=True)
        sr_out.write_bytes(result.sr)
        sr_path = sr_out
    source = "CSV file" if labs is not None else "gateway database" if gateway_labs is not None else "none"
    return OneCaseResult(
        result.prediction,
        result.features.provenance(),
        result.features.missing,
        sr_path,
        report,
        result.slices,
        skipped,
        source,
    )
