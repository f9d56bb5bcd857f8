"""A STOW-RS request body, streamed part by part to staging files and stored as each part ends.

The body is fed in the chunks the server reads from the socket; no part and no
body is ever held in memory. Each ``application/dicom`` part is written to its
own staging file (never more than the part limit: the rest of a larger part is
read and dropped) and, when its closing boundary arrives, handed to the one
ingest path C-STORE uses (:class:`listener.ingest.Ingestor`), so the instance
is fsynced, renamed and its rows committed before the response can list it.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from pydicom import dcmread
from pydicom.errors import InvalidDicomError
from python_multipart.multipart import MultipartParser

from listener.ingest import (
    CANNOT_UNDERSTAND,
    DATASET_DOES_NOT_MATCH_SOP_CLASS,
    OUT_OF_RESOURCES,
    PROCESSING_FAILURE,
    AssociationLedger,
    Ingestor,
)
from tace.logging import get_logger

log = get_logger("tace.listener.stow")

STOW_PROCESSING_FAILURE = 0x0110
"""PS3.18 Table 10.5.3-1 'Processing failure' (C-STORE's 0xC001 has no STOW-RS counterpart)."""
DICOM_MEDIA_TYPE = "application/dicom"


@dataclass(frozen=True)
class PartResult:
    sop_class_uid: str | None
    sop_instance_uid: str | None
    failure: int | None
    """None: stored (durable, rows committed); else the FailureReason."""


@dataclass
class _Part:
    headers: dict[str, str] = field(default_factory=dict)
    path: Path | None = None
    fd: int | None = None
    size: int = 0
    too_large: bool = False


class BodyStore:
    """Feeds one request body through the multipart parser; results accumulate in order.

    ``close`` must run whatever happens (client gone, server error): it deletes
    the staging file of a part still open.
    """

    def __init__(
        self,
        boundary: str,
        *,
        ingestor: Ingestor,
        staging: Path,
        max_part_bytes: int,
        study_uid: str | None,
        ledger: AssociationLedger,
    ) -> None:
        self._ingestor = ingestor
        self._staging = staging
        self._max_part_bytes = max_part_bytes
        self._study_uid = study_uid
        self._ledger = ledger
        self._part: _Part | None = None
        self._field = b""
        self._value = b""
        self.results: list[PartResult] = []
        self.finished = False
        self._parser = MultipartParser(
            boundary,
            {
                "on_part_begin": self._begin,
                "on_header_field": self._header_field,
                "on_header_value": self._header_value,
                "on_header_end": self._header_end,
                "on_part_data": self._data,
                "on_part_end": self._end,
                "on_end": self._finish,
            },
        )

    def feed(self, chunk: bytes) -> None:
        """Raises the parser's error (a malformed body: 400) after cleaning up the open part."""
        try:
            self._parser.write(chunk)
        except Exception:
            self.close()
            raise

    def close(self) -> None:
        part, self._part = self._part, None
        if part is not None:
            _discard(part)

    def _begin(self) -> None:
        self.close()
        self._part = _Part()

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._field += data[start:end]

    def _header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def _header_end(self) -> None:
        if self._part is not None:
            name = self._field.decode("latin-1").strip().lower()
            self._part.headers[name] = self._value.decode("latin-1").strip()
        self._field = self._value = b""

    def _data(self, data: bytes, start: int, end: int) -> None:
        part = self._part
        if part is None or part.too_large:
            return
        if part.fd is None:
            self._staging.mkdir(parents=True, exist_ok=True)
            part.path = self._staging / f"stow-{uuid.uuid4().hex}.part"
            part.fd = os.open(part.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        part.size += end - start
        if part.size > self._max_part_bytes:
            part.too_large = True
            _discard(part)
            return
        view = memoryview(data)[start:end]
        while view:
            view = view[os.write(part.fd, view) :]

    def _end(self) -> None:
        part, self._part = self._part, None
        if part is None:
            return
        if part.fd is not None:
            os.close(part.fd)
            part.fd = None
        self.results.append(self._store(part))

    def _finish(self) -> None:
        self.finished = True

    def _store(self, part: _Part) -> PartResult:
        media = part.headers.get("content-type", DICOM_MEDIA_TYPE).split(";")[0].strip().lower()
        if part.too_large:
            log.warning("stow.part_too_large", limit=self._max_part_bytes)
            return PartResult(None, None, OUT_OF_RESOURCES)
        if part.path is None or media != DICOM_MEDIA_TYPE:
            _discard(part)
            return PartResult(None, None, CANNOT_UNDERSTAND)
        try:
            head = dcmread(part.path, stop_before_pixels=True, specific_tags=_UID_TAGS)
            sop_class = str(head.SOPClassUID)
            sop_instance = str(head.SOPInstanceUID)
            study = str(head.get("StudyInstanceUID", ""))
        except (InvalidDicomError, AttributeError, OSError, ValueError, EOFError) as exc:
            log.warning("stow.unreadable_part", reason=exc.__class__.__name__)
            _discard(part)
            return PartResult(None, None, CANNOT_UNDERSTAND)
        if self._study_uid is not None and study != self._study_uid:
            log.warning("stow.study_mismatch", sop_instance=sop_instance)
            _discard(part)
            return PartResult(sop_class, sop_instance, DATASET_DOES_NOT_MATCH_SOP_CLASS)
        outcome = self._ingestor.store(
            part.path, sop_class_uid=sop_class, sop_instance_uid=sop_instance, ledger=self._ledger
        )
        if outcome.ok:
            return PartResult(sop_class, sop_instance, None)
        reason = STOW_PROCESSING_FAILURE if outcome.status == PROCESSING_FAILURE else outcome.status
        return PartResult(sop_class, sop_instance, reason)


_UID_TAGS = ["SOPClassUID", "SOPInstanceUID", "StudyInstanceUID"]


def _discard(part: _Part) -> None:
    if part.fd is not None:
        with contextlib.suppress(OSError):
            os.close(part.fd)
        part.fd = None
    if part.path is not None:
        with contextlib.suppress(OSError):
            part.path.unlink(missing_ok=True)
