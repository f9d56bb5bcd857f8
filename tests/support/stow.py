"""`tace stow` in its own process, and a hand-made multipart/related body for what clients won't send."""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy.engine import Engine

from tace.db import make_engine
from tests.support.processes import kill_hard, spawn, stop, tace_command, tace_env
from tests.support.services import free_port, wait_for_port

TOKEN = "stow-test-token"


@dataclass
class StowProcess:
    data_dir: Path
    log: Path
    settings: dict[str, object]
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    _engine: Engine | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/dicomweb"

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            self._engine = make_engine(f"sqlite:///{self.data_dir / 'tace.db'}")
        return self._engine

    def start(self) -> StowProcess:
        env = tace_env(data_dir=self.data_dir, stow_port=self.port, **self.settings)
        self.process = spawn(tace_command("stow"), env, self.log)
        wait_for_port(self.port, timeout=30)
        return self

    def kill(self) -> None:
        assert self.process is not None
        kill_hard(self.process)
        self.process = None

    def close(self) -> None:
        if self.process is not None:
            stop(self.process)
            self.process = None
        if self._engine is not None:
            self._engine.dispose()


def multipart(parts: Iterable[tuple[str, bytes]]) -> tuple[bytes, str]:
    """(body, Content-Type) of a multipart/related body with the given (part type, bytes)."""
    boundary = uuid.uuid4().hex
    body = b""
    for media, content in parts:
        body += f"--{boundary}\r\nContent-Type: {media}\r\n\r\n".encode() + content + b"\r\n"
    body += f"--{boundary}--\r\n".encode()
    return body, f'multipart/related; type="application/dicom"; boundary={boundary}'
