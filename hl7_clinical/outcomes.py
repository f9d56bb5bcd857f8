"""Outcomes in: the mRECIST response after TACE, from an ORU^R01 OBX or a CSV row.

HL7: an OBX whose code (OBX-3.1 or OBX-3.4) is the configured outcome code
carries the response as CWE (``PD^Progressive disease^L``) or text; OBX-14 (else
OBR-7) is the assessment date. An OBX with the configured TACE-date code in the
same patient group gives the procedure date. OBX-11 works as for labs: C
corrects, W and D withdraw the earlier response of the same order and sub-ID,
X records that none could be obtained.

CSV (``tace outcomes import``): ``patient_id``, optional ``issuer``, optional
``tace_date``, ``assessment_date``, ``response``. A bad row is reported by its
line and skipped; importing the same file again changes nothing; a changed
response (or TACE date) for the same patient and assessment date replaces the old.
"""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from hl7_clinical.csv_import import CsvError, parse_date
from hl7_clinical.identity import effective_issuer
from hl7_clinical.oru import MessageError, Observation, parse_timestamp
from hl7_clinical.statuses import REMOVING, USABLE
from tace import phi
from tace.db import Outcome, insert_ignore, table, utcnow
from tace.outcomes import MRECIST, LinkWindow, relink

_WORDS = {
    "complete response": "CR",
    "partial response": "PR",
    "stable disease": "SD",
    "progressive disease": "PD",
}


@dataclass(frozen=True)
class OutcomeCodes:
    """The OBX-3 codes that carry an outcome instead of a lab value."""

    response: str = "TACE-MRECIST"
    tace_date: str = "TACE-PROCDATE"

    def kind(self, observation: Observation) -> str | None:
        codes = {observation.code, observation.alternate_code} - {""}
        if self.response in codes:
            return "response"
        if self.tace_date in codes:
            return "tace_date"
        return None


def parse_response(text: str) -> str:
    """CR, PR, SD or PD from a code or its words (``PD``, ``PD^Progressive disease^L``)."""
    first = text.split("^")[0].strip()
    code = first.upper()
    if code in MRECIST:
        return code
    named = _WORDS.get(first.lower())
    if named is not None:
        return named
    raise ValueError(f"mRECIST response {text!r} is not CR, PR, SD or PD")


@dataclass(frozen=True)
class OutcomeRecord:
    """One outcome OBX, checked: ready to store for its patient group."""

    observation: Observation
    response: str | None
    assessed_on: dt.date
    tace_date: dt.date | None


def outcome_records(observations: list[Observation], codes: OutcomeCodes) -> list[OutcomeRecord]:
    """The group's outcome OBX as records; a MessageError (nothing stored) for any that is unusable."""
    tace_dates = [o for o in observations if codes.kind(o) == "tace_date"]
    tace_date: dt.date | None = None
    for observation in tace_dates:
        parsed = parse_timestamp(observation.raw_value)
        if parsed is None:
            raise MessageError(
                f"OBX {observation.index}: TACE date {observation.raw_value!r} is not an HL7 date; "
                "nothing stored",
                code="AE",
                hl7_error="102",
            )
        if tace_date is not None and parsed.date() != tace_date:
            raise MessageError(
                f"OBX {observation.index}: a second, different TACE date in one patient group; "
                "nothing stored",
                code="AE",
                hl7_error="207",
            )
        tace_date = parsed.date()
    records = []
    for observation in (o for o in observations if codes.kind(o) == "response"):
        if observation.observed_at is None:
            raise MessageError(
                f"OBX {observation.index}: mRECIST response without an assessment date (OBX-14 or OBR-7); "
                "nothing stored",
                code="AE",
                hl7_error="101",
            )
        response: str | None = None
        if observation.status in USABLE:
            try:
                response = parse_response(observation.raw_value)
            except ValueError as exc:
                raise MessageError(
                    f"OBX {observation.index}: {exc}; nothing stored", code="AE", hl7_error="103"
                ) from None
        elif observation.status not in REMOVING and observation.status != "X":
            raise MessageError(
                f"OBX {observation.index}: result status {observation.status!r} is not usable "
                "for an outcome; nothing stored",
                code="AE",
                hl7_error="103",
            )
        records.append(OutcomeRecord(observation, response, observation.observed_at.date(), tace_date))
    return records


def hl7_outcome_row(
    record: OutcomeRecord,
    *,
    message_id: int,
    patient_id: str,
    issuer: str | None,
    patient_hash: str,
    now: dt.datetime,
) -> dict[str, object]:
    observation = record.observation
    return {
        "patient_id": patient_id,
        "issuer_of_patient_id": issuer,
        "patient_hash": patient_hash,
        "tace_date": record.tace_date,
        "assessed_on": record.assessed_on,
        "response": record.response,
        "result_status": observation.status,
        "source_kind": "hl7",
        "source_id": f"{message_id}:{observation.index}",
        "outcome_key": f"hl7:{observation.order_key}|{observation.code}|{observation.sub_id}"[:300],
        "message_id": message_id,
        "received_at": now,
    }


def supersede(connection: sa.Connection, patient_hash: str, key: str, now: dt.datetime) -> None:
    outcomes = table(Outcome)
    connection.execute(
        outcomes.update()
        .where(
            outcomes.c.patient_hash == patient_hash,
            outcomes.c.outcome_key == key,
            outcomes.c.superseded_at.is_(None),
        )
        .values(superseded_at=now)
    )


@dataclass
class OutcomeImportReport:
    rows: int = 0
    added: int = 0
    changed: int = 0
    unchanged: int = 0
    problems: list[str] | None = None

    @property
    def bad_rows(self) -> int:
        return len(self.problems or [])


class _NotStored(Exception):
    """A row whose insert was ignored: its transaction is rolled back and the row reported."""


def _csv_row(
    row: Mapping[str, str | None], default_issuer: str | None
) -> tuple[str, str | None, dt.date | None, dt.date, str]:
    patient_id = (row.get("patient_id") or "").strip()
    if not patient_id:
        raise ValueError("patient_id is empty")
    if len(patient_id) > 64 or any(c in patient_id for c in "^~\\&|\r\n"):
        raise ValueError("patient_id is not a usable identifier")
    issuer = effective_issuer(row.get("issuer"), default_issuer)
    errors = []
    assessed: dt.date | None = None
    tace: dt.date | None = None
    response = ""
    try:
        assessed = parse_date(row.get("assessment_date") or "").date()
    except ValueError as exc:
        errors.append(f"assessment_date: {exc}")
    if (row.get("tace_date") or "").strip():
        try:
            tace = parse_date(row.get("tace_date") or "").date()
        except ValueError as exc:
            errors.append(f"tace_date: {exc}")
    try:
        response = parse_response(row.get("response") or "")
    except ValueError as exc:
        errors.append(f"response: {exc}")
    if assessed is not None and tace is not None and tace > assessed:
        errors.append(f"tace_date {tace} is after assessment_date {assessed}")
    if errors or assessed is None:
        raise ValueError("; ".join(errors))
    return patient_id, issuer, tace, assessed, response


def import_outcomes_csv(
    engine: Engine, path: Path, *, default_issuer: str | None, window: LinkWindow
) -> OutcomeImportReport:
    """Store every good row (one transaction each) and link what can be linked."""
    report = OutcomeImportReport(problems=[])
    assert report.problems is not None
    try:
        handle = path.open(newline="", encoding="utf-8-sig")
    except OSError as exc:
        raise CsvError(f"{path}: {exc.strerror}") from None
    outcomes = table(Outcome)
    with handle:
        reader = csv.DictReader(handle)
        header = [name.strip() for name in reader.fieldnames or []]
        for required in ("patient_id", "assessment_date", "response"):
            if required not in header:
                raise CsvError(f"{path}: missing column {required!r}")
        unknown = [
            name
            for name in header
            if name not in {"patient_id", "issuer", "tace_date", "assessment_date", "response"}
        ]
        if unknown:
            raise CsvError(f"{path}: unknown columns: {', '.join(unknown)}")
        for line, row in enumerate(reader, start=2):
            report.rows += 1
            try:
                patient_id, issuer, tace, assessed, response = _csv_row(row, default_issuer)
            except ValueError as exc:
                report.problems.append(f"line {line}: {exc}")
                continue
            patient_hash = phi.patient_hash(patient_id, issuer)
            phi.protect(patient_id)
            key = f"csv:{assessed.isoformat()}"
            try:
                with engine.begin() as connection:
                    current = connection.execute(
                        sa.select(outcomes.c.id, outcomes.c.response, outcomes.c.tace_date).where(
                            outcomes.c.patient_hash == patient_hash,
                            outcomes.c.outcome_key == key,
                            outcomes.c.superseded_at.is_(None),
                        )
                    ).first()
                    if current is not None and (current.response, current.tace_date) == (response, tace):
                        report.unchanged += 1
                        continue
                    now = utcnow()
                    if current is not None:
                        supersede(connection, patient_hash, key, now)
                    # The same file name and line hold other patients' rows in next month's export,
                    # so the source names the row's patient, assessment and arrival, not only its place.
                    fingerprint = hashlib.sha256(
                        f"{patient_hash}|{assessed}|{response}|{tace}|{now.isoformat()}".encode()
                    ).hexdigest()[:16]
                    stored = insert_ignore(
                        connection,
                        outcomes,
                        {
                            "patient_id": patient_id,
                            "issuer_of_patient_id": issuer,
                            "patient_hash": patient_hash,
                            "tace_date": tace,
                            "assessed_on": assessed,
                            "response": response,
                            "result_status": "C" if current is not None else "F",
                            "source_kind": "csv",
                            "source_id": f"{path.name[:120]}:{line}:{fingerprint}",
                            "outcome_key": key,
                            "received_at": now,
                            "link_state": "unmatched",
                        },
                    )
                    if not stored:
                        raise _NotStored(f"line {line}: not stored: an outcome with the same source exists")
                    relink(connection, window, patient_hash)
            except _NotStored as exc:
                report.problems.append(str(exc))
                continue
            if current is not None:
                report.changed += 1
            else:
                report.added += 1
    return report
