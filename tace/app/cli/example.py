"""`tace example`: a synthetic patient to try the gateway with, CT series and clinical data."""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path
from typing import Annotated

import typer

from tace.app.cli.base import app, fail

EXAMPLE_PATIENT = "EXAMPLE1"
_PATIENT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_FILES = ("oru-labs.hl7", "labs.csv", "clinical.csv", "README.md")


@app.command()
def example(
    out: Annotated[Path, typer.Argument(help="Folder to create for the example (absent or empty).")],
    patient_id: Annotated[
        str, typer.Option(help="PatientID of the CT and of the labs (letters, digits, . _ -).")
    ] = EXAMPLE_PATIENT,
    slices: Annotated[int, typer.Option(min=16, max=400, help="Axial slices of each CT series.")] = 24,
    size: Annotated[int, typer.Option(min=64, max=1024, help="Rows and columns of each slice.")] = 512,
) -> None:
    """Write a synthetic three-phase CT study and its labs (HL7 ORU and CSV files) for one patient.

    The CT (arterial, portal venous and delayed series, each tagged with its
    contrast phase, as the demo model reads them) goes to OUT/ct (send it with
    storescu); OUT/oru-labs.hl7 holds the lab results as a lab system sends them
    (`tace hl7 send`), OUT/labs.csv the same as a lab export and OUT/clinical.csv
    history and staging (`tace labs import`).
    No real patient: the data is made up and the study dated 2026-01-15.
    """
    from pydicom.uid import generate_uid

    from tace.app.synthetic_ct import SeriesSpec, write_phase_study

    if not _PATIENT_ID.fullmatch(patient_id):
        fail(f"--patient-id {patient_id!r}: use 1-64 letters, digits, '.', '_' or '-'")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        fail(f"{out} exists and is not an empty folder; choose a new one")
    spec = SeriesSpec(
        slices=slices,
        rows=size,
        columns=size,
        patient_id=patient_id,
        patient_name="Example^Patient",
        patient_birth_date="19580214",
        patient_sex="F",
        study_instance_uid=generate_uid(),
        accession_number=f"EX{generate_uid()[-10:]}",
        slice_spacing=5.0,
    )
    phases = write_phase_study(spec, out / "ct")
    examples = resources.files("tace.app") / "examples"
    for name in _FILES:
        text = (examples / name).read_text(encoding="utf-8")
        (out / name).write_text(text.replace(EXAMPLE_PATIENT, patient_id), encoding="utf-8")
    typer.echo(
        f"{out / 'ct'}: synthetic CT study of patient {patient_id}, 2026-01-15: "
        + ", ".join(f"{name.replace('_', ' ')} ({len(paths)} slices)" for name, paths in phases.items())
    )
    typer.echo(f"{out}: {', '.join(_FILES[:3])} (lab results and clinical data of the same patient)")
