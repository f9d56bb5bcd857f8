"""The worker reads the next queued job's series while the model runs on the current one."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from tace.app.synthetic_ct import SeriesSpec, write_series
from worker.prefetch import Prefetcher
from worker.volume import read_volume


def _paths(tmp_path: Path) -> list[Path]:
    write_series(SeriesSpec(slices=5, rows=32, columns=32, signed=True, seed=3), tmp_path / "s")
    return sorted((tmp_path / "s").glob("*.dcm"))


def test_a_prefetched_series_is_handed_over_once_and_equals_a_fresh_read(tmp_path: Path) -> None:
    paths = _paths(tmp_path)
    with ThreadPoolExecutor(2) as pool:
        prefetch = Prefetcher(pool)
        prefetch.start(lambda: [paths])
        volume = prefetch.read(paths)
        assert prefetch.hits == 1
        assert np.array_equal(volume.pixels.values, read_volume(paths).pixels.values)
        prefetch.read(paths)
        assert prefetch.hits == 1, "a prefetch is used once; the second read reads the files"


def test_a_file_changed_after_the_prefetch_is_read_again(tmp_path: Path) -> None:
    paths = _paths(tmp_path)
    with ThreadPoolExecutor(2) as pool:
        prefetch = Prefetcher(pool)
        prefetch.start(lambda: [paths])
        prefetch._thread.submit(lambda: None).result()
        stat = paths[2].stat()
        os.utime(paths[2], ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
        prefetch.read(paths)
        assert prefetch.hits == 0


def test_a_failed_lookup_leaves_the_job_to_read_its_own_files(tmp_path: Path) -> None:
    paths = _paths(tmp_path)

    def broken() -> list[list[Path]]:
        raise RuntimeError("database gone")

    with ThreadPoolExecutor(2) as pool:
        prefetch = Prefetcher(pool)
        prefetch.start(broken)
        prefetch._thread.submit(lambda: None).result()
        assert len(prefetch.read(paths).pixels) == 5
        assert prefetch.hits == 0
