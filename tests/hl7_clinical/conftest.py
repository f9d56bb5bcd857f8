from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine

from tace.db import make_engine
from tests.support.processes import spawn, stop, tace_command, tace_env
from tests.support.services import free_port, wait_for_port

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
    data = b""
    while not data.endswith(END):
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed after {data!r}")
        data += chunk
    assert data.startswith(START)
    return data[1 : -len(END)].decode()


def msa(ack: str) -> list[str]:
    line = next(segment for segment in ack.split("\r") if segment.startswith("MSA|"))
    return line.split("|")


@pytest.fixture
def start_hl7(data_dir: Path, tmp_path: Path) -> Iterator[Callable[..., Hl7Listener]]:
    processes = []
    engines = []

    def start(**settings: object) -> Hl7Listener:
        port = free_port()
        settings.setdefault("log_format", "json")
        env = tace_env(data_dir=data_dir, hl7_port=port, **settings)
        processes.append(spawn(tace_command("hl7"), env, tmp_path / f"hl7-{len(processes)}.log"))
        wait_for_port(port, timeout=30)
        url = settings.get("database_url") or f"sqlite:///{data_dir / 'tace.db'}"
        engine = make_engine(str(url))
        engines.append(engine)
        return Hl7Listener(port, data_dir, engine)

    yield start
    for process in processes:
        stop(process)
    for engine in engines:
        engine.dispose()
