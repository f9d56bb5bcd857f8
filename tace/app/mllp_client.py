"""An MLLP client that sends HL7 v2 messages from files and reads each ACK.

Files hold one or more messages, as lab systems export them: segments end with
CR, LF or CRLF, every message starts with an MSH segment, and MLLP framing bytes
left in a capture are ignored. Messages go over one connection, one at a time:
the next is sent only after the ACK of the previous (the feed's order is the
order of the file).
"""

from __future__ import annotations

import re
import socket
import ssl
from collections.abc import Iterator
from dataclasses import dataclass

START_BLOCK = b"\x0b"
END_BLOCK = b"\x1c\r"
_SEGMENT_END = re.compile(rb"\r\n|\n|\r")
_ACCEPTED = frozenset({"AA", "CA"})


class MllpClientError(Exception):
    """The messages could not be delivered or the answer was not an ACK; one line."""


@dataclass(frozen=True)
class Ack:
    control_id: str
    code: str
    text: str

    @property
    def accepted(self) -> bool:
        return self.code in _ACCEPTED


def split_messages(data: bytes) -> list[bytes]:
    """The messages of a file, each as CR-separated segments ending with CR."""
    cleaned = data.replace(START_BLOCK, b"").replace(b"\x1c", b"")
    messages: list[list[bytes]] = []
    for segment in _SEGMENT_END.split(cleaned):
        segment = segment.strip(b" \t")
        if not segment:
            continue
        if segment.startswith(b"MSH") or not messages:
            messages.append([])
        messages[-1].append(segment)
    return [b"\r".join(segments) + b"\r" for segments in messages]


def control_id(message: bytes) -> str:
    msh = message.split(b"\r", 1)[0].decode(errors="replace")
    fields = msh.split(msh[3]) if len(msh) > 3 else []
    return fields[9] if len(fields) > 9 else ""


def parse_ack(text: str) -> tuple[str, str]:
    """(MSA-1 code, the error text of ERR-8 or MSA-3) of an ACK."""
    segments = [s for s in text.replace("\n", "\r").split("\r") if s]
    if not segments or not segments[0].startswith("MSH") or len(segments[0]) < 4:
        raise MllpClientError(f"the answer is not an HL7 message: {text[:80]!r}")
    separator = segments[0][3]
    fields = {s[:3]: s.split(separator) for s in reversed(segments)}
    msa = fields.get("MSA")
    if msa is None or len(msa) < 2:
        raise MllpClientError(f"the answer has no MSA segment: {text[:80]!r}")
    err = fields.get("ERR")
    detail = err[8] if err is not None and len(err) > 8 and err[8] else (msa[3] if len(msa) > 3 else "")
    return msa[1], detail


def _read_frame(sock: socket.socket) -> bytes:
    data = b""
    while not data.endswith(END_BLOCK):
        chunk = sock.recv(65536)
        if not chunk:
            raise MllpClientError("the server closed the connection without an ACK")
        data += chunk
    start = data.find(START_BLOCK)
    return data[start + 1 if start >= 0 else 0 : -len(END_BLOCK)]


def send(
    host: str,
    port: int,
    messages: list[bytes],
    *,
    timeout: float = 30.0,
    tls: ssl.SSLContext | None = None,
) -> Iterator[Ack]:
    """Send each message and yield its ACK, in order, over one connection."""
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except OSError as exc:
        raise MllpClientError(f"cannot connect to {host}:{port}: {exc.strerror or exc}") from None
    if tls is not None:
        try:
            sock = tls.wrap_socket(sock, server_hostname=host)
        except OSError as exc:
            sock.close()
            raise MllpClientError(f"TLS with {host}:{port} failed: {exc}") from None
    with sock:
        for message in messages:
            try:
                sock.sendall(START_BLOCK + message + END_BLOCK)
                answer = _read_frame(sock)
            except TimeoutError:
                raise MllpClientError(f"no ACK from {host}:{port} within {timeout:.0f} s") from None
            except OSError as exc:
                raise MllpClientError(f"connection to {host}:{port} failed: {exc}") from None
            code, text = parse_ack(answer.decode("utf-8", errors="replace"))
            yield Ack(control_id(message), code, text)
