from __future__ import annotations

import secrets
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pytest

from tace.storage import InvalidUID, Storage, atomic_write, check_uid, read_or_create_secret, sha256_of


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


def test_a_secret_is_created_once_complete_and_private_even_when_processes_race(tmp_path: Path) -> None:
    path = tmp_path / "data" / "secret.key"
    with ProcessPoolExecutor(max_workers=8) as pool:
        values = set(pool.map(_create_secret, [path] * 32))
    assert len(values) == 1 and len(values.pop()) == 64
    assert path.stat().st_mode & 0o777 == 0o600
    assert [p.name for p in path.parent.iterdir()] == ["secret.key"], "no staging file may be left behind"
    assert read_or_create_secret(path, lambda: "ignored") == path.read_text()


def _create_secret(path: Path) -> str:
    return read_or_create_secret(path, lambda: secrets.token_hex(32))
