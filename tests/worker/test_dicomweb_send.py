"""STOW-RS of one SR: each answer an archive can give lands in C-STORE's retry classes.

Against a scripted archive (tests/support/dicomweb_archive.py) that parses the
multipart/related body and answers DICOM JSON, for the answers Orthanc never
gives; Orthanc itself is the peer in test_dicomweb_orthanc.py.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pydicom
import pytest
from pydantic import SecretStr

from tace.settings import DicomwebDestination, Settings, parse_destination
from tests.support.certificates import make_certificates
from tests.support.dicomweb_archive import Answer, ScriptedArchive
from tests.support.services import free_port
from tests.support.sr_file import write_sr
from worker.send import store_sr

COMPREHENSIVE_3D_SR = "1.2.840.10008.5.1.4.1.1.88.34"


@pytest.fixture
def sr_file(ct_series: Callable[..., list[Path]], tmp_path: Path) -> Path:
    return write_sr(ct_series, tmp_path / "sr.dcm")


@pytest.fixture
def archive() -> Iterator[ScriptedArchive]:
    server = ScriptedArchive().start()
    yield server
    server.stop()


def _uid(path: Path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)


@pytest.mark.parametrize(
    ("answer", "delivered", "transient", "status", "detail"),
    [
        (Answer(200), True, False, 0x0000, "HTTP 200 OK, stored"),
        (Answer(202, reason=0xB000), True, False, 0xB000, "HTTP 202 Accepted, WarningReason 0xB000"),
        (Answer(409, "failed", 0xA700), False, True, 0xA700, "HTTP 409 Conflict, FailureReason 0xA700"),
        (Answer(202, "failed", 0xA7FE), False, True, 0xA7FE, "HTTP 202 Accepted, FailureReason 0xA7FE"),
        (Answer(409, "failed", 0xA900), False, False, 0xA900, "HTTP 409 Conflict, FailureReason 0xA900"),
        (Answer(409, "failed", 0xC000), False, False, 0xC000, "HTTP 409 Conflict, FailureReason 0xC000"),
        (Answer(409, dicom_json=False), False, False, None, "HTTP 409 Conflict (the archive stored nothing)"),
        (Answer(400, dicom_json=False), False, False, None, "HTTP 400 Bad Request"),
        (Answer(403, dicom_json=False), False, False, None, "HTTP 403 Forbidden"),
        (Answer(404, dicom_json=False), False, False, None, "HTTP 404 Not Found (no STOW-RS service"),
        (Answer(415, dicom_json=False), False, False, None, "HTTP 415 Unsupported Media Type"),
        (Answer(408, dicom_json=False), False, True, None, "HTTP 408 Request Timeout"),
        (Answer(429, dicom_json=False), False, True, None, "HTTP 429 Too Many Requests"),
        (Answer(500, dicom_json=False), False, True, None, "HTTP 500 Internal Server Error"),
        (Answer(503, dicom_json=False), False, True, None, "HTTP 503 Service Unavailable"),
        (Answer(200, listed=None), False, True, None, "neither stored nor failed"),
    ],
)
def test_each_answer_is_delivered_retried_or_refused_like_a_c_store_status(
    archive: ScriptedArchive,
    sr_file: Path,
    tmp_path: Path,
    answer: Answer,
    delivered: bool,
    transient: bool,
    status: int | None,
    detail: str,
) -> None:
    archive.answer = answer
    result = store_sr(Settings(data_dir=tmp_path / "data"), parse_destination(archive.url), sr_file)
    assert (result.delivered, result.transient, result.status) == (delivered, transient, status), result
    assert detail in result.detail
    (request,) = archive.received
    assert request.path == "/dicomweb/studies"
    assert request.content_type.startswith('multipart/related; type="application/dicom"')
    assert request.instances == [(COMPREHENSIVE_3D_SR, _uid(sr_file))]


def test_a_bearer_token_is_sent_and_its_absence_is_a_permanent_401(
    archive: ScriptedArchive, sr_file: Path, tmp_path: Path
) -> None:
    archive.token = "s3cret-t0ken"
    destination = parse_destination(archive.url)
    refused = store_sr(Settings(data_dir=tmp_path / "data"), destination, sr_file)
    assert (refused.delivered, refused.transient) == (False, False)
    assert refused.detail.startswith("HTTP 401 Unauthorized (no or wrong credentials")
    accepted = store_sr(
        Settings(data_dir=tmp_path / "data", dicomweb_token=SecretStr("s3cret-t0ken")), destination, sr_file
    )
    assert accepted.delivered, accepted
    assert [r.authorization for r in archive.received] == ["Bearer s3cret-t0ken"]
    assert "s3cret-t0ken" not in refused.detail + accepted.detail


def test_a_destination_token_file_wins_over_the_global_token(
    archive: ScriptedArchive, sr_file: Path, tmp_path: Path
) -> None:
    archive.token = "from-the-file"
    token_file = tmp_path / "token"
    token_file.write_text("from-the-file\n")
    destination = DicomwebDestination(url=archive.url, token_file=token_file)
    settings = Settings(data_dir=tmp_path / "data", dicomweb_token=SecretStr("global"))
    assert store_sr(settings, destination, sr_file).delivered
    unreadable = store_sr(
        settings, DicomwebDestination(url=archive.url, token_file=tmp_path / "gone"), sr_file
    )
    assert (unreadable.delivered, unreadable.transient) == (False, False)
    assert unreadable.detail == f"token file {tmp_path / 'gone'} unreadable: No such file or directory"
    assert len(archive.received) == 1, "nothing is sent without the credentials"


def test_an_archive_that_does_not_answer_in_time_is_retried(
    archive: ScriptedArchive, sr_file: Path, tmp_path: Path
) -> None:
    archive.answer = Answer(200, delay=3)
    settings = Settings(data_dir=tmp_path / "data", dicom_send_timeout=1)
    result = store_sr(settings, parse_destination(archive.url), sr_file)
    assert (result.delivered, result.transient, result.detail) == (False, True, "no answer within 1 s")


def test_nothing_listening_is_retried(sr_file: Path, tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}/dicom-web"
    result = store_sr(Settings(data_dir=tmp_path / "data"), parse_destination(url), sr_file)
    assert (result.delivered, result.transient) == (False, True)
    assert result.detail == "cannot connect: Connection refused"


def test_https_needs_the_ca_bundle_and_a_client_certificate_the_archive_trusts(
    sr_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Orthanc's own HTTPS (SslEnabled) crashes its civetweb worker on these machines, so the
    scripted archive is the TLS peer: a real handshake with the test CA's certificates. A
    site-wide REQUESTS_CA_BUNDLE (another CA) must not replace the CA configured for it."""
    certificates = make_certificates(tmp_path / "pki")
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(certificates.rogue_cert))
    archive = ScriptedArchive(tls=certificates).start()
    data = tmp_path / "data"
    try:
        destination = parse_destination(archive.url)
        unverified = store_sr(Settings(data_dir=data), destination, sr_file)
        anonymous = store_sr(Settings(data_dir=data, dicomweb_tls_ca=certificates.ca), destination, sr_file)
        assert archive.received == []
        trusted = Settings(
            data_dir=data,
            dicomweb_tls_ca=certificates.ca,
            dicomweb_tls_cert=certificates.client_cert,
            dicomweb_tls_key=certificates.client_key,
        )
        delivered = store_sr(trusted, destination, sr_file)
        per_destination = store_sr(
            Settings(data_dir=data),
            DicomwebDestination(
                url=archive.url,
                tls_ca=certificates.ca,
                tls_cert=certificates.client_cert,
                tls_key=certificates.client_key,
            ),
            sr_file,
        )
    finally:
        archive.stop()
    assert (unverified.delivered, unverified.transient) == (False, True)
    assert unverified.detail.startswith("TLS failed: ") and "certificate verify failed" in unverified.detail
    assert (anonymous.delivered, anonymous.transient) == (False, True), anonymous
    assert (delivered.delivered, delivered.detail) == (True, "HTTP 200 OK, stored")
    assert per_destination.delivered, per_destination
    assert len(archive.received) == 2
    no_file = store_sr(Settings(data_dir=data, dicomweb_tls_cert=tmp_path / "none.pem"), destination, sr_file)
    assert (no_file.delivered, no_file.transient) == (False, False)
    assert no_file.detail == f"TLS client certificate {tmp_path / 'none.pem'} does not exist"
