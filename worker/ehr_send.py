"""Delivering the result to the EHR: ORU^R01 over MLLP, DiagnosticReport by FHIR REST.

Each configured channel is one more destination of the send stage, recorded as
a Delivery row of its own kind with the retry classes of C-STORE:

- HL7: AA (or CA) delivered; AE (CE), no ACK, a timeout or a refused
  connection are transient; AR (CR) is permanent; an ACK for another control
  ID is transient (we cannot tell that our message was taken).
- FHIR: 2xx delivered; 408, 429, 5xx and connection failures transient; other
  4xx permanent, with the server's OperationOutcome text. The report goes by
  conditional update on its identifier, so a retry after a lost response
  updates the one report instead of creating a second.

Messages and resources are rebuilt from the rows on each attempt and come out
the same (identifiers and times are derived), which is what makes a retry safe.
Tokens never reach a log or a delivery detail.
"""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass

import hl7

from hl7_clinical.ack import END_BLOCK, START_BLOCK
from tace.db import DeliveryKind
from tace.settings import Hl7Peer, Settings
from tace.tls import client_tls_context
from worker.ehr_result import EhrResult
from worker.fhir_result import build_report, report_identifier
from worker.hl7_result import build_oru
from worker.send_result import SendResult

_MAX_ACK_BYTES = 1024 * 1024
_HL7_ACK = {"AA": (True, False), "CA": (True, False), "AE": (False, True), "CE": (False, True)}
"""(delivered, transient) per MSA-1; AR, CR and anything else are permanent."""


@dataclass(frozen=True)
class EhrChannel:
    name: str
    """The destination as configured: what Delivery rows, logs and metrics call it."""
    kind: DeliveryKind
    send: Callable[[EhrResult, bool], SendResult]
    """Deliver the result; the flag says it corrects a result this destination holds."""


def ehr_channels(settings: Settings) -> list[EhrChannel]:
    """The configured EHR channels; none unless TACE_HL7_RESULT_DESTINATION or TACE_FHIR_BASE_URL is set."""
    channels = []
    peer = settings.hl7_result_destination
    if peer is not None:
        channels.append(
            EhrChannel(
                str(peer),
                DeliveryKind.hl7_result,
                lambda result, corrected: send_oru(settings, peer, result, corrected=corrected),
            )
        )
    base_url = settings.fhir_base_url
    if base_url is not None:
        channels.append(
            EhrChannel(
                base_url,
                DeliveryKind.fhir_report,
                lambda result, corrected: put_report(settings, base_url, result, amended=corrected),
            )
        )
    return channels


def send_oru(settings: Settings, peer: Hl7Peer, result: EhrResult, *, corrected: bool) -> SendResult:
    """One connection, one framed ORU^R01, one ACK; never raises."""
    message = build_oru(
        result,
        corrected=corrected,
        sending_application=settings.hl7_result_sending_application,
        sending_facility=settings.hl7_result_sending_facility,
        receiving_application=settings.hl7_result_receiving_application,
        receiving_facility=settings.hl7_result_receiving_facility,
    )
    control_id = result.message_key
    timeout = settings.hl7_result_timeout_seconds
    try:
        with socket.create_connection((peer.host, peer.port), timeout=timeout) as plain:
            sock = plain
            if settings.hl7_result_tls:
                context = client_tls_context(
                    settings.hl7_result_tls_ca, settings.hl7_result_tls_cert, settings.hl7_result_tls_key
                )
                sock = context.wrap_socket(plain, server_hostname=peer.host)
            with sock:
                sock.sendall(START_BLOCK + message.encode() + END_BLOCK)
                raw = _read_frame(sock)
    except TimeoutError:
        return SendResult(False, True, None, f"no ACK within {timeout:g} s for {control_id}")
    except OSError as exc:
        return SendResult(False, True, None, f"cannot deliver {control_id}: {exc}")
    return _judge_ack(raw, control_id)


def _read_frame(sock: socket.socket) -> bytes:
    data = b""
    while not data.rstrip(b"\n").endswith(END_BLOCK) and len(data) < _MAX_ACK_BYTES:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("connection closed before an ACK")
        data += chunk
    start = data.find(START_BLOCK)
    end = data.rfind(END_BLOCK)
    if start < 0 or end < start:
        raise ConnectionError("answer is not an MLLP frame")
    return data[start + 1 : end]


def _judge_ack(raw: bytes, control_id: str) -> SendResult:
    text = raw.decode("utf-8", errors="replace").replace("\r\n", "\r").replace("\n", "\r")
    try:
        msa = hl7.parse(text).segment("MSA")
    except (hl7.exceptions.HL7Exception, KeyError, ValueError, IndexError) as exc:
        return SendResult(False, True, None, f"answer to {control_id} is not an ACK: {exc}")
    code = str(msa(1)).strip().upper()
    acked = str(msa(2)).strip() if len(msa) > 2 else ""
    reason = str(msa(3)).strip() if len(msa) > 3 else ""
    if acked != control_id:
        return SendResult(
            False, True, None, f"ACK {code} names control ID {acked!r}, not ours ({control_id})"
        )
    delivered, transient = _HL7_ACK.get(code, (False, False))
    detail = f"{code} for {control_id}" + (f": {reason}" if reason else "")
    return SendResult(delivered, transient, None, detail)


def put_report(settings: Settings, base_url: str, result: EhrResult, *, amended: bool) -> SendResult:
    """Conditional update of the DiagnosticReport by its identifier; never raises."""
    system, value = report_identifier(result)
    query = urllib.parse.urlencode({"identifier": f"{system}|{value}"})
    try:
        body = build_report(result, amended=amended).model_dump_json(exclude_none=True).encode()
    except ValueError as exc:
        # pydantic's ValidationError is a ValueError: the same rows build the same invalid report.
        return SendResult(False, False, None, f"report not valid FHIR: {exc.__class__.__name__}")
    request = urllib.request.Request(
        f"{base_url}/DiagnosticReport?{query}",
        data=body,
        method="PUT",
        headers={"Content-Type": "application/fhir+json", "Accept": "application/fhir+json"},
    )
    try:
        token = settings.fhir_bearer_token()
    except OSError as exc:
        # Rotated away, say: retried, so the report goes once the file is back.
        return SendResult(False, True, None, f"cannot read TACE_FHIR_TOKEN_FILE: {exc.strerror}")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        context = (
            client_tls_context(settings.fhir_tls_ca, settings.fhir_tls_cert, settings.fhir_tls_key)
            if base_url.startswith("https://")
            else None
        )
        with urllib.request.urlopen(
            request, timeout=settings.fhir_timeout_seconds, context=context
        ) as response:
            status = response.status
            location = response.headers.get("Location") or response.headers.get("Content-Location") or ""
    except urllib.error.HTTPError as exc:
        status = exc.code
        transient = status in (408, 429) or status >= 500
        return SendResult(False, transient, None, f"HTTP {status}: {_outcome_text(exc)}")
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        return SendResult(False, True, None, f"cannot reach the FHIR server: {reason}")
    where = f" ({location})" if location else ""
    return SendResult(True, False, None, f"HTTP {status}{where}")


def _outcome_text(error: urllib.error.HTTPError) -> str:
    """The OperationOutcome's diagnostics, else the reason phrase."""
    try:
        outcome = json.loads(error.read(65536) or b"{}")
    except (OSError, ValueError):
        outcome = {}
    texts = []
    issues = outcome.get("issue", []) if isinstance(outcome, dict) else []
    for issue in issues if isinstance(issues, list) else []:
        if not isinstance(issue, dict):
            continue
        details = issue.get("details")
        text = issue.get("diagnostics") or (details.get("text") if isinstance(details, dict) else None)
        if text:
            texts.append(str(text))
    return "; ".join(texts) or str(error.reason)
