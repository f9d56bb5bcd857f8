"""One received instance -> durable file + committed rows -> a DIMSE status.

The order is the durability contract: the received bytes (never decoded and
re-encoded) are fsynced, renamed into ``dicom/<study>/<series>/<sop>.dcm`` and
the directory fsynced; then the Study, Series, Instance rows commit; only then
does the sender hear 0x0000. A disk or database failure is 0xA700 (the sender
retries later), bad data is 0xC000 with an ErrorComment, and nothing raises out
of :meth:`Ingestor.store`.

The order is kept, but each wait on the disk is overlapped with CPU work that
does not depend on it: the header is parsed and checked while the file's data
is flushed, and the rows are written (not committed) while the directory is
flushed. Nothing commits before both flushes have returned.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import enum
import os
import threading
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import sqlalchemy as sa
from pydicom.dataset import Dataset
from pydicom.uid import CTImageStorage, EnhancedCTImageStorage, LegacyConvertedEnhancedCTImageStorage
from sqlalchemy.engine import Connection, Engine

from listener.dataset_check import TooLarge, UnreadableDataset, image_plane, read_header
from listener.phases import SeriesTags
from tace import phi
from tace.db import Instance, Series, SeriesAssociation, SeriesState, Study, insert_ignore, table, utcnow
from tace.dicom_header import study_datetime, text
from tace.logging import get_logger
from tace.metrics import metric
from tace.storage import InvalidUID, Storage, check_uid, fsync_directory, sha256_of

log = get_logger("tace.listener.ingest")

CT_SOP_CLASSES = frozenset({CTImageStorage, EnhancedCTImageStorage, LegacyConvertedEnhancedCTImageStorage})

SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700
DATASET_DOES_NOT_MATCH_SOP_CLASS = 0xA900
CANNOT_UNDERSTAND = 0xC000
PROCESSING_FAILURE = 0xC001
DEFAULT_MAX_INSTANCE_BYTES = 2 * 1024**3
FLUSH_THREADS = 16
IN_ANOTHER_SERIES = "SOP Instance UID already stored in another series"


class InstanceChange(enum.StrEnum):
    """What storing one instance did to the record."""

    added = "added"
    replaced = "replaced"
    """Same SOP Instance UID, different bytes: a resend with new content."""
    unchanged = "unchanged"
    """Same SOP Instance UID, same bytes: a repeated send, nothing to do."""


@dataclass(frozen=True)
class Outcome:
    status: int
    comment: str | None = None
    stored: bool = False

    @property
    def ok(self) -> bool:
        return self.status == SUCCESS


@dataclass
class AssociationLedger:
    """What one association has done so far; written to its row when it ends."""

    association_id: int | None
    calling_ae: str
    stored: int = 0
    failed: int = 0
    bytes_received: int = 0
    discarded: Counter[str] = field(default_factory=Counter)
    series_ids: set[int] = field(default_factory=set)
    study_ids: dict[str, int] = field(default_factory=dict)
    series_by_uid: dict[str, int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    connection: Connection | None = None
    """One database connection per association: no pool round trip per instance."""

    def close(self) -> None:
        if self.connection is not None:
            with contextlib.suppress(sa.exc.SQLAlchemyError):
                self.connection.close()
            self.connection = None


def _int(dataset: Dataset, keyword: str) -> int | None:
    try:
        value = dataset.get(keyword)
        return int(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


class InAnotherSeries(Exception):
    """The SOP Instance UID is already stored in a different series (the first one is kept)."""


class Ingestor:
    """Turns received files into stored instances; one instance per call, thread-safe.

    A SOP Instance UID names one instance everywhere: the same UID arriving in a
    different series than the one it is stored in is refused (0xC000) and the
    stored instance, its series and that series' job are left untouched. The
    same UID in the same series with other bytes replaces the stored instance.
    """

    def __init__(
        self,
        engine: Engine,
        storage: Storage,
        *,
        min_free_bytes: int,
        default_issuer: str | None = None,
        max_instance_bytes: int = DEFAULT_MAX_INSTANCE_BYTES,
    ) -> None:
        self._engine = engine
        self._default_issuer = default_issuer
        self._storage = storage
        self._min_free_bytes = min_free_bytes
        self._max_instance_bytes = max_instance_bytes
        self._flusher = ThreadPoolExecutor(max_workers=FLUSH_THREADS, thread_name_prefix="flush")
        self._tables = {
            "study": table(Study),
            "series": table(Series),
            "instance": table(Instance),
            "link": table(SeriesAssociation),
        }
        series = table(Series)
        self._touch_series = (
            series.update()
            .where(series.c.id == sa.bindparam("series_key"))
            .values(
                instance_count=series.c.instance_count + sa.bindparam("added"),
                total_bytes=series.c.total_bytes + sa.bindparam("size"),
                last_received_at=sa.bindparam("now", type_=series.c.last_received_at.type),
                first_received_at=sa.func.coalesce(
                    series.c.first_received_at, sa.bindparam("first", type_=series.c.first_received_at.type)
                ),
                state=SeriesState.receiving,
            )
        )

    def store(
        self, received: Path, *, sop_class_uid: str, sop_instance_uid: str, ledger: AssociationLedger
    ) -> Outcome:
        """Never raises: every failure becomes a status, and the staging file is always cleaned up."""
        try:
            outcome = self._store(received, sop_class_uid, sop_instance_uid, ledger)
        except Exception as exc:
            log.exception("store.unexpected_error", sop_class=sop_class_uid)
            outcome = Outcome(PROCESSING_FAILURE, f"gateway error: {exc.__class__.__name__}")
        finally:
            with contextlib.suppress(OSError):
                received.unlink(missing_ok=True)
        with ledger.lock:
            if not outcome.ok:
                ledger.failed += 1
        metric("cstore").labels(status=f"0x{outcome.status:04X}").inc()
        return outcome

    def _store(
        self, received: Path, sop_class_uid: str, sop_instance_uid: str, ledger: AssociationLedger
    ) -> Outcome:
        if self._storage.free_bytes() < self._min_free_bytes:
            log.error("store.low_disk", free_bytes=self._storage.free_bytes(), watermark=self._min_free_bytes)
            return Outcome(OUT_OF_RESOURCES, "storage below free-space watermark")
        is_ct = sop_class_uid in CT_SOP_CLASSES
        flushed = self._flusher.submit(_flush_and_hash, received) if is_ct else None
        try:
            outcome = self._check_and_keep(received, sop_class_uid, sop_instance_uid, is_ct, flushed, ledger)
        finally:
            if flushed is not None and not flushed.cancel():
                flushed.exception()
        return outcome

    def _check_and_keep(
        self,
        received: Path,
        sop_class_uid: str,
        sop_instance_uid: str,
        is_ct: bool,
        flushed: Future[str] | None,
        ledger: AssociationLedger,
    ) -> Outcome:
        try:
            header = read_header(received, max_instance_bytes=self._max_instance_bytes, image=is_ct)
        except UnreadableDataset as exc:
            log.warning("store.unreadable", reason=str(exc), sop_class=sop_class_uid)
            return Outcome(CANNOT_UNDERSTAND, str(exc)[:64])
        except TooLarge as exc:
            log.warning("store.too_large", reason=str(exc), sop_class=sop_class_uid)
            return Outcome(OUT_OF_RESOURCES, str(exc)[:64])
        ds = header.dataset
        try:
            sop_uid = check_uid(ds.get("SOPInstanceUID"), "SOPInstanceUID")
            if sop_uid != sop_instance_uid:
                return Outcome(CANNOT_UNDERSTAND, "SOPInstanceUID differs from the C-STORE request")
            if str(ds.get("SOPClassUID", "")) != sop_class_uid:
                return Outcome(
                    DATASET_DOES_NOT_MATCH_SOP_CLASS, "SOPClassUID differs from the C-STORE request"
                )
            if not is_ct:
                with ledger.lock:
                    ledger.discarded[sop_class_uid] += 1
                metric("instances").labels(kind="other").inc()
                return Outcome(SUCCESS)
            if not header.has_pixels:
                return Outcome(CANNOT_UNDERSTAND, "CT image without pixel data")
            study_uid = check_uid(ds.get("StudyInstanceUID"), "StudyInstanceUID")
            series_uid = check_uid(ds.get("SeriesInstanceUID"), "SeriesInstanceUID")
        except InvalidUID as exc:
            return Outcome(CANNOT_UNDERSTAND, str(exc)[:64])
        phi.protect_dataset(ds)
        size = received.stat().st_size
        assert flushed is not None, "CT instances are flushed from the start"
        try:
            digest = flushed.result()
            target = self._storage.instance_path(study_uid, series_uid, sop_uid)
            created, new_dirs = self._place(received, target)
        except OSError as exc:
            log.error("store.disk_error", error=str(exc), errno=exc.errno)
            return Outcome(OUT_OF_RESOURCES, f"storage error: {os.strerror(exc.errno or 5)}"[:64])
        entry_flushed = self._flusher.submit(fsync_directory, target.parent)
        try:
            change = self._record(
                ds,
                header.transfer_syntax,
                study_uid,
                series_uid,
                sop_uid,
                target,
                size,
                digest,
                ledger,
                before_commit=entry_flushed.result,
            )
        except InAnotherSeries:
            log.warning("store.uid_in_another_series", series=series_uid, sop_instance=sop_uid)
            self._unplace(target, created, new_dirs)
            return Outcome(CANNOT_UNDERSTAND, IN_ANOTHER_SERIES)
        except OSError as exc:
            log.error("store.disk_error", error=str(exc), errno=exc.errno)
            self._unplace(target, created, new_dirs)
            return Outcome(OUT_OF_RESOURCES, f"storage error: {os.strerror(exc.errno or 5)}"[:64])
        except sa.exc.SQLAlchemyError as exc:
            ledger.close()
            log.error("store.database_error", error=str(getattr(exc, "orig", exc) or exc).splitlines()[0])
            entry_flushed.exception()
            self._unplace(target, created, new_dirs)
            return Outcome(OUT_OF_RESOURCES, "database unavailable")
        with ledger.lock:
            ledger.stored += 1
            ledger.bytes_received += size
        metric("instances").labels(kind="ct").inc()
        metric("bytes").inc(size)
        if change is InstanceChange.replaced:
            log.warning("store.instance_replaced", series=series_uid, sop_instance=sop_uid)
        return Outcome(SUCCESS, stored=change is not InstanceChange.unchanged)

    def _place(self, staging: Path, target: Path) -> tuple[bool, list[Path]]:
        """Atomic rename into place; new directories are fsynced into their parents.

        Returns whether the file is new and which directories were made for it. The
        caller makes the rename itself durable (fsync of the target's directory)
        before anything refers to the file.
        """
        created = not target.exists()
        parent = target.parent
        missing: list[Path] = []
        if not parent.is_dir():
            missing = [p for p in (parent.parent, parent) if not p.is_dir()]
            parent.mkdir(parents=True, exist_ok=True)
            for directory in missing:
                fsync_directory(directory.parent)
        os.replace(staging, target)
        return created, missing

    def _unplace(self, target: Path, created: bool, new_dirs: list[Path]) -> None:
        """Undo :meth:`_place` for an instance whose rows did not commit (never a replaced file)."""
        if not created:
            return
        with contextlib.suppress(OSError):
            target.unlink()
        for directory in reversed(new_dirs):
            with contextlib.suppress(OSError):
                directory.rmdir()

    def _record(
        self,
        ds: Dataset,
        transfer_syntax: str,
        study_uid: str,
        series_uid: str,
        sop_uid: str,
        target: Path,
        size: int,
        digest: str,
        ledger: AssociationLedger,
        *,
        before_commit: Callable[[], object],
    ) -> InstanceChange:
        """Commit the rows of one instance.

        ``before_commit`` runs inside the transaction after the statements: what
        the rows depend on (the file's name on disk) must be durable first, and if
        it raises, nothing commits.
        """
        now = utcnow()
        instance, link = self._tables["instance"], self._tables["link"]
        if ledger.connection is None:
            ledger.connection = self._engine.connect()
        connection = ledger.connection
        with connection.begin():
            study_id = ledger.study_ids.get(study_uid)
            if study_id is None:
                study_id = self._study_id(connection, ds, study_uid, now)
            series_id = ledger.series_by_uid.get(series_uid)
            if series_id is None:
                series_id = self._series_id(connection, ds, series_uid, study_id, now)
            values = {
                "sop_class_uid": str(ds.SOPClassUID),
                "series_id": series_id,
                "instance_number": _int(ds, "InstanceNumber"),
                "image_type": "\\".join(str(v) for v in ds.get("ImageType", []))[:200] or None,
                "plane": image_plane(ds),
                "frames": _int(ds, "NumberOfFrames") or 1,
                "transfer_syntax_uid": str(transfer_syntax),
                "path": self._storage.relative(target),
                "size": size,
                "sha256": digest,
                "calling_ae": ledger.calling_ae[:16],
                "received_at": now,
            }
            inserted = insert_ignore(connection, instance, {"sop_instance_uid": sop_uid, **values})
            change = InstanceChange.added
            if not inserted:
                previous = connection.execute(
                    sa.select(instance.c.sha256, instance.c.series_id).where(
                        instance.c.sop_instance_uid == sop_uid
                    )
                ).one()
                if previous.series_id != series_id:
                    raise InAnotherSeries(sop_uid)
                if previous.sha256 == digest:
                    change = InstanceChange.unchanged
                else:
                    connection.execute(
                        instance.update().where(instance.c.sop_instance_uid == sop_uid).values(**values)
                    )
                    change = InstanceChange.replaced
            if change is not InstanceChange.unchanged:
                connection.execute(
                    self._touch_series,
                    {
                        "series_key": series_id,
                        "added": int(change is InstanceChange.added),
                        "size": size,
                        "now": now,
                        "first": now,
                    },
                )
            if ledger.association_id is not None and series_id not in ledger.series_ids:
                insert_ignore(
                    connection,
                    link,
                    {"series_id": series_id, "association_id": ledger.association_id, "first_at": now},
                )
            before_commit()
        ledger.study_ids[study_uid] = study_id
        ledger.series_by_uid[series_uid] = series_id
        ledger.series_ids.add(series_id)
        return change

    def _study_id(self, connection: Connection, ds: Dataset, study_uid: str, now: dt.datetime) -> int:
        study = self._tables["study"]
        patient_id, issuer = text(ds, "PatientID"), text(ds, "IssuerOfPatientID")
        insert_ignore(
            connection,
            study,
            {
                "study_instance_uid": study_uid,
                "patient_id": patient_id,
                "issuer_of_patient_id": issuer,
                "patient_hash": phi.patient_hash(patient_id, issuer or self._default_issuer),
                "patient_name": text(ds, "PatientName", 324),
                "patient_birth_date": text(ds, "PatientBirthDate", 8),
                "patient_sex": text(ds, "PatientSex", 16),
                "study_datetime": study_datetime(ds),
                "accession_number": text(ds, "AccessionNumber", 16),
                "study_description": text(ds, "StudyDescription"),
                "created_at": now,
            },
        )
        return int(
            connection.execute(
                sa.select(study.c.id).where(study.c.study_instance_uid == study_uid)
            ).scalar_one()
        )

    def _series_id(
        self, connection: Connection, ds: Dataset, series_uid: str, study_id: int, now: dt.datetime
    ) -> int:
        series = self._tables["series"]
        insert_ignore(
            connection,
            series,
            {
                "series_instance_uid": series_uid,
                "study_id": study_id,
                "modality": text(ds, "Modality", 16),
                "series_number": _int(ds, "SeriesNumber"),
                "series_description": text(ds, "SeriesDescription"),
                "state": SeriesState.receiving,
                "instance_count": 0,
                "total_bytes": 0,
                "generation": 0,
                "created_at": now,
                "tags": SeriesTags.from_dataset(ds).to_dict(),
            },
        )
        return int(
            connection.execute(
                sa.select(series.c.id).where(series.c.series_instance_uid == series_uid)
            ).scalar_one()
        )


def _flush_and_hash(path: Path) -> str:
    """Flush the staging file's data to disk and return its sha256 (read from the page cache).

    fdatasync is enough here: the file's name becomes durable through the rename
    and the directory fsync that follow.
    """
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fdatasync(fd)
    finally:
        os.close(fd)
    return sha256_of(path)
