"""One case from stored CT files and clinical values to SR bytes: the path every caller shares.

The infer stage, `tace predict` and `tace bench pipeline` all run a case through
:func:`run_case`, so what a site validates with `tace predict` and what the
benchmark measures is what the worker does. Cheapest first: the clinical values
are assembled before any pixel is decoded, because a case whose required labs
have not arrived ends there and is tried again later (decoding a 100-slice
series on every retry would keep a GPU worker busy for nothing); then the
volume, the model and the SR. Every outcome is a value, never an exception, so
each caller decides what it means for a job, a command line or a measurement.
"""

from __future__ import annotations

import datetime as dt
import io
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from sqlalchemy.engine import Engine

from hl7_clinical.features import ClinicalFeatures, FeatureValue, clinical_features
from model.predictor import PredictionResult, Predictor
from model.schema import SchemaError
from worker.align import align
from worker.clinical_summary import summarize
from worker.sr import SrContent, SrIdentity, build_sr, sr_identity
from worker.sr_demographics import sex_code
from worker.volume import SeriesVolume, VolumeError, read_volume


@dataclass(frozen=True)
class PhaseInput:
    """One contrast phase the model reads: its name and the chosen series' files."""

    phase: str
    paths: Sequence[Path]


@dataclass(frozen=True)
class Case:
    """What the pipeline needs to know about one case; callers build it from job rows or a folder."""

    paths: Sequence[Path]
    patient_id: str
    issuer: str | None
    patient_hash: str
    at: dt.datetime
    """The moment the labs are assembled for: the study time (site-local, naive)."""
    generation: int = 1
    """The job generation; it and the model version make the SR's UIDs."""
    lab_issuers: tuple[str | None, ...] | None = None
    """Issuers stored labs may carry for this patient (``IdentityRules.lab_issuers``); None: ``issuer``."""
    patient_sex: str | None = None
    """PatientSex of the CT header: the ``sex`` feature when the labs carry none."""
    phases: tuple[PhaseInput, ...] = ()
    """Several phases in channel order (multi-phase checkpoints); empty: ``paths`` is the one series."""
    reference: str | None = None
    """The phase whose slice positions the others are resampled onto."""
    min_slices: int = 1
    """The checkpoint's minimum slice count, applied to the aligned phases' overlap."""
    study_instance_uid: str | None = None
    """Names the SR's UIDs with the model version and generation; None: the study of the CT read."""
    inputs_report: tuple[str, ...] = ()
    """Lines for the SR: the series used per phase and the others with why they were not used."""
    predecessor: Path | None = None
    """The SR this one replaces (Predecessor Documents Sequence)."""


@dataclass(frozen=True)
class LabsRule:
    required: Sequence[str]
    impute: bool
    """False: a missing required value ends the case before the volume is decoded."""


@dataclass(frozen=True)
class LabsMissing:
    missing: list[str]
    features: ClinicalFeatures


@dataclass(frozen=True)
class Refused:
    """The case cannot be predicted as it is; ``stage`` names the part that said so."""

    stage: str
    reason: str


@dataclass(frozen=True)
class Inputs:
    """Labs and volume of a case, ready for the model."""

    case: Case
    features: ClinicalFeatures
    volume: SeriesVolume
    """The reference phase's volume (the only one for single-phase cases)."""
    timings: dict[str, float] = field(default_factory=dict)
    model_input: np.ndarray | None = None
    """(slices, channels, rows, columns) HU for multi-phase cases; None: ``volume.pixels`` (stored values)."""
    evidence: list[Dataset] | None = None
    """Headers of every instance read; None: ``volume.headers``."""


@dataclass(frozen=True)
class Predicted:
    prediction: PredictionResult
    features: ClinicalFeatures
    identity: SrIdentity
    sr: bytes
    """The SR as a DICOM file (preamble and file meta), ready to be written or sent."""
    slices: int
    timings: dict[str, float]


def _elapsed(start: float) -> float:
    return round(time.perf_counter() - start, 4)


VolumeReader = Callable[[Sequence[Path]], SeriesVolume]
"""Reads one series' files into a volume (:func:`read_volume`, or a worker's prefetch)."""


def gather(
    case: Case,
    *,
    labs: Engine,
    predictor: Predictor,
    labs_rule: LabsRule,
    decode_pool: Executor | None,
    read: VolumeReader | None = None,
) -> Inputs | LabsMissing | Refused:
    """Clinical values first, then the volume: a case still waiting for labs is never decoded."""
    reader = read or partial(read_volume, executor=decode_pool)
    start = time.perf_counter()
    features = clinical_features(
        labs,
        patient_id=case.patient_id,
        issuer=case.issuer,
        patient_hash=case.patient_hash,
        at=case.at,
        definitions=predictor.meta.schema.by_name(),
        lab_issuers=case.lab_issuers,
    )
    _sex_from_header(features, case.patient_sex)
    timings = {"features": _elapsed(start)}
    missing = [name for name in labs_rule.required if name in features.missing]
    if missing and not labs_rule.impute:
        return LabsMissing(missing, features)
    start = time.perf_counter()
    if len(case.phases) > 1:
        return _gather_phases(case, features, timings, start, reader)
    paths = case.phases[0].paths if case.phases else case.paths
    try:
        volume = reader(paths)
    except VolumeError as exc:
        return Refused("volume", str(exc))
    timings["read_volume"] = _elapsed(start)
    return Inputs(case, features, volume, timings)


SEX_SOURCE = "CT header PatientSex"


def _sex_from_header(features: ClinicalFeatures, patient_sex: str | None) -> None:
    """The CT says the patient's sex as surely as a lab system does; labs win when both have it."""
    sex = sex_code(patient_sex)
    if "sex" in features.values and features.values["sex"] is None and sex in ("F", "M"):
        features.values["sex"] = FeatureValue(
            name="sex",
            value=float(sex == "M"),
            unit=None,
            observed_at=None,
            source=SEX_SOURCE,
            status="F",
            text=sex,
        )


def _gather_phases(
    case: Case, features: ClinicalFeatures, timings: dict[str, float], start: float, reader: VolumeReader
) -> Inputs | Refused:
    """Only the chosen series are decoded; the phases are then aligned on the reference phase."""
    volumes: list[tuple[str, SeriesVolume]] = []
    for phase in case.phases:
        try:
            volumes.append((phase.phase, reader(phase.paths)))
        except VolumeError as exc:
            return Refused("volume", f"{phase.phase.replace('_', ' ')} phase: {exc}")
    reference = case.reference or case.phases[0].phase
    try:
        aligned = align(volumes, reference, min_slices=case.min_slices)
    except VolumeError as exc:
        return Refused("volume", str(exc))
    timings["read_volume"] = _elapsed(start)
    return Inputs(case, features, dict(volumes)[reference], timings, aligned.hu, aligned.evidence)


def predict(inputs: Inputs, *, predictor: Predictor) -> Predicted | Refused:
    """The model on the gathered inputs, then the SR that carries its answer."""
    timings = dict(inputs.timings)
    start = time.perf_counter()
    try:
        volume = inputs.model_input if inputs.model_input is not None else inputs.volume.pixels
        result = predictor.predict(volume, inputs.features.model_input())
    except SchemaError as exc:
        return Refused("features", str(exc))
    timings["model"] = _elapsed(start)
    start = time.perf_counter()
    identity, sr = sr_file(inputs, result, predictor)
    timings["sr"] = _elapsed(start)
    timings.update({f"model.{name}": round(value, 4) for name, value in result.timings.items()})
    slices = len(inputs.model_input) if inputs.model_input is not None else len(inputs.volume.pixels)
    return Predicted(result, inputs.features, identity, sr, slices, timings)


def sr_file(inputs: Inputs, result: PredictionResult, predictor: Predictor) -> tuple[SrIdentity, bytes]:
    """The SR of a prediction as file bytes (the benchmark times this part on its own)."""
    case = inputs.case
    study = case.study_instance_uid or inputs.volume.study_instance_uid
    identity = sr_identity(study, result.model_version, case.generation)
    previous = [pydicom.dcmread(case.predecessor, stop_before_pixels=True)] if case.predecessor else None
    sr = build_sr(
        inputs.evidence or inputs.volume.headers,
        SrContent.of(
            result,
            summarize(inputs.features, result.missing_features, predictor.meta.schema.by_name()),
            inputs=case.inputs_report,
        ),
        identity,
        previous=previous,
    )
    buffer = io.BytesIO()
    sr.save_as(buffer, enforce_file_format=True)
    return identity, buffer.getvalue()


def run_case(
    case: Case,
    *,
    labs: Engine,
    predictor: Predictor,
    labs_rule: LabsRule,
    decode_pool: Executor | None,
    read: VolumeReader | None = None,
    on_gathered: Callable[[], object] | None = None,
) -> Predicted | LabsMissing | Refused:
    """The whole path for one case; :func:`gather` and :func:`predict` are its two halves.

    ``on_gathered`` runs once the volume is read and before the model: a worker
    starts reading its next job there, so decode overlaps the model.
    """
    gathered = gather(
        case, labs=labs, predictor=predictor, labs_rule=labs_rule, decode_pool=decode_pool, read=read
    )
    if not isinstance(gathered, Inputs):
        return gathered
    if on_gathered is not None:
        on_gathered()
    return predict(gathered, predictor=predictor)
