"""De-identified copies of a cohort's CT series, for data that leaves the gateway.

Each patient gets a pseudonym and one random date offset for the whole export,
so intervals within a patient (study to assessment) stay true while no real date
remains. Person names, patient IDs, the birth date, accession number and
institution go; every date and date-time is shifted; every UID is replaced by one
derived from it and a secret salt of this export (consistently, so series,
studies and frames of reference still match up); private elements are dropped.
A copy whose header still holds the patient's ID, name or a real date is
refused, not written.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import re
import secrets
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.multival import MultiValue

STANDARD_UID_ROOT = "1.2.840.10008."
"""SOP classes, transfer syntaxes and coding schemes: the same in every hospital, kept."""
PIXEL_DATA = 0x7FE00010
MIN_SHIFT_DAYS, MAX_SHIFT_DAYS = 30, 3 * 365
"""Dates move back by at least a month, so no shifted date equals its real one."""
EMPTIED = (
    "AccessionNumber",
    "StudyID",
    "PatientBirthDate",
    "PatientBirthTime",
    "InstitutionName",
    "InstitutionAddress",
    "InstitutionalDepartmentName",
    "StationName",
    "DeviceSerialNumber",
)
REMOVED = (
    "OtherPatientIDs",
    "OtherPatientIDsSequence",
    "OtherPatientNames",
    "IssuerOfPatientID",
    "IssuerOfPatientIDQualifiersSequence",
    "PatientAddress",
    "PatientTelephoneNumbers",
    "PatientMotherBirthName",
    "MedicalRecordLocator",
    "PatientComments",
    "AdditionalPatientHistory",
    "ReferringPhysicianAddress",
    "ReferringPhysicianTelephoneNumbers",
    "RequestAttributesSequence",
    "ReferencedPatientSequence",
    "ReferencedStudySequence",
    "ReferencedPerformedProcedureStepSequence",
)


class DeidentifyError(ValueError):
    """A copy still carries an identifier; the message names the file, not the patient."""


@dataclass(frozen=True)
class Pseudonym:
    name: str
    shift: dt.timedelta

    def date(self, value: dt.date) -> dt.date:
        return value - self.shift


@dataclass
class Deidentifier:
    """Pseudonyms, date offsets and UID salt for one export; never stored, so never reversible."""

    salt: str = field(default_factory=lambda: secrets.token_hex(16))
    _patients: dict[str, Pseudonym] = field(default_factory=dict)

    def patient(self, patient_hash: str) -> Pseudonym:
        if patient_hash not in self._patients:
            shift = dt.timedelta(days=MIN_SHIFT_DAYS + secrets.randbelow(MAX_SHIFT_DAYS - MIN_SHIFT_DAYS + 1))
            self._patients[patient_hash] = Pseudonym(f"ANON{len(self._patients) + 1:04d}", shift)
        return self._patients[patient_hash]

    def uid(self, value: str) -> str:
        """The same new UID for the same old one within this export (a 2.25 UUID-derived UID)."""
        if not value or value.startswith(STANDARD_UID_ROOT):
            return value
        digest = hashlib.sha256(f"{self.salt}|{value}".encode()).digest()[:16]
        return f"2.25.{int.from_bytes(digest, 'big')}"

    def copy_series(self, files: list[Path], out: Path, patient_hash: str) -> Path:
        """De-identified copies of one series in ``out``; none written if any identifier would stay."""
        pseudonym = self.patient(patient_hash)
        out.mkdir(parents=True, exist_ok=True)
        try:
            for index, path in enumerate(sorted(files), start=1):
                dataset = pydicom.dcmread(path)
                identifiers = _identifiers(dataset)
                self._clean(dataset, pseudonym)
                if dataset.file_meta is not None:
                    self._clean_meta(dataset.file_meta)
                header = _header_bytes(dataset)
                left = sorted({label for label, pattern in identifiers if pattern.search(header)})
                if left:
                    raise DeidentifyError(
                        f"{path.name}: a de-identified copy would still hold the {', '.join(left)}"
                    )
                dataset.save_as(out / f"{index:05d}.dcm", enforce_file_format=True)
        except DeidentifyError:
            shutil.rmtree(out)
            raise
        return out

    def _clean(self, dataset: Dataset, pseudonym: Pseudonym) -> None:
        dataset.remove_private_tags()
        for keyword in REMOVED:
            if keyword in dataset:
                delattr(dataset, keyword)
        for keyword in EMPTIED:
            if keyword in dataset:
                setattr(dataset, keyword, "")
        dataset.walk(lambda ds, element: self._element(element, pseudonym))
        dataset.PatientName = pseudonym.name
        dataset.PatientID = pseudonym.name
        dataset.PatientIdentityRemoved = "YES"
        dataset.LongitudinalTemporalInformationModified = "MODIFIED"
        dataset.DeidentificationMethod = "TACE cohort export: IDs, names removed; dates shifted; new UIDs"

    def _element(self, element: DataElement, pseudonym: Pseudonym) -> None:
        if element.VR == "PN":
            element.value = ""
        elif element.VR == "UI":
            element.value = _each(element.value, self.uid)
        elif element.VR == "DA":
            element.value = _each(element.value, lambda v: _shift_date(v, pseudonym))
        elif element.VR == "DT":
            element.value = _each(element.value, lambda v: _shift_datetime(v, pseudonym))

    def _clean_meta(self, meta: FileMetaDataset) -> None:
        for keyword in ("MediaStorageSOPInstanceUID",):
            if keyword in meta:
                setattr(meta, keyword, self.uid(str(getattr(meta, keyword))))


def _each(value: object, change: Callable[[str], str]) -> object:
    """``change`` applied to a single value or to each of a multi-valued element."""
    if isinstance(value, list | MultiValue):
        return [change(str(v)) for v in value]
    return change(str(value)) if value not in (None, "") else value


def _header_bytes(dataset: Dataset) -> bytes:
    """Everything but the pixels, as written: where an identifier could be (pixels may hold any bytes)."""
    pixels = dataset.pop(PIXEL_DATA, None)
    buffer = io.BytesIO()
    try:
        dataset.save_as(buffer, enforce_file_format=True)
    finally:
        if pixels is not None:
            dataset[PIXEL_DATA] = pixels
    return buffer.getvalue()


def _shift_date(value: str, pseudonym: Pseudonym) -> str:
    """A DA value moved by the patient's offset; anything not a plain date is dropped."""
    try:
        real = dt.datetime.strptime(value.strip(), "%Y%m%d").date()
    except ValueError:
        return ""
    return pseudonym.date(real).strftime("%Y%m%d")


def _shift_datetime(value: str, pseudonym: Pseudonym) -> str:
    """A DT value with its date part moved (time and offset kept); unreadable ones are dropped."""
    shifted = _shift_date(value[:8], pseudonym)
    return shifted + value[8:] if shifted else ""


def _identifiers(dataset: Dataset) -> list[tuple[str, re.Pattern[bytes]]]:
    """What must not survive: the patient's ID, name parts and every real date, as byte patterns.

    Name parts are matched as words (a short surname such as "Li" inside "Liver"
    is not the patient), case-insensitively, down to two letters.
    """
    found: list[tuple[str, re.Pattern[bytes]]] = []
    if str(dataset.get("PatientID", "")).strip():
        found.append(("patient ID", re.compile(re.escape(str(dataset.PatientID).strip().encode()))))
    for part in re.split(r"[\^\s=,]+", str(dataset.get("PatientName", ""))):
        if len(part) >= 2:
            word = re.escape(part.encode())
            found.append(("patient name", re.compile(rb"(?<![A-Za-z])" + word + rb"(?![A-Za-z])", re.I)))

    def collect(ds: Dataset, element: DataElement) -> None:
        if element.VR in ("DA", "DT") and element.value:
            values = element.value if isinstance(element.value, list | MultiValue) else [element.value]
            for value in values:
                if len(str(value)) >= 8:
                    found.append(("real date", re.compile(re.escape(str(value)[:8].encode()))))

    dataset.walk(collect)
    return found
