"""`tace up` as users start it, on free ports, in a temp data dir."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support import responses
from tests.support.hl7_messages import oru
from tests.support.processes import REPO_ROOT, tace_command, tace_env
from tests.support.services import free_port


@dataclass
class Up:
    data_dir: Path
    output: Path
    settings: dict[str, Any]
    dicom_port: int = field(default_factory=free_port)
    hl7_port: int = field(default_factory=free_port)
    api_port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 180) -> str:
        env = tace_env(
            data_dir=self.data_dir,
            dicom_port=self.dicom_port,
            hl7_port=self.hl7_port,
            api_port=self.api_port,
            **self.settings,
        )
        return self.launch(env, REPO_ROOT, timeout)

    def launch(self, env: dict[str, str], cwd: Path, timeout: float = 180) -> str:
        """Start `tace up` with exactly this environment; returns its output once it says ready."""
        offset = self.output.stat().st_size if self.output.exists() else 0
        handle = self.output.open("ab")
        self.process = subprocess.Popen(
            tace_command("up"),
            env=env,
            cwd=cwd,
            stdout=handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.output.read_bytes()[offset:].decode(errors="replace")
            if "\nready" in text:
                return text
            if self.process.poll() is not None:
                raise AssertionError(f"tace up exited {self.process.returncode}: {text[-3000:]}")
            time.sleep(0.3)
        raise AssertionError(f"tace up not ready after {timeout}s: {self.output.read_text()[-3000:]}")

    def interrupt(self, timeout: float = 180) -> int:
        """Ctrl-C, as in a terminal."""
        assert self.process is not None
        os.killpg(self.process.pid, signal.SIGINT)
        code = self.process.wait(timeout=timeout)
        self.process = None
        return code

    @property
    def token(self) -> str:
        return (self.data_dir / "api-token").read_text().strip()

    def api(self, path: str) -> Any:
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.api_port}{path}", headers={"Authorization": f"Bearer {self.token}"}
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            body = response.read()
        responses.record("GET", request.full_url, response.status, body)
        return json.loads(body)

    def metrics(self) -> dict[str, float]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.api_port}/metrics", timeout=10) as response:
            lines = response.read().decode().splitlines()
        values = {}
        for line in lines:
            if line.startswith("tace_"):
                name, _, value = line.rpartition(" ")
                values[name] = float(value)
        return values

    def send_labs(self, control_id: str, patient_id: str, observations: list[str]) -> str:
        message = oru(control_id, observations, patient=f"PID|1||{patient_id}^^^^MR")
        with socket.create_connection(("127.0.0.1", self.hl7_port), timeout=10) as sock:
            sock.sendall(b"\x0b" + message.encode() + b"\x1c\r")
            data = b""
            while not data.endswith(b"\x1c\r"):
                data += sock.recv(65536)
        return data.decode()

    def close(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=120)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
