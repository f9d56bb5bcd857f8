from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from model.checkpoint import CheckpointError, load_checkpoint, read_meta
from model.predictor import Predictor
from model.synthetic import make_cohort


def test_demo_checkpoint_round_trips_with_its_metadata(demo_checkpoint: Path) -> None:
    loaded = load_checkpoint(demo_checkpoint)
    meta = loaded.meta
    assert meta.demo is True
    assert meta.model_name == "CLDCA"
    assert meta.preprocess.image_size == 32
    assert len(meta.schema.features) == 43
    assert set(meta.normalization.median) == set(meta.schema.columns)
    assert 0.0 <= meta.metrics["held_out"]["auc"] <= 1.0
    assert meta.validation["auc"]["low"] <= meta.metrics["held_out"]["auc"] <= meta.validation["auc"]["high"]
    assert meta.metrics["held_out"]["threshold"] == meta.threshold
    assert "synthetic" in meta.training["data"]
    assert len(loaded.sha256) == 64
    state = load_file(str(demo_checkpoint))
    for name, tensor in loaded.model.state_dict().items():
        torch.testing.assert_close(tensor, state[name])


def _edit_header(source: Path, target: Path, edit) -> None:
    raw = source.read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + length])
    edit(header)
    encoded = json.dumps(header).encode()
    encoded += b" " * (-len(encoded) % 8)
    target.write_bytes(struct.pack("<Q", len(encoded)) + encoded + raw[8 + length :])


def test_damaged_weights_are_refused(demo_checkpoint: Path, tmp_path: Path) -> None:
    damaged = tmp_path / "damaged.safetensors"
    raw = bytearray(demo_checkpoint.read_bytes())
    raw[-100] ^= 0xFF
    damaged.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="weights do not match their recorded sha256"):
        load_checkpoint(damaged)


def test_truncated_and_foreign_files_are_refused(demo_checkpoint: Path, tmp_path: Path) -> None:
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(demo_checkpoint.read_bytes()[:5000])
    with pytest.raises(CheckpointError, match="truncated.safetensors"):
        load_checkpoint(truncated)
    foreign = tmp_path / "foreign.safetensors"
    save_file({"x": torch.zeros(2)}, str(foreign))
    with pytest.raises(CheckpointError, match="without TACE checkpoint metadata"):
        read_meta(foreign)
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        read_meta(tmp_path / "absent.safetensors")


def test_config_that_does_not_fit_the_weights_is_refused(demo_checkpoint: Path, tmp_path: Path) -> None:
    mismatched = tmp_path / "mismatched.safetensors"

    def make_clinical_only(header: dict) -> None:
        meta = json.loads(header["__metadata__"]["tace_checkpoint"])
        meta["config"]["lstm_hidden"] = 64
        meta["weights_sha256"] = ""
        header["__metadata__"]["tace_checkpoint"] = json.dumps(meta)

    _edit_header(demo_checkpoint, mismatched, make_clinical_only)
    with pytest.raises(CheckpointError) as caught:
        load_checkpoint(mismatched)
    assert "has shape" in str(caught.value) and "the config needs" in str(caught.value)


def test_predictor_maps_a_volume_and_labs_to_a_typed_result(demo_checkpoint: Path) -> None:
    predictor = Predictor.load(demo_checkpoint, device="cpu")
    (case,) = make_cohort(1, seed=3, slices=20, size=48)
    labs = dict(case.clinical)
    labs["albumin"] = None
    result = predictor.predict(case.volume_hu, labs)
    assert 0.0 <= result.probability <= 1.0
    meta = load_checkpoint(demo_checkpoint).meta
    assert result.threshold == meta.threshold
    assert result.label == (
        "disease_control" if result.probability >= meta.threshold else "progressive_disease"
    )
    assert result.validation == meta.validation_statement
    assert result.validation is not None and result.validation.startswith("held-out AUC ")
    assert (result.model_name, result.model_version, result.demo) == ("CLDCA", "demo-1", True)
    assert result.checkpoint_sha256 == load_checkpoint(demo_checkpoint).sha256
    assert "albumin" in result.missing_features
    assert result.slices_used == 8
    again = predictor.predict(case.volume_hu, labs)
    assert again.probability == result.probability


def test_predictor_decides_at_the_checkpoints_threshold(demo_checkpoint: Path, tmp_path: Path) -> None:
    (case,) = make_cohort(1, seed=3, slices=20, size=48)
    probability = (
        Predictor.load(demo_checkpoint, device="cpu").predict(case.volume_hu, case.clinical).probability
    )
    outcomes = {}
    for threshold in (probability - 0.01, probability + 0.01):
        edited = tmp_path / f"threshold-{threshold:.4f}.safetensors"

        def set_threshold(header: dict, value: float = threshold) -> None:
            meta = json.loads(header["__metadata__"]["tace_checkpoint"])
            meta["threshold"] = value
            header["__metadata__"]["tace_checkpoint"] = json.dumps(meta)

        _edit_header(demo_checkpoint, edited, set_threshold)
        result = Predictor.load(edited, device="cpu").predict(case.volume_hu, case.clinical)
        assert result.probability == probability and result.threshold == threshold
        outcomes[threshold] = result.label
    assert list(outcomes.values()) == ["disease_control", "progressive_disease"]


def test_predictor_refuses_an_impossible_lab_value(demo_checkpoint: Path) -> None:
    from model.schema import SchemaError

    predictor = Predictor.load(demo_checkpoint, device="cpu")
    with pytest.raises(SchemaError, match="sodium"):
        predictor.predict(np.zeros((4, 32, 32), dtype=np.float32), {"sodium": 400})


def test_cuda_without_a_gpu_is_a_clear_error(demo_checkpoint: Path) -> None:
    from model.device import DeviceError

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(DeviceError, match="no CUDA device"):
        Predictor.load(demo_checkpoint, device="cuda")


def test_copy_keeps_the_same_hash(demo_checkpoint: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy.safetensors"
    shutil.copy(demo_checkpoint, copy)
    assert load_checkpoint(copy).sha256 == load_checkpoint(demo_checkpoint).sha256
