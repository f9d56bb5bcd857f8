"""`tace listen`: the listener process(es), the completion scanner and the outbox relay.

With ``listener_processes`` > 1 the parent supervises that many receiving
processes sharing the port (SO_REUSEPORT, so the kernel spreads associations
across them and the GIL stops being the limit) and runs the scanner and relay
itself; with one, everything runs in this process.
"""

from __future__ import annotations

import multiprocessing
import os
import shutil
import signal
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess

from sqlalchemy.engine import Engine

from listener.completion import (
    CompletionPolicy,
    close_orphaned_associations,
    listener_identity,
    run_scanner,
)
from listener.eligibility import EligibilityRules
from listener.phases import PhaseRules
from listener.server import Listener, tune_process
from listener.staging import own_folder, remove_dead_folders
from listener.study import StudyPolicy
from tace.contract import ContractSource, checkpoint_path
from tace.db import make_engine
from tace.logging import get_logger
from tace.process import init_process
from tace.queue import Publisher, make_celery
from tace.relay import Relay
from tace.settings import Settings
from tace.storage import Storage

log = get_logger("tace.listener.service")

FIRST_RETRY_SECONDS = 1.0
MAX_RETRY_SECONDS = 60.0
STABLE_SECONDS = 60.0
"""A receiver that served this long before dying is restarted without the backoff it had built up."""


def policy_from(settings: Settings) -> CompletionPolicy:
    return CompletionPolicy(
        quiet_seconds=settings.series_quiet_seconds,
        grace_seconds=settings.release_grace_seconds,
        rules=EligibilityRules(
            min_slices=settings.min_slices, description_pattern=settings.series_description_pattern
        ),
        study=StudyPolicy(
            contract=ContractSource(checkpoint_path(settings.model_checkpoint, settings.data_dir)),
            rules=PhaseRules.load(settings.phase_rules) if settings.phase_rules else PhaseRules.default(),
            quiet_seconds=settings.study_quiet_seconds,
        ),
    )


def check_port_free(host: str, port: int) -> None:
    """Receivers bind with SO_REUSEPORT, which would let them join another process's socket on
    this port (a listener left running, another installation); bind once without it first.

    Raises the bind's OSError (EADDRINUSE, EACCES ...) for the caller to explain.
    """
    family, kind, proto, _, address = socket.getaddrinfo(
        host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind(address)


def _receive(
    settings: Settings, engine: Engine, stop: threading.Event, ready: Callable[[], None] | None = None
) -> None:
    storage = Storage(settings.data_dir)
    tune_process(storage.staging_dir)
    listener = Listener(settings, engine, identity=listener_identity())
    listener.start()
    if ready is not None:
        ready()
    try:
        stop.wait()
    finally:
        listener.stop()
        shutil.rmtree(own_folder(storage.staging_dir), ignore_errors=True)


def _child(settings: Settings, report: Connection) -> None:
    """A receiving process: tells the supervisor it serves, or why it could not; stops on SIGTERM/SIGINT."""
    init_process(settings)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    try:
        engine = make_engine(settings.effective_database_url)
        _receive(settings, engine, stop, ready=lambda: report.send(("ready", os.getpid())))
    except Exception as exc:  # noqa: BLE001 - whatever ends a receiver is reported, once, by the supervisor
        report.send(("failed", f"{exc.__class__.__name__}: {exc}"))
        raise SystemExit(1) from None


def _background(
    settings: Settings, engine: Engine, stop: threading.Event, relay: bool
) -> list[threading.Thread]:
    threads = [
        threading.Thread(target=run_scanner, args=(engine, policy_from(settings), stop), name="completion")
    ]
    if relay:
        outbox = Relay(engine, Publisher(make_celery(settings)), stall_seconds=settings.job_stall_seconds)
        threads.append(
            threading.Thread(target=outbox.run, args=(stop, settings.relay_interval_seconds), name="relay")
        )
    for thread in threads:
        thread.start()
    return threads


def serve(settings: Settings, engine: Engine, stop: threading.Event, *, relay: bool = True) -> None:
    """Run until ``stop`` is set; every acknowledged instance is already durable when it returns."""
    check_port_free(settings.bind_host, settings.dicom_port)
    storage = Storage(settings.data_dir)
    storage.ensure()
    remove_dead_folders(storage.staging_dir)
    close_orphaned_associations(engine)
    threads = _background(settings, engine, stop, relay)
    try:
        if settings.listener_processes == 1:
            _receive(settings, engine, stop)
        else:
            _Supervisor(settings).run(stop)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=10)
    log.info("listener.stopped")


@dataclass
class _Slot:
    """One of the N receiving processes, across its restarts."""

    index: int
    process: BaseProcess | None = None
    report: Connection | None = None
    started_at: float = 0.0
    ready: bool = False
    error: str | None = None
    failures: int = 0
    retry_at: float = 0.0


class _Supervisor:
    """Keeps ``listener_processes`` receivers running; a receiver that keeps dying is retried
    with exponential backoff, and each distinct error is logged once."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._context = multiprocessing.get_context("spawn")
        self._slots = [_Slot(index) for index in range(settings.listener_processes)]
        self._reported: set[str] = set()

    def run(self, stop: threading.Event) -> None:
        for slot in self._slots:
            self._launch(slot)
        log.info("listener.supervising", processes=len(self._slots), port=self._settings.dicom_port)
        try:
            while not stop.wait(0.2):
                now = time.monotonic()
                for slot in self._slots:
                    self._check(slot, now)
        finally:
            self._stop_all()

    def _launch(self, slot: _Slot) -> None:
        parent_end, child_end = self._context.Pipe(duplex=False)
        process = self._context.Process(
            target=_child, args=(self._settings, child_end), name=f"tace-listener-{slot.index}", daemon=True
        )
        process.start()
        child_end.close()
        slot.process, slot.report = process, parent_end
        slot.started_at, slot.ready, slot.error = time.monotonic(), False, None

    def _check(self, slot: _Slot, now: float) -> None:
        if slot.process is None:
            if now >= slot.retry_at:
                self._launch(slot)
            return
        self._read_reports(slot)
        if slot.process.is_alive():
            return
        self._read_reports(slot)
        error = slot.error or f"exited with code {slot.process.exitcode}"
        if slot.ready and now - slot.started_at >= STABLE_SECONDS:
            slot.failures = 0
        slot.failures += 1
        delay = min(MAX_RETRY_SECONDS, FIRST_RETRY_SECONDS * 2 ** (slot.failures - 1))
        if error not in self._reported:
            self._reported.add(error)
            log.error(
                "listener.receiver_failed",
                slot=slot.index,
                pid=slot.process.pid,
                error=error,
                was_serving=slot.ready,
            )
        log.warning("listener.receiver_retry", slot=slot.index, attempt=slot.failures, retry_in=delay)
        if slot.report is not None:
            slot.report.close()
        slot.process, slot.report, slot.retry_at = None, None, now + delay

    def _read_reports(self, slot: _Slot) -> None:
        report = slot.report
        try:
            while report is not None and report.poll():
                kind, detail = report.recv()
                if kind == "ready":
                    slot.ready = True
                    log.info("listener.receiver_ready", slot=slot.index, pid=detail)
                else:
                    slot.error = str(detail)
        except (EOFError, OSError):
            return

    def _stop_all(self) -> None:
        running = [slot.process for slot in self._slots if slot.process is not None]
        for process in running:
            if process.is_alive():
                process.terminate()
        for process in running:
            process.join(timeout=15)
            if process.is_alive():
                process.kill()
