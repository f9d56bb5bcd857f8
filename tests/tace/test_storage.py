from __future__ import annotations

from pathlib import Path

import pytest

from tace.storage import InvalidUID, Storage, atomic_write, check_uid, sha256_of


def test_atomic_write_puts_exact_bytes_and_leaves_no_staging(tmp_path: Path) -> None:
    storage = Storage(tmp_path)
    target = storage.instance_path("1.2.3", "1.2.3.4", "1.2.3.4.5")
    chunks = [b"DICM" * 1000, b"\x00" * 12345, b"end"]
    written = atomic_write(target, iter(chunks), storage.staging_dir)
    assert target.read_bytes() == b"".join(chunks)
    assert written.size == len(b"".join(chunks))
    assert written.sha256 == sha256_of(target)
    assert list(storage.staging_dir.iterdir()) == []
    assert target == tmp_path / "dicom" / "1.2.3" / "1.2.3.4" / "1.2.3.4.5.dcm"


def test_failure_midway_keeps_the_old_file_and_removes_staging(tmp_path: Path) -> None:
    storage = Storage(tmp_path)
    target = tmp_path / "out" / "file.dcm"
    atomic_write(target, b"original", storage.staging_dir)

    def broken():
        yield b"partial"
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space"):
        atomic_write(target, broken(), storage.staging_dir)
    assert target.read_bytes() == b"original"
    assert list(storage.staging_dir.iterdir()) == []


@pytest.mark.parametrize(
    "value", ["", "../../etc/passwd", "1.2.03", "1.2.3.", "1..2", "1.2.a", "1" * 65, "1.2/3"]
)
def test_invalid_uids_never_become_paths(tmp_path: Path, value: str) -> None:
    with pytest.raises(InvalidUID):
        Storage(tmp_path).instance_path("1.2.3", "1.2.3.4", value)


def test_uid_padding_is_tolerated() -> None:
    assert check_uid("1.2.840.10008.5.1.4.1.1.2\x00", "SOPClassUID") == "1.2.840.10008.5.1.4.1.1.2"
