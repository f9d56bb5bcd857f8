"""Demo weights are trained once per machine and user, kept outside the data dir, copied into it."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from tace.settings import Settings
from worker import context
from worker.context import demo_cache_path, ensure_checkpoint


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return demo_cache_path()


def test_a_new_data_dir_copies_the_cached_demo_without_training(
    cache: Path,
    demo_checkpoint: Path,
    make_settings: Callable[..., Settings],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert cache.parent.parent.name == "cache"
    cache.parent.mkdir(parents=True)
    shutil.copyfile(demo_checkpoint, cache)

    def no_training(*args: object, **kwargs: object) -> None:
        raise AssertionError("trained although the cache holds demo weights")

    monkeypatch.setattr(context, "make_demo_checkpoint", no_training)
    path = ensure_checkpoint(make_settings())
    assert path == make_settings().data_dir / "models" / "demo.safetensors"
    assert path.read_bytes() == demo_checkpoint.read_bytes()


def test_a_damaged_cache_is_trained_again_and_then_reused(
    cache: Path,
    demo_checkpoint: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cache.parent.mkdir(parents=True)
    cache.write_bytes(b"not a checkpoint")
    trained: list[Path] = []

    def fake_training(out: Path, **kwargs: object) -> tuple[Path, object]:
        trained.append(out)
        shutil.copyfile(demo_checkpoint, out)
        from model.checkpoint import read_meta

        return out, read_meta(out)

    monkeypatch.setattr(context, "make_demo_checkpoint", fake_training)
    first = ensure_checkpoint(Settings(data_dir=tmp_path / "one"))
    second = ensure_checkpoint(Settings(data_dir=tmp_path / "two"))
    assert trained == [cache]
    assert first.read_bytes() == second.read_bytes() == demo_checkpoint.read_bytes()
