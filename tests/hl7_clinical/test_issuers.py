"""Matching labs to a CT across issuers, and explaining in words why labs are missing."""

from __future__ import annotations

import datetime as dt
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine

from hl7_clinical.codes import CodeMap
from hl7_clinical.explain import explain_missing_labs
from hl7_clinical.features import clinical_features
from hl7_clinical.identity import IdentityRules
from hl7_clinical.intake import Hl7Intake, IntakePolicy
from model.schema import FeatureSchema
from tace import phi
from tace.settings import Settings, SettingsError, load_settings
from tests.support.hl7_messages import oru
from tests.support.processes import tace_env

STUDY = dt.datetime(2026, 1, 20, 9, 0)
LAB_PATIENT = "PID|1||NC0001^^^HOSP^MR||Doe^Jane"
ALBUMIN = "OBX|1|NM|1751-7^Albumin^LN||31|g/L|||||F|||{when}"


@pytest.fixture(scope="module")
def definitions():
    return FeatureSchema.load().by_name()


def _receive(engine: Engine, definitions, rules: IdentityRules, *messages: str) -> None:
    intake = Hl7Intake(engine, CodeMap.load(definitions), definitions, IntakePolicy(rules))
    for message in messages:
        _, result = intake.handle(message.encode())
        assert result.code == "AA", result


def _features(engine: Engine, definitions, rules: IdentityRules, issuer: str | None = None):
    effective = rules.issuer(issuer)
    return clinical_features(
        engine,
        patient_id="NC0001",
        issuer=effective,
        patient_hash=phi.patient_hash("NC0001", effective),
        at=STUDY,
        definitions=definitions,
        lab_issuers=rules.lab_issuers(effective),
    )


def _why(
    engine: Engine, definitions, rules: IdentityRules, features: list[str], issuer: str | None = None
) -> str:
    return str(
        explain_missing_labs(
            engine,
            patient_id="NC0001",
            issuer=rules.issuer(issuer),
            at=STUDY,
            definitions=definitions,
            features=features,
            rules=rules,
        )
    )


def test_labs_under_an_authority_do_not_meet_a_ct_without_issuer_and_the_reason_names_the_setting(
    sqlite_engine: Engine, definitions
) -> None:
    unmapped = IdentityRules()
    _receive(
        sqlite_engine,
        definitions,
        unmapped,
        oru("I0001", [ALBUMIN.format(when="20260119080000")], patient=LAB_PATIENT),
    )
    assert _features(sqlite_engine, definitions, unmapped).values["albumin"] is None
    assert _why(sqlite_engine, definitions, unmapped, ["albumin"]) == (
        "no labs for this patient without an issuer; labs for the same patient ID exist under issuer HOSP "
        '(1 value(s); if they are the same patient, set TACE_HL7_AUTHORITY_ISSUERS="HOSP=")'
    )
    mapped = IdentityRules(authority_issuers={"HOSP": ""})
    assert mapped.lab_issuers(None) == [None, "HOSP"]
    value = _features(sqlite_engine, definitions, mapped).values["albumin"]
    assert value is not None and value.value == pytest.approx(3.1), "labs received before the mapping match"


def test_with_the_mapping_new_labs_are_filed_under_the_dicom_issuer(
    sqlite_engine: Engine, definitions
) -> None:
    for target, stored in (("", None), ("PACS.ORG", "PACS.ORG")):
        rules = IdentityRules(authority_issuers={"HOSP": target})
        control = f"I01{len(target)}"
        _receive(
            sqlite_engine,
            definitions,
            rules,
            oru(control, [ALBUMIN.format(when="20260119080000")], patient=LAB_PATIENT),
        )
        found = _features(sqlite_engine, definitions, IdentityRules(), issuer=stored)
        assert found.values["albumin"] is not None, target
        assert found.patient_hash == phi.patient_hash("NC0001", stored)


def test_the_default_issuer_applies_to_identifiers_without_one_on_either_side(
    sqlite_engine: Engine, definitions
) -> None:
    no_authority = "PID|1||NC0001^^^^MR||Doe^Jane"
    _receive(
        sqlite_engine,
        definitions,
        IdentityRules(),
        oru("I0201", [ALBUMIN.format(when="20260119080000")], patient=no_authority),
    )
    ct_issuer = IdentityRules()
    assert _features(sqlite_engine, definitions, ct_issuer, issuer="HOSP").values["albumin"] is None
    assert _why(sqlite_engine, definitions, ct_issuer, ["albumin"], issuer="HOSP") == (
        "no labs for this patient under issuer HOSP; labs for the same patient ID exist without an issuer "
        "(1 value(s); if identifiers without an issuer are HOSP's, set TACE_DEFAULT_ISSUER=HOSP)"
    )
    defaulted = IdentityRules(default_issuer="HOSP")
    assert _features(sqlite_engine, definitions, defaulted).values["albumin"] is not None


def test_missing_labs_are_explained_feature_by_feature(sqlite_engine: Engine, definitions) -> None:
    rules = IdentityRules(default_issuer="HOSP")
    _receive(
        sqlite_engine,
        definitions,
        rules,
        oru(
            "I0301",
            [
                ALBUMIN.format(when="20251210080000"),
                "OBX|2|NM|6301-6^INR^LN||1.2|{INR}|||||F|||20260121080000",
                "OBX|3|NM|2160-0^Creatinine^LN||88|furlong|||||F|||20260119080000",
                "OBX|4|NM|777-3^Platelets^LN||^|10*3/uL|||||X|||20260119080000",
            ],
            patient=LAB_PATIENT,
        ),
    )
    why = _why(sqlite_engine, definitions, rules, ["albumin", "inr", "creatinine", "platelets", "afp"])
    assert why.split("; ") == [
        "albumin: the latest value is 41 days before the study (look-back 30 days)",
        "inr: only values from after the study (the first 1.0 days later)",
        "creatinine: 1 value(s) rejected at intake (see tace labs show)",
        "platelets: the lab could not obtain a result (status X)",
        "never received for this patient: afp",
    ]
    assert "NC0001" not in why


def test_authority_mapping_setting_from_the_environment_and_toml(tmp_path: Path, monkeypatch) -> None:
    assert Settings(hl7_authority_issuers="HOSP=, LAB2 = PACS.ORG").hl7_authority_issuers == {
        "HOSP": "",
        "LAB2": "PACS.ORG",
    }
    assert Settings(hl7_authority_issuers='{"HOSP": ""}').hl7_authority_issuers == {"HOSP": ""}
    config = tmp_path / "tace.toml"
    config.write_text('[hl7_authority_issuers]\nHOSP = ""\n')
    assert load_settings(config).hl7_authority_issuers == {"HOSP": ""}
    monkeypatch.setenv("TACE_HL7_AUTHORITY_ISSUERS", "HOSP")
    with pytest.raises(
        SettingsError, match="TACE_HL7_AUTHORITY_ISSUERS='HOSP': 'HOSP' is not AUTHORITY=ISSUER"
    ):
        load_settings()


def test_labs_show_explains_an_empty_result_and_never_prints_none(tmp_path: Path, data_dir: Path) -> None:
    csv_file = tmp_path / "labs.csv"
    csv_file.write_text("patient_id,issuer,date,albumin\nNC0001,HOSP,2026-01-19,3.1\n")

    def tace(*args: str, **settings: object) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "tace", *args],
            env=tace_env(data_dir=data_dir, **settings),
            capture_output=True,
            text=True,
            timeout=60,
        )

    assert tace("labs", "import", str(csv_file)).returncode == 0
    empty = tace("labs", "show", "NC0001", "--at", "2026-01-20")
    assert empty.returncode == 1
    assert (
        "no labs for this patient without an issuer; labs for the same patient ID exist under issuer HOSP"
        in empty.stderr
    )
    assert "TACE_HL7_AUTHORITY_ISSUERS" in empty.stderr
    assert "None" not in empty.stderr + empty.stdout
    old = tace("labs", "show", "NC0001", "--issuer", "HOSP", "--at", "2026-03-20")
    assert old.returncode == 1 and "albumin: the latest value is 60 days before that date" in old.stderr
    mapped = tace("labs", "show", "NC0001", "--at", "2026-01-20", hl7_authority_issuers="HOSP=")
    assert mapped.returncode == 0, mapped.stderr
    assert "(no issuer)" in mapped.stdout and "None" not in mapped.stdout
    assert (
        "required and missing: total_bilirubin, afp, platelets, inr, creatinine (never received"
        in mapped.stdout
    )
    shown = json.loads(
        tace("labs", "show", "NC0001", "--at", "2026-01-20", "--json", hl7_authority_issuers="HOSP=").stdout
    )
    assert shown["features"]["albumin"]["value"] == pytest.approx(3.1)


def test_a_header_that_swallowed_the_pid_does_not_log_it(
    engine: Engine, definitions, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Found by the fuzz run: with the end of MSH and the start of PID lost, MSH-10 reads
    the patient ID, MSH-12 the name; the intake refused it but logged that MSH-10."""
    from tace.logging import configure_logging
    from tests.conftest import product_log_file

    garbled = "MSH|^~\\&|LABSYS|HOSP|TACE|HOSP|20260114091500||ORU^R01|F00NC0001^^^HOSP^MR||Doe^Jane||1957\r"
    stream = io.StringIO()
    configure_logging("debug", "json", stream=stream)
    try:
        intake = Hl7Intake(engine, CodeMap.load(definitions), definitions, IntakePolicy(IdentityRules()))
        ack, result = intake.handle((garbled + ALBUMIN.format(when="20260114072000")).encode())
    finally:
        configure_logging("debug", "json", stream=product_log_file(tmp_path_factory).open("a"))
    assert result.code == "AR"
    lines = [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]
    assert any(line["event"] == "hl7.stored" for line in lines)
    assert "NC0001" not in stream.getvalue() and "Doe" not in stream.getvalue()
    assert "F00NC0001" in ack.text, "the sender still gets its control ID back in MSA-2"


def test_results_go_to_the_ehr_under_the_assigning_authority_the_inbound_rules_map_to_the_issuer() -> None:
    mapped = IdentityRules(authority_issuers={"HOSPAUTH": "HOSP", "": "OTHER"}, default_issuer="HOSP")
    assert mapped.authority_for("HOSP") == "HOSPAUTH"
    assert mapped.authority_for(None) == "HOSPAUTH", "no issuer means the default issuer's patients"
    assert mapped.authority_for("CLINIC") == "CLINIC", "an issuer no rule maps goes as the PACS sent it"
    assert (
        IdentityRules(authority="MPI", authority_issuers={"HOSPAUTH": "HOSP"}).authority_for("HOSP") == "MPI"
    )
