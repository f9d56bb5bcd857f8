from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.up import Up


@pytest.fixture
def start_up(data_dir: Path, tmp_path: Path, demo_checkpoint: Path) -> Iterator[Callable[..., Up]]:
    started: list[Up] = []

    def start(**settings: object) -> Up:
        defaults = {
            "model_checkpoint": demo_checkpoint,
            "device": "cpu",
            "release_grace_seconds": 1,
            "min_slices": 8,
            "min_free_bytes": 0,
            "job_stall_seconds": 5,
            "relay_interval_seconds": 0.3,
        }
        defaults.update(settings)
        instance = Up(data_dir, tmp_path / f"up-{len(started)}.out", defaults)
        started.append(instance)
        instance.start()
        return instance

    yield start
    for instance in started:
        instance.close()
