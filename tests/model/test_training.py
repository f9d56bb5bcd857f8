"""Learning tests on synthetic cohorts: the planted signal, the small imbalanced table, the folds."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from model.config import CLDCAConfig, PreprocessConfig, Variant
from model.data import load_cached_volume, read_manifest
from model.schema import FeatureSchema
from model.synthetic import CLINICAL_TABLE_COLUMNS, make_clinical_table, make_cohort, write_cohort
from model.training import (
    TrainSettings,
    cross_validate,
    fit,
    initial_backbone_state,
    plan_folds,
    prepare_samples,
    stratified_folds,
)
from model.validation import compare_variants, summarize

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def schema() -> FeatureSchema:
    return FeatureSchema.load()


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """Small matrices on a shared 2-core machine: one thread is several times faster."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.set_flush_denormal(True)
    yield
    torch.set_num_threads(previous)


def _samples(tmp_path: Path, schema: FeatureSchema, n: int, seed: int, distractors: bool, size: int = 64):
    manifest = write_cohort(make_cohort(n, seed=seed, slices=8, size=size, distractors=distractors), tmp_path)
    cases = read_manifest(manifest, schema).cases
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


def test_fused_model_learns_the_planted_signal_and_beats_single_modalities_with_cis(
    tmp_path: Path, schema: FeatureSchema
) -> None:
    samples, state = _samples(tmp_path, schema, n=100, seed=1, distractors=False)
    settings = TrainSettings(epochs=40, min_epochs=15, patience=5, inner_folds=2, folds=3, seed=0)
    results = {}
    for variant in (Variant.full, Variant.image_only, Variant.clinical_only):
        config = CLDCAConfig(variant=variant, freeze_backbone=True)
        results[variant] = cross_validate(config, samples, schema, settings, state, torch.device("cpu"))
    summary = summarize(results[Variant.full], settings.threshold_rule, None)
    assert summary.auc.low < summary.auc.value < summary.auc.high
    assert summary.auc.value >= 0.85, summary.auc
    assert summary.warnings == []
    compared = compare_variants(list(results.values()), results[Variant.full])
    auc = {variant: compared[variant.value][0].value for variant in results}
    assert auc[Variant.full] >= max(auc[Variant.image_only], auc[Variant.clinical_only]) + 0.04, auc
    for variant in (Variant.image_only, Variant.clinical_only):
        difference = compared[variant.value][1]
        assert difference.value < 0 and difference.low < difference.value < difference.high


def test_small_imbalanced_clinical_table_is_not_worse_than_the_logistic_baseline(
    tmp_path: Path, schema: FeatureSchema
) -> None:
    manifest = write_cohort(make_clinical_table(96, seed=0), tmp_path, columns=CLINICAL_TABLE_COLUMNS)
    data = read_manifest(manifest, schema, needs_volume=False)
    assert data.class_counts == {"progressive_disease": 6, "disease_control": 90} and data.synthetic
    samples = prepare_samples(
        data.cases,
        load_cached_volume,
        PreprocessConfig(),
        frozen_backbone=True,
        backbone_state=None,
        device=torch.device("cpu"),
        uses_image=False,
    )
    settings = TrainSettings(seed=0, repeats=2)
    config = CLDCAConfig(variant=Variant.clinical_only)
    result = cross_validate(config, samples, schema, settings, None, torch.device("cpu"))
    summary = summarize(result, settings.threshold_rule, None)
    assert summary.difference.value >= -0.03, summary.to_dict()
    predicted = summary.pooled["predicted_progression"]["mean"]
    assert 0.05 < predicted < 0.95 or summary.warnings, summary.to_dict()
    assert {f.metrics.progressions for f in result.folds} <= {1, 2}


def test_training_is_seeded_and_reproducible(tmp_path: Path, schema: FeatureSchema) -> None:
    samples, state = _samples(tmp_path, schema, n=24, seed=2, distractors=True, size=32)
    settings = TrainSettings(epochs=3, min_epochs=2, batch_size=8)
    config = CLDCAConfig(freeze_backbone=True)
    first = fit(config, samples, schema, settings, state, torch.device("cpu"), seed=5)
    second = fit(config, samples, schema, settings, state, torch.device("cpu"), seed=5)
    assert first.threshold == second.threshold and first.best_epoch == second.best_epoch
    for (name, a), (_, b) in zip(
        first.model.state_dict().items(), second.model.state_dict().items(), strict=True
    ):
        torch.testing.assert_close(a, b, msg=name)


def test_folds_are_stratified_and_cover_every_case() -> None:
    labels = [1] * 30 + [0] * 10
    folds = stratified_folds(labels, 5, seed=0)
    assert sorted(i for f in folds for i in f.tolist()) == list(range(40))
    for fold in folds:
        assert sum(labels[i] for i in fold) == 6 and len(fold) == 8


def test_fewer_minority_cases_than_folds_reduces_the_folds_and_too_few_refuse() -> None:
    labels = [1] * 60 + [0] * 4
    assert plan_folds(labels, 5) == (
        4,
        "only 4 progressive cases: 4 folds instead of 5, so every test fold holds at least one",
    )
    assert plan_folds([1] * 60 + [0] * 6, 5) == (5, None)
    for fold in stratified_folds(labels, 4, seed=3):
        assert {labels[i] for i in fold} == {0, 1}
    with pytest.raises(ValueError, match="only 2 progressive case"):
        plan_folds([1] * 60 + [0] * 2, 5)
    with pytest.raises(ValueError, match="5 folds need 5 cases of each class"):
        stratified_folds(labels, 5, seed=0)


def test_cross_validation_never_drops_a_fold(tmp_path: Path, schema: FeatureSchema) -> None:
    manifest = write_cohort(make_clinical_table(40, progression_rate=0.1, seed=4), tmp_path)
    samples = prepare_samples(
        read_manifest(manifest, schema, needs_volume=False).cases,
        load_cached_volume,
        PreprocessConfig(),
        frozen_backbone=True,
        backbone_state=None,
        device=torch.device("cpu"),
        uses_image=False,
    )
    settings = TrainSettings(epochs=3, min_epochs=2, folds=5, calibration="platt")
    result = cross_validate(
        CLDCAConfig(variant=Variant.clinical_only), samples, schema, settings, None, torch.device("cpu")
    )
    assert result.folds_used == 4 and result.notes and len(result.folds) == 4
    assert all(np.isfinite(f.metrics.auc) for f in result.folds)
    assert not np.isnan(result.out_of_fold("model")).any()
    assert not np.allclose(result.out_of_fold("model"), result.out_of_fold("raw"))


def test_clinical_only_manifest_without_volumes_trains_with_no_backbone_pass(
    tmp_path: Path, schema: FeatureSchema, monkeypatch: pytest.MonkeyPatch
) -> None:
    from model import resnet
    from model.checkpoint import load_checkpoint
    from model.workflows import train_from_manifest

    def no_backbone(*args: object, **kwargs: object) -> None:
        raise AssertionError("a clinical-only run built or ran the ResNet-50")

    monkeypatch.setattr(resnet.ResNet50, "__init__", no_backbone)
    monkeypatch.setattr(resnet.ResNet50, "forward", no_backbone)
    manifest = write_cohort(make_clinical_table(40, progression_rate=0.1, seed=5), tmp_path / "cohort")

    def no_volumes(path: Path) -> np.ndarray:
        raise AssertionError(f"a clinical-only run loaded {path}")

    outcome = train_from_manifest(
        manifest,
        tmp_path / "run",
        loader=no_volumes,
        config=CLDCAConfig(variant=Variant.clinical_only),
        preprocess=PreprocessConfig(),
        settings=TrainSettings(epochs=3, min_epochs=2),
        device="cpu",
    )
    loaded = load_checkpoint(outcome.checkpoint)
    assert loaded.model.backbone is None and "backbone" not in loaded.model.parameter_counts()
    assert loaded.meta.demo is True and outcome.demo
    assert (
        loaded.meta.training["manifest_sha256"] == read_manifest(manifest, schema, needs_volume=False).sha256
    )
    assert 0 < loaded.meta.threshold < 1
    assert loaded.meta.validation["auc"] == outcome.summaries[0].auc.as_dict()
