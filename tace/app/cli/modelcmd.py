"""Model commands: `tace train`, `tace evaluate`, `tace model demo|info`, `tace bench model`."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from tace.app.cli.base import app, bench_app, fail, model_app, print_json, runtime_of
from tace.settings import Settings

if TYPE_CHECKING:
    from model.data import UnitConverter
    from model.schema import FeatureSchema

Manifest = Annotated[
    Path,
    typer.Argument(
        help="CSV: case_id, label, volume (or volume_arterial, volume_portal_venous, volume_delayed), "
        "then one column per feature."
    ),
]
Out = Annotated[Path, typer.Option("--out", "-o", help="Folder for the report, plots and checkpoint.")]
Device = Annotated[str | None, typer.Option(help="auto, cpu or cuda (default TACE_DEVICE).")]


def _model_errors() -> tuple[type[Exception], ...]:
    from model.checkpoint import CheckpointError
    from model.data import ManifestError
    from model.device import DeviceError
    from model.resnet import BackboneWeightsError
    from model.schema import SchemaError

    return (
        CheckpointError,
        ManifestError,
        DeviceError,
        BackboneWeightsError,
        SchemaError,
        ValueError,
    )


def _volume_loader() -> Any:
    from model.data import default_loader
    from worker.volume import read_series_folder

    return default_loader(read_series_folder)


def unit_converter(schema: FeatureSchema) -> UnitConverter:
    """Manifest ``column[unit]`` values converted by the clinical feed's own unit table."""
    from hl7_clinical.codes import CodeMap, CodeMapError

    definitions = schema.by_name()
    by_feature = {m.feature: m for m in CodeMap.load(definitions).loinc_columns().values()}

    def convert(feature: str, value: float, unit: str) -> float:
        mapping = by_feature.get(feature)
        if mapping is None:
            raise ValueError(
                f"the unit table has no conversions for {feature}; give it in {definitions[feature].unit}"
            )
        try:
            return mapping.convert(value, unit)
        except CodeMapError as exc:
            raise ValueError(str(exc)) from None

    return convert


PositiveLabel = Annotated[
    str | None,
    typer.Option(
        help="For numeric labels: the value that codes progressive disease (the other means disease "
        "control). Needed because sites code it both ways round."
    ),
]


@app.command()
def train(
    ctx: typer.Context,
    manifest: Manifest,
    out: Out,
    variant: Annotated[str, typer.Option(help="full or an ablation (see --ablations).")] = "full",
    ablations: Annotated[
        bool, typer.Option(help="Cross-validate every ablation and write the table.")
    ] = False,
    folds: Annotated[int, typer.Option(help="Stratified cross-validation folds.")] = 5,
    repeats: Annotated[
        int, typer.Option(help="Repeat the cross-validation with new folds; reports the spread.")
    ] = 1,
    epochs: Annotated[int, typer.Option(help="Most epochs; early stopping usually ends sooner.")] = 100,
    min_epochs: Annotated[int, typer.Option(help="No earlier epoch is chosen by early stopping.")] = 20,
    patience: Annotated[int, typer.Option(help="Epochs without improvement before stopping.")] = 10,
    inner_folds: Annotated[
        int, typer.Option(help="Inner cross-validation folds that decide when to stop.")
    ] = 3,
    batch_size: Annotated[int, typer.Option()] = 32,
    learning_rate: Annotated[float, typer.Option("--lr")] = 1e-3,
    weight_decay: Annotated[float, typer.Option(help="AdamW decoupled weight decay.")] = 10.0,
    class_weights: Annotated[
        bool, typer.Option(help="Weigh each class half of the loss, whatever its size.")
    ] = True,
    target_sensitivity: Annotated[
        float | None,
        typer.Option(
            help="Choose the threshold for this sensitivity for progression on the training data "
            "(default: Youden's J)."
        ),
    ] = None,
    calibration: Annotated[
        str | None, typer.Option(help="Recalibrate inside CV: platt or isotonic (default: none).")
    ] = None,
    positive_label: PositiveLabel = None,
    demo: Annotated[
        bool, typer.Option(help="Flag the checkpoint as a demo (toy data); synthetic cohorts always are.")
    ] = False,
    seed: Annotated[int, typer.Option()] = 0,
    freeze_backbone: Annotated[
        bool,
        typer.Option(help="Keep ResNet-50 fixed and cache its slice features (practical on CPU)."),
    ] = True,
    backbone_weights: Annotated[
        Path | None,
        typer.Option(help="torchvision ResNet-50 ImageNet state dict (.pth or .safetensors)."),
    ] = None,
    image_size: Annotated[int, typer.Option()] = 224,
    max_slices: Annotated[int | None, typer.Option(help="Evenly subsample longer series.")] = None,
    window_center: Annotated[float, typer.Option()] = 60.0,
    window_width: Annotated[float, typer.Option()] = 400.0,
    feed_missing_mask: Annotated[bool, typer.Option(help="Give the network the missing-value mask.")] = False,
    schema: Annotated[
        Path | None, typer.Option(help="Feature schema YAML (default: the paper's 43).")
    ] = None,
    version: Annotated[str, typer.Option(help="Version recorded in the checkpoint and the SRs.")] = "1",
    cache_dir: Annotated[Path | None, typer.Option(help="Keep backbone features here between runs.")] = None,
    threads: Annotated[
        int | None, typer.Option(help="CPU threads (default: 1 for clinical-only, else torch's choice).")
    ] = None,
    phases: Annotated[
        str | None,
        typer.Option(
            help="Input channels: one phase (repeated) or three, comma-separated in channel order, "
            "e.g. arterial,portal_venous,delayed; read from the volume_<phase> columns. Default: "
            "the manifest's columns (a `volume` column: any one series)."
        ),
    ] = None,
    device: Device = None,
) -> None:
    """Train CLDCA in repeated stratified CV against a logistic baseline, then fit it on all cases.

    The last line says whether the model is usable: a WARNING when it predicts one
    class for almost everyone or its AUC interval contains chance.
    """
    from model.calibration import CalibrationMethod
    from model.config import CLDCAConfig, PreprocessConfig, Variant
    from model.schema import FeatureSchema
    from model.training import TrainSettings
    from model.workflows import train_from_manifest
    from tace.app.cli.progress import progress_bars

    device = device or runtime_of(ctx).settings.device
    try:
        feature_schema = FeatureSchema.load(schema)
        config = CLDCAConfig(
            variant=Variant(variant),
            freeze_backbone=freeze_backbone,
            feed_missing_mask=feed_missing_mask,
            clinical_inputs=len(feature_schema.columns),
        )
        preprocess = PreprocessConfig(window_center, window_width, image_size, max_slices)
        settings = TrainSettings(
            epochs=epochs,
            batch_size=batch_size,
            learning_rate=learning_rate,
            weight_decay=weight_decay,
            folds=folds,
            repeats=repeats,
            seed=seed,
            inner_folds=inner_folds,
            patience=patience,
            min_epochs=min_epochs,
            class_weighting=class_weights,
            target_sensitivity=target_sensitivity,
            calibration=CalibrationMethod(calibration) if calibration else None,
        )
        with progress_bars() as report:
            outcome = train_from_manifest(
                manifest,
                out,
                loader=_volume_loader(),
                config=config,
                preprocess=preprocess,
                settings=settings,
                schema=feature_schema,
                backbone_weights=backbone_weights,
                ablations=ablations,
                device=device,
                version=version,
                cache_dir=cache_dir,
                progress=report,
                units=unit_converter(feature_schema),
                positive_label=positive_label,
                demo=demo,
                threads=threads,
                phases=tuple(p.strip() for p in phases.split(",")) if phases is not None else None,
            )
    except _model_errors() as exc:
        fail(str(exc))
    for summary in outcome.summaries:
        for note in summary.notes:
            typer.echo(f"note: {note}")
        typer.echo(
            f"{summary.variant}: AUC {summary.auc}; baseline {summary.baseline_auc} "
            f"({summary.folds}-fold x {summary.repeats}, {summary.cases} cases, "
            f"{summary.progressions} progressive)"
        )
    main = next(s for s in outcome.summaries if s.variant == variant)
    typer.echo(main.verdict)
    typer.echo(f"report: {outcome.report}")
    flag = " [DEMO: synthetic or toy training data]" if outcome.demo else ""
    typer.echo(f"checkpoint: {outcome.checkpoint} (sha256 {outcome.checkpoint_sha256[:16]}){flag}")
    if outcome.warnings:
        typer.echo("WARNING: " + " | ".join(outcome.warnings))
    else:
        typer.echo(f"no degenerate-model warnings; AUC {main.auc}")


@app.command()
def evaluate(
    ctx: typer.Context,
    checkpoint: Annotated[Path, typer.Argument(help="Checkpoint to evaluate.")],
    manifest: Manifest,
    out: Out,
    positive_label: PositiveLabel = None,
    device: Device = None,
) -> None:
    """Evaluate a checkpoint on a labelled manifest at its own threshold: metrics, ROC, calibration."""
    from model.checkpoint import read_meta
    from model.workflows import evaluate_checkpoint
    from tace.app.cli.progress import progress_bars

    device = device or runtime_of(ctx).settings.device
    try:
        units = unit_converter(read_meta(checkpoint).schema)
        with progress_bars() as report:
            metrics, warnings = evaluate_checkpoint(
                checkpoint,
                manifest,
                out,
                loader=_volume_loader(),
                device=device,
                progress=report,
                units=units,
                positive_label=positive_label,
            )
    except _model_errors() as exc:
        fail(str(exc))
    ci = metrics["auc_ci"]
    typer.echo(
        f"AUC {metrics['auc']:.3f} (95% CI {ci['low']:.3f}-{ci['high']:.3f}), balanced accuracy "
        f"{metrics['balanced_accuracy']:.3f}, sensitivity {metrics['sensitivity']:.3f} and specificity "
        f"{metrics['specificity']:.3f} for progression at threshold {metrics['threshold']:.3f}, "
        f"on {metrics['n']} cases"
    )
    typer.echo(f"report: {out / 'evaluation.md'}")
    if warnings:
        typer.echo("WARNING: " + " | ".join(warnings))


@model_app.command("demo")
def model_demo(
    ctx: typer.Context,
    out: Annotated[Path, typer.Argument(help="Where to write the demo checkpoint (.safetensors).")],
    backbone_weights: Annotated[
        Path | None, typer.Option(help="torchvision ResNet-50 ImageNet state dict to start from.")
    ] = None,
    cases: Annotated[int, typer.Option(help="Synthetic cases to train on.")] = 128,
    epochs: Annotated[int, typer.Option()] = 60,
    image_size: Annotated[int, typer.Option()] = 128,
) -> None:
    """Write a demo checkpoint trained quickly on synthetic data (flagged demo: true everywhere).

    It reads arterial, portal venous and delayed phases as its three channels,
    trained on synthetic studies whose signal is planted in the enhancement pattern.
    """
    from model.workflows import DemoRecipe, make_demo_checkpoint
    from tace.app.cli.progress import progress_bars

    runtime_of(ctx).configure()
    try:
        recipe = DemoRecipe(cases=cases, epochs=epochs, image_size=image_size, size=max(image_size, 32))
        with progress_bars() as report:
            path, meta = make_demo_checkpoint(
                out, backbone_weights=backbone_weights, recipe=recipe, progress=report
            )
    except _model_errors() as exc:
        fail(str(exc))
    held_out, auc = meta.metrics["held_out"], meta.validation["auc"]
    typer.echo(
        f"demo checkpoint {path}: held-out AUC {held_out['auc']:.3f} (95% CI {auc['low']:.3f}-"
        f"{auc['high']:.3f}) on {held_out['n']} synthetic cases, threshold {meta.threshold:.3f}"
    )
    typer.echo(f"input: {meta.input_contract.describe()}")
    for warning in meta.warnings:
        typer.echo(f"WARNING: {warning}")
    typer.echo("DEMO weights trained on synthetic data: research use only, no clinical meaning.")


@model_app.command("cohort")
def model_cohort(
    ctx: typer.Context,
    out: Annotated[Path, typer.Argument(help="Folder for manifest.csv (and volumes/).")],
    shape: Annotated[
        str,
        typer.Option(
            help="planted: CT volumes and labs with a planted signal, balanced; phases: three contrast "
            "phases per case (volume_arterial, volume_portal_venous, volume_delayed) with the image "
            "signal planted in the enhancement pattern; clinical-table: no images, few progressions, "
            "a dozen weakly informative columns, some missing."
        ),
    ] = "planted",
    cases: Annotated[int, typer.Option()] = 160,
    slices: Annotated[int, typer.Option()] = 8,
    size: Annotated[int, typer.Option(help="Rows and columns of each volume.")] = 64,
    progression_rate: Annotated[float, typer.Option(help="clinical-table: share of progressions.")] = 0.0625,
    seed: Annotated[int, typer.Option()] = 0,
    distractors: Annotated[bool, typer.Option(help="Random values for the unplanted features.")] = True,
) -> None:
    """Write a synthetic cohort to try `tace train` on; its manifest is marked synthetic (demo models)."""
    from model.synthetic import (
        CLINICAL_TABLE_COLUMNS,
        make_clinical_table,
        make_cohort,
        make_phase_cohort,
        write_cohort,
    )

    runtime_of(ctx).configure()
    if shape == "planted":
        cohort = make_cohort(cases, seed=seed, slices=slices, size=size, distractors=distractors)
        manifest = write_cohort(cohort, out)
    elif shape == "phases":
        cohort = make_phase_cohort(cases, seed=seed, slices=slices, size=size, distractors=distractors)
        manifest = write_cohort(cohort, out)
    elif shape == "clinical-table":
        try:
            cohort = make_clinical_table(cases, progression_rate=progression_rate, seed=seed)
        except ValueError as exc:
            fail(str(exc))
        manifest = write_cohort(cohort, out, columns=CLINICAL_TABLE_COLUMNS)
    else:
        fail(f"--shape {shape!r} is not planted, phases or clinical-table")
    controls = sum(c.label for c in cohort)
    typer.echo(
        f"{manifest}: {cases} synthetic cases ({controls} disease control, {cases - controls} progressive)"
    )
    if shape == "phases":
        typer.echo(
            "planted signal: the label lies in the lesion's enhancement pattern (arterial wash-in, "
            "portal venous wash-out); train with --phases arterial,portal_venous,delayed or one phase"
        )


def checkpoint_info(path: Path) -> dict[str, Any]:
    from model.checkpoint import load_checkpoint

    loaded = load_checkpoint(path)
    meta = loaded.meta
    return {
        "path": str(path),
        "sha256": loaded.sha256,
        "model_name": meta.model_name,
        "version": meta.version,
        "demo": meta.demo,
        "created_at": meta.created_at,
        "variant": meta.config.variant.value,
        "config": meta.config.to_dict(),
        "preprocess": meta.preprocess.to_dict(),
        "input_contract": {
            **meta.input_contract.to_dict(),
            "description": meta.input_contract.describe(),
        },
        "schema": {
            "name": meta.schema.name,
            "version": meta.schema.version,
            "features": len(meta.schema.features),
        },
        "parameters": loaded.model.parameter_counts(),
        "threshold": meta.threshold,
        "calibration": meta.calibration,
        "validation": meta.validation,
        "validation_statement": meta.validation_statement,
        "warnings": meta.warnings,
        "metrics": meta.metrics,
        "training": meta.training,
    }


def active_checkpoint(settings: Settings) -> Path:
    """The checkpoint workers load: TACE_MODEL_CHECKPOINT, else the demo model in the data dir."""
    from worker.context import checkpoint_path

    path = checkpoint_path(settings)
    if path.is_file():
        return path
    if settings.model_checkpoint is not None:
        fail(f"TACE_MODEL_CHECKPOINT={str(path)!r}: no such file")
    fail(
        f"no active checkpoint: TACE_MODEL_CHECKPOINT is not set and the demo model {path} "
        f"(in the data dir, TACE_DATA_DIR) does not exist yet; `tace up` makes it"
    )


def _contract_lines(contract: dict[str, Any]) -> list[str]:
    """The input contract as `tace model info` prints it: what a study must hold."""
    phases = contract["phases"]
    if phases == ["any"]:
        named = "any one eligible series (single-phase, repeated to 3 channels)"
    elif len(phases) == 1:
        named = f"{phases[0]} (single-phase, repeated to 3 channels)"
    else:
        named = f"{', '.join(phases)} (one per channel, in this order)"
    low, high = contract["slice_thickness_mm"]
    thickness = f"{low:g}-{high:g} mm" if high is not None else ("any" if low == 0 else f">= {low:g} mm")
    return [
        f"  phases    {named}",
        f"  thickness {thickness}",
        f"  slices    at least {contract['min_slices']}",
    ]


@model_app.command("info")
def model_info(
    ctx: typer.Context,
    checkpoint: Annotated[
        Path | None,
        typer.Argument(help="Checkpoint (.safetensors); default: the one the gateway uses."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Show a checkpoint's metadata, validation, data provenance and parameters (default: the active one)."""
    if checkpoint is None:
        checkpoint = active_checkpoint(runtime_of(ctx).settings)
    try:
        info = checkpoint_info(checkpoint)
    except _model_errors() as exc:
        fail(str(exc))
    if as_json:
        print_json(info)
        return
    flag = "  [DEMO - synthetic training data]" if info["demo"] else ""
    typer.echo(f"{info['model_name']} {info['version']} ({info['variant']}){flag}")
    for warning in info["warnings"]:
        typer.echo(f"  WARNING   {warning}")
    typer.echo(f"  file      {info['path']}")
    typer.echo(f"  sha256    {info['sha256']}")
    typer.echo(f"  created   {info['created_at']}")
    typer.echo(f"  schema    {info['schema']['name']} ({info['schema']['features']} features)")
    pre = info["preprocess"]
    typer.echo(
        f"  input     window {pre['window_center']}/{pre['window_width']} HU, {pre['image_size']} px, "
        f"max slices {pre['max_slices'] or 'all'}"
    )
    for line in _contract_lines(info["input_contract"]):
        typer.echo(line)
    rule = info["validation"].get("threshold_rule")
    typer.echo(
        f"  decision  disease control when P >= {info['threshold']:.3f}"
        + (f" ({rule})" if rule else "")
        + (f", {info['calibration']['method']} calibration" if info["calibration"] else "")
    )
    if info["validation_statement"]:
        typer.echo(f"  validated {info['validation_statement']}")
    if "verdict" in info["validation"]:
        typer.echo(f"  baseline  {info['validation']['verdict']}")
    training = info["training"]
    if "manifest_sha256" in training:
        counts = ", ".join(f"{v} {k}" for k, v in training["class_counts"].items())
        typer.echo(
            f"  data      {training['cases']} cases ({counts}); manifest {training['manifest']} "
            f"sha256 {training['manifest_sha256'][:16]}"
        )
    typer.echo("  parameters")
    for name, count in info["parameters"].items():
        typer.echo(f"    {name:<20} {count:>12,}")


@bench_app.command("model")
def bench_model(
    ctx: typer.Context,
    device: Device = None,
    slices: Annotated[int, typer.Option(help="Slices per series.")] = 32,
    image_size: Annotated[int, typer.Option()] = 224,
    seconds: Annotated[float, typer.Option(help="Measuring time per configuration.")] = 3.0,
    batches: Annotated[str | None, typer.Option(help="Comma-separated slice batch sizes.")] = None,
) -> None:
    """Slices/s of the full CLDCA forward and of a bare ResNet-50, and their ratio."""
    from model.device import resolve_device
    from tace.app.bench.model import run_model_benchmark

    try:
        target = resolve_device(device or runtime_of(ctx).settings.device)
    except _model_errors() as exc:
        fail(str(exc))
    sizes = [int(b) for b in batches.split(",")] if batches else None
    for line in run_model_benchmark(
        target, slices_per_series=slices, image_size=image_size, seconds=seconds, batch_sizes=sizes
    ):
        typer.echo(line)


@app.command()
def predict(
    ctx: typer.Context,
    series_dir: Annotated[
        Path, typer.Argument(help="Folder holding one CT series (searched recursively; other files skipped).")
    ],
    series: Annotated[
        str | None, typer.Option(help="SeriesInstanceUID to use when the folder holds several series.")
    ] = None,
    patient: Annotated[
        str | None, typer.Option(help="Patient ID for the labs (default: DICOM PatientID).")
    ] = None,
    labs: Annotated[
        Path | None,
        typer.Option(
            help="CSV of clinical values, as `tace labs import` reads (default: the gateway's own labs)."
        ),
    ] = None,
    at: Annotated[
        datetime | None, typer.Option(help="Assemble labs as of this time (default: study date).")
    ] = None,
    sr_out: Annotated[Path | None, typer.Option(help="Write the DICOM SR here.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Predict one series folder with no broker or listener: volume, labs, model and SR.

    Labs come from --labs, else from the gateway of TACE_DATA_DIR when one has run there.
    """
    from hl7_clinical.csv_import import CsvError
    from tace.app.cli.base import gateway_exists
    from worker.context import ensure_checkpoint
    from worker.one_case import CaseRefused, predict_folder

    runtime = runtime_of(ctx)
    settings = runtime.settings
    refusals: tuple[type[Exception], ...] = (CaseRefused, CsvError, *_model_errors())
    if not series_dir.is_dir():
        fail(f"{series_dir} is not a folder")
    try:
        result = predict_folder(
            settings,
            ensure_checkpoint(settings),
            series_dir,
            gateway_labs=runtime.engine() if labs is None and gateway_exists(settings) else None,
            series_uid=series,
            patient=patient,
            labs=labs,
            at=at,
            sr_out=sr_out,
        )
    except refusals as exc:
        fail(str(exc))
    p = result.prediction
    if as_json:
        print_json(
            {
                "probability_disease_control": p.probability,
                "label": p.label,
                "threshold": p.threshold,
                "validation": p.validation,
                "model_name": p.model_name,
                "model_version": p.model_version,
                "checkpoint_sha256": p.checkpoint_sha256,
                "demo": p.demo,
                "slices": result.slices,
                "slices_used": p.slices_used,
                "missing_features": result.missing,
                "features": result.features,
                "labs_source": result.labs_source,
                "skipped_files": result.skipped_files,
                "timings": p.timings,
                "sr": str(result.sr_path) if result.sr_path else None,
            }
        )
        return
    flag = "  [DEMO model: synthetic training data, no clinical meaning]" if p.demo else ""
    typer.echo(
        f"{p.label} (probability of disease control {p.probability:.3f}, threshold {p.threshold:.3f}) "
        f"by {p.model_name} "
        f"{p.model_version}{flag}"
    )
    typer.echo(
        f"{result.slices} slices ({p.slices_used} used); {len(result.missing)} of {len(result.features)} "
        f"clinical features missing (imputed); labs from {result.labs_source}"
        + (f"; {result.skipped_files} non-DICOM file(s) skipped" if result.skipped_files else "")
    )
    if result.labs_report is not None and result.labs_report.problems:
        for problem in result.labs_report.problems:
            typer.echo(f"labs: {problem}", err=True)
    if result.sr_path:
        typer.echo(f"SR written to {result.sr_path}")
