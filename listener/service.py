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
import threading
from multiprocessing.process import BaseProcess

from sqlalchemy.engine import Engine

from listener.completion import (
    CompletionPolicy,
    close_orphaned_associations,
    listener_identity,
    process_alive,
    run_scanner,
)
from listener.eligibility import EligibilityRules
from listener.server import Listener, tune_pynetdicom
from tace.db import make_engine
from tace.logging import get_logger
from tace.process import init_process
from tace.queue import Publisher, make_celery
from tace.relay import Relay
from tace.settings import Settings
from tace.storage import Storage

log = get_logger("tace.listener.service")


def policy_from(settings: Settings) -> CompletionPolicy:
    return CompletionPolicy(
        quiet_seconds=settings.series_quiet_seconds,
        grace_seconds=settings.release_grace_seconds,
        rules=EligibilityRules(
            min_slices=settings.min_slices, description_pattern=settings.series_description_pattern
        ),
    )


def _sweep_staging(storage: Storage) -> None:
    """Remove staging folders of listener processes that are gone (half-received files)."""
    if not storage.staging_dir.is_dir():
        return
    for folder in storage.staging_dir.iterdir():
        if folder.is_dir() and folder.name.isdigit() and not process_alive(int(folder.name)):
            shutil.rmtree(folder, ignore_errors=True)


def _receive(settings: Settings, engine: Engine, stop: threading.Event) -> None:
    storage = Storage(settings.data_dir)
    tune_pynetdicom(storage.staging_dir / str(os.getpid()))
    listener = Listener(settings, engine, identity=listener_identity())
    listener.start()
    try:
        stop.wait()
    finally:
        listener.stop()
        shutil.rmtree(storage.staging_dir / str(os.getpid()), ignore_errors=True)


def _child(settings: Settings) -> None:
    """A receiving process: stops on SIGTERM/SIGINT from the supervisor or the terminal."""
    init_process(settings)
    engine = make_engine(settings.effective_database_url)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    _receive(settings, engine, stop)


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
    storage = Storage(settings.data_dir)
    storage.ensure()
    _sweep_staging(storage)
    close_orphaned_associations(engine)
    threads = _background(settings, engine, stop, relay)
    try:
        if settings.listener_processes == 1:
            _receive(settings, engine, stop)
        else:
            _supervise(settings, stop)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=10)
    log.info("listener.stopped")


def _supervise(settings: Settings, stop: threading.Event) -> None:
    context = multiprocessing.get_context("spawn")
    children: list[BaseProcess] = []

    def launch() -> BaseProcess:
        process = context.Process(target=_child, args=(settings,), name="tace-listener", daemon=True)
        process.start()
        return process

    children = [launch() for _ in range(settings.listener_processes)]
    log.info("listener.supervising", processes=len(children), port=settings.dicom_port)
    while not stop.wait(1.0):
        for index, process in enumerate(children):
            if not process.is_alive():
                log.error("listener.process_died", pid=process.pid, exitcode=process.exitcode)
                children[index] = launch()
    for process in children:
        if process.is_alive():
            process.terminate()
    for process in children:
        process.join(timeout=15)
        if process.is_alive():
            process.kill()
