"""Whole runs behind `tace train`, `tace evaluate` and `tace model demo`."""

from __future__ import annotations

import dataclasses
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from model.checkpoint import CheckpointMeta, load_checkpoint, save_checkpoint
from model.config import CLDCAConfig, PreprocessConfig, Variant
from model.data import ManifestCase, VolumeLoader, read_manifest
from model.device import resolve_device
from model.metrics import classification_metrics
from model.report import write_ablation_table, write_cv_report, write_evaluation_report
from model.schema import FeatureSchema
from model.synthetic import make_cohort, write_cohort
from model.training import (
    CrossValidation,
    Progress,
    Sample,
    TrainSettings,
    cross_validate,
    fit,
    initial_backbone_state,
    no_progress,
    prepare_samples,
    score,
    stratified_folds,
)


@dataclass(frozen=True)
class TrainOutcome:
    checkpoint: Path
    checkpoint_sha256: str
    results: list[CrossValidation]
    report_dir: Path


def _samples(
    cases: list[ManifestCase],
    loader: VolumeLoader,
    preprocess: PreprocessConfig,
    config: CLDCAConfig,
    backbone_state: dict[str, torch.Tensor],
    device: torch.device,
    progress: Progress,
    cache_dir: Path | None,
) -> list[Sample]:
    return prepare_samples(
        cases,
        loader,
        preprocess,
        frozen_backbone=config.freeze_backbone,
        backbone_state=backbone_state,
        device=device,
        progress=progress,
        cache_dir=cache_dir,
        uses_image=True,
    )


def train_from_manifest(
    manifest: Path,
    out: Path,
    *,
    loader: VolumeLoader,
    config: CLDCAConfig,
    preprocess: PreprocessConfig,
    settings: TrainSettings,
    schema: FeatureSchema | None = None,
    backbone_weights: Path | None = None,
    ablations: bool = False,
    device: str = "auto",
    version: str = "1",
    cache_dir: Path | None = None,
    progress: Progress = no_progress,
) -> TrainOutcome:
    """Cross-validate (every ablation too, if asked), then fit the final model on all cases."""
    torch.set_flush_denormal(True)
    schema = schema or FeatureSchema.load()
    if config.clinical_inputs != len(schema.columns):
        config = dataclasses.replace(config, clinical_inputs=len(schema.columns))
    cases = read_manifest(manifest, schema)
    target = resolve_device(device)
    backbone_state = initial_backbone_state(settings.seed, backbone_weights)
    samples = _samples(cases, loader, preprocess, config, backbone_state, target, progress, cache_dir)
    variants = list(Variant) if ablations else [config.variant]
    results = []
    context: dict[str, Any] = {
        "manifest": str(manifest),
        "schema": schema.name,
        "settings": {
            **dataclasses.asdict(settings),
            "freeze_backbone": config.freeze_backbone,
            "image_size": preprocess.image_size,
            "max_slices": preprocess.max_slices,
            "backbone_weights": str(backbone_weights) if backbone_weights else "random init",
        },
    }
    for variant in variants:
        variant_config = dataclasses.replace(config, variant=variant)
        result = cross_validate(variant_config, samples, schema, settings, backbone_state, target, progress)
        write_cv_report(
            result,
            out / variant.value if ablations else out,
            {**context, "config": variant_config.to_dict()},
        )
        results.append(result)
    if ablations:
        write_ablation_table(results, out)
    main = next(r for r in results if r.variant == config.variant)
    normalization = schema.fit(s.clinical for s in samples)
    model = fit(
        config,
        samples,
        schema,
        normalization,
        settings,
        backbone_state,
        target,
        seed=settings.seed,
        progress=progress,
        description="final model",
    )
    meta = CheckpointMeta(
        version=version,
        config=config,
        preprocess=preprocess,
        schema=schema,
        normalization=normalization,
        demo=False,
        metrics={"cross_validation": main.summary()},
        training={**context["settings"], "cases": len(samples)},
    )
    checkpoint = out / "model.safetensors"
    sha = save_checkpoint(checkpoint, model, meta)
    return TrainOutcome(checkpoint, sha, results, out)


def evaluate_checkpoint(
    checkpoint: Path,
    manifest: Path,
    out: Path,
    *,
    loader: VolumeLoader,
    device: str = "auto",
    progress: Progress = no_progress,
) -> dict[str, float]:
    target = resolve_device(device)
    loaded = load_checkpoint(checkpoint, target)
    meta = loaded.meta
    cases = read_manifest(manifest, meta.schema)
    backbone = loaded.model.backbone
    state = {k: v.cpu() for k, v in backbone.state_dict().items()} if backbone is not None else None
    samples = prepare_samples(
        cases,
        loader,
        meta.preprocess,
        frozen_backbone=True,
        backbone_state=state,
        device=target,
        progress=progress,
        uses_image=meta.config.variant.uses_image,
    )
    y_score = score(loaded.model, samples, meta.schema, meta.normalization, target)
    y_true = np.asarray([s.label for s in samples])
    metrics = classification_metrics(y_true, y_score)
    write_evaluation_report(
        metrics,
        y_true,
        y_score,
        [s.case_id for s in samples],
        out,
        {
            "checkpoint": str(checkpoint),
            "version": meta.version,
            "demo": meta.demo,
            "sha256": loaded.sha256,
        },
    )
    return metrics.as_dict()


@dataclass(frozen=True)
class DemoRecipe:
    """How the demo weights are made: small, quick, synthetic, and labelled as such."""

    cases: int = 128
    slices: int = 12
    size: int = 128
    image_size: int = 128
    max_slices: int = 24
    epochs: int = 60
    learning_rate: float = 1e-3
    seed: int = 7


def make_demo_checkpoint(
    out: Path,
    *,
    backbone_weights: Path | None = None,
    recipe: DemoRecipe = DemoRecipe(),
    version: str = "demo-1",
    progress: Progress = no_progress,
) -> tuple[Path, CheckpointMeta]:
    """Train on a synthetic cohort, evaluate on a held-out quarter, save a ``demo: true`` checkpoint."""
    torch.set_flush_denormal(True)
    schema = FeatureSchema.load()
    config = CLDCAConfig(clinical_inputs=len(schema.columns), freeze_backbone=True)
    preprocess = PreprocessConfig(image_size=recipe.image_size, max_slices=recipe.max_slices)
    settings = TrainSettings(
        epochs=recipe.epochs, learning_rate=recipe.learning_rate, seed=recipe.seed, folds=4
    )
    cohort = make_cohort(
        recipe.cases, seed=recipe.seed, slices=recipe.slices, size=recipe.size, schema=schema
    )
    device = torch.device("cpu")
    with tempfile.TemporaryDirectory() as tmp:
        manifest = write_cohort(cohort, Path(tmp), schema)
        cases = read_manifest(manifest, schema)
        backbone_state = initial_backbone_state(recipe.seed, backbone_weights)
        from model.data import load_cached_volume

        samples = _samples(
            cases, load_cached_volume, preprocess, config, backbone_state, device, progress, None
        )
    held_out = set(stratified_folds([s.label for s in samples], settings.folds, recipe.seed)[0].tolist())
    train = [s for i, s in enumerate(samples) if i not in held_out]
    test = [s for i, s in enumerate(samples) if i in held_out]
    normalization = schema.fit(s.clinical for s in train)
    model = fit(
        config,
        train,
        schema,
        normalization,
        settings,
        backbone_state,
        device,
        seed=recipe.seed,
        progress=progress,
        description="demo training",
    )
    y_score = score(model, test, schema, normalization, device)
    metrics = classification_metrics(np.asarray([s.label for s in test]), y_score)
    meta = CheckpointMeta(
        version=version,
        config=config,
        preprocess=preprocess,
        schema=schema,
        normalization=normalization,
        demo=True,
        metrics={"held_out": metrics.as_dict()},
        training={
            "data": "synthetic cohort (model.synthetic), no patient data",
            **dataclasses.asdict(recipe),
            "train_cases": len(train),
            "held_out_cases": len(test),
            "backbone_weights": str(backbone_weights) if backbone_weights else "random init",
        },
    )
    save_checkpoint(out, model, meta)
    return out, meta
