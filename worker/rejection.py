"""Withdrawing a superseded SR: an IHE IOCM rejection note (Key Object Selection Document).

When a study changed after its SR was sent, the new SR names the old one as its
predecessor, and the old one is withdrawn from every destination that holds it
by a KOS whose title is (113001, DCM, "Rejected for Quality Reasons") and whose
content references the old SR. Quality, not (113037, DCM, "Rejected for Patient
Safety Reasons"): the old result was made from input that has since been
completed or corrected (a late phase, a resent series) - the object is of the
right patient and study but no longer the best answer, which is what IOCM's
quality rejection means; archives such as dcm4chee hide it from viewers and
keep it for audit. Patient safety rejection is for objects that must never be
seen (wrong patient, wrong side) and archives may purge them, which would also
remove the audit trail of what the radiologist was shown.

The note's UIDs derive from the rejected SR's UID, so a redelivered send stage
builds the same note and a PACS never holds two.
"""

from __future__ import annotations

import io

from highdicom.ko import KeyObjectSelection, KeyObjectSelectionDocument
from highdicom.sr import CodedConcept
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from worker.sr import MANUFACTURER

REJECTED_FOR_QUALITY = CodedConcept("113001", "DCM", "Rejected for Quality Reasons")
REJECTION_SERIES_NUMBER = 9902


def rejection_uid(rejected_sop_uid: str) -> str:
    return generate_uid(entropy_srcs=["tace-rejection", rejected_sop_uid])


def build_rejection(rejected: Dataset) -> bytes:
    """The KOS (as a DICOM file) that rejects ``rejected`` (the old SR, header is enough)."""
    content = KeyObjectSelection(
        document_title=REJECTED_FOR_QUALITY,
        referenced_objects=[rejected],
        description="AI result superseded by a newer SR for this study",
    )
    document = KeyObjectSelectionDocument(
        evidence=[rejected],
        content=content,
        series_instance_uid=generate_uid(entropy_srcs=["tace-rejection-series", rejected.StudyInstanceUID]),
        series_number=REJECTION_SERIES_NUMBER,
        sop_instance_uid=rejection_uid(rejected.SOPInstanceUID),
        instance_number=1,
        manufacturer=MANUFACTURER,
    )
    document.SeriesDescription = "AI result rejected (superseded)"
    buffer = io.BytesIO()
    document.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()
