"""CSV import and feature assembly at a study date."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine

from hl7_clinical.codes import CodeMap, normalise_unit
from hl7_clinical.csv_import import CsvError, import_csv
from hl7_clinical.features import clinical_features
from hl7_clinical.identity import IdentityRules
from hl7_clinical.intake import Hl7Intake, IntakePolicy
from model.schema import FeatureSchema
from tace import phi
from tests.support.hl7_messages import oru
from tests.support.processes import tace_env


@pytest.fixture(scope="module")
def definitions():
    return FeatureSchema.load().by_name()


@pytest.fixture(scope="module")
def codes(definitions) -> CodeMap:
    return CodeMap.load(definitions)


def test_every_mapped_feature_uses_the_schema_unit_and_every_lab_feature_has_a_code(
    definitions, codes
) -> None:
    mapped = codes.features()
    lab_groups = {
        "blood_count",
        "liver_panel",
        "renal_panel",
        "lipids",
        "electrolytes",
        "coagulation",
        "body",
        "vitals",
    }
    schema = FeatureSchema.load()
    for feature in schema.features:
        if feature.group in lab_groups:
            assert feature.name in mapped, feature.name
    for code, mapping in codes.loinc_columns().items():
        assert mapping.canonical == definitions[mapping.feature].unit, code
        assert normalise_unit(mapping.canonical) in mapping.units, code


@pytest.mark.parametrize(
    ("code", "value", "unit", "expected"),
    [
        ("1975-2", 17.104, "umol/L", 1.0),
        ("1975-2", 17.104, "µmol/L", 1.0),
        ("1751-7", 42, "g/L", 4.2),
        ("2160-0", 88.42, "umol/L", 1.0),
        ("6690-2", 6500, "{cells}/uL", 6.5),
        ("6690-2", 6.5, "10^9/L", 6.5),
        ("3094-0", 14, "mg/dL", 14.0),
        ("22664-7", 5.0, "mmol/L", 14.007),
        ("3091-6", 30, "mg/dL", 13.994),
        ("8310-5", 98.6, "[degF]", 37.0),
        ("777-3", 250, "x10E9/L", 250.0),
    ],
)
def test_unit_conversions(codes, code, value, unit, expected) -> None:
    assert codes.lookup("LN", code).convert(value, unit) == pytest.approx(expected, rel=1e-3)


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_csv_import_good_and_bad_rows_idempotent_and_assembly_by_time(
    sqlite_engine: Engine, tmp_path: Path, definitions, codes
) -> None:
    csv_file = _write(
        tmp_path / "registry.csv",
        "patient_id,issuer,date,albumin,albumin_unit,1975-2,1975-2_unit,bclc_stage,cirrhosis,sex\n"
        "P1,HOSP,2026-01-01,35,g/L,20,umol/L,B,yes,M\n"
        "P1,HOSP,2026-01-10,3.0,,,,,,\n"
        "P1,HOSP,2026-01-20,2.5,,,,,,\n"
        "P1,HOSP,2026-01-05,abc,,,,E,,\n"
        "P2,,2026-01-05,,,,,,,\n"
        ",HOSP,2026-01-05,3.1,,,,,,\n",
    )
    report = import_csv(sqlite_engine, csv_file, definitions, codes, default_issuer=None)
    assert (report.rows, report.imported_rows, report.values_added) == (6, 3, 7)
    assert report.problems == [
        "line 5: albumin: 'abc' is not a number; bclc_stage: 'E' is not one of ['0', 'A', 'B', 'C', 'D']",
        "line 6: no values",
        "line 7: patient_id is empty",
    ]
    again = import_csv(sqlite_engine, csv_file, definitions, codes, default_issuer=None)
    assert (again.values_added, again.values_changed, again.values_unchanged) == (0, 0, 7)

    features = clinical_features(
        sqlite_engine,
        patient_id="P1",
        issuer="HOSP",
        patient_hash=phi.patient_hash("P1", "HOSP"),
        at=dt.datetime(2026, 1, 15),
        definitions=definitions,
    )
    assert features.values["albumin"].value == 3.0
    assert features.values["albumin"].source == "CSV registry.csv line 3"
    assert features.values["total_bilirubin"].value == pytest.approx(1.169, rel=1e-3)
    assert features.values["bclc_stage"].value == 2.0
    assert features.values["cirrhosis"].value == 1.0 and features.values["sex"].value == 1.0
    assert "wbc" in features.missing and "albumin" not in features.missing
    later = clinical_features(
        sqlite_engine,
        patient_id="P1",
        issuer="HOSP",
        patient_hash=phi.patient_hash("P1", "HOSP"),
        at=dt.datetime(2026, 3, 1),
        definitions=definitions,
    )
    assert later.values["albumin"] is None, "outside the 30-day window"
    assert later.values["cirrhosis"].value == 1.0, "history flags have no window"

    changed = _write(tmp_path / "fix.csv", "patient_id,issuer,date,albumin\nP1,HOSP,2026-01-10,3.3\n")
    fixed = import_csv(sqlite_engine, changed, definitions, codes, default_issuer=None)
    assert fixed.values_changed == 1
    refreshed = clinical_features(
        sqlite_engine,
        patient_id="P1",
        issuer="HOSP",
        patient_hash=phi.patient_hash("P1", "HOSP"),
        at=dt.datetime(2026, 1, 15),
        definitions=definitions,
    )
    assert refreshed.values["albumin"].value == 3.3


def test_csv_with_unknown_columns_is_refused(sqlite_engine, tmp_path, definitions, codes) -> None:
    bad = _write(tmp_path / "bad.csv", "patient_id,date,albumen\nP1,2026-01-01,3\n")
    with pytest.raises(CsvError, match="neither schema features nor known LOINC codes: albumen"):
        import_csv(sqlite_engine, bad, definitions, codes, default_issuer=None)


def test_final_is_preferred_to_preliminary_and_indirect_bilirubin_is_derived(
    sqlite_engine: Engine, definitions, codes
) -> None:
    intake = Hl7Intake(sqlite_engine, codes, definitions, IntakePolicy(IdentityRules(default_issuer="HOSP")))
    messages = [
        oru(
            "M1",
            [
                "OBX|1|NM|1975-2^TBIL^LN||34.2|umol/L|||||F|||20260110080000",
                "OBX|2|NM|1968-7^DBIL^LN||8.55|umol/L|||||F|||20260110080000",
                "OBX|3|NM|1751-7^ALB^LN||30|g/L|||||F|||20260110080000",
            ],
        ),
        oru("M2", ["OBX|1|NM|1751-7^ALB^LN||40|g/L|||||P|||20260112080000"]),
    ]
    for message in messages:
        _, result = intake.handle(message.encode())
        assert result.code == "AA"
    features = clinical_features(
        sqlite_engine,
        patient_id="MRN4711",
        issuer="HOSP",
        patient_hash=phi.patient_hash("MRN4711", "HOSP"),
        at=dt.datetime(2026, 1, 14),
        definitions=definitions,
    )
    assert features.values["albumin"].value == pytest.approx(3.0)
    assert features.values["albumin"].source == "HL7 M1 from LABSYS^HOSP, OBX 3"
    derived = features.values["indirect_bilirubin"]
    assert derived.value == pytest.approx(1.5, rel=1e-3) and derived.status == "derived"
    assert derived.source.startswith("derived: total (HL7 M1")


def test_labs_cli_import_and_show(tmp_path: Path, data_dir: Path) -> None:
    csv_file = _write(
        tmp_path / "labs.csv",
        "patient_id,date,6690-2,6690-2_unit,albumin\nP9,2026-02-01,7100,/uL,3.9\nP9,2026-02-02,lots,,\n",
    )
    env = tace_env(data_dir=data_dir, default_issuer="HOSP")
    imported = subprocess.run(
        [sys.executable, "-m", "tace", "labs", "import", str(csv_file)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert imported.returncode == 1
    assert "labs.csv: line 3: wbc: 'lots' is not a number" in imported.stderr
    assert imported.stdout.startswith("1 of 2 rows imported: 2 values added")
    shown = subprocess.run(
        [sys.executable, "-m", "tace", "labs", "show", "P9", "--at", "2026-02-10", "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert shown.returncode == 0, shown.stderr
    data = json.loads(shown.stdout)
    assert data["features"]["wbc"]["value"] == pytest.approx(7.1)
    assert data["features"]["wbc"]["source"] == "CSV labs.csv line 2"
    assert "P9" not in shown.stdout
    missing = subprocess.run(
        [sys.executable, "-m", "tace", "labs", "show", "NOBODY"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert missing.returncode == 1 and "no clinical values" in missing.stderr
