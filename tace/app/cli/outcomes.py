"""`tace outcomes import|unlinked|link` and `tace model performance`: closing the loop."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from tace.app.cli.base import (
    EXIT_NOT_FOUND,
    cohort_app,
    fail,
    model_app,
    outcomes_app,
    print_json,
    runtime_of,
)
from tace.settings import Settings

if TYPE_CHECKING:
    from tace.app.drift import DriftReport
    from tace.app.performance import VersionPerformance
    from tace.outcomes import LinkWindow


def link_window(settings: Settings) -> LinkWindow:
    from tace.outcomes import LinkWindow

    return LinkWindow(settings.outcome_link_min_weeks, settings.outcome_link_max_weeks)


@outcomes_app.command("import")
def outcomes_import(
    ctx: typer.Context,
    csv_file: Annotated[
        Path,
        typer.Argument(
            help="CSV: patient_id, [issuer], [tace_date], assessment_date, response (CR/PR/SD/PD)."
        ),
    ],
) -> None:
    """Import mRECIST outcomes from a CSV file (bad rows are reported by line and skipped), then link them."""
    from hl7_clinical.csv_import import CsvError
    from hl7_clinical.outcomes import import_outcomes_csv

    runtime = runtime_of(ctx)
    settings = runtime.settings
    try:
        report = import_outcomes_csv(
            runtime.engine(), csv_file, default_issuer=settings.default_issuer, window=link_window(settings)
        )
    except CsvError as exc:
        fail(str(exc))
    for problem in report.problems or []:
        typer.echo(f"{csv_file.name}: {problem}", err=True)
    typer.echo(
        f"{report.rows - report.bad_rows} of {report.rows} rows imported: {report.added} outcomes added, "
        f"{report.changed} changed, {report.unchanged} unchanged; {report.bad_rows} rows refused"
    )
    if report.bad_rows:
        raise typer.Exit(1)


@outcomes_app.command("unlinked")
def outcomes_unlinked(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Outcomes not linked to a prediction (none qualifies, or several studies do), with the reason."""
    from tace.app.outcome_views import unlinked_outcomes
    from tace.outcomes import relink

    runtime = runtime_of(ctx)
    engine = runtime.engine()
    with engine.begin() as connection:
        relink(connection, link_window(runtime.settings))
    rows = unlinked_outcomes(engine)
    if as_json:
        print_json([row.as_dict() for row in rows])
        return
    if not rows:
        typer.echo("every outcome is linked")
        return
    typer.echo(f"{'ID':>6} {'PATIENT':<16} {'TACE':<10} {'ASSESSED':<10} {'RESP':<4} {'STATE':<9} WHY")
    for row in rows:
        typer.echo(
            f"{row.id:>6} {row.patient_hash:<16} {row.tace_date or '-':<10} {row.assessed_on!s:<10} "
            f"{row.response:<4} {row.link_state:<9} {row.link_detail or ''}"
        )


@outcomes_app.command("link")
def outcomes_link(
    ctx: typer.Context,
    outcome_id: Annotated[int, typer.Argument(help="Outcome ID (from `tace outcomes unlinked`).")],
    job_id: Annotated[int, typer.Argument(help="The job whose prediction this outcome judges.")],
) -> None:
    """Resolve an unlinked outcome by hand; the rule never overrides this link."""
    from tace.outcomes import LinkError, link_manually

    engine = runtime_of(ctx).engine()
    try:
        with engine.begin() as connection:
            link_manually(connection, outcome_id, job_id)
    except LinkError as exc:
        fail(str(exc), EXIT_NOT_FOUND if str(exc).startswith("no ") else 2)
    typer.echo(f"outcome {outcome_id} linked to job {job_id}")


def active_meta(settings: Settings) -> Any:
    """The active checkpoint's metadata (a CheckpointMeta), or None when there is none to read."""
    from model.checkpoint import CheckpointError, read_meta
    from worker.context import checkpoint_path

    try:
        return read_meta(checkpoint_path(settings))
    except CheckpointError:
        return None


def print_drift(report: DriftReport) -> None:
    typer.echo(f"input drift of model {report.model_version} over its last {report.predictions} predictions")
    if report.note:
        typer.echo(f"  {report.note}")
        return
    typer.echo(f"  {'FEATURE':<28} {'MISSING':>8} {'TRAINING':>9} {'PSI':>7}")
    for row in report.features:
        psi = "-" if row["psi"] is None else f"{row['psi']:.3f}"
        typer.echo(f"  {row['feature']:<28} {row['missing']:>8.1%} {row['training_missing']:>9.1%} {psi:>7}")
    if report.image_note:
        typer.echo(f"  images: {report.image_note}")
    if report.images:
        typer.echo(f"  {'IMAGE STATISTIC':<28} {'LIVE':>9} {'TRAINING':>9} {'PSI':>7}  (medians)")
    for row in report.images:
        live, trained, psi = (
            "-" if row[k] is None else f"{row[k]:.{digits}f}"
            for k, digits in (("live_median", 1), ("training_median", 1), ("psi", 3))
        )
        typer.echo(f"  {row['statistic']:<28} {live:>9} {trained:>9} {psi:>7}")
    if report.major:
        typer.echo(f"  WARNING: PSI over 0.25 (major shift) for {', '.join(report.major)}")


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def print_performance(results: list[VersionPerformance], window: str) -> None:
    if not results:
        typer.echo(f"no linked outcomes ({window})")
        return
    for result in results:
        auc = result.auc
        typer.echo(
            f"model {result.model_version} ({window}): {result.outcomes} linked outcomes, "
            f"{result.progressions} progressive"
        )
        if auc is not None:
            typer.echo(f"  AUC          {auc['value']:.3f} (95% CI {auc['low']:.3f}-{auc['high']:.3f})")
        if result.threshold is not None and result.sensitivity is not None:
            typer.echo(
                f"  at threshold {result.threshold:.3f}: sensitivity {_fmt(result.sensitivity)}, "
                f"specificity {_fmt(result.specificity)} (progression positive)"
            )
        if result.brier is not None:
            typer.echo(f"  Brier score  {result.brier:.3f}")
        if result.calibration:
            typer.echo("  calibration  predicted  observed  n")
            for bin_ in result.calibration:
                typer.echo(
                    f"               {bin_['predicted']:9.3f} {bin_['observed']:9.3f} {int(bin_['count']):3d}"
                )
        for note in result.notes:
            typer.echo(f"  {note}")


@model_app.command("performance")
def model_performance(
    ctx: typer.Context,
    model_version: Annotated[
        str | None, typer.Option("--model-version", help="Only this model version.")
    ] = None,
    window: Annotated[str, typer.Option(help="90d (predictions of the last 90 days) or all.")] = "all",
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Live performance per model version: AUC with CI, sensitivity/specificity, calibration, Brier."""
    from tace.app.drift import drift_report
    from tace.app.performance import WINDOWS, auc_alerts, performance
    from tace.outcomes import relink

    if window not in WINDOWS:
        fail(f"--window {window!r}: use 90d or all")
    runtime = runtime_of(ctx)
    settings = runtime.settings
    engine = runtime.engine()
    with engine.begin() as connection:
        relink(connection, link_window(settings))
    meta = active_meta(settings)
    results = performance(
        engine,
        window=window,
        model_version=model_version,
        min_outcomes=settings.performance_min_outcomes,
        checkpoint_thresholds={meta.version: meta.threshold} if meta is not None else None,
    )
    drift = drift_report(engine, meta) if meta is not None else None
    alerts = auc_alerts(
        results,
        auc_lower=settings.performance_alert_auc_lower,
        min_outcomes=settings.performance_alert_min_outcomes,
    )
    if as_json:
        print_json(
            {
                "window": window,
                "versions": [r.as_dict() for r in results],
                "drift": drift.as_dict() if drift else None,
                "alerts": alerts,
            }
        )
        return
    print_performance(results, window)
    if drift is not None:
        print_drift(drift)
    for alert in alerts:
        typer.echo(f"WARNING: {alert}")


@cohort_app.command("export")
def cohort_export(
    ctx: typer.Context,
    out: Annotated[Path, typer.Argument(help="Folder for manifest.csv and provenance.csv.")],
    since: Annotated[
        dt.datetime | None, typer.Option(formats=["%Y-%m-%d"], help="Only studies on or after this date.")
    ] = None,
    until: Annotated[
        dt.datetime | None, typer.Option(formats=["%Y-%m-%d"], help="Only studies on or before this date.")
    ] = None,
    deidentify: Annotated[
        bool,
        typer.Option(
            "--deidentify",
            help="De-identified DICOM copies: pseudonyms, no names or IDs, dates shifted per patient, "
            "new UIDs; provenance likewise.",
        ),
    ] = False,
) -> None:
    """A training manifest (`tace train` reads it) from the linked cases: series, clinical values, label."""
    from model.schema import FeatureSchema, SchemaError
    from tace.app.cohort import CohortOptions, export_cohort
    from tace.outcomes import relink

    if since and until and since > until:
        fail(f"--since {since:%Y-%m-%d} is after --until {until:%Y-%m-%d}")
    runtime = runtime_of(ctx)
    settings = runtime.settings
    try:
        schema = FeatureSchema.load(settings.feature_schema)
    except (SchemaError, OSError) as exc:
        fail(f"feature schema: {exc}")
    engine = runtime.engine()
    with engine.begin() as connection:
        relink(connection, link_window(settings))
    options = CohortOptions(
        since=since.date() if since else None, until=until.date() if until else None, deidentify=deidentify
    )
    result = export_cohort(engine, settings.data_dir, out, schema, options)
    for reason in result.skipped:
        typer.echo(f"skipped {reason}", err=True)
    if result.cases == 0:
        fail("no linked outcomes to export: import outcomes and resolve `tace outcomes unlinked` first")
    typer.echo(f"{result.cases} cases written to {result.manifest} (provenance: {result.provenance})")
