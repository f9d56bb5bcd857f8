"""Outcomes in (CSV, HL7 intake) and linked to the prediction they judge, on SQLite and PostgreSQL."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from hl7_clinical.codes import CodeMap
from hl7_clinical.csv_import import CsvError
from hl7_clinical.identity import IdentityRules
from hl7_clinical.intake import Hl7Intake, IntakePolicy
from hl7_clinical.outcomes import import_outcomes_csv, parse_response
from model.schema import FeatureSchema
from tace.db import LabObservation, LinkState, Outcome
from tace.outcomes import LinkError, LinkWindow, link_manually, relink
from tests.support.hl7_messages import oru
from tests.support.outcomes import add_prediction

WINDOW = LinkWindow(4, 16)
RESPONSE = "OBX|{n}|CWE|TACE-MRECIST^mRECIST response^L||{value}||||||{status}|||20260301"
TACE_DATE = "OBX|{n}|DT|TACE-PROCDATE^TACE procedure date^L||20260115||||||F"
ALBUMIN = "OBX|{n}|NM|1751-7^Albumin^LN||31|g/L|||||F|||20260114072000"


def _rows(engine: Engine) -> list[sa.Row]:
    table = Outcome.__table__
    with engine.connect() as connection:
        return connection.execute(sa.select(table).order_by(table.c.id)).all()


def _active(engine: Engine) -> list[sa.Row]:
    return [r for r in _rows(engine) if r.superseded_at is None and r.response is not None]


def _csv(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_mrecist_values_are_read_from_codes_and_words() -> None:
    assert [parse_response(v) for v in ("cr", "PR^Partial response^L", "Stable disease", " PD ")] == [
        "CR",
        "PR",
        "SD",
        "PD",
    ]
    with pytest.raises(ValueError, match="'NE' is not CR, PR, SD or PD"):
        parse_response("NE")


def test_csv_import_reports_bad_rows_by_line_and_a_reimport_changes_nothing(
    engine: Engine, tmp_path: Path
) -> None:
    good = "P1,HOSP,2026-01-10,2026-03-01,PD\n"
    path = _csv(
        tmp_path / "outcomes.csv",
        "patient_id,issuer,tace_date,assessment_date,response\n"
        + good
        + "P2,HOSP,,2026-03-02,XX\n"
        + "P3,HOSP,2026-04-01,2026-03-02,SD\n"
        + ",HOSP,,2026-03-02,SD\n"
        + "P4,,,not a date,CR\n",
    )
    report = import_outcomes_csv(engine, path, default_issuer=None, window=WINDOW)
    assert (report.rows, report.added, report.bad_rows) == (5, 1, 4)
    assert report.problems == [
        "line 3: response: mRECIST response 'XX' is not CR, PR, SD or PD",
        "line 4: tace_date 2026-04-01 is after assessment_date 2026-03-02",
        "line 5: patient_id is empty",
        "line 6: assessment_date: date 'not a date' is not YYYY-MM-DD[ HH:MM[:SS]]",
    ]
    (row,) = _rows(engine)
    assert (row.patient_id, row.issuer_of_patient_id, row.tace_date, row.assessed_on, row.response) == (
        "P1",
        "HOSP",
        dt.date(2026, 1, 10),
        dt.date(2026, 3, 1),
        "PD",
    )
    assert row.source_kind == "csv" and row.source_id.startswith("outcomes.csv:2:")
    again = import_outcomes_csv(engine, path, default_issuer=None, window=WINDOW)
    assert (again.added, again.changed, again.unchanged) == (0, 0, 1)
    assert len(_rows(engine)) == 1

    corrected = _csv(
        tmp_path / "fixed.csv", "patient_id,issuer,assessment_date,response\nP1,HOSP,2026-03-01,SD\n"
    )
    fixed = import_outcomes_csv(engine, corrected, default_issuer=None, window=WINDOW)
    assert fixed.changed == 1
    assert [(r.response, r.superseded_at is None) for r in _rows(engine)] == [("PD", False), ("SD", True)]


def test_next_months_export_with_other_patients_on_the_same_lines_keeps_every_outcome(
    engine: Engine, tmp_path: Path
) -> None:
    """A monthly export reuses file name and line numbers for other patients, and a value can
    be corrected back to what it was; each must be stored, not ignored as a repeat."""
    header = "patient_id,issuer,assessment_date,response\n"
    january = _csv(tmp_path / "outcomes.csv", header + "P1,HOSP,2026-01-05,PD\n")
    assert import_outcomes_csv(engine, january, default_issuer=None, window=WINDOW).added == 1
    february = _csv(tmp_path / "outcomes.csv", header + "P2,HOSP,2026-02-05,PD\n")
    assert import_outcomes_csv(engine, february, default_issuer=None, window=WINDOW).added == 1
    assert sorted(r.patient_id for r in _active(engine)) == ["P1", "P2"]

    for response in ("SD", "PD"):
        flip = _csv(tmp_path / "outcomes.csv", header + f"P2,HOSP,2026-02-05,{response}\n")
        report = import_outcomes_csv(engine, flip, default_issuer=None, window=WINDOW)
        assert (report.changed, report.problems) == (1, [])
    assert sorted((r.patient_id, r.response) for r in _active(engine)) == [("P1", "PD"), ("P2", "PD")]


def test_csv_without_required_columns_is_refused_whole(sqlite_engine: Engine, tmp_path: Path) -> None:
    path = _csv(tmp_path / "o.csv", "patient_id,assessment_date\nP1,2026-03-01\n")
    with pytest.raises(CsvError, match="missing column 'response'"):
        import_outcomes_csv(sqlite_engine, path, default_issuer=None, window=WINDOW)
    extra = _csv(tmp_path / "x.csv", "patient_id,assessment_date,response,comment\nP1,2026-03-01,PD,x\n")
    with pytest.raises(CsvError, match="unknown columns: comment"):
        import_outcomes_csv(sqlite_engine, extra, default_issuer=None, window=WINDOW)


def test_linking_by_window_tace_date_and_ambiguity(engine: Engine, tmp_path: Path) -> None:
    single = add_prediction(engine, patient_id="L1", study_date=dt.date(2026, 1, 5), probability=0.7)
    add_prediction(engine, patient_id="L1", study_date=dt.date(2026, 2, 20), probability=0.3)
    first = add_prediction(engine, patient_id="L2", study_date=dt.date(2025, 12, 20), probability=0.6)
    second = add_prediction(engine, patient_id="L2", study_date=dt.date(2026, 1, 3), probability=0.4)
    path = _csv(
        tmp_path / "o.csv",
        "patient_id,tace_date,assessment_date,response\n"
        "L1,2026-01-10,2026-03-01,PD\n"  # TACE date: only the study before it qualifies
        "L2,,2026-03-15,SD\n"  # two studies 4-16 weeks before the assessment
        "L3,,2026-03-15,CR\n",  # no prediction at all
    )
    import_outcomes_csv(engine, path, default_issuer=None, window=WINDOW)
    by_patient = {r.patient_id: r for r in _rows(engine)}
    assert (by_patient["L1"].link_state, by_patient["L1"].job_id) == (LinkState.linked, single)
    assert by_patient["L2"].link_state == LinkState.ambiguous and by_patient["L2"].job_id is None
    assert f"jobs {first}, {second}" in by_patient["L2"].link_detail
    assert by_patient["L3"].link_state == LinkState.unmatched
    assert "between 2025-11-23 and 2026-02-15" in by_patient["L3"].link_detail

    with engine.begin() as connection:
        with pytest.raises(LinkError, match="another patient's"):
            link_manually(connection, by_patient["L2"].id, single)
        link_manually(connection, by_patient["L2"].id, second)
        relink(connection, WINDOW)
    resolved = {r.patient_id: r for r in _rows(engine)}["L2"]
    assert (resolved.link_state, resolved.job_id) == (LinkState.manual, second)


def test_a_prediction_arriving_after_its_outcome_is_linked_on_relink(
    sqlite_engine: Engine, tmp_path: Path
) -> None:
    path = _csv(tmp_path / "o.csv", "patient_id,assessment_date,response\nLATE,2026-03-15,PR\n")
    import_outcomes_csv(sqlite_engine, path, default_issuer=None, window=WINDOW)
    assert _rows(sqlite_engine)[0].link_state == LinkState.unmatched
    job = add_prediction(sqlite_engine, patient_id="LATE", study_date=dt.date(2026, 1, 2), probability=0.5)
    with sqlite_engine.begin() as connection:
        assert relink(connection, WINDOW) == 1
    assert (_rows(sqlite_engine)[0].link_state, _rows(sqlite_engine)[0].job_id) == (LinkState.linked, job)


def _intake(engine: Engine) -> Hl7Intake:
    definitions = FeatureSchema.load(None).by_name()
    policy = IntakePolicy(identity=IdentityRules(default_issuer="HOSP"), link_window=WINDOW)
    return Hl7Intake(engine, CodeMap.load(definitions), definitions, policy)


def test_hl7_labs_and_outcome_in_one_message_corrections_and_deletions(engine: Engine) -> None:
    intake = _intake(engine)
    message = oru(
        "OUT1",
        [
            ALBUMIN.format(n=1),
            RESPONSE.format(n=2, value="PD^Progressive disease^L", status="F"),
            TACE_DATE.format(n=3),
        ],
    )
    _, result = intake.handle(message.encode())
    assert (result.code, result.applied, result.outcomes) == ("AA", 1, 1), result.text
    assert result.text == "stored 1 observation(s) and 1 outcome(s), 0 rejected"
    (row,) = _rows(engine)
    assert (row.response, row.assessed_on, row.tace_date, row.source_kind) == (
        "PD",
        dt.date(2026, 3, 1),
        dt.date(2026, 1, 15),
        "hl7",
    )
    with engine.connect() as connection:
        labs = connection.execute(sa.select(LabObservation.__table__.c.feature)).scalars().all()
    assert labs == ["albumin"]

    _, corrected = intake.handle(oru("OUT2", [RESPONSE.format(n=1, value="SD", status="C")]).encode())
    assert corrected.code == "AA"
    assert [(r.response, r.result_status) for r in _active(engine)] == [("SD", "C")]
    _, deleted = intake.handle(oru("OUT3", [RESPONSE.format(n=1, value="", status="D")]).encode())
    assert deleted.code == "AA"
    assert _active(engine) == [] and len(_rows(engine)) == 3


def test_hl7_bad_outcome_value_stores_nothing_of_the_message(engine: Engine) -> None:
    intake = _intake(engine)
    message = oru("BAD1", [ALBUMIN.format(n=1), RESPONSE.format(n=2, value="NE^Not evaluable^L", status="F")])
    _, result = intake.handle(message.encode())
    assert result.code == "AE" and result.hl7_error == "103"
    assert (
        result.text == "OBX 2: mRECIST response 'NE^Not evaluable^L' is not CR, PR, SD or PD; nothing stored"
    )
    assert _rows(engine) == []
    with engine.connect() as connection:
        assert (
            connection.execute(sa.select(sa.func.count()).select_from(LabObservation.__table__)).scalar() == 0
        )
