"""TLS for the two doors (DICOM and MLLP) and for the results we send out: one policy, equally strict."""

from __future__ import annotations

import ssl
from pathlib import Path


def server_tls_context(
    cert: Path | None, key: Path | None, ca: Path | None, require_client_cert: bool
) -> ssl.SSLContext | None:
    """None when no certificate is configured (plain TCP); TLS 1.2 or newer otherwise."""
    if cert is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert, key)
    if ca is not None:
        context.load_verify_locations(ca)
    if require_client_cert:
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def client_tls_context(ca: Path | None, cert: Path | None, key: Path | None) -> ssl.SSLContext:
    """Verify the server (against ``ca``, else the system's trust store); present ``cert`` when given."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca) if ca else None)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if cert is not None:
        context.load_cert_chain(cert, key)
    return context
