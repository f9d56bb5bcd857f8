"""`tace predict`: one folder of DICOM files through the same code, without services.

What a researcher or a site's validation team runs first: the same volume
reader, feature assembly, model and SR builder as the worker, on one series,
with labs from a CSV file in a throwaway database.
"""

from __future__ import annotations

import datetime as dt
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydicom

from hl7_clinical.codes import CodeMap
from hl7_clinical.csv_import import ImportReport, import_csv
from hl7_clinical.features import clinical_features
from hl7_clinical.identity import effective_issuer
from model.predictor import PredictionResult, Predictor
from tace import phi
from tace.db import make_engine
from tace.schema import upgrade_schema
from tace.settings import Settings
from worker.sr import SrContent, build_sr, sr_identity
from worker.volume import read_volume


@dataclass
class OneCaseResult:
    prediction: PredictionResult
    features: dict[str, Any]
    missing: list[str]
    sr_path: Path | None
    labs_report: ImportReport | None = None
    slices: int = 0
    notes: list[str] = field(default_factory=list)


def predict_folder(
    settings: Settings,
    checkpoint: Path,
    folder: Path,
    *,
    patient: str | None = None,
    labs: Path | None = None,
    at: dt.datetime | None = None,
    sr_out: Path | None = None,
) -> OneCaseResult:
    paths = sorted(p for p in folder.iterdir() if p.is_file())
    volume = read_volume(paths)
    first = volume.headers[0]
    predictor = Predictor.load(checkpoint, device=settings.device)
    definitions = predictor.meta.schema.by_name()
    patient_id = patient or str(first.get("PatientID", ""))
    issuer = effective_issuer(first.get("IssuerOfPatientID"), settings.default_issuer)
    when = at or _study_datetime(first) or dt.datetime.now()
    report = None
    with tempfile.TemporaryDirectory(prefix="tace-predict-") as tmp:
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
        features = clinical_features(
            engine,
            patient_id=patient_id,
            issuer=issuer,
            patient_hash=phi.patient_hash(patient_id, issuer),
            at=when,
            definitions=definitions,
        )
        engine.dispose()
    prediction = predictor.predict(volume.hu, features.model_input())
    sr_path = None
    if sr_out is not None:
        identity = sr_identity(volume.series_instance_uid, prediction.model_version, 1)
        sr = build_sr(
            volume.headers,
            SrContent.of(prediction),
            identity,
        )
        sr_out.parent.mkdir(parents=True, exist_ok=True)
        sr.save_as(sr_out, enforce_file_format=True)
        sr_path = sr_out
    return OneCaseResult(prediction, features.provenance(), features.missing, sr_path, report, len(volume.hu))


def _study_datetime(ds: pydicom.Dataset) -> dt.datetime | None:
    date = str(ds.get("StudyDate", "") or "")
    time = str(ds.get("StudyTime", "") or "000000").split(".")[0].ljust(6, "0")[:6]
    try:
        return dt.datetime.strptime(date[:8] + time, "%Y%m%d%H%M%S") if date else None
    except ValueError:
        return None
