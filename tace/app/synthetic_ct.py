"""Synthetic CT series: realistic headers and pixel encodings, no patient data.

Tests, benchmarks and the demo model need CT series without touching real
patients. The series exercise what real scanners vary and naive readers get
wrong: signed and unsigned storage, rescale slope and intercept, oblique
orientations, instance numbers that disagree with slice order, and compressed
transfer syntaxes.
"""

from __future__ import annotations

import datetime as dt
import random
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    UID,
    CTImageStorage,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    RLELossless,
    generate_uid,
)

AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)

COMPRESSIONS: dict[str, UID] = {
    "none": ExplicitVRLittleEndian,
    "implicit": ImplicitVRLittleEndian,
    "deflate": DeflatedExplicitVRLittleEndian,
    "rle": RLELossless,
    "jpeg2000": JPEG2000Lossless,
    "jpegls": JPEGLSLossless,
    "jpeg-lossless": JPEGLosslessSV1,
}


@dataclass(frozen=True)
class SeriesSpec:
    """Everything that varies between synthetic series; defaults make a plain axial CT."""

    slices: int = 16
    rows: int = 512
    columns: int = 512
    pixel_spacing: tuple[float, float] = (0.7, 0.7)
    slice_spacing: float = 2.5
    orientation: tuple[float, float, float, float, float, float] = AXIAL
    origin: tuple[float, float, float] = (-179.0, -179.0, -100.0)
    signed: bool = False
    rescale_slope: float = 1.0
    rescale_intercept: float | None = None
    shuffle_instance_numbers: bool = False
    compression: str = "none"
    seed: int = 0
    patient_id: str = "SYN0001"
    patient_name: str = "Synthetic^Patient"
    patient_birth_date: str = "19600101"
    patient_sex: str = "M"
    issuer_of_patient_id: str | None = None
    study_instance_uid: str | None = None
    series_instance_uid: str | None = None
    study_datetime: dt.datetime = dt.datetime(2026, 1, 15, 9, 30, 0)
    accession_number: str = "ACC0001"
    series_number: int = 3
    series_description: str = "ABD ARTERIAL 2.5mm"
    modality: str = "CT"
    image_type: tuple[str, ...] = ("ORIGINAL", "PRIMARY", "AXIAL")
    extra: dict[str, object] = field(default_factory=dict)

    @property
    def intercept(self) -> float:
        if self.rescale_intercept is not None:
            return self.rescale_intercept
        return 0.0 if self.signed else -1024.0

    def uids(self) -> tuple[str, str]:
        """Study and series UIDs, derived from the seed unless given."""
        study = self.study_instance_uid or generate_uid(entropy_srcs=[f"study-{self.seed}"])
        series = self.series_instance_uid or generate_uid(
            entropy_srcs=[f"series-{self.seed}-{study}-{self.series_number}"]
        )
        return study, series


def phantom_hu(
    slices: int,
    rows: int,
    columns: int,
    *,
    seed: int = 0,
    tumour_hu: float = 120.0,
    tumour_radius_fraction: float = 0.08,
    liver_hu: float = 60.0,
) -> np.ndarray:
    """An abdomen-like HU volume: air, body, liver, an enhancing tumour and a spine."""
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(
        np.linspace(-1, 1, slices),
        np.linspace(-1, 1, rows),
        np.linspace(-1, 1, columns),
        indexing="ij",
    )
    volume = np.full((slices, rows, columns), -1000.0, dtype=np.float32)
    body = (x / 0.85) ** 2 + (y / 0.65) ** 2 <= 1.0
    volume[body] = -80.0
    muscle = body & ((x / 0.78) ** 2 + (y / 0.58) ** 2 <= 1.0)
    volume[muscle] = 45.0
    liver = ((x + 0.3) / 0.38) ** 2 + ((y + 0.05) / 0.3) ** 2 + (z / 1.2) ** 2 <= 1.0
    volume[liver] = liver_hu
    centre = (0.0, -0.05, -0.3)
    tumour = ((z - centre[0]) / 0.6) ** 2 + ((y - centre[1]) ** 2 + (x - centre[2]) ** 2) / (
        tumour_radius_fraction**2
    ) <= 1.0
    volume[tumour] = tumour_hu
    spine = (x / 0.09) ** 2 + ((y - 0.45) / 0.09) ** 2 <= 1.0
    volume[spine] = 700.0
    volume += rng.normal(0.0, 12.0, size=volume.shape).astype(np.float32)
    return volume


def _unit(vector: np.ndarray) -> np.ndarray:
    return vector / np.linalg.norm(vector)


def _stored(hu: np.ndarray, spec: SeriesSpec) -> np.ndarray:
    values = np.rint((hu - spec.intercept) / spec.rescale_slope)
    if spec.signed:
        return np.clip(values, -32768, 32767).astype(np.int16)
    return np.clip(values, 0, 4095).astype(np.uint16)


def _decimal(value: float) -> str:
    text = f"{value:.6f}".rstrip("0").rstrip(".")
    return text if text not in ("", "-0") else "0"


def make_series(spec: SeriesSpec, volume_hu: np.ndarray | None = None) -> list[Dataset]:
    """Datasets of one series in sending order (shuffled when instance numbers are)."""
    if volume_hu is None:
        volume_hu = phantom_hu(spec.slices, spec.rows, spec.columns, seed=spec.seed)
    if volume_hu.shape != (spec.slices, spec.rows, spec.columns):
        raise ValueError(
            f"volume_hu has shape {volume_hu.shape}, spec asks for {(spec.slices, spec.rows, spec.columns)}"
        )
    if spec.compression not in COMPRESSIONS:
        raise ValueError(f"compression {spec.compression!r} not in {sorted(COMPRESSIONS)}")
    row_dir = _unit(np.array(spec.orientation[:3], dtype=float))
    col_dir = _unit(np.array(spec.orientation[3:], dtype=float))
    if abs(float(row_dir @ col_dir)) > 1e-6:
        raise ValueError("orientation row and column directions must be orthogonal")
    normal = np.cross(row_dir, col_dir)
    origin = np.array(spec.origin, dtype=float)
    study_uid, series_uid = spec.uids()
    pixels = _stored(volume_hu, spec)
    order = list(range(spec.slices))
    numbers = list(range(1, spec.slices + 1))
    rng = random.Random(spec.seed)
    if spec.shuffle_instance_numbers:
        rng.shuffle(numbers)
    datasets = []
    for index in order:
        ds = _slice_dataset(spec, study_uid, series_uid, index, numbers[index])
        position = origin + index * spec.slice_spacing * normal
        ds.ImagePositionPatient = [_decimal(v) for v in position]
        ds.ImageOrientationPatient = [_decimal(v) for v in (*row_dir, *col_dir)]
        ds.SliceLocation = _decimal(float(position @ normal))
        ds.PixelData = pixels[index].tobytes()
        datasets.append(ds)
    if spec.shuffle_instance_numbers:
        rng.shuffle(datasets)
    transfer_syntax = COMPRESSIONS[spec.compression]
    for ds in datasets:
        _encode(ds, transfer_syntax)
    return datasets


def _slice_dataset(spec: SeriesSpec, study_uid: str, series_uid: str, index: int, number: int) -> Dataset:
    sop_uid = generate_uid(entropy_srcs=[series_uid, str(index)])
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = list(spec.image_type)
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = sop_uid
    when = spec.study_datetime
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = ds.AcquisitionDate = when.strftime("%Y%m%d")
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = when.strftime("%H%M%S")
    ds.AccessionNumber = spec.accession_number
    ds.Modality = spec.modality
    ds.Manufacturer = "TACE synthetic"
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = "CT ABDOMEN TRIPHASIC"
    ds.SeriesDescription = spec.series_description
    ds.PatientName = spec.patient_name
    ds.PatientID = spec.patient_id
    if spec.issuer_of_patient_id:
        ds.IssuerOfPatientID = spec.issuer_of_patient_id
    ds.PatientBirthDate = spec.patient_birth_date
    ds.PatientSex = spec.patient_sex
    ds.BodyPartExamined = "ABDOMEN"
    ds.SliceThickness = _decimal(spec.slice_spacing)
    ds.KVP = "120"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.StudyID = "1"
    ds.SeriesNumber = spec.series_number
    ds.InstanceNumber = number
    ds.FrameOfReferenceUID = generate_uid(entropy_srcs=[study_uid, "frame"])
    ds.PositionReferenceIndicator = ""
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = spec.rows
    ds.Columns = spec.columns
    ds.PixelSpacing = [_decimal(v) for v in spec.pixel_spacing]
    ds.BitsAllocated = 16
    ds.BitsStored = 16 if spec.signed else 12
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 1 if spec.signed else 0
    ds.RescaleIntercept = _decimal(spec.intercept)
    ds.RescaleSlope = _decimal(spec.rescale_slope)
    ds.RescaleType = "HU"
    ds.WindowCenter = "50"
    ds.WindowWidth = "400"
    for keyword, value in spec.extra.items():
        setattr(ds, keyword, value)
    return ds


def _encode(ds: Dataset, transfer_syntax: UID) -> None:
    if transfer_syntax in (
        ExplicitVRLittleEndian,
        ImplicitVRLittleEndian,
        DeflatedExplicitVRLittleEndian,
    ):
        ds.file_meta.TransferSyntaxUID = transfer_syntax
        return
    if transfer_syntax == JPEGLosslessSV1:
        _encode_with_dcmtk(ds)
        return
    ds.compress(transfer_syntax, generate_instance_uid=False)


def _encode_with_dcmtk(ds: Dataset) -> None:
    """JPEG lossless (process 14, SV1): pydicom cannot encode it, DCMTK's dcmcjpeg can."""
    tool = shutil.which("dcmcjpeg")
    if tool is None:
        raise RuntimeError("jpeg-lossless needs DCMTK's dcmcjpeg (Debian package dcmtk)")
    with tempfile.TemporaryDirectory() as tmp:
        source, target = Path(tmp) / "in.dcm", Path(tmp) / "out.dcm"
        ds.save_as(source, enforce_file_format=True)
        subprocess.run([tool, "+e1", str(source), str(target)], check=True, capture_output=True)
        encoded = pydicom.dcmread(target)
    ds.file_meta.TransferSyntaxUID = encoded.file_meta.TransferSyntaxUID
    ds.PixelData = encoded.PixelData
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True


def write_series(spec: SeriesSpec, directory: Path, volume_hu: np.ndarray | None = None) -> list[Path]:
    """Write the series as Part 10 files named by SOP Instance UID, in sending order."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for ds in make_series(spec, volume_hu):
        path = directory / f"{ds.SOPInstanceUID}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def variants(base: SeriesSpec, **changes: Sequence[Any]) -> list[SeriesSpec]:
    """The base spec with each listed field set to each listed value, one change at a time."""
    return [replace(base, **{name: value}) for name, values in changes.items() for value in values]


@dataclass(frozen=True)
class ContrastPhase:
    """How one contrast phase of a multiphase liver CT is labelled and how it enhances."""

    name: str
    """The phase as the model's input contract names it (``model.contract.PHASES``)."""
    agent_phase: str
    """Contrast/Bolus Agent Phase (0018,9344), a DICOM defined term."""
    description: str
    seconds_after_injection: int
    liver_hu: float
    tumour_hu: float


CONTRAST_PHASES = {
    phase.name: phase
    for phase in (
        ContrastPhase("arterial", "ARTERIAL", "ABD ARTERIAL 5mm", 35, 75.0, 135.0),
        ContrastPhase("portal_venous", "PORTAL_VENOUS", "ABD PORTAL VENOUS 5mm", 70, 115.0, 90.0),
        ContrastPhase("delayed", "DELAYED", "ABD DELAYED 5mm", 180, 95.0, 70.0),
    )
}
"""A hypervascular liver tumour: arterial wash-in, portal venous and delayed wash-out."""


def write_phase_study(
    base: SeriesSpec,
    directory: Path,
    phases: Sequence[str] = ("arterial", "portal_venous", "delayed"),
) -> dict[str, list[Path]]:
    """One study holding one series per contrast phase, as a multiphase liver CT sends them.

    The series share the study, frame of reference and slice positions of
    ``base`` and differ in Series Instance UID and number, description,
    Contrast/Bolus Agent Phase (0018,9344), acquisition time after the
    Contrast/Bolus Start Time (0018,1042), and enhancement. Files are named by
    SOP Instance UID, so every phase can go into one folder.
    """
    study_uid, _ = base.uids()
    start = base.study_datetime
    written = {}
    for index, name in enumerate(phases):
        phase = CONTRAST_PHASES[name]
        acquired = start + dt.timedelta(seconds=phase.seconds_after_injection)
        spec = replace(
            base,
            study_instance_uid=study_uid,
            series_instance_uid=generate_uid(entropy_srcs=[study_uid, "phase", name, str(base.seed)]),
            series_number=base.series_number + index,
            series_description=phase.description,
            seed=base.seed + index,
            extra={
                **base.extra,
                "ContrastBolusAgent": "IOPAMIDOL",
                "ContrastBolusStartTime": start.strftime("%H%M%S"),
                "ContrastBolusAgentPhase": phase.agent_phase,
                "AcquisitionTime": acquired.strftime("%H%M%S"),
                "SeriesTime": acquired.strftime("%H%M%S"),
            },
        )
        volume = phantom_hu(
            spec.slices,
            spec.rows,
            spec.columns,
            seed=spec.seed,
            tumour_hu=phase.tumour_hu,
            liver_hu=phase.liver_hu,
        )
        written[name] = write_series(spec, directory, volume)
    return written


@dataclass(frozen=True)
class VendorStyle:
    """How one vendor's scanners name and tag a triphasic liver study (from public protocol conventions)."""

    manufacturer: str
    protocol: str
    agent: str
    localizer: str
    non_contrast: str
    arterial: str
    portal_venous: str
    delayed: str
    reformat: str
    thin: float = 1.0


VENDOR_STYLES: dict[str, VendorStyle] = {
    "siemens": VendorStyle(
        "SIEMENS",
        "Leber_3Phasen",
        "Ultravist 370",
        "Topogramm  0.6  T20f",
        "Abdomen nativ  5.0  Br40",
        "Arteriell  {t:.1f}  Br40",
        "Venös  5.0  Br40",
        "Spätphase  5.0  Br40",
        "Venös  3.0  Br40 COR",
    ),
    "ge": VendorStyle(
        "GE MEDICAL SYSTEMS",
        "5.2 LIVER 3 PHASE",
        "OMNIPAQUE 350",
        "Scout",
        "NON CONTRAST 5mm",
        "ARTERIAL {t:g}mm",
        "PORTAL VENOUS 5mm",
        "DELAYED 5mm",
        "COR PV 3mm",
        thin=1.25,
    ),
    "philips": VendorStyle(
        "Philips",
        "Liver 3-phase/Abdomen",
        "Iomeron 400",
        "Survey",
        "Pre-contrast 5mm",
        "Arterial phase {t:g}mm",
        "Portal venous phase 5mm",
        "Delayed phase 5mm",
        "Coronal MPR",
    ),
    "canon": VendorStyle(
        "CANON_MEC",
        "LIVER DYNAMIC",
        "IOPAMIRO 370",
        "Scanogram",
        "PLAIN 5.0 FC18",
        "ART {t:.1f} FC18",
        "PVP 5.0 FC18",
        "EQ 5.0 FC18",
        "MPR COR 3.0",
    ),
}

PHASE_DELAY_SECONDS = {"arterial": 35, "portal_venous": 70, "delayed": 180}
"""Seconds from contrast start to acquisition, per phase (typical liver protocol timings)."""
PHASE_TUMOUR_HU = {"non_contrast": 40.0, "arterial": 160.0, "portal_venous": 90.0, "delayed": 70.0}
"""An HCC-like lesion: arterial wash-in, portal venous and delayed wash-out."""
CORONAL = (1.0, 0.0, 0.0, 0.0, 0.0, -1.0)
DOSE_REPORT_SOP_CLASS = UID("1.2.840.10008.5.1.4.1.1.88.67")


@dataclass(frozen=True)
class StudySeries:
    """One written series of a synthetic study: what it is and its files."""

    role: str
    series_number: int
    series_instance_uid: str
    paths: list[Path]


def liver_study(
    vendor: str,
    directory: Path,
    *,
    size: int = 32,
    length_mm: float = 40.0,
    seed: int = 0,
    patient_id: str = "SYN0001",
    phases: Sequence[str] = ("non_contrast", "arterial", "portal_venous", "delayed"),
    dose_report: bool = True,
    **spec: Any,
) -> dict[str, StudySeries]:
    """A routed liver CT study in one vendor's style, keyed by role.

    Roles: localizer, non_contrast, arterial_thin, arterial, portal_venous,
    delayed (each phase present when listed in ``phases``), reformat (coronal
    DERIVED) and dose_report (an X-Ray Radiation Dose SR, not an image). Every
    series shares the frame of reference and in-plane grid; thick series are
    5 mm, the thin arterial one is the vendor's thin reconstruction.
    """
    style = VENDOR_STYLES[vendor]
    study_uid = generate_uid(entropy_srcs=["liver-study", vendor, str(seed), patient_id])
    frame = generate_uid(entropy_srcs=[study_uid, "frame"])
    start = dt.datetime(2026, 1, 15, 9, 30, 0)
    common = {
        "rows": size,
        "columns": size,
        "pixel_spacing": (350.0 / size, 350.0 / size),
        "study_instance_uid": study_uid,
        "patient_id": patient_id,
        "seed": seed,
        "study_datetime": start,
        **spec,
    }
    plan: list[tuple[str, int, str, dict[str, Any]]] = [("localizer", 1, style.localizer, {})]
    numbers = {"non_contrast": 2, "arterial_thin": 3, "arterial": 4, "portal_venous": 5, "delayed": 6}
    for phase in phases:
        roles = ["arterial_thin", "arterial"] if phase == "arterial" else [phase]
        for role in roles:
            thickness = style.thin if role == "arterial_thin" else 5.0
            name = getattr(style, phase).format(t=thickness)
            plan.append((role, numbers[role], name, {"phase": phase, "thickness": thickness}))
    if "portal_venous" in phases:
        plan.append(("reformat", 7, style.reformat, {"phase": "portal_venous"}))
    written: dict[str, StudySeries] = {}
    for role, number, description, extra in plan:
        series_uid = generate_uid(entropy_srcs=[study_uid, role])
        fields = {
            **common,
            "series_instance_uid": series_uid,
            "series_number": number,
            "series_description": description,
        }
        tags: dict[str, object] = {
            "Manufacturer": style.manufacturer,
            "ProtocolName": style.protocol,
            "FrameOfReferenceUID": frame,
        }
        phase = str(extra.get("phase") or "")
        if phase and phase != "non_contrast":
            acquired = start + dt.timedelta(seconds=PHASE_DELAY_SECONDS[phase])
            tags.update(
                ContrastBolusAgent=style.agent,
                ContrastBolusStartTime=start.strftime("%H%M%S"),
                AcquisitionTime=acquired.strftime("%H%M%S"),
                SeriesTime=acquired.strftime("%H%M%S"),
            )
        if role == "localizer":
            series_spec = SeriesSpec(
                **fields,
                slices=1,
                orientation=CORONAL,
                slice_spacing=1.0,
                image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"),
                extra=tags,
            )
            volume = None
        elif role == "reformat":
            series_spec = SeriesSpec(
                **fields,
                slices=8,
                orientation=CORONAL,
                slice_spacing=3.0,
                origin=(-175.0, -40.0, -60.0),
                image_type=("DERIVED", "SECONDARY", "REFORMATTED"),
                extra=tags,
            )
            volume = None
        else:
            thickness = float(extra["thickness"])
            slices = round(length_mm / thickness)
            series_spec = SeriesSpec(
                **fields,
                slices=slices,
                slice_spacing=thickness,
                origin=(-175.0, -175.0, -100.0),
                extra=tags,
            )
            volume = phantom_hu(slices, size, size, seed=seed, tumour_hu=PHASE_TUMOUR_HU[str(phase)])
        paths = write_series(series_spec, directory / role, volume)
        written[role] = StudySeries(role, number, series_uid, paths)
    if dose_report:
        written["dose_report"] = _dose_report(directory / "dose_report", study_uid, patient_id, style, start)
    return written


def _dose_report(
    directory: Path, study_uid: str, patient_id: str, style: VendorStyle, when: dt.datetime
) -> StudySeries:
    """A minimal X-Ray Radiation Dose SR header: what scanners send along; the gateway ignores it."""
    directory.mkdir(parents=True, exist_ok=True)
    series_uid = generate_uid(entropy_srcs=[study_uid, "dose"])
    sop_uid = UID(generate_uid(entropy_srcs=[series_uid, "0"]))
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = DOSE_REPORT_SOP_CLASS
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = DOSE_REPORT_SOP_CLASS
    ds.SOPInstanceUID = sop_uid
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.Modality = "SR"
    ds.SeriesNumber = 997
    ds.SeriesDescription = "Dose Report"
    ds.Manufacturer = style.manufacturer
    ds.PatientID = patient_id
    ds.PatientName = "Synthetic^Patient"
    ds.StudyDate = ds.ContentDate = when.strftime("%Y%m%d")
    ds.StudyTime = ds.ContentTime = when.strftime("%H%M%S")
    ds.ValueType = "CONTAINER"
    path = directory / f"{sop_uid}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return StudySeries("dose_report", 997, series_uid, [path])
