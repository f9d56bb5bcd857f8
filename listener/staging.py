"""Staging files: where received datasets wait for their checks, and how none is left behind.

Each receiving process streams datasets into ``staging/<pid>/``. A file leaves
by the ingestor (renamed into place or deleted), by the association's close
(a half-received or never-handled C-STORE is deleted, see
:func:`listener.pynetdicom_internals.discard_staging`), or, for whatever path
nobody foresaw, by the sweep here: every few seconds a receiver deletes files in
its own folder that no live association or handler holds and that have not
been written for longer than any PDU may take, and the folders of processes
that are gone.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from listener.completion import process_alive
from tace.logging import get_logger

log = get_logger("tace.listener.staging")


def own_folder(staging_dir: Path) -> Path:
    return staging_dir / str(os.getpid())


def remove_dead_folders(staging_dir: Path) -> int:
    """Folders of listener processes that no longer run (their half-received files)."""
    removed = 0
    if not staging_dir.is_dir():
        return 0
    for folder in staging_dir.iterdir():
        if folder.is_dir() and folder.name.isdigit() and not process_alive(int(folder.name)):
            shutil.rmtree(folder, ignore_errors=True)
            removed += 1
    return removed


class Sweeper:
    """Deletes orphans in this process's staging folder, on a timer, in a daemon thread."""

    def __init__(
        self,
        staging_dir: Path,
        live: Callable[[], Iterable[Path]],
        *,
        interval_seconds: float,
        orphan_after_seconds: float,
    ) -> None:
        self._staging_dir = staging_dir
        self._folder = own_folder(staging_dir)
        self._live = live
        self._interval = interval_seconds
        self._orphan_after = orphan_after_seconds
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="staging-sweep", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self.sweep()
            except Exception:
                log.exception("staging.sweep_failed")

    def sweep(self) -> int:
        """One pass; returns how many orphaned files were deleted."""
        remove_dead_folders(self._staging_dir)
        if not self._folder.is_dir():
            return 0
        live = {path.name for path in self._live()}
        cutoff = time.time() - self._orphan_after
        removed = 0
        for entry in os.scandir(self._folder):
            if entry.name in live or not entry.is_file(follow_symlinks=False):
                continue
            with contextlib.suppress(FileNotFoundError):
                if entry.stat(follow_symlinks=False).st_mtime < cutoff:
                    os.unlink(entry.path)
                    removed += 1
        if removed:
            log.warning("staging.orphans_removed", files=removed)
        return removed
