"""Recording receivers of our EHR results: an MLLP ORU receiver and a FHIR server.

Both run on real sockets in a thread of the test process. The MLLP receiver
answers each framed message with the next scripted ACK code (then AA), and
keeps a result only when it answered AA, by control ID, as an EHR interface
engine that deduplicates on MSH-10 does. The FHIR server implements the
conditional update ``PUT /DiagnosticReport?identifier=system|value`` (no match:
create, 201; one match: update in place, 200), checks the bearer token, answers
the scripted HTTP statuses first, and records every request.
"""

from __future__ import annotations

import json
import socket
import socketserver
import ssl
import threading
import urllib.parse
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import hl7

START, END = b"\x0b", b"\x1c\r"


@dataclass
class MllpReceiver:
    """``script``: answers to the next messages, AA, AE, AR, WRONG_ID (AA for another control ID),
    SILENT (close without an ACK), HANG (keep the connection open without an ACK) or NAK-TEXT
    (a frame that is no HL7 message)."""

    script: list[str] = field(default_factory=list)
    received: list[str] = field(default_factory=list)
    results: dict[str, list[str]] = field(default_factory=dict)
    """Control ID -> the messages answered AA with it (one each, when retries are safe)."""
    port: int = 0
    tls: ssl.SSLContext | None = None
    """A server context: MLLP over TLS."""
    _server: socketserver.ThreadingTCPServer | None = None

    def start(self, port: int = 0) -> MllpReceiver:
        """Listen on ``port`` (a free one when 0)."""
        receiver = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                sock: socket.socket = self.request
                sock.settimeout(10)
                if receiver.tls is not None:
                    try:
                        sock = receiver.tls.wrap_socket(sock, server_side=True)
                    except (ssl.SSLError, OSError):
                        return
                data = b""
                while True:
                    chunk = sock.recv(65536)
                    if not chunk:
                        return
                    data += chunk
                    while END in data:
                        frame, data = data.split(END, 1)
                        if not receiver._answer(sock, frame.lstrip(START).decode()):
                            return

        self._server = socketserver.ThreadingTCPServer(("127.0.0.1", port), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def _answer(self, sock: socket.socket, text: str) -> bool:
        self.received.append(text)
        control_id = str(hl7.parse(text).segment("MSH")(10))
        code = self.script.pop(0) if self.script else "AA"
        if code == "SILENT":
            return False
        if code == "HANG":
            sock.recv(1)  # no answer: the sender gives up and closes
            return False
        if code == "NAK-TEXT":
            sock.sendall(START + b"NAK" + END)
            return True
        acked = "SOMEONE-ELSE" if code == "WRONG_ID" else control_id
        code = "AA" if code == "WRONG_ID" else code
        if code == "AA" and acked == control_id:
            self.results.setdefault(control_id, []).append(text)
        reason = {"AE": "interface engine busy", "AR": "unknown receiving application"}.get(code, "")
        ack = f"MSH|^~\\&|EHR||TACE||20260101000000||ACK^R01^ACK|A{len(self.received)}|P|2.5.1\rMSA|{code}|{acked}|{reason}\r"
        sock.sendall(START + ack.encode() + END)
        return True

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()


@dataclass
class FhirServer:
    token: str
    script: list[int] = field(default_factory=list)
    """HTTP statuses to answer (with an OperationOutcome) before serving requests normally."""
    refusal: str = "scripted"
    """The OperationOutcome diagnostics of those answers (followed by the status)."""
    requests: list[dict[str, Any]] = field(default_factory=list)
    reports: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Resource id -> the DiagnosticReport as stored (with meta.versionId)."""
    port: int = 0
    tls: ssl.SSLContext | None = None
    """A server context: HTTPS."""
    _server: ThreadingHTTPServer | None = None

    @property
    def base_url(self) -> str:
        scheme = "https" if self.tls is not None else "http"
        return f"{scheme}://127.0.0.1:{self.port}/fhir"

    def start(self) -> FhirServer:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                """Quiet: the test reads ``requests`` instead."""

            def do_PUT(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                status, payload = server._put(self.path, self.headers.get("Authorization", ""), body)
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/fhir+json")
                self.send_header("Content-Length", str(len(data)))
                if status in (200, 201):
                    self.send_header("Location", f"{server.base_url}/DiagnosticReport/{payload['id']}")
                self.end_headers()
                self.wfile.write(data)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        if self.tls is not None:
            self._server.socket = self.tls.wrap_socket(self._server.socket, server_side=True)
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def _put(self, path: str, authorization: str, body: bytes) -> tuple[int, dict[str, Any]]:
        url = urllib.parse.urlsplit(path)
        query = urllib.parse.parse_qs(url.query)
        self.requests.append({"path": url.path, "query": query, "authorization": authorization})
        if authorization != f"Bearer {self.token}":
            return 401, _outcome("security", "bearer token missing or wrong")
        if self.script:
            status = self.script.pop(0)
            return status, _outcome("processing", f"{self.refusal} {status}")
        if url.path != "/fhir/DiagnosticReport" or len(query.get("identifier", [])) != 1:
            return 400, _outcome("invalid", "expected PUT /DiagnosticReport?identifier=system|value")
        system, _, value = query["identifier"][0].partition("|")
        resource = json.loads(body)
        if resource.get("resourceType") != "DiagnosticReport":
            return 400, _outcome("invalid", "not a DiagnosticReport")
        if not any(i.get("system") == system and i.get("value") == value for i in resource["identifier"]):
            return 400, _outcome("invalid", "the resource does not carry the identifier of the condition")
        matches = [
            rid
            for rid, stored in self.reports.items()
            if any(i.get("system") == system and i.get("value") == value for i in stored["identifier"])
        ]
        if len(matches) > 1:
            return 412, _outcome("multiple-matches", "more than one report matches")
        if matches:
            rid = matches[0]
            version = int(self.reports[rid]["meta"]["versionId"]) + 1
            status = 200
        else:
            rid, version, status = str(len(self.reports) + 1), 1, 201
        resource["id"] = rid
        resource["meta"] = {"versionId": str(version)}
        self.reports[rid] = resource
        return status, resource

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()


def _outcome(code: str, text: str) -> dict[str, Any]:
    return {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": code, "diagnostics": text}],
    }
