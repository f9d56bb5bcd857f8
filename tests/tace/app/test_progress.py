"""Long work shows progress in a log file too, not only as bars on a terminal."""

from __future__ import annotations

import pytest

from tace.app.cli import progress


def test_without_a_terminal_progress_is_a_line_now_and_then_and_at_the_end(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = iter([100.0, 101.0, 111.0, 112.0])
    monkeypatch.setattr(progress.time, "monotonic", lambda: next(clock))
    with progress.progress_bars() as report:
        report("demo training", 0, 180)
        report("demo training", 10, 180)
        report("demo training", 90, 180)
        report("demo training", 180, 180)
    assert capsys.readouterr().err.splitlines() == [
        "demo training: 0/180",
        "demo training: 90/180",
        "demo training: 180/180 done",
    ]
