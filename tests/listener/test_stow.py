"""STOW-RS into `tace stow`, a real process: per-instance results, durability, access control."""

from __future__ import annotations

import hashlib
import socket
import ssl
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest
import sqlalchemy as sa
from dicomweb_client.api import DICOMwebClient

from tace.db import Instance, table
from tests.support.certificates import make_certificates
from tests.support.processes import tace_command, tace_env
from tests.support.stow import TOKEN, StowProcess, multipart

AUTH = {"Authorization": f"Bearer {TOKEN}"}
REFERENCED, FAILED, REASON = "00081199", "00081198", "00081197"


@pytest.fixture
def start_stow(data_dir: Path, tmp_path: Path) -> Iterator[Callable[..., StowProcess]]:
    started: list[StowProcess] = []

    def start(**settings: object) -> StowProcess:
        settings.setdefault("stow_token", TOKEN)
        settings.setdefault("min_free_bytes", 0)
        settings.setdefault("log_format", "json")
        given = {key: value for key, value in settings.items() if value is not None}
        stow = StowProcess(data_dir=data_dir, log=tmp_path / f"stow-{len(started)}.log", settings=given)
        started.append(stow)
        return stow.start()

    yield start
    for stow in started:
        stow.close()


def _uids(answer: dict[str, Any], sequence: str) -> list[tuple[str | None, int | None]]:
    items = answer.get(sequence, {}).get("Value", [])
    return [
        (item.get("00081155", {}).get("Value", [None])[0], item.get(REASON, {}).get("Value", [None])[0])
        for item in items
    ]


def _sop(path: Path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)


def _rows(stow: StowProcess) -> dict[str, Any]:
    instance = table(Instance)
    with stow.engine.connect() as connection:
        return {row.sop_instance_uid: row for row in connection.execute(sa.select(instance))}


def test_parts_are_stored_byte_for_byte_and_garbage_fails_alone(
    start_stow: Callable[..., StowProcess], ct_series: Callable[..., list[Path]], data_dir: Path
) -> None:
    stow = start_stow()
    files = ct_series(slices=3, rows=64, columns=64)
    body, content_type = multipart(
        [("application/dicom", files[0].read_bytes()), ("application/dicom", b"not a dicom file" * 20)]
        + [("application/dicom", f.read_bytes()) for f in files[1:]]
    )
    response = httpx.post(
        f"{stow.url}/studies", content=body, headers={**AUTH, "Content-Type": content_type}, timeout=30
    )
    assert response.status_code == 202
    assert response.headers["content-type"].startswith("application/dicom+json")
    answer = response.json()
    assert sorted(uid for uid, _ in _uids(answer, REFERENCED)) == sorted(_sop(f) for f in files)
    assert _uids(answer, FAILED) == [(None, 0xC000)]
    rows = _rows(stow)
    for sent in files:
        row = rows[_sop(sent)]
        assert (data_dir / row.path).read_bytes() == sent.read_bytes()
        assert row.sha256 == hashlib.sha256(sent.read_bytes()).hexdigest()
        assert row.calling_ae == "STOW-RS"
    assert not any((data_dir / "staging").rglob("*.part"))


def test_dicomweb_client_stores_a_series_into_its_study(
    start_stow: Callable[..., StowProcess], ct_series: Callable[..., list[Path]]
) -> None:
    stow = start_stow()
    files = ct_series(slices=4, rows=64, columns=64)
    datasets = [pydicom.dcmread(f) for f in files]
    client = DICOMwebClient(stow.url, headers=AUTH)
    answer = client.store_instances(datasets, study_instance_uid=str(datasets[0].StudyInstanceUID))
    stored = [item.ReferencedSOPInstanceUID for item in answer.ReferencedSOPSequence]
    assert sorted(stored) == sorted(str(ds.SOPInstanceUID) for ds in datasets)
    assert "FailedSOPSequence" not in answer
    assert set(_rows(stow)) == set(stored)


def test_an_instance_of_another_study_than_the_target_fails_and_is_not_kept(
    start_stow: Callable[..., StowProcess], ct_series: Callable[..., list[Path]]
) -> None:
    stow = start_stow()
    files = ct_series(slices=2, rows=64, columns=64)
    body, content_type = multipart([("application/dicom", f.read_bytes()) for f in files])
    response = httpx.post(
        f"{stow.url}/studies/1.2.3.999", content=body, headers={**AUTH, "Content-Type": content_type}
    )
    assert response.status_code == 409
    assert sorted(_uids(response.json(), FAILED)) == sorted((_sop(f), 0xA900) for f in files)
    assert _rows(stow) == {}


def test_a_part_over_the_limit_is_refused_and_the_others_stored(
    start_stow: Callable[..., StowProcess], ct_series: Callable[..., list[Path]]
) -> None:
    stow = start_stow(stow_max_part_bytes=64 * 1024)
    small = ct_series(slices=1, rows=64, columns=64)
    large = ct_series(slices=1, rows=256, columns=256)
    body, content_type = multipart([("application/dicom", p.read_bytes()) for p in (*small, *large)])
    response = httpx.post(f"{stow.url}/studies", content=body, headers={**AUTH, "Content-Type": content_type})
    assert response.status_code == 202
    assert _uids(response.json(), REFERENCED) == [(_sop(small[0]), None)]
    assert _uids(response.json(), FAILED) == [(None, 0xA700)]
    assert set(_rows(stow)) == {_sop(small[0])}


@pytest.mark.parametrize(
    "content_type",
    ["application/dicom", 'multipart/related; type="application/dicom+json"; boundary=x', "text/plain"],
)
def test_a_body_of_another_media_type_is_refused_with_415(
    start_stow: Callable[..., StowProcess], content_type: str
) -> None:
    stow = start_stow()
    response = httpx.post(f"{stow.url}/studies", content=b"x", headers={**AUTH, "Content-Type": content_type})
    assert response.status_code == 415


def test_no_or_a_wrong_token_is_refused_with_401(
    start_stow: Callable[..., StowProcess], ct_series: Callable[..., list[Path]]
) -> None:
    stow = start_stow(api_token="the-operator-token")
    body, content_type = multipart(
        [("application/dicom", ct_series(slices=1, rows=64, columns=64)[0].read_bytes())]
    )
    for headers in ({}, {"Authorization": "Bearer the-operator-token"}):
        response = httpx.post(
            f"{stow.url}/studies", content=body, headers={**headers, "Content-Type": content_type}
        )
        assert response.status_code == 401
    assert _rows(stow) == {}


def test_a_peer_outside_the_allowed_networks_is_refused_with_403(
    start_stow: Callable[..., StowProcess], ct_series: Callable[..., list[Path]]
) -> None:
    stow = start_stow(allowed_peer_networks="10.0.0.0/8")
    body, content_type = multipart(
        [("application/dicom", ct_series(slices=1, rows=64, columns=64)[0].read_bytes())]
    )
    response = httpx.post(f"{stow.url}/studies", content=body, headers={**AUTH, "Content-Type": content_type})
    assert response.status_code == 403
    assert _rows(stow) == {}


def test_kill_during_a_body_leaves_the_finished_part_stored_and_no_staging_file(
    start_stow: Callable[..., StowProcess], ct_series: Callable[..., list[Path]], data_dir: Path
) -> None:
    stow = start_stow()
    first, second = ct_series(slices=2, rows=64, columns=64)
    body, content_type = multipart(
        [("application/dicom", first.read_bytes()), ("application/dicom", second.read_bytes())]
    )
    cut = body.index(second.read_bytes()) + 4000
    head = (
        f"POST /dicomweb/studies HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
        f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", stow.port)) as sock:
        sock.sendall(head + body[:cut])
        staging = data_dir / "staging"
        deadline = time.monotonic() + 30
        while not (_sop(first) in _rows(stow) and any(staging.rglob("*.part"))):
            assert time.monotonic() < deadline, "the first part was not stored while the second streamed"
            time.sleep(0.05)
        stow.kill()
    assert any(staging.rglob("*.part")), "the half-received part was on disk when the process died"
    restarted = start_stow()
    assert not any(staging.rglob("*.part"))
    row = _rows(restarted)[_sop(first)]
    assert (data_dir / row.path).read_bytes() == first.read_bytes()
    assert _sop(second) not in _rows(restarted)


@pytest.mark.parametrize(
    ("token", "headers"),
    [(TOKEN, AUTH), (None, {})],
    ids=["certificate-and-token", "certificate-alone-when-no-token-is-configured"],
)
def test_over_tls_a_client_certificate_from_the_ca_is_required(
    start_stow: Callable[..., StowProcess],
    ct_series: Callable[..., list[Path]],
    tmp_path: Path,
    token: str | None,
    headers: dict[str, str],
) -> None:
    certs = make_certificates(tmp_path / "certs")
    stow = start_stow(
        stow_token=token,
        stow_tls_cert=certs.server_cert,
        stow_tls_key=certs.server_key,
        stow_tls_ca=certs.ca,
        stow_tls_require_client_cert="true",
    )
    (file,) = ct_series(slices=1, rows=64, columns=64)
    body, content_type = multipart([("application/dicom", file.read_bytes())])
    url = f"https://127.0.0.1:{stow.port}/dicomweb/studies"
    sent = {**headers, "Content-Type": content_type}
    anonymous = ssl.create_default_context(cafile=certs.ca)
    with pytest.raises(httpx.TransportError):
        httpx.post(url, content=body, headers=sent, verify=anonymous)
    scanner = ssl.create_default_context(cafile=certs.ca)
    scanner.load_cert_chain(certs.client_cert, certs.client_key)
    response = httpx.post(url, content=body, headers=sent, verify=scanner)
    assert response.status_code == 200
    assert set(_rows(stow)) == {_sop(file)}


def test_stow_without_a_token_configured_stops_with_one_line(data_dir: Path) -> None:
    result = subprocess.run(
        tace_command("stow"), env=tace_env(data_dir=data_dir), capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    assert "STOW-RS senders need a credential: set TACE_STOW_TOKEN, or TACE_STOW_TLS_CERT" in result.stderr


def test_a_body_cut_before_its_closing_boundary_is_400_and_the_finished_parts_stay_stored(
    start_stow: Callable[..., StowProcess], ct_series: Callable[..., list[Path]], data_dir: Path
) -> None:
    stow = start_stow()
    first, second = ct_series(slices=2, rows=64, columns=64)
    body, content_type = multipart([("application/dicom", p.read_bytes()) for p in (first, second)])
    cut = body[: body.index(second.read_bytes()) + 1000]
    response = httpx.post(f"{stow.url}/studies", content=cut, headers={**AUTH, "Content-Type": content_type})
    assert response.status_code == 400
    assert _uids(response.json()["instances"], REFERENCED) == [(_sop(first), None)]
    assert set(_rows(stow)) == {_sop(first)}
    assert not any((data_dir / "staging").rglob("*.part"))
