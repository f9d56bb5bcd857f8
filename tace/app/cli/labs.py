"""`tace labs import|show` (and the HL7 benchmark): clinical values in and as the model sees them."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from hl7_clinical.definitions import Definitions

from tace.app.cli.base import (
    EXIT_NOT_FOUND,
    bench_app,
    fail,
    labs_app,
    print_json,
    runtime_of,
)


def feature_definitions(schema_path: Path | None) -> Definitions:
    """The model's feature schema, handed to the clinical feed (this loads YAML, not torch)."""
    from model.schema import FeatureSchema, SchemaError

    try:
        return FeatureSchema.load(schema_path).by_name()
    except (SchemaError, OSError) as exc:
        fail(f"feature schema: {exc}")


@labs_app.command("import")
def labs_import(
    ctx: typer.Context,
    csv_file: Annotated[
        Path, typer.Argument(help="CSV: patient_id, [issuer], date, then feature or LOINC columns.")
    ],
) -> None:
    """Import clinical values from a CSV file (bad rows are reported by line and skipped)."""
    from hl7_clinical.codes import CodeMap, CodeMapError
    from hl7_clinical.csv_import import CsvError, import_csv

    runtime = runtime_of(ctx)
    settings = runtime.settings
    definitions = feature_definitions(settings.feature_schema)
    try:
        codes = CodeMap.load(definitions, settings.hl7_local_codes)
        report = import_csv(
            runtime.engine(), csv_file, definitions, codes, default_issuer=settings.default_issuer
        )
    except (CsvError, CodeMapError) as exc:
        fail(str(exc))
    for problem in report.problems:
        typer.echo(f"{csv_file.name}: {problem}", err=True)
    typer.echo(
        f"{report.imported_rows} of {report.rows} rows imported: {report.values_added} values added, "
        f"{report.values_changed} changed, {report.values_unchanged} unchanged; "
        f"{report.bad_rows} rows refused"
    )
    if report.bad_rows:
        raise typer.Exit(1)


@labs_app.command("show")
def labs_show(
    ctx: typer.Context,
    patient: Annotated[str, typer.Argument(help="Patient ID as in DICOM PatientID.")],
    issuer: Annotated[
        str | None, typer.Option(help="Issuer of the patient ID (default TACE_DEFAULT_ISSUER).")
    ] = None,
    at: Annotated[dt.datetime | None, typer.Option(help="As of this date/time (default now).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Show a patient's clinical features at a date: values, units, sources, missing and rejected.

    An empty answer, and required features that are missing, come with the reason:
    labs under another issuer, outside the look-back window, rejected, or never received.
    """
    from hl7_clinical.explain import explain_missing_labs
    from hl7_clinical.features import clinical_features
    from hl7_clinical.identity import IdentityRules, describe_issuer
    from tace import phi

    runtime = runtime_of(ctx)
    settings = runtime.settings
    definitions = feature_definitions(settings.feature_schema)
    rules = IdentityRules.from_settings(settings)
    chosen_issuer = rules.issuer(issuer)
    when = at or dt.datetime.now()
    features = clinical_features(
        runtime.engine(),
        patient_id=patient,
        issuer=chosen_issuer,
        patient_hash=phi.patient_hash(patient, chosen_issuer),
        at=when,
        definitions=definitions,
        lab_issuers=rules.lab_issuers(chosen_issuer),
    )

    def why(names: list[str]) -> str:
        return str(
            explain_missing_labs(
                runtime.engine(),
                patient_id=patient,
                issuer=chosen_issuer,
                at=when,
                definitions=definitions,
                features=names,
                rules=rules,
                reference="that date",
            )
        )

    found = [v for v in features.values.values() if v is not None]
    if not found and not features.rejected:
        fail(
            f"no clinical values for patient hash {features.patient_hash} ({describe_issuer(chosen_issuer)}) "
            f"as of {when:%Y-%m-%d %H:%M}: {why(list(definitions))}",
            EXIT_NOT_FOUND,
        )
    required_missing = [name for name in settings.required_features if name in features.missing]
    if as_json:
        print_json(
            {
                "patient_hash": features.patient_hash,
                "issuer": chosen_issuer,
                "at": when.isoformat(),
                "features": features.provenance(),
                "missing": features.missing,
                "required_missing": required_missing,
                "required_missing_why": why(required_missing) if required_missing else None,
                "rejected": features.rejected,
            }
        )
        return
    typer.echo(
        f"patient {features.patient_hash} ({describe_issuer(chosen_issuer)}) as of {when:%Y-%m-%d %H:%M}"
    )
    typer.echo(f"{'FEATURE':<28} {'VALUE':>12} {'UNIT':<10} {'OBSERVED':<17} SOURCE")
    for name, value in features.values.items():
        if value is None:
            typer.echo(f"{name:<28} {'missing':>12}")
            continue
        shown = f"{value.comparator or ''}{value.value:.4g}"
        observed = f"{value.observed_at:%Y-%m-%d %H:%M}" if value.observed_at else "-"
        flag = "" if value.status in ("F", "C") else f" [{value.status}]"
        typer.echo(f"{name:<28} {shown:>12} {value.unit or '':<10} {observed:<17} {value.source}{flag}")
    typer.echo(f"{len(features.missing)} of {len(features.values)} features missing")
    if required_missing:
        typer.echo(f"required and missing: {', '.join(required_missing)} ({why(required_missing)})")
    if features.rejected:
        typer.echo("rejected observations")
        for item in features.rejected:
            when_text = f"{item.observed_at:%Y-%m-%d %H:%M}" if item.observed_at else "-"
            typer.echo(
                f"  {item.code or '?':<10} {item.raw_value or '':>10} {item.raw_unit or '':<10} {when_text}  "
                f"{item.reason}  ({item.source})"
            )


@bench_app.command("hl7")
def bench_hl7(
    ctx: typer.Context,
    messages: Annotated[int, typer.Option(help="Messages to send over one connection.")] = 2000,
) -> None:
    """ORU messages/s over one persistent MLLP connection, ACK after durable store."""
    from tace.app.bench.hl7 import run_hl7_benchmark

    runtime = runtime_of(ctx)
    try:
        for line in run_hl7_benchmark(messages, runtime.settings.database_url):
            typer.echo(line)
    except (TimeoutError, RuntimeError, ConnectionError) as exc:
        fail(str(exc))
