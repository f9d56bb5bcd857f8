"""TLS with client certificates end to end, and an admin API that leaks no identifiers."""

from __future__ import annotations

import socket
import ssl
from pathlib import Path

import pydicom
import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage, Verification

from tace.app.api.app import create_app
from tests.support.certificates import Certificates, make_certificates
from tests.support.hl7_messages import LIVER, oru
from tests.support.listener import send_datasets
from tests.support.mllp import END, START, msa, read_frame

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    return make_certificates(tmp_path_factory.mktemp("pki"))


def _client_context(certificates: Certificates, cert: Path | None, key: Path | None) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(certificates.ca))
    if cert is not None:
        context.load_cert_chain(cert, key)
    return context


def _tls_settings(certificates: Certificates, prefix: str) -> dict[str, object]:
    return {
        f"{prefix}_tls_cert": certificates.server_cert,
        f"{prefix}_tls_key": certificates.server_key,
        f"{prefix}_tls_ca": certificates.ca,
        f"{prefix}_tls_require_client_cert": "true",
    }


def _associate(port: int, context: ssl.SSLContext | None) -> bool:
    ae = AE(ae_title="TLSCLIENT")
    ae.acse_timeout = ae.network_timeout = 5
    ae.add_requested_context(Verification)
    ae.add_requested_context(CTImageStorage, "1.2.840.10008.1.2.1")
    try:
        assoc = ae.associate(
            "127.0.0.1", port, ae_title="TACE", tls_args=(context, "localhost") if context else None
        )
    except (OSError, ssl.SSLError):
        return False
    if not assoc.is_established:
        return False
    ok = assoc.send_c_echo().Status == 0
    assoc.release()
    return ok


def test_dicom_tls_requires_a_client_certificate_from_our_ca(certificates, start_listener, ct_series) -> None:
    listener = start_listener(**_tls_settings(certificates, "dicom"))
    good = _client_context(certificates, certificates.client_cert, certificates.client_key)
    assert _associate(listener.port, good)
    assert not _associate(listener.port, _client_context(certificates, None, None)), "no client certificate"
    assert not _associate(
        listener.port, _client_context(certificates, certificates.rogue_cert, certificates.rogue_key)
    ), "self-signed client"
    assert not _associate(listener.port, None), "plain TCP"

    ds = pydicom.dcmread(ct_series(slices=1, rows=32, columns=32)[0])
    ae = AE(ae_title="TLSCLIENT")
    ae.add_requested_context(CTImageStorage, ds.file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", listener.port, ae_title="TACE", tls_args=(good, "localhost"))
    assert assoc.send_c_store(ds).Status == 0
    assoc.release()
    from tace.db import Association, Instance

    with listener.engine.connect() as connection:
        assert connection.execute(Instance.__table__.select()).first() is not None
        tls_flags = {row.tls for row in connection.execute(Association.__table__.select())}
    assert tls_flags == {True}


def _mllp_tls(port: int, context: ssl.SSLContext, message: str) -> str:
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as sock,
    ):
        sock.sendall(START + message.encode() + END)
        return read_frame(sock)


def test_mllp_tls_requires_a_client_certificate(certificates, start_hl7) -> None:
    listener = start_hl7(**_tls_settings(certificates, "hl7"))
    good = _client_context(certificates, certificates.client_cert, certificates.client_key)
    assert msa(_mllp_tls(listener.port, good, oru("TLS0001", LIVER[:2])))[1] == "AA"
    for context in (
        _client_context(certificates, None, None),
        _client_context(certificates, certificates.rogue_cert, certificates.rogue_key),
    ):
        with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
            _mllp_tls(listener.port, context, oru("TLS0002", LIVER[:2]))
    with socket.create_connection(("127.0.0.1", listener.port), timeout=5) as plain:
        plain.sendall(START + oru("TLS0003", LIVER[:2]).encode() + END)
        with pytest.raises((ConnectionError, OSError, AssertionError, UnicodeDecodeError)):
            read_frame(plain)
    assert msa(_mllp_tls(listener.port, good, oru("TLS0004", LIVER[:2])))[1] == "AA"


def test_no_api_endpoint_leaks_identifiers_without_the_phi_role(
    make_settings, start_listener, ct_series
) -> None:
    listener = start_listener()
    files = ct_series(
        slices=9,
        rows=32,
        columns=32,
        patient_id="MRN4711",
        patient_name="Doe^Jane",
        patient_birth_date="19570311",
    )
    send_datasets(listener.port, [pydicom.dcmread(p) for p in files])
    from tace.db import make_engine
    from tace.settings import Settings

    settings: Settings = make_settings(
        data_dir=listener.data_dir, api_token=SecretStr("operator"), api_phi_token=SecretStr("phi")
    )
    client = TestClient(create_app(settings, make_engine(listener.database_url)))
    operator = {"Authorization": "Bearer operator"}
    jobs = client.get("/api/jobs", headers=operator).json()
    paths = [
        "/api/jobs",
        "/api/series",
        "/api/associations",
        "/api/srs",
        f"/api/labs/{client.get('/api/series', headers=operator).json()[0]['patient_hash']}",
        *[f"/api/jobs/{job['id']}" for job in jobs],
    ]
    for path in paths:
        for headers in (operator, {}, {"Authorization": "Bearer guess"}):
            response = client.get(path, headers=headers)
            for secret in ("MRN4711", "Doe^Jane", "Doe", "19570311"):
                assert secret not in response.text, (path, headers)
    client.post("/login", data={"token": "operator"})
    for page in ("/", *[f"/jobs/{job['id']}" for job in jobs]):
        assert "Doe" not in client.get(page).text and "MRN4711" not in client.get(page).text
    if jobs:
        phi = client.get(f"/api/jobs/{jobs[0]['id']}", headers={"Authorization": "Bearer phi"}).json()
        assert phi["patient"]["patient_id"] == "MRN4711"
