from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.listener import ListenerProcess
from tests.support.services import require_tool


@pytest.fixture
def start_listener(data_dir: Path, tmp_path: Path) -> Iterator[Callable[..., ListenerProcess]]:
    """Start `tace listen` with the given settings (quick completion timers by default)."""
    started: list[ListenerProcess] = []

    def start(**settings: object) -> ListenerProcess:
        settings.setdefault("series_quiet_seconds", 30)
        settings.setdefault("release_grace_seconds", 1)
        settings.setdefault("min_free_bytes", 0)
        settings.setdefault("log_format", "json")
        listener = ListenerProcess(
            data_dir=data_dir, log=tmp_path / f"listener-{len(started)}.log", settings=settings
        )
        started.append(listener)
        return listener.start()

    yield start
    for listener in started:
        listener.close()


@pytest.fixture
def dcmtk() -> None:
    require_tool("storescu", "/usr/bin/storescu")
