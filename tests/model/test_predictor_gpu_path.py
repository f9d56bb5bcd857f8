"""The GPU execution path, exercised on the CPU: channels-last, a compiled backbone's fixed batch, warm-up.

On CUDA the predictor runs channels-last weights and a compiled backbone that
always sees ``slice_batch`` slices. The same code runs here with device='cpu';
only torch.compile itself is replaced (by the module it wraps), because
compiling a ResNet-50 on a CPU takes minutes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from structlog.testing import capture_logs

from model.checkpoint import load_checkpoint
from model.device import DeviceError, compile_wanted
from model.predictor import Predictor
from model.preprocess import StoredVolume
from model.synthetic import make_cohort
from tace.settings import Settings
from worker.context import WorkerContext


def _predictor(checkpoint: Path, **options: object) -> Predictor:
    return Predictor(load_checkpoint(checkpoint), torch.device("cpu"), **options)  # type: ignore[arg-type]  # options are the keyword flags under test


def _volume() -> np.ndarray:
    (case,) = make_cohort(1, seed=11, slices=20, size=48)
    assert case.volume_hu is not None
    return case.volume_hu


def test_channels_last_weights_give_the_same_prediction(demo_checkpoint: Path) -> None:
    volume = _volume()
    plain = _predictor(demo_checkpoint, channels_last=False)
    channels_last = _predictor(demo_checkpoint, channels_last=True)
    assert channels_last.channels_last and not plain.channels_last
    backbone = channels_last.model.backbone
    assert backbone is not None
    conv = next(m for m in backbone.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    expected = plain.predict(volume, {}).probability
    assert channels_last.predict(volume, {}).probability == pytest.approx(expected, abs=1e-5)


def test_a_compiled_backbone_sees_one_batch_shape_and_padding_changes_nothing(
    demo_checkpoint: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shapes: list[tuple[int, ...]] = []

    def compile_stand_in(module: torch.nn.Module, **options: object) -> torch.nn.Module:
        assert options == {"dynamic": False}
        module.register_forward_pre_hook(lambda _, args: shapes.append(tuple(args[0].shape)))
        return module

    monkeypatch.setattr(torch, "compile", compile_stand_in)
    volume = _volume()
    expected = _predictor(demo_checkpoint, compile_backbone=False, slice_batch=3).predict(volume, {})
    compiled = _predictor(demo_checkpoint, compile_backbone=True, slice_batch=3)
    result = compiled.predict(volume, {})
    assert result.slices_used == expected.slices_used == 8
    assert set(shapes) == {(3, 3, 32, 32)}, "the last chunk of 2 slices is padded to the batch"
    assert result.probability == pytest.approx(expected.probability, abs=1e-5)


def test_compile_mode_auto_compiles_on_cuda_only() -> None:
    assert compile_wanted("auto", torch.device("cuda")) is True
    assert compile_wanted("auto", torch.device("cpu")) is False
    assert compile_wanted("on", torch.device("cpu")) is True
    assert compile_wanted("off", torch.device("cuda")) is False
    with pytest.raises(DeviceError):
        compile_wanted("sometimes", torch.device("cpu"))


def test_stored_values_and_hu_give_the_same_prediction(demo_checkpoint: Path) -> None:
    volume = _volume()
    slope, intercept = 0.5, -1000.0
    stored = np.rint((volume - intercept) / slope).astype(np.int16)
    hu = stored.astype(np.float32) * np.float32(slope) + np.float32(intercept)
    predictor = _predictor(demo_checkpoint)
    from_stored = predictor.predict(
        StoredVolume(
            values=stored,
            slope=np.full(len(stored), slope, dtype=np.float32),
            intercept=np.full(len(stored), intercept, dtype=np.float32),
        ),
        {},
    )
    assert from_stored.probability == pytest.approx(predictor.predict(hu, {}).probability, abs=1e-6)


def test_the_worker_warms_the_model_up_once_at_start(demo_checkpoint: Path, data_dir: Path) -> None:
    settings = Settings(data_dir=data_dir, model_checkpoint=demo_checkpoint, device="cpu", compile="off")
    context = WorkerContext(settings, engine=None)  # type: ignore[arg-type]  # warm-up touches no database
    with capture_logs() as logs:
        predictor = context.warm_up()
    assert predictor.warm_ups == 1
    assert context.predictor is predictor
    (line,) = [entry for entry in logs if entry["event"] == "model.warmed_up"]
    assert line["compiled"] is False and line["device"] == "cpu" and line["seconds"] > 0


def test_unsigned_values_above_the_int16_range_survive_the_upload() -> None:
    values = np.array([[[0, 4095], [40000, 65535]]], dtype=np.uint16)
    stored = StoredVolume(
        values=values,
        slope=np.array([0.5], dtype=np.float32),
        intercept=np.array([-1024.0], dtype=np.float32),
    )
    expected = values.astype(np.float32) * np.float32(0.5) + np.float32(-1024.0)
    assert np.array_equal(stored.hu(), expected)
