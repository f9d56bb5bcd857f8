"""A scripted STOW-RS archive for the answers Orthanc never gives (0xA7xx, 409, 429, 503, warnings).

It reads the request as a DICOMweb archive must: the multipart/related body is
parsed by the standard library's MIME parser, each part as DICOM by pydicom, and
the answer is DICOM JSON (``application/dicom+json``) naming the instances it got.
"""

from __future__ import annotations

import email.parser
import email.policy
import io
import json
import ssl
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pydicom
from pydicom.dataset import Dataset

from tests.support.certificates import Certificates


@dataclass(frozen=True)
class Answer:
    status: int = 200
    listed: str | None = "stored"
    """``stored`` (ReferencedSOPSequence), ``failed`` (FailedSOPSequence), or None (not listed)."""
    reason: int | None = None
    """FailureReason of a failed instance, WarningReason of a stored one."""
    dicom_json: bool = True
    delay: float = 0.0
    """Seconds to wait before answering (a stalled archive)."""


@dataclass(frozen=True)
class Received:
    path: str
    authorization: str | None
    content_type: str
    instances: list[tuple[str, str]]
    """(SOPClassUID, SOPInstanceUID) of every part."""


@dataclass
class ScriptedArchive:
    answer: Answer = field(default_factory=Answer)
    token: str | None = None
    """With a token, a request without ``Authorization: Bearer <token>`` gets 401."""
    tls: Certificates | None = None
    """With certificates: HTTPS with the server certificate, and only clients with a certificate
    the test CA signed complete the handshake."""
    received: list[Received] = field(default_factory=list)
    _server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self._server is not None
        scheme = "https" if self.tls is not None else "http"
        return f"{scheme}://127.0.0.1:{self._server.server_address[1]}/dicomweb"

    def start(self) -> ScriptedArchive:
        archive = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                archive._handle(self)

            def log_message(self, format: str, *args: object) -> None:
                """Quiet: the test reads ``received``."""

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        if self.tls is not None:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(self.tls.ca))
            context.load_cert_chain(self.tls.server_cert, self.tls.server_key)
            context.verify_mode = ssl.CERT_REQUIRED
            self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def _handle(self, handler: BaseHTTPRequestHandler) -> None:
        body = handler.rfile.read(int(handler.headers.get("Content-Length", "0")))
        content_type = handler.headers.get("Content-Type", "")
        authorization = handler.headers.get("Authorization")
        if self.token is not None and authorization != f"Bearer {self.token}":
            self._reply(handler, 401, None)
            return
        if not content_type.startswith("multipart/related") or 'type="application/dicom"' not in content_type:
            self._reply(handler, 415, None)
            return
        message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
            f"Content-Type: {content_type}\r\n\r\n".encode() + body
        )
        instances = []
        for part in message.iter_parts():
            assert part.get_content_type() == "application/dicom"
            payload = part.get_payload(decode=True)
            assert isinstance(payload, bytes)
            dataset = pydicom.dcmread(io.BytesIO(payload))
            instances.append((str(dataset.SOPClassUID), str(dataset.SOPInstanceUID)))
        self.received.append(Received(handler.path, authorization, content_type, instances))
        time.sleep(self.answer.delay)
        self._reply(
            handler, self.answer.status, self._response(instances) if self.answer.dicom_json else None
        )

    def _response(self, instances: list[tuple[str, str]]) -> Dataset:
        response = Dataset()
        items = []
        for sop_class, sop_instance in instances:
            item = Dataset()
            item.ReferencedSOPClassUID = sop_class
            item.ReferencedSOPInstanceUID = sop_instance
            if self.answer.reason is not None:
                if self.answer.listed == "failed":
                    item.FailureReason = self.answer.reason
                else:
                    item.WarningReason = self.answer.reason
            items.append(item)
        if self.answer.listed == "stored":
            response.ReferencedSOPSequence = items
        elif self.answer.listed == "failed":
            response.FailedSOPSequence = items
        return response

    @staticmethod
    def _reply(handler: BaseHTTPRequestHandler, status: int, response: Dataset | None) -> None:
        data = json.dumps(response.to_json_dict()).encode() if response is not None else b""
        try:
            handler.send_response(status)
            if response is not None:
                handler.send_header("Content-Type", "application/dicom+json")
            handler.send_header("Content-Length", str(len(data)))
            handler.end_headers()
            handler.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            # The client gave up waiting (the stalled-archive case): nobody reads the answer.
            return
