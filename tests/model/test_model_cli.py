"""`tace train`, `tace evaluate`, `tace model demo|info|cohort` and `tace bench model` as users run them."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from model.resnet import ResNet50
from tests.support.processes import tace_env

pytestmark = pytest.mark.slow


def tace(*args: str, data_dir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tace", *args],
        env=tace_env(data_dir=data_dir, device="cpu"),
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_train_and_evaluate_end_to_end(tmp_path: Path, data_dir: Path) -> None:
    cohort = tmp_path / "cohort"
    made = tace(
        "model", "cohort", str(cohort), "--cases", "24", "--slices", "4", "--size", "32", data_dir=data_dir
    )
    assert made.returncode == 0, made.stderr
    run = tmp_path / "run"
    trained = tace(
        "train",
        str(cohort / "manifest.csv"),
        "--out",
        str(run),
        "--folds",
        "2",
        "--epochs",
        "2",
        "--image-size",
        "32",
        "--ablations",
        data_dir=data_dir,
    )
    assert trained.returncode == 0, trained.stderr
    assert "full: AUC" in trained.stdout and "clinical_only: AUC" in trained.stdout
    report = json.loads((run / "full" / "report.json").read_text())
    assert len(report["cross_validation"]["folds"]) == 2
    assert set(report["cross_validation"]["summary"]) == {"auc", "accuracy", "precision", "recall"}
    for png in (run / "full" / "roc.png", run / "full" / "calibration.png", run / "ablations_roc.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = (run / "ablations.md").read_text()
    for variant in (
        "full",
        "no_cross_attention",
        "no_self_attention",
        "no_lstm",
        "image_only",
        "clinical_only",
    ):
        assert f"| {variant} |" in table

    evaluated = tace(
        "evaluate",
        str(run / "model.safetensors"),
        str(cohort / "manifest.csv"),
        "--out",
        str(tmp_path / "eval"),
        data_dir=data_dir,
    )
    assert evaluated.returncode == 0, evaluated.stderr
    evaluation = json.loads((tmp_path / "eval" / "evaluation.json").read_text())
    assert evaluation["metrics"]["n"] == 24 and len(evaluation["cases"]) == 24
    assert (tmp_path / "eval" / "roc.png").exists()


def test_model_info_of_a_demo_checkpoint(demo_checkpoint: Path, data_dir: Path) -> None:
    result = tace("model", "info", str(demo_checkpoint), "--json", data_dir=data_dir)
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["demo"] is True
    assert info["parameters"]["backbone"] == 23_508_032
    assert set(info["parameters"]) >= {
        "backbone",
        "slice_encoder",
        "clinical_encoder",
        "cross_attention",
        "self_attention",
        "head",
        "total",
    }
    assert 0.0 <= info["metrics"]["held_out"]["auc"] <= 1.0
    text = tace("model", "info", str(demo_checkpoint), data_dir=data_dir).stdout
    assert "[DEMO - synthetic training data]" in text


def test_model_info_without_argument_shows_the_active_checkpoint(
    demo_checkpoint: Path, data_dir: Path
) -> None:
    none_yet = tace("model", "info", data_dir=data_dir)
    demo_path = data_dir / "models" / "demo.safetensors"
    assert none_yet.returncode == 2
    assert none_yet.stderr.strip() == (
        f"tace: error: no active checkpoint: TACE_MODEL_CHECKPOINT is not set and the demo model "
        f"{demo_path} (in the data dir, TACE_DATA_DIR) does not exist yet; `tace up` makes it"
    )
    demo_path.parent.mkdir()
    shutil.copyfile(demo_checkpoint, demo_path)
    info = json.loads(tace("model", "info", "--json", data_dir=data_dir).stdout)
    assert (info["path"], info["demo"]) == (str(demo_path), True)
    configured = subprocess.run(
        [sys.executable, "-m", "tace", "model", "info", "--json"],
        env=tace_env(data_dir=data_dir, model_checkpoint=demo_checkpoint),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert json.loads(configured.stdout)["path"] == str(demo_checkpoint)


def test_demo_with_a_misfit_backbone_file_is_one_line(tmp_path: Path, data_dir: Path) -> None:
    state = ResNet50().state_dict()
    state["layer3.0.conv2.weight"] = torch.zeros(1, 2, 3)
    bad = tmp_path / "bad.pth"
    torch.save(state, bad)
    result = tace(
        "model",
        "demo",
        str(tmp_path / "demo.safetensors"),
        "--backbone-weights",
        str(bad),
        "--cases",
        "12",
        "--epochs",
        "1",
        "--image-size",
        "32",
        data_dir=data_dir,
    )
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"tace: error: {bad}: parameter 'layer3.0.conv2.weight' has shape (1, 2, 3), ResNet-50 needs (256, 256, 3, 3)"
    )


def test_demo_writes_a_flagged_checkpoint_from_imagenet_format_weights(
    tmp_path: Path, data_dir: Path
) -> None:
    weights = tmp_path / "resnet50.pth"
    state = dict(ResNet50().state_dict())
    state["fc.weight"], state["fc.bias"] = torch.zeros(1000, 2048), torch.zeros(1000)
    torch.save(state, weights)
    out = tmp_path / "demo.safetensors"
    result = tace(
        "model",
        "demo",
        str(out),
        "--backbone-weights",
        str(weights),
        "--cases",
        "16",
        "--epochs",
        "1",
        "--image-size",
        "32",
        data_dir=data_dir,
    )
    assert result.returncode == 0, result.stderr
    assert "held-out AUC" in result.stdout and "synthetic data" in result.stdout
    info = json.loads(tace("model", "info", str(out), "--json", data_dir=data_dir).stdout)
    assert info["demo"] is True and info["training"]["backbone_weights"] == str(weights)


def test_bench_model_prints_the_ratio_to_a_bare_resnet(data_dir: Path) -> None:
    result = tace(
        "bench",
        "model",
        "--device",
        "cpu",
        "--slices",
        "4",
        "--image-size",
        "32",
        "--seconds",
        "0.2",
        data_dir=data_dir,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert lines[0].startswith("device: CPU")
    fields = lines[-1].split()
    assert fields[0] == "fp32"
    bare, cldca, ratio = (float(fields[i].replace(",", "")) for i in (2, 3, 5))
    assert bare > 0 and cldca > 0
    assert ratio == pytest.approx(cldca / bare, rel=0.02, abs=0.006)
