"""Whole runs behind `tace train`, `tace evaluate` and `tace model demo`."""

from __future__ import annotations

import contextlib
import dataclasses
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from model.calibration import CalibrationMethod
from model.checkpoint import CheckpointMeta, load_checkpoint, save_checkpoint
from model.config import CLDCAConfig, PreprocessConfig, Variant
from model.contract import LEGACY_PHASES, THREE_PHASES, InputContract
from model.data import Manifest, UnitConverter, VolumeLoader, load_cached_volume, read_manifest
from model.device import resolve_device
from model.drift import training_distribution
from model.image_stats import image_distribution
from model.metrics import bootstrap_auc, classification_metrics
from model.report import write_ablation_table, write_cv_report, write_evaluation_report
from model.schema import FeatureSchema
from model.synthetic import make_cohort, make_phase_cohort, write_cohort
from model.training import (
    CrossValidation,
    FittedModel,
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
from model.validation import CvSummary, degenerate_warnings, summarize


@dataclass(frozen=True)
class TrainOutcome:
    checkpoint: Path
    checkpoint_sha256: str
    results: list[CrossValidation]
    summaries: list[CvSummary]
    report: Path
    """The report to read first: report.md, or ablations.md with --ablations."""
    demo: bool
    warnings: list[str] = field(default_factory=list)


def _samples(
    manifest: Manifest,
    loader: VolumeLoader,
    preprocess: PreprocessConfig,
    config: CLDCAConfig,
    backbone_state: dict[str, torch.Tensor] | None,
    device: torch.device,
    progress: Progress,
    cache_dir: Path | None,
    uses_image: bool,
) -> list[Sample]:
    return prepare_samples(
        manifest.cases,
        loader,
        preprocess,
        frozen_backbone=config.freeze_backbone,
        backbone_state=backbone_state,
        device=device,
        progress=progress,
        cache_dir=cache_dir,
        uses_image=uses_image,
        phases=config.phases,
    )


def cohort_distribution(
    schema: FeatureSchema, clinical: list[dict[str, object]], samples: Sequence[Sample]
) -> dict[str, Any]:
    """The clinical summary for drift, with the images' (``images``) when the model read volumes."""
    summary = training_distribution(schema, clinical)
    stats = [s.image_stats for s in samples if s.image_stats is not None]
    if stats:
        summary["images"] = image_distribution(stats)
    return summary


def training_contract(data: Manifest, samples: list[Sample], uses_image: bool) -> InputContract:
    """The input contract a training cohort supports: its phases, thickness range and fewest slices.

    Thickness comes from the manifest's ``slice_thickness_mm`` column; without it
    any thickness is accepted, and a model reading no image needs one slice.
    """
    known = [c.slice_thickness_mm for c in data.cases if c.slice_thickness_mm is not None]
    counts = [s.slice_count for s in samples if s.slice_count > 0]
    return InputContract(
        phases=data.phases,
        slice_thickness_mm=(min(known), max(known)) if known else (0.0, float("inf")),
        min_slices=min(counts) if uses_image and counts else 1,
    )


def _final_warnings(fitted: FittedModel, labels: np.ndarray) -> list[str]:
    """The guard applied to the final model's inner cross-validated predictions."""
    metrics = classification_metrics(labels, fitted.held_out_scores, fitted.threshold)
    return degenerate_warnings("the final model", [metrics], None)


@contextlib.contextmanager
def torch_threads(count: int | None) -> Iterator[None]:
    """Run with ``count`` intra-op threads (None: leave torch's choice), restoring it after.

    Trained on cached slice features or clinical values alone, the network multiplies
    small matrices; extra threads only synchronise, and on a busy machine one thread
    is several times faster (the ResNet-50 feature pass keeps torch's choice).
    """
    previous = torch.get_num_threads()
    if count is not None:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


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
    units: UnitConverter | None = None,
    positive_label: str | None = None,
    demo: bool = False,
    threads: int | None = None,
    phases: tuple[str, ...] | None = None,
) -> TrainOutcome:
    """Cross-validate (every ablation too, if asked) against the baseline, then fit on all cases.

    A manifest marked synthetic always yields a ``demo: true`` checkpoint; ``demo``
    flags other toy data. Clinical-only training reads no volume and builds no backbone.
    Training on cached features or clinical values runs on one thread unless
    ``threads`` says otherwise. ``phases`` are the input channels (None: from the
    manifest's volume columns); the checkpoint's input contract records them with
    the cohort's thickness range and fewest slices.
    """
    torch.set_flush_denormal(True)
    schema = schema or FeatureSchema.load()
    if config.clinical_inputs != len(schema.columns):
        config = dataclasses.replace(config, clinical_inputs=len(schema.columns))
    variants = list(Variant) if ablations else [config.variant]
    uses_image = any(v.uses_image for v in variants)
    if threads is None and (config.freeze_backbone or not uses_image):
        threads = 1
    return _train(
        manifest,
        out,
        loader,
        config,
        preprocess,
        settings,
        schema,
        backbone_weights,
        variants,
        uses_image,
        device,
        version,
        cache_dir,
        progress,
        units,
        positive_label,
        demo,
        threads,
        phases,
    )


def _train(
    manifest: Path,
    out: Path,
    loader: VolumeLoader,
    config: CLDCAConfig,
    preprocess: PreprocessConfig,
    settings: TrainSettings,
    schema: FeatureSchema,
    backbone_weights: Path | None,
    variants: list[Variant],
    uses_image: bool,
    device: str,
    version: str,
    cache_dir: Path | None,
    progress: Progress,
    units: UnitConverter | None,
    positive_label: str | None,
    demo: bool,
    threads: int | None,
    phases: tuple[str, ...] | None,
) -> TrainOutcome:
    ablations = len(variants) > 1
    data = read_manifest(
        manifest,
        schema,
        needs_volume=uses_image,
        units=units,
        positive_label=positive_label,
        phases=phases,
    )
    config = dataclasses.replace(config, phases=data.phases)
    demo = demo or data.synthetic
    target = resolve_device(device)
    backbone_state = initial_backbone_state(settings.seed, backbone_weights) if uses_image else None
    samples = _samples(
        data, loader, preprocess, config, backbone_state, target, progress, cache_dir, uses_image
    )
    contract = training_contract(data, samples, uses_image)
    results, summaries = [], []
    context: dict[str, Any] = {
        "data": data.provenance(),
        "schema": schema.name,
        "demo": demo,
        "settings": {
            **settings.to_dict(),
            "freeze_backbone": config.freeze_backbone,
            "image_size": preprocess.image_size,
            "max_slices": preprocess.max_slices,
            "backbone_weights": str(backbone_weights) if backbone_weights else "random init",
        },
        "input_contract": contract.to_dict(),
    }
    calibration = settings.calibration.value if settings.calibration else None
    for variant in variants:
        variant_config = dataclasses.replace(config, variant=variant)
        with torch_threads(threads):
            result = cross_validate(
                variant_config, samples, schema, settings, backbone_state, target, progress
            )
        summary = summarize(result, settings.threshold_rule, calibration, seed=settings.seed)
        write_cv_report(
            result,
            summary,
            out / variant.value if ablations else out,
            {**context, "config": variant_config.to_dict()},
        )
        results.append(result)
        summaries.append(summary)
    report = out / "report.md"
    if ablations:
        report = write_ablation_table(results, summaries, out)
    main = next(s for s in summaries if s.variant == config.variant.value)
    with torch_threads(threads):
        fitted = fit(
            config,
            samples,
            schema,
            settings,
            backbone_state,
            target,
            seed=settings.seed,
            progress=progress,
            description="final model",
        )
    labels = np.asarray([s.label for s in samples])
    warnings = main.warnings + _final_warnings(fitted, labels)
    repeats = f" x {settings.repeats}" if settings.repeats > 1 else ""
    meta = CheckpointMeta(
        version=version,
        config=config,
        preprocess=preprocess,
        schema=schema,
        normalization=fitted.normalization,
        demo=demo,
        metrics={"cross_validation": main.to_dict()},
        training={
            **context["settings"],
            **data.provenance(),
            "best_epoch": fitted.best_epoch,
            **({"data": "synthetic cohort (model.synthetic), no patient data"} if data.synthetic else {}),
        },
        threshold=fitted.threshold,
        calibration=fitted.calibrator.to_dict() if fitted.calibrator else None,
        training_distribution=cohort_distribution(schema, [c.clinical for c in data.cases], samples),
        validation={
            "method": f"cross-validated ({main.folds}-fold{repeats}, pooled out-of-fold)",
            "auc": main.auc.as_dict(),
            "cases": main.cases,
            "progressions": main.progressions,
            "baseline": {"model": main.baseline, "auc": main.baseline_auc.as_dict()},
            "difference": main.difference.as_dict(),
            "verdict": main.verdict,
            "threshold_rule": settings.threshold_rule,
        },
        warnings=warnings,
        input_contract=contract,
    )
    checkpoint = out / "model.safetensors"
    sha = save_checkpoint(checkpoint, fitted.model, meta)
    return TrainOutcome(checkpoint, sha, results, summaries, report, demo, warnings)


def evaluate_checkpoint(
    checkpoint: Path,
    manifest: Path,
    out: Path,
    *,
    loader: VolumeLoader,
    device: str = "auto",
    progress: Progress = no_progress,
    units: UnitConverter | None = None,
    positive_label: str | None = None,
) -> tuple[dict[str, Any], list[str]]:
    """Metrics at the checkpoint's own threshold (after its calibrator), and the guard's warnings."""
    target = resolve_device(device)
    loaded = load_checkpoint(checkpoint, target)
    meta = loaded.meta
    uses_image = meta.config.variant.uses_image
    data = read_manifest(
        manifest,
        meta.schema,
        needs_volume=uses_image,
        units=units,
        positive_label=positive_label,
        phases=meta.config.phases,
    )
    backbone = loaded.model.backbone
    state = {k: v.cpu() for k, v in backbone.state_dict().items()} if backbone is not None else None
    samples = prepare_samples(
        data.cases,
        loader,
        meta.preprocess,
        frozen_backbone=True,
        backbone_state=state,
        device=target,
        progress=progress,
        uses_image=uses_image,
        phases=meta.config.phases,
    )
    y_score = score(loaded.model, samples, meta.schema, meta.normalization, target)
    if meta.calibrator is not None:
        y_score = meta.calibrator.apply(y_score)
    y_true = np.asarray([s.label for s in samples])
    metrics = classification_metrics(y_true, y_score, meta.threshold)
    (auc,), _ = bootstrap_auc(y_true, [y_score])
    warnings = degenerate_warnings("the model", [metrics], auc)
    write_evaluation_report(
        metrics,
        auc,
        y_true,
        y_score,
        [s.case_id for s in samples],
        out,
        {
            "checkpoint": str(checkpoint),
            "version": meta.version,
            "demo": meta.demo,
            "sha256": loaded.sha256,
            "data": data.provenance(),
        },
        warnings,
    )
    return {**metrics.as_dict(), "auc_ci": auc.as_dict()}, warnings


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
    min_epochs: int = 20
    calibration: CalibrationMethod | None = CalibrationMethod.platt
    """Class-weighted training leaves probabilities off the event rate; the SR shows them."""
    phases: tuple[str, ...] = THREE_PHASES
    """Input channels: the paper's three phases, trained on ``make_phase_cohort`` (signal in the
    enhancement pattern); ``LEGACY_PHASES`` trains a single-series model on ``make_cohort``."""
    clinical_weight: float = 1.0
    """How much the labs decide the synthetic outcome, against 1.0 for the image."""


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
    config = CLDCAConfig(clinical_inputs=len(schema.columns), freeze_backbone=True, phases=recipe.phases)
    preprocess = PreprocessConfig(image_size=recipe.image_size, max_slices=recipe.max_slices)
    settings = TrainSettings(
        epochs=recipe.epochs,
        learning_rate=recipe.learning_rate,
        seed=recipe.seed,
        folds=4,
        min_epochs=min(recipe.min_epochs, recipe.epochs),
        calibration=recipe.calibration,
    )
    make = make_cohort if recipe.phases == LEGACY_PHASES else make_phase_cohort
    cohort = make(
        recipe.cases,
        seed=recipe.seed,
        slices=recipe.slices,
        size=recipe.size,
        clinical_weight=recipe.clinical_weight,
        schema=schema,
    )
    device = torch.device("cpu")
    with tempfile.TemporaryDirectory() as tmp:
        data = read_manifest(write_cohort(cohort, Path(tmp), schema), schema, phases=recipe.phases)
        backbone_state = initial_backbone_state(recipe.seed, backbone_weights)
        samples = _samples(
            data, load_cached_volume, preprocess, config, backbone_state, device, progress, None, True
        )
    contract = training_contract(data, samples, True)
    held_out = set(stratified_folds([s.label for s in samples], settings.folds, recipe.seed)[0].tolist())
    train = [s for i, s in enumerate(samples) if i not in held_out]
    test = [s for i, s in enumerate(samples) if i in held_out]
    with torch_threads(1):
        fitted = fit(
            config,
            train,
            schema,
            settings,
            backbone_state,
            device,
            seed=recipe.seed,
            progress=progress,
            description="demo training",
        )
    y_score, _ = fitted.probabilities(test, schema, device)
    y_true = np.asarray([s.label for s in test])
    metrics = classification_metrics(y_true, y_score, fitted.threshold)
    (auc,), _ = bootstrap_auc(y_true, [y_score], seed=recipe.seed)
    meta = CheckpointMeta(
        version=version,
        config=config,
        preprocess=preprocess,
        schema=schema,
        normalization=fitted.normalization,
        demo=True,
        metrics={"held_out": metrics.as_dict()},
        training={
            "data": "synthetic cohort (model.synthetic), no patient data",
            **dataclasses.asdict(recipe),
            "train_cases": len(train),
            "held_out_cases": len(test),
            "best_epoch": fitted.best_epoch,
            "backbone_weights": str(backbone_weights) if backbone_weights else "random init",
        },
        threshold=fitted.threshold,
        calibration=fitted.calibrator.to_dict() if fitted.calibrator else None,
        training_distribution=cohort_distribution(
            schema, [case.clinical for i, case in enumerate(data.cases) if i not in held_out], train
        ),
        validation={"method": "held-out", "auc": auc.as_dict(), "cases": len(test)},
        warnings=degenerate_warnings("the demo model", [metrics], auc),
        input_contract=contract,
    )
    save_checkpoint(out, fitted.model, meta)
    return out, meta
