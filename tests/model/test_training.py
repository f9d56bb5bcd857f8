"""The synthetic-cohort learning test: the network must find a signal planted in both modalities."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from model.config import CLDCAConfig, PreprocessConfig, Variant
from model.data import ManifestError, load_cached_volume, read_manifest
from model.schema import FeatureSchema
from model.synthetic import make_cohort, write_cohort
from model.training import (
    TrainSettings,
    cross_validate,
    fit,
    initial_backbone_state,
    prepare_samples,
    stratified_folds,
)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def schema() -> FeatureSchema:
    return FeatureSchema.load()


def _samples(tmp_path: Path, schema: FeatureSchema, n: int, seed: int, distractors: bool, size: int = 64):
    manifest = write_cohort(make_cohort(n, seed=seed, slices=8, size=size, distractors=distractors), tmp_path)
    cases = read_manifest(manifest, schema)
    state = initial_backbone_state(0)
    samples = prepare_samples(
        cases,
        load_cached_volume,
        PreprocessConfig(image_size=size),
        frozen_backbone=True,
        backbone_state=state,
        device=torch.device("cpu"),
    )
    return samples, state


def test_fused_model_learns_the_planted_signal_and_beats_single_modalities(
    tmp_path: Path, schema: FeatureSchema
) -> None:
    torch.set_flush_denormal(True)
    samples, state = _samples(tmp_path, schema, n=160, seed=1, distractors=False)
    settings = TrainSettings(epochs=60, learning_rate=1e-3, folds=4, seed=0)
    auc = {}
    for variant in (Variant.full, Variant.image_only, Variant.clinical_only):
        config = CLDCAConfig(variant=variant, freeze_backbone=True)
        result = cross_validate(config, samples, schema, settings, state, torch.device("cpu"))
        auc[variant] = result.summary()["auc"]["mean"]
    assert auc[Variant.full] >= 0.85, auc
    assert auc[Variant.full] >= max(auc[Variant.image_only], auc[Variant.clinical_only]) + 0.04, auc


def test_training_is_seeded_and_reproducible(tmp_path: Path, schema: FeatureSchema) -> None:
    samples, state = _samples(tmp_path, schema, n=24, seed=2, distractors=True, size=32)
    normalization = schema.fit(s.clinical for s in samples)
    settings = TrainSettings(epochs=2, batch_size=8)
    config = CLDCAConfig(freeze_backbone=True)
    first = fit(config, samples, schema, normalization, settings, state, torch.device("cpu"), seed=5)
    second = fit(config, samples, schema, normalization, settings, state, torch.device("cpu"), seed=5)
    for (name, a), (_, b) in zip(first.state_dict().items(), second.state_dict().items(), strict=True):
        torch.testing.assert_close(a, b, msg=name)


def test_folds_are_stratified_and_cover_every_case() -> None:
    labels = [1] * 30 + [0] * 10
    folds = stratified_folds(labels, 5, seed=0)
    assert sorted(i for f in folds for i in f.tolist()) == list(range(40))
    for fold in folds:
        assert sum(labels[i] for i in fold) == 6 and len(fold) == 8


def test_manifest_problems_are_reported_with_line_numbers(tmp_path: Path, schema: FeatureSchema) -> None:
    manifest = write_cohort(make_cohort(4, seed=0, slices=2, size=8), tmp_path)
    lines = manifest.read_text().splitlines()
    header = lines[0].split(",")
    bad = lines[2].split(",")
    bad[1] = "maybe"
    bad[header.index("albumin")] = "99"
    lines[2] = ",".join(bad)
    missing_volume = lines[3].split(",")
    missing_volume[2] = "volumes/absent.npy"
    lines[3] = ",".join(missing_volume)
    manifest.write_text("\n".join(lines) + "\n")
    with pytest.raises(ManifestError) as caught:
        read_manifest(manifest, schema)
    message = str(caught.value)
    assert "line 3: label 'maybe' is not disease control or progressive" in message
    assert "line 3: feature 'albumin': 99 g/dL is outside the valid range" in message
    assert "line 4: volume 'volumes/absent.npy' does not exist" in message
