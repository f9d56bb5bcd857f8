"""`tace up`: every service of the gateway as child processes of one command.

Each service runs as its own process (the listener never loads torch; the worker
owns the model), started from the same settings. Children that die are restarted;
Ctrl-C or SIGTERM stops them in order, letting a worker finish the job in hand
(anything interrupted is requeued by the relay on the next start, as the
database says it was not done).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tace.logging import get_logger

log = get_logger("tace.up")


@dataclass(frozen=True)
class Service:
    name: str
    args: tuple[str, ...]
    port: int | None = None
    stop_seconds: float = 30.0


@dataclass
class Supervisor:
    services: list[Service]
    env: dict[str, str]
    log_dir: Path
    restart_delay: float = 2.0
    children: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def _spawn(self, service: Service) -> subprocess.Popen[bytes]:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        output = (self.log_dir / f"{service.name}.log").open("ab")
        process = subprocess.Popen(
            [sys.executable, "-m", "tace", *service.args],
            env=self.env,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.info("service.started", service=service.name, pid=process.pid)
        return process

    def start(self) -> None:
        for service in self.services:
            self.children[service.name] = self._spawn(service)

    def wait_ready(self, timeout: float) -> list[str]:
        """Services whose port is not open after ``timeout`` seconds (empty when all are up)."""
        deadline = time.monotonic() + timeout
        waiting = [s for s in self.services if s.port is not None]
        while waiting and time.monotonic() < deadline:
            for service in list(waiting):
                if self.children[service.name].poll() is not None:
                    return [f"{service.name} exited with {self.children[service.name].returncode}"]
                if _listening(service.port):
                    waiting.remove(service)
            time.sleep(0.2)
        return [f"{s.name} not listening on port {s.port}" for s in waiting]

    def supervise(self, stop: threading.Event, on_restart: Callable[[str], None] | None = None) -> None:
        while not stop.wait(1.0):
            for service in self.services:
                process = self.children[service.name]
                if process.poll() is not None and not stop.is_set():
                    log.error("service.died", service=service.name, exitcode=process.returncode)
                    time.sleep(self.restart_delay)
                    self.children[service.name] = self._spawn(service)
                    if on_restart:
                        on_restart(service.name)

    def shutdown(self) -> None:
        """SIGTERM in reverse start order; each gets its grace period, then SIGKILL."""
        for service in reversed(self.services):
            process = self.children.get(service.name)
            if process is None or process.poll() is not None:
                continue
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=service.stop_seconds)
            except subprocess.TimeoutExpired:
                log.error("service.killed", service=service.name, after_seconds=service.stop_seconds)
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
            log.info("service.stopped", service=service.name, exitcode=process.returncode)


def _listening(port: int | None) -> bool:
    if port is None:
        return True
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False
