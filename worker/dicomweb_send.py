"""STOW-RS of one stored object to a DICOMweb destination, with C-STORE's retry classes.

A DICOMweb archive answers in two layers: the HTTP status, and per instance the
ReferencedSOPSequence (stored, perhaps with a WarningReason) or the
FailedSOPSequence (a FailureReason from the C-STORE status families). When the
response names our instance, its reason decides, as a C-STORE status would:
0xA7xx (out of resources) is retried, anything else fails for good. Otherwise
the HTTP status decides: no connection, a timeout, 408, 429 and 5xx are
retried; other 4xx (401 no credentials, 403, 404 no such service, 409, 415)
fail the job with the status named. A success that lists the instance neither
way is retried: nothing says the archive holds it.

Retries belong to the send stage (backoff with jitter, recorded per delivery),
so dicomweb-client's own retrying is off.
"""

from __future__ import annotations

from collections.abc import MutableMapping
from http import HTTPStatus
from pathlib import Path
from typing import Any

import pydicom
import requests
from dicomweb_client import DICOMwebClient
from pydicom.errors import InvalidDicomError
from requests.auth import AuthBase, HTTPBasicAuth

from tace import phi
from tace.settings import DicomwebDestination, Settings
from worker.send_result import SendResult

_HINTS = {
    400: "the archive refused the request as malformed",
    401: "no or wrong credentials (TACE_DICOMWEB_TOKEN, TACE_DICOMWEB_USERNAME/PASSWORD or token_file)",
    403: "the credentials may not store here",
    404: "no STOW-RS service at this URL",
    409: "the archive stored nothing",
    413: "the object is larger than the archive takes",
    415: "the archive does not take multipart/related application/dicom",
}


class _Bearer(AuthBase):
    """``Authorization: Bearer``, set per request so that it is never a session default that leaks."""

    def __init__(self, token: str) -> None:
        self._token = token

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        request.headers["Authorization"] = f"Bearer {self._token}"
        return request


class _Misconfigured(Exception):
    """A credential or certificate file that cannot be used: a retry would meet it again."""


def _read_secret(path: Path, what: str) -> str:
    try:
        secret = path.read_text().strip()
    except OSError as exc:
        raise _Misconfigured(f"{what} {path} unreadable: {exc.strerror or exc.__class__.__name__}") from None
    if not secret:
        raise _Misconfigured(f"{what} {path} is empty")
    return secret


def _auth(settings: Settings, destination: DicomwebDestination) -> AuthBase | None:
    """The destination's own credentials, else the ``TACE_DICOMWEB_*`` ones, else none."""
    if destination.token_file is not None:
        return _Bearer(_read_secret(destination.token_file, "token file"))
    if destination.username is not None:
        if destination.password_file is not None:
            password = _read_secret(destination.password_file, "password file")
        else:
            password = settings.dicomweb_password.get_secret_value() if settings.dicomweb_password else ""
        return HTTPBasicAuth(destination.username, password)
    if settings.dicomweb_token is not None:
        return _Bearer(settings.dicomweb_token.get_secret_value())
    if settings.dicomweb_username is not None:
        password = settings.dicomweb_password.get_secret_value() if settings.dicomweb_password else ""
        return HTTPBasicAuth(settings.dicomweb_username, password)
    return None


def _tls_file(path: Path | None, what: str) -> str | None:
    if path is None:
        return None
    if not path.is_file():
        raise _Misconfigured(f"{what} {path} does not exist")
    return str(path)


class _Session(requests.Session):
    """A session whose own CA bundle wins over ``REQUESTS_CA_BUNDLE``/``CURL_CA_BUNDLE``.

    requests lets those variables replace a session's ``verify`` (psf/requests#4650),
    so a site-wide bundle would silently drop the CA configured for the archive.
    """

    def merge_environment_settings(
        self,
        url: str | bytes | None,
        proxies: MutableMapping[str, str] | None,
        stream: bool | None,
        verify: bool | str | None,
        cert: str | tuple[str, str] | None,
    ) -> Any:
        merged = super().merge_environment_settings(url, proxies, stream, verify, cert)
        if verify is None and isinstance(self.verify, str):
            merged["verify"] = self.verify
        return merged


def _session(settings: Settings, destination: DicomwebDestination) -> requests.Session:
    session = _Session()
    session.auth = _auth(settings, destination)
    ca = _tls_file(destination.tls_ca or settings.dicomweb_tls_ca, "TLS CA bundle")
    session.verify = ca if ca is not None else True
    cert: Path | None
    key: Path | None
    if destination.tls_cert is not None:
        cert, key = destination.tls_cert, destination.tls_key
    else:
        cert, key = settings.dicomweb_tls_cert, settings.dicomweb_tls_key
    cert_file = _tls_file(cert, "TLS client certificate")
    key_file = _tls_file(key, "TLS client key")
    if cert_file is not None:
        session.cert = (cert_file, key_file) if key_file is not None else cert_file
    return session


def stow_instance(settings: Settings, destination: DicomwebDestination, path: Path) -> SendResult:
    """One STOW-RS request carrying one Part-10 file; never raises."""
    try:
        dataset = pydicom.dcmread(path)
    except (OSError, InvalidDicomError) as exc:
        return SendResult(False, False, None, f"stored object unreadable: {exc}")
    phi.protect_dataset(dataset)
    sop_uid = str(dataset.SOPInstanceUID)
    statuses: list[int] = []

    def remember_status(response: requests.Response, *args: Any, **kwargs: Any) -> None:
        statuses.append(response.status_code)

    try:
        session = _session(settings, destination)
    except _Misconfigured as exc:
        return SendResult(False, False, None, str(exc))
    with session:
        try:
            client = DICOMwebClient(
                destination.url,
                session=session,
                timeout=settings.dicom_send_timeout,
                callback=remember_status,
            )
        except ValueError as exc:
            return SendResult(False, False, None, f"not a DICOMweb URL dicomweb-client takes: {exc}")
        client.set_http_retry_params(retry=False)
        try:
            answer = client.store_instances([dataset])
        except requests.HTTPError as exc:
            return _refused(exc.response, sop_uid)
        except requests.Timeout:
            return SendResult(False, True, None, f"no answer within {settings.dicom_send_timeout:g} s")
        except requests.exceptions.SSLError as exc:
            return SendResult(False, True, None, f"TLS failed: {_cause(exc)}")
        except requests.ConnectionError as exc:
            return SendResult(False, True, None, f"cannot connect: {_cause(exc)}")
        except (requests.RequestException, ValueError) as exc:
            # A body that is not the DICOM JSON it claims: nothing says the archive kept the object.
            return SendResult(False, True, None, f"unreadable answer: {exc.__class__.__name__}")
    return _judged(answer, sop_uid, statuses[-1] if statuses else HTTPStatus.OK)


def _cause(exc: BaseException) -> str:
    """The innermost reason (refused, name not known, certificate verify failed), not urllib3's wrapping."""
    seen = {id(exc)}
    while exc.__context__ is not None and id(exc.__context__) not in seen:
        exc = exc.__context__
        seen.add(id(exc))
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    text = str(exc)
    return text.rsplit(": ", 1)[-1] if text else exc.__class__.__name__


def _http(code: int) -> str:
    try:
        return f"HTTP {code} {HTTPStatus(code).phrase}"
    except ValueError:
        return f"HTTP {code}"


def _judged(answer: pydicom.Dataset, sop_uid: str, code: int) -> SendResult:
    """The instance's fate as the response lists it; not listed at all is retried."""
    for item in answer.get("FailedSOPSequence", []):
        if item.get("ReferencedSOPInstanceUID") == sop_uid:
            reason = int(item.get("FailureReason", 0x0110))
            transient = (reason & 0xFF00) == 0xA700
            return SendResult(False, transient, reason, f"{_http(code)}, FailureReason 0x{reason:04X}")
    for item in answer.get("ReferencedSOPSequence", []):
        if item.get("ReferencedSOPInstanceUID") == sop_uid:
            warning = item.get("WarningReason")
            if warning is not None:
                return SendResult(
                    True, False, int(warning), f"{_http(code)}, WarningReason 0x{int(warning):04X}"
                )
            return SendResult(True, False, 0x0000, f"{_http(code)}, stored")
    return SendResult(
        False,
        True,
        None,
        f"{_http(code)} but the response lists SOP instance {sop_uid} neither stored nor failed",
    )


def _refused(response: requests.Response | None, sop_uid: str) -> SendResult:
    """An HTTP error; a DICOM JSON body that names the instance says more than the status."""
    if response is None:
        return SendResult(False, True, None, "HTTP error without a response")
    code = response.status_code
    if response.headers.get("Content-Type", "").split(";")[0].strip() in (
        "application/dicom+json",
        "application/json",
    ):
        try:
            answer = pydicom.Dataset.from_json(response.json())
        except (ValueError, TypeError, KeyError):
            answer = pydicom.Dataset()
        listed = _judged(answer, sop_uid, code)
        if listed.status is not None and not listed.delivered:
            return listed
    transient = code in (HTTPStatus.REQUEST_TIMEOUT, HTTPStatus.TOO_MANY_REQUESTS) or code >= 500
    hint = _HINTS.get(code)
    return SendResult(False, transient, None, _http(code) + (f" ({hint})" if hint else ""))
