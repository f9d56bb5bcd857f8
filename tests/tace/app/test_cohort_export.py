"""`tace cohort export`: date range, de-identified copies, and multi-phase jobs as one column per phase."""

from __future__ import annotations

import csv
import dataclasses
import datetime as dt
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from model.contract import THREE_PHASES
from model.data import load_case_volume, read_manifest
from model.schema import FeatureSchema
from tace import phi
from tace.app.deidentify import Deidentifier, DeidentifyError
from tace.app.synthetic_ct import SeriesSpec, write_series
from tace.db import Job, Series, Study, session_scope
from tests.support.outcomes import add_outcome, add_prediction
from tests.support.processes import tace_env
from worker.volume import read_series_folder

PATIENTS = {
    # patient ID: (name, birth date, study date)
    "DEIDX0417": ("Quillfeather^Amalia", "19571203", dt.date(2026, 1, 5)),
    "DEIDX0533": ("Brannigan^Oswin", "19490621", dt.date(2026, 2, 10)),
    "DEIDX0689": ("Vellacott^Rosamund", "19620914", dt.date(2026, 3, 20)),
}


@pytest.fixture
def keyed(data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(phi, "_hash_key", None)
    phi.load_hash_key(data_dir)


def tace(*args: str, **settings: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tace", *args],
        env=tace_env(**settings),
        capture_output=True,
        text=True,
        timeout=300,
    )


def _uids(engine: Engine, job_id: int) -> tuple[str, str]:
    job, series, study = Job.__table__, Series.__table__, Study.__table__
    with engine.connect() as connection:
        row = connection.execute(
            sa.select(study.c.study_instance_uid, series.c.series_instance_uid)
            .select_from(
                job.join(series, series.c.id == job.c.series_id).join(study, study.c.id == series.c.study_id)
            )
            .where(job.c.id == job_id)
        ).one()
    return row.study_instance_uid, row.series_instance_uid


def _seed(engine: Engine, data_dir: Path) -> dict[str, str]:
    """Three patients' studies with identifying headers and an outcome 6 weeks later; job ID -> patient."""
    jobs = {}
    for n, (patient, (name, birth, study_date)) in enumerate(PATIENTS.items()):
        job = add_prediction(engine, patient_id=patient, study_date=study_date, probability=0.2 + 0.3 * n)
        study_uid, series_uid = _uids(engine, job)
        write_series(
            SeriesSpec(
                slices=3,
                rows=16,
                columns=16,
                patient_id=patient,
                patient_name=name,
                patient_birth_date=birth,
                study_instance_uid=study_uid,
                series_instance_uid=series_uid,
                study_datetime=dt.datetime.combine(study_date, dt.time(9, 30)),
                accession_number=f"ACC{n}7731",
                seed=n,
                extra={
                    "OtherPatientIDs": f"OTHER{n}4411",
                    "ReferringPhysicianName": "Hargreaves^Theodora",
                    "InstitutionName": "Saint Wilfrid Infirmary",
                },
            ),
            data_dir / "dicom" / study_uid / series_uid,
        )
        add_outcome(engine, patient, study_date + dt.timedelta(weeks=6), "PD" if n % 2 else "PR")
        jobs[f"job{job}"] = patient
    return jobs


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open() as handle:
        return list(csv.DictReader(handle))


@pytest.mark.filterwarnings("error:The value length:UserWarning")  # pydicom: a value over its VR's length
def test_date_range_and_deidentified_copies_hold_no_name_id_or_real_date(
    tmp_path: Path, data_dir: Path, sqlite_engine: Engine, keyed: None
) -> None:
    jobs = _seed(sqlite_engine, data_dir)
    january = tmp_path / "january"
    exported = tace("cohort", "export", str(january), "--until", "2026-01-31", data_dir=data_dir)
    assert exported.returncode == 0, exported.stderr
    assert [jobs[r["case_id"]] for r in _rows(january / "manifest.csv")] == ["DEIDX0417"]
    backwards = tace(
        "cohort",
        "export",
        str(tmp_path / "x"),
        "--since",
        "2026-03-01",
        "--until",
        "2026-02-01",
        data_dir=data_dir,
    )
    assert backwards.returncode == 2 and "--since 2026-03-01 is after --until 2026-02-01" in backwards.stderr

    out = tmp_path / "shared"
    exported = tace(
        "cohort",
        "export",
        str(out),
        "--since",
        "2026-02-01",
        "--until",
        "2026-03-20",
        "--deidentify",
        data_dir=data_dir,
    )
    assert exported.returncode == 0, exported.stderr
    manifest, provenance = _rows(out / "manifest.csv"), _rows(out / "provenance.csv")
    assert [r["case_id"] for r in manifest] == ["case0001", "case0002"], "numbered, no job IDs"
    originals = {
        patient: read_series_folder(
            data_dir / "dicom" / Path(*_uids(sqlite_engine, int(job.removeprefix("job"))))
        )
        for job, patient in jobs.items()
    }

    def patient_of(row: dict[str, str]) -> str:
        """The source patient of an exported case, found by its pixels (nothing else links them)."""
        pixels = read_series_folder(out / row["volume"])
        (patient,) = [p for p, original in originals.items() if np.array_equal(original, pixels)]
        return patient

    assert sorted(patient_of(r) for r in manifest) == ["DEIDX0533", "DEIDX0689"]

    forbidden: set[str] = {"Hargreaves", "Theodora", "Saint Wilfrid"}
    real_dates: set[dt.date] = set()
    for patient, (name, birth, study_date) in PATIENTS.items():
        forbidden |= {patient, phi.patient_hash(patient, None), *name.split("^")}
        real_dates |= {dt.date.fromisoformat(f"{birth[:4]}-{birth[4:6]}-{birth[6:]}"), study_date}
        real_dates.add(study_date + dt.timedelta(weeks=6))
    forbidden |= {f"ACC{n}7731" for n in range(3)} | {f"OTHER{n}4411" for n in range(3)}
    # a shifted date may by chance fall on another patient's real one; that is no leak
    shifted = {dt.date.fromisoformat(r[k]) for r in provenance for k in ("study_date", "assessed_on")}
    forbidden |= {d.strftime(f) for d in real_dates - shifted for f in ("%Y%m%d", "%Y-%m-%d")}
    files = [p for p in out.rglob("*") if p.is_file()]
    assert len([p for p in files if p.suffix == ".dcm"]) == 6
    for path in files:
        data = path.read_bytes()
        assert [s for s in forbidden if s.encode() in data] == [], path

    by_case = {r["case_id"]: r for r in provenance}
    pseudonyms = set()
    for row in manifest:
        source = PATIENTS[patient_of(row)]
        shown = by_case[row["case_id"]]
        study_date, assessed = (
            dt.date.fromisoformat(shown["study_date"]),
            dt.date.fromisoformat(shown["assessed_on"]),
        )
        assert (assessed - study_date).days == 42, "the interval within a patient is kept"
        assert dt.timedelta(days=30) <= source[2] - study_date <= dt.timedelta(days=3 * 365)
        copies = sorted((out / row["volume"]).glob("*.dcm"))
        headers = [pydicom.dcmread(p) for p in copies]
        assert {
            (str(h.PatientName), h.PatientID, h.StudyDate, h.PatientIdentityRemoved) for h in headers
        } == {(shown["patient_hash"], shown["patient_hash"], study_date.strftime("%Y%m%d"), "YES")}
        assert {h.StudyInstanceUID for h in headers} == {shown["study_instance_uid"]}
        assert headers[0].PatientBirthDate == "" and "OtherPatientIDs" not in headers[0]
        pseudonyms.add(shown["patient_hash"])
    assert len(pseudonyms) == 2

    # the copies are a training manifest as they are: every series reads back with its pixels
    schema = FeatureSchema.load(None)
    read = read_manifest(out / "manifest.csv", schema)
    assert [case.case_id for case in read.cases] == ["case0001", "case0002"]
    for case in read.cases:
        assert any(np.array_equal(read_series_folder(case.volume), o) for o in originals.values())


def test_a_multi_phase_job_exports_one_aligned_column_per_phase(
    tmp_path: Path, data_dir: Path, sqlite_engine: Engine, keyed: None
) -> None:
    """Phases with different z extent and spacing come out on the portal venous slices, as the worker aligned them."""
    geometry = {
        # phase: (slices, spacing, first z)
        "arterial": (12, 2.5, -105.0),
        "portal_venous": (6, 2.5, -100.0),
        "delayed": (5, 5.0, -100.0),
    }
    jobs = []
    for n in range(2):
        patient = f"PHASE{n}"
        job = add_prediction(
            sqlite_engine, patient_id=patient, study_date=dt.date(2026, 1, 5), probability=0.5
        )
        study_uid, reference_uid = _uids(sqlite_engine, job)
        series = []
        for index, (phase, (slices, spacing, z)) in enumerate(geometry.items()):
            uid = reference_uid if phase == "portal_venous" else f"{reference_uid}.{index + 1}"
            write_series(
                SeriesSpec(
                    slices=slices,
                    rows=16,
                    columns=16,
                    slice_spacing=spacing,
                    origin=(-179.0, -179.0, z),
                    patient_id=patient,
                    study_instance_uid=study_uid,
                    series_instance_uid=uid,
                    seed=10 * n + index,
                ),
                data_dir / "dicom" / study_uid / uid,
            )
            series.append({"series_id": index, "series_instance_uid": uid, "used_for": phase})
        series.append({"series_id": 9, "series_instance_uid": "1.2.3.9", "used_for": None})
        with session_scope(sqlite_engine) as session:
            row = session.get(Job, job)
            assert row is not None
            row.selection = {
                "phases": list(THREE_PHASES),
                "reference": "portal_venous",
                "contract": {"min_slices": 1},
                "series": series,
            }
        add_outcome(sqlite_engine, patient, dt.date(2026, 2, 20), "PD" if n else "SD")
        jobs.append(job)

    out = tmp_path / "cohort"
    exported = tace("cohort", "export", str(out), data_dir=data_dir)
    assert exported.returncode == 0, exported.stderr
    with (out / "manifest.csv").open() as handle:
        header = next(csv.reader(handle))
    assert header[:5] == ["case_id", "label", "volume_arterial", "volume_delayed", "volume_portal_venous"]
    read = read_manifest(out / "manifest.csv", FeatureSchema.load(None), phases=THREE_PHASES)
    assert [c.case_id for c in read.cases] == [f"job{j}" for j in jobs]
    for case, job in zip(read.cases, jobs, strict=True):
        study_uid, reference_uid = _uids(sqlite_engine, job)
        stacked = load_case_volume(case, lambda p: np.load(p))
        assert stacked.shape == (6, 3, 16, 16)
        folder = data_dir / "dicom" / study_uid
        reference = read_series_folder(folder / reference_uid)
        arterial = read_series_folder(folder / f"{reference_uid}.1")
        np.testing.assert_array_equal(stacked[:, 1], reference)
        # slices read head first (z -87.5 down to -100); arterial z = -77.5 - 2.5 k: k = 4..9 exactly
        np.testing.assert_allclose(stacked[:, 0], arterial[4:10], atol=1e-3)
        delayed = read_series_folder(folder / f"{reference_uid}.3")
        # delayed z = -80 - 5 k: every second slice lands on one, the others halfway between two
        np.testing.assert_allclose(stacked[1::2, 2], delayed[2:5], atol=1e-3)
        np.testing.assert_allclose(stacked[0, 2], (delayed[1] + delayed[2]) / 2, atol=1e-2)


@pytest.mark.filterwarnings("error:The value length:UserWarning")  # pydicom: a value over its VR's length
def test_dates_in_sequences_and_date_times_move_and_an_id_left_in_free_text_refuses_the_copy(
    tmp_path: Path,
) -> None:
    item = pydicom.Dataset()
    item.ReferringPhysicianName = "Hargreaves^Theodora"
    item.AcquisitionDate = "20260114"
    spec = SeriesSpec(
        slices=2,
        rows=8,
        columns=8,
        patient_id="FREE0042",
        patient_name="Quillfeather^Amalia",
        extra={"AcquisitionDateTime": "20260115093012.5+0100", "ReferencedImageEvidenceSequence": [item]},
    )
    clean = write_series(spec, tmp_path / "clean")
    deidentifier = Deidentifier()
    out = deidentifier.copy_series(clean, tmp_path / "out", "hash-1")
    shift = deidentifier.patient("hash-1").shift
    copy = pydicom.dcmread(sorted(out.glob("*.dcm"))[0])
    assert copy.AcquisitionDateTime == (dt.date(2026, 1, 15) - shift).strftime("%Y%m%d") + "093012.5+0100"
    nested = copy.ReferencedImageEvidenceSequence[0]
    assert nested.AcquisitionDate == (dt.date(2026, 1, 14) - shift).strftime("%Y%m%d")
    assert str(nested.ReferringPhysicianName) == ""
    assert copy.SOPClassUID == pydicom.dcmread(clean[0]).SOPClassUID  # standard UIDs stay

    leaky = write_series(
        dataclasses.replace(spec, extra={"ImageComments": "follow-up of FREE0042"}), tmp_path / "leaky"
    )
    with pytest.raises(DeidentifyError, match=r"would still hold the patient ID$"):
        deidentifier.copy_series(leaky, tmp_path / "refused", "hash-1")
    assert not (tmp_path / "refused").exists()


def test_a_short_surname_left_in_free_text_refuses_the_copy_but_not_inside_another_word(
    tmp_path: Path,
) -> None:
    spec = SeriesSpec(slices=1, rows=8, columns=8, patient_id="SHORT0007", patient_name="Wu^Li")
    deidentifier = Deidentifier()
    inside = write_series(
        dataclasses.replace(spec, extra={"ImageComments": "liver, wound"}), tmp_path / "inside"
    )
    assert len(list(deidentifier.copy_series(inside, tmp_path / "kept", "hash-2").glob("*.dcm"))) == 1
    named = write_series(
        dataclasses.replace(spec, extra={"ImageComments": "patient WU, liver"}), tmp_path / "named"
    )
    with pytest.raises(DeidentifyError, match=r"would still hold the patient name$"):
        deidentifier.copy_series(named, tmp_path / "refused", "hash-2")
