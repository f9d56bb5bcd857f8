"""`tace series classify`: the contrast phase of every series under a folder, to tune the rules."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from tace.app.cli.base import fail, print_json, runtime_of, series_app

if TYPE_CHECKING:
    from listener.phase_survey import FolderSurvey


def _print(survey: FolderSurvey) -> None:
    for study in survey.studies:
        typer.echo(f"study {study}")
        for row in (s for s in survey.series if s.study_instance_uid == study):
            tags, decision = row.tags, row.decision
            number = "-" if tags.series_number is None else str(tags.series_number)
            typer.echo(
                f"  series {number} {tags.series_description or '(no description)'!r}: "
                f"{decision.phase} ({decision.confidence}) - {decision.evidence}"
            )
            for conflict in decision.conflicts:
                typer.echo(f"      conflict: {conflict}")


@series_app.command("classify")
def series_classify(
    ctx: typer.Context,
    folder: Annotated[Path, typer.Argument(help="Folder searched recursively for DICOM files.")],
    rules: Annotated[
        Path | None,
        typer.Option("--rules", help="Site phase rules YAML (default TACE_PHASE_RULES, else the built-in)."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Print each series' contrast phase, confidence, evidence and conflicts, study by study.

    Only headers are read. Files that are not DICOM are skipped and counted.
    """
    from listener.phase_survey import survey_folder
    from listener.phases import PhaseRules, PhaseRulesError

    runtime = runtime_of(ctx)
    rules_file = rules or runtime.settings.phase_rules
    if not folder.is_dir():
        fail(f"{folder} is not a folder")
    try:
        phase_rules = PhaseRules.load(rules_file) if rules_file else PhaseRules.default()
    except PhaseRulesError as exc:
        fail(str(exc))
    survey = survey_folder(folder, phase_rules)
    if not survey.series:
        fail(f"no DICOM series under {folder} ({survey.files} file(s) read, {survey.skipped} skipped)")
    if as_json:
        print_json(
            {
                "rules": phase_rules.source,
                "files": survey.files,
                "skipped_files": survey.skipped,
                "series": [
                    {
                        "study_instance_uid": row.study_instance_uid,
                        "series_instance_uid": row.tags.series_instance_uid,
                        "series_number": row.tags.series_number,
                        "series_description": row.tags.series_description,
                        "instances": row.instances,
                        **row.decision.to_dict(),
                    }
                    for row in survey.series
                ],
            }
        )
        return
    _print(survey)
    typer.echo(
        f"{len(survey.series)} series in {len(survey.studies)} study(ies); rules: {phase_rules.source}; "
        f"{survey.skipped} of {survey.files} file(s) skipped (not DICOM, or no study/series)"
    )
