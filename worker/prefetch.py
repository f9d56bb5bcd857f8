"""The next queued job's volume, read while the model runs on the current one.

A worker takes one job at a time (prefetch 1, acks late), so without help the
device waits while each series is decoded. After a job's volume is read the
worker looks up the oldest other queued job and reads its series in a
background thread; when that job's task arrives its files are taken from here
if none changed since (same paths, sizes and modification times), else read
again. Reading is free of side effects, so a prefetch for a job another worker
takes, or that waits for labs, costs only the decode.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from pathlib import Path

from tace.logging import get_logger
from worker.volume import SeriesVolume, read_volume

log = get_logger("tace.worker")

FileKey = tuple[tuple[str, int, int], ...]


def file_key(paths: Sequence[Path]) -> FileKey | None:
    """What the series is on disk now; None when a file is gone (the read will say why)."""
    try:
        stats = [(str(path), path.stat()) for path in paths]
    except OSError:
        return None
    return tuple((name, stat.st_size, stat.st_mtime_ns) for name, stat in stats)


class Prefetcher:
    """Holds at most one job's series being read ahead, keyed by their files."""

    def __init__(self, decode_pool: Executor) -> None:
        self._decode_pool = decode_pool
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="prefetch")
        self._lock = threading.Lock()
        self._pending: dict[FileKey, Future[SeriesVolume]] = {}
        self._looked_up: Future[None] = Future()
        self._looked_up.set_result(None)
        self.hits = 0
        """Series taken from a prefetch rather than read when their job ran."""

    def start(self, find: Callable[[], list[Sequence[Path]]]) -> None:
        """Read the series ``find`` names (called in the background), dropping an unused earlier prefetch."""
        looked_up: Future[None] = Future()
        with self._lock:
            self._pending = {}
            self._looked_up = looked_up
        self._thread.submit(self._run, find, looked_up)

    def _run(self, find: Callable[[], list[Sequence[Path]]], looked_up: Future[None]) -> None:
        try:
            series = find()
        except Exception as exc:  # noqa: BLE001 - a failed look-ahead only means the job reads its own files
            log.warning("prefetch.lookup_failed", error=f"{exc.__class__.__name__}: {exc}")
            series = []
        work = []
        with self._lock:
            for paths in series:
                key = file_key(paths)
                if key is not None:
                    future: Future[SeriesVolume] = Future()
                    self._pending[key] = future
                    work.append((paths, future))
        looked_up.set_result(None)
        for paths, future in work:
            try:
                future.set_result(read_volume(paths, executor=self._decode_pool))
            except Exception as exc:  # noqa: BLE001 - handed to the job that reads these files
                future.set_exception(exc)

    def read(self, paths: Sequence[Path]) -> SeriesVolume:
        """The series' volume: the prefetched one when its files are unchanged, else read now."""
        with self._lock:
            looked_up = self._looked_up
        looked_up.result()
        key = file_key(paths)
        with self._lock:
            future = self._pending.pop(key, None) if key is not None else None
        if future is None:
            return read_volume(paths, executor=self._decode_pool)
        self.hits += 1
        return future.result()
