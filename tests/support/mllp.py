"""An MLLP client for tests: frames, reads ACKs, picks MSA fields."""

from __future__ import annotations

import socket
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.engine import Engine

START, END = b"\x0b", b"\x1c\r"


@dataclass
class Hl7Listener:
    port: int
    data_dir: Path
    engine: Engine

    def connect(self) -> socket.socket:
        return socket.create_connection(("127.0.0.1", self.port), timeout=10)

    def exchange(self, message: str | bytes, sock: socket.socket | None = None) -> str:
        """Send one framed message and return the ACK text."""
        own = sock is None
        sock = sock or self.connect()
        payload = message.encode() if isinstance(message, str) else message
        sock.sendall(START + payload + END)
        ack = read_frame(sock)
        if own:
            sock.close()
        return ack


def read_frame(sock: socket.socket) -> str:
    """An ACK as text; bytes an ACK echoes from a message that was not valid UTF-8 show as U+FFFD."""
    return read_frame_bytes(sock).decode(errors="replace")


def read_frame_bytes(sock: socket.socket) -> bytes:
    """The bytes of one MLLP frame, without the start and end blocks."""
    data = b""
    while not data.endswith(END):
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed after {data!r}")
        data += chunk
    assert data.startswith(START)
    return data[1 : -len(END)]


def msa(ack: str) -> list[str]:
    line = next(segment for segment in ack.split("\r") if segment.startswith("MSA|"))
    return line.split("|")
