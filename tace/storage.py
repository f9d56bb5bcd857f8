"""The on-disk layout and the one way we write files that must survive a crash.

Everything lives under the data dir so that one shared volume serves all the
processes of a scale-out deployment. A file becomes visible under its final name
only after its bytes reached the disk: written to a staging file on the same
filesystem, fsynced, renamed, and the directory fsynced so the rename is durable.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

_UID = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")


class InvalidUID(ValueError):
    """A UID that is not a DICOM UID; never used to build a path."""


def check_uid(value: object, what: str) -> str:
    """Return ``value`` as a UID or raise :class:`InvalidUID` naming ``what``."""
    text = str(value).strip().rstrip("\x00") if value is not None else ""
    if not text:
        raise InvalidUID(f"{what} is missing")
    if len(text) > 64 or not _UID.match(text):
        raise InvalidUID(f"{what} {text[:80]!r} is not a valid DICOM UID")
    return text


@dataclass(frozen=True)
class WrittenFile:
    path: Path
    size: int
    sha256: str


def fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(destination: Path, chunks: bytes | Iterable[bytes], staging_dir: Path) -> WrittenFile:
    """Write ``chunks`` to ``destination`` so that it exists complete or not at all.

    ``staging_dir`` must be on the destination's filesystem (rename is atomic only
    within one). Chunks keep memory bounded for large instances. On any error the
    staging file is removed and the previous content of ``destination`` is untouched.
    """
    if isinstance(chunks, (bytes, bytearray, memoryview)):
        chunks = (bytes(chunks),)
    staging_dir.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    size = 0
    fd, staging_name = tempfile.mkstemp(dir=staging_dir, prefix=".incoming-", suffix=".part")
    staging = Path(staging_name)
    try:
        with os.fdopen(fd, "wb") as handle:
            for chunk in chunks:
                handle.write(chunk)
                digest.update(chunk)
                size += len(chunk)
            handle.flush()
            os.fsync(handle.fileno())
        destination.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staging, destination)
        fsync_directory(destination.parent)
    except BaseException:
        staging.unlink(missing_ok=True)
        raise
    return WrittenFile(path=destination, size=size, sha256=digest.hexdigest())


def read_or_create_secret(path: Path, make: Callable[[], str]) -> str:
    """Read a per-installation secret, creating it (0600) if no process has yet.

    The complete file is hard-linked into place, so a process that starts at the
    same moment never reads a half-written secret, and the first writer wins.
    """
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, staging = tempfile.mkstemp(dir=path.parent, prefix=".secret-")
        try:
            with os.fdopen(fd, "w") as handle:
                handle.write(make())
                handle.flush()
                os.fsync(handle.fileno())
            try:
                os.link(staging, path)
            except FileExistsError:
                pass
            else:
                fsync_directory(path.parent)
        finally:
            os.unlink(staging)
    return path.read_text().strip()


def sha256_of(path: Path, block: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(block):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class Storage:
    """Paths under the data dir; UIDs are checked before they become path components."""

    root: Path

    @property
    def dicom_dir(self) -> Path:
        return self.root / "dicom"

    @property
    def staging_dir(self) -> Path:
        return self.root / "staging"

    @property
    def sr_dir(self) -> Path:
        return self.root / "sr"

    @property
    def broker_dir(self) -> Path:
        return self.root / "broker"

    @property
    def models_dir(self) -> Path:
        return self.root / "models"

    def ensure(self) -> None:
        for directory in (
            self.root,
            self.dicom_dir,
            self.staging_dir,
            self.sr_dir,
            self.models_dir,
        ):
            directory.mkdir(parents=True, exist_ok=True)

    def instance_path(self, study_uid: str, series_uid: str, sop_instance_uid: str) -> Path:
        return (
            self.dicom_dir
            / check_uid(study_uid, "StudyInstanceUID")
            / check_uid(series_uid, "SeriesInstanceUID")
            / f"{check_uid(sop_instance_uid, 'SOPInstanceUID')}.dcm"
        )

    def series_dir(self, study_uid: str, series_uid: str) -> Path:
        return (
            self.dicom_dir
            / check_uid(study_uid, "StudyInstanceUID")
            / check_uid(series_uid, "SeriesInstanceUID")
        )

    def sr_path(self, study_uid: str, sop_instance_uid: str) -> Path:
        return (
            self.sr_dir
            / check_uid(study_uid, "StudyInstanceUID")
            / f"{check_uid(sop_instance_uid, 'SOPInstanceUID')}.dcm"
        )

    def relative(self, path: Path) -> str:
        return str(path.relative_to(self.root))

    def resolve(self, relative: str) -> Path:
        return self.root / relative

    def free_bytes(self) -> int:
        self.root.mkdir(parents=True, exist_ok=True)
        return shutil.disk_usage(self.root).free
