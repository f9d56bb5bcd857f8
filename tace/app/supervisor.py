"""`tace up`: every service of the gateway as child processes of one command.

Each service runs as its own process (the listener never loads torch; the worker
owns the model), started from the same settings. Ready means our own children
hold the listening sockets, read from the kernel, not that something answers on
the port. A child that dies is restarted after a delay that doubles with each
failure soon after start; after a few such failures in a row the supervisor
gives up with the child's last error rather than restarting forever. Ctrl-C or
SIGTERM stops the children in reverse order, letting a worker finish the job in
hand (anything interrupted is requeued by the relay on the next start, as the
database says it was not done). On Linux each child is also told by the kernel
to stop (SIGTERM) when the supervisor dies, even by SIGKILL, so no orphan keeps
holding the ports.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tace.app import ports
from tace.logging import get_logger

log = get_logger("tace.up")

_PR_SET_PDEATHSIG = 1
_TAIL_BYTES = 64 * 1024


@dataclass(frozen=True)
class Service:
    name: str
    args: tuple[str, ...]
    port: int | None = None
    setting: str | None = None
    """The variable that sets ``port``, named in every message about the port."""
    stop_seconds: float = 30.0


@dataclass(frozen=True)
class RestartPolicy:
    """Delays double after each failure within ``fast_seconds`` of a start; ``give_up_after`` end it."""

    first_delay: float = 1.0
    max_delay: float = 30.0
    fast_seconds: float = 60.0
    give_up_after: int = 5

    def delay(self, failures: int) -> float:
        return min(self.first_delay * 2 ** max(failures - 1, 0), self.max_delay)


class GaveUp(Exception):
    """A service kept failing soon after each start; the message names it and its last error."""


@dataclass
class _Child:
    process: subprocess.Popen[bytes]
    started: float
    log_offset: int
    failures: int = 0
    restart_at: float | None = None


def _die_with(parent: int) -> Callable[[], None] | None:
    """A pre-exec hook asking the kernel for SIGTERM when ``parent`` dies (Linux only).

    The signal follows the thread that forked the child: the supervisor spawns
    from its main thread only, which lives as long as the process.
    """
    if not sys.platform.startswith("linux"):
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl

    def hook() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:
            os.kill(os.getpid(), signal.SIGTERM)

    return hook


def _signal_group(pid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signum)


def describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"exit status {code}"


def last_error(log_file: Path, offset: int) -> str:
    """The most telling line a child wrote since ``offset``: its one-line error, else its last line."""
    try:
        with log_file.open("rb") as handle:
            size = handle.seek(0, os.SEEK_END)
            handle.seek(max(offset, size - _TAIL_BYTES))
            text = handle.read().decode(errors="replace")
    except OSError:
        return ""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    for line in reversed(lines):
        if line.startswith("tace: error:"):
            return line.removeprefix("tace: error:").strip()
    for line in reversed(lines):
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if isinstance(event, dict) and event.get("level") in ("error", "critical"):
            exception = str(event.get("exception", "")).strip().splitlines()
            return f"{event.get('event')}{': ' + exception[-1] if exception else ''}"[:300]
    return lines[-1][:300] if lines else ""


@dataclass
class Supervisor:
    services: list[Service]
    env: dict[str, str]
    log_dir: Path
    policy: RestartPolicy = field(default_factory=RestartPolicy)
    children: dict[str, _Child] = field(default_factory=dict)

    def log_file(self, service: Service) -> Path:
        return self.log_dir / f"{service.name}.log"

    def _spawn(self, service: Service, failures: int = 0) -> _Child:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        path = self.log_file(service)
        with path.open("ab") as output:
            offset = output.tell()
            process = subprocess.Popen(
                [sys.executable, "-m", "tace", *service.args],
                env=self.env,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with(os.getpid()),
            )
        log.info("service.started", service=service.name, pid=process.pid)
        return _Child(process, time.monotonic(), offset, failures)

    def start(self) -> None:
        for service in self.services:
            self.children[service.name] = self._spawn(service)

    def pids(self) -> dict[str, int]:
        return {name: child.process.pid for name, child in self.children.items()}

    def _exit_problem(self, service: Service) -> str:
        child = self.children[service.name]
        code = child.process.returncode
        error = last_error(self.log_file(service), child.log_offset)
        return f"{service.name} stopped with {describe_exit(code)}" + (f": {error}" if error else "")

    def wait_ready(self, timeout: float, stop: threading.Event | None = None) -> list[str]:
        """Problems that keep the gateway from being ready (empty when our own processes serve).

        A port counts only when the listening socket belongs to the service's own
        process tree, and no other program listens on it as well. Returns early,
        with no problem, when ``stop`` is set.
        """
        deadline = time.monotonic() + timeout
        waiting = list(self.services)
        while waiting and not (stop and stop.is_set()):
            for service in list(waiting):
                child = self.children[service.name]
                if child.process.poll() is not None:
                    return [self._exit_problem(service)]
                if service.port is None:
                    waiting.remove(service)
                    continue
                held = ports.holders(service.port, child.process.pid)
                if held is None:
                    if ports.answers(service.port):
                        waiting.remove(service)
                    continue
                ours, foreign = held
                if foreign:
                    return [
                        f"port {service.port} ({service.setting}) is held by another program as well as "
                        f"{service.name}: stop that program or set {service.setting} to a free port"
                    ]
                if ours:
                    waiting.remove(service)
            if not waiting:
                break
            if time.monotonic() > deadline:
                return [
                    f"{s.name} is not listening on port {s.port} after {timeout:.0f} s"
                    if s.port
                    else f"{s.name} did not start"
                    for s in waiting
                ]
            time.sleep(0.2)
        return []

    def supervise(self, stop: threading.Event) -> None:
        """Restart children that die until ``stop`` is set; :class:`GaveUp` after repeated fast failures."""
        while not stop.wait(0.5):
            now = time.monotonic()
            for service in self.services:
                child = self.children[service.name]
                if child.restart_at is not None:
                    if now >= child.restart_at and not stop.is_set():
                        self.children[service.name] = self._spawn(service, child.failures)
                    continue
                code = child.process.poll()
                if code is None:
                    continue
                ran = now - child.started
                failures = child.failures + 1 if ran < self.policy.fast_seconds else 1
                problem = self._exit_problem(service)
                if failures >= self.policy.give_up_after:
                    log.error("service.gave_up", service=service.name, failures=failures, problem=problem)
                    raise GaveUp(
                        f"{service.name} failed {failures} times in a row within "
                        f"{self.policy.fast_seconds:.0f} s of starting; gave up. Last: {problem} "
                        f"(log: {self.log_file(service)})"
                    )
                delay = self.policy.delay(failures)
                log.error(
                    "service.died",
                    service=service.name,
                    exit=describe_exit(code),
                    ran_seconds=round(ran, 1),
                    failures=failures,
                    restart_in_seconds=delay,
                    problem=problem,
                )
                child.failures = failures
                child.restart_at = now + delay

    def shutdown(self) -> None:
        """SIGTERM in reverse start order; each gets its grace period, then SIGKILL."""
        for service in reversed(self.services):
            child = self.children.get(service.name)
            if child is None or child.process.poll() is not None:
                continue
            process = child.process
            _signal_group(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=service.stop_seconds)
            except subprocess.TimeoutExpired:
                log.error("service.killed", service=service.name, after_seconds=service.stop_seconds)
                _signal_group(process.pid, signal.SIGKILL)
                process.wait()
            log.info("service.stopped", service=service.name, exitcode=process.returncode)
