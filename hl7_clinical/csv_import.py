"""`tace labs import FILE.csv`: clinical values from a lab export or a registry.

One row per patient and date: ``patient_id``, optional ``issuer``, ``date``, then
columns named by schema feature (``albumin``, ``bclc_stage``) or by LOINC code
(``1751-7``), each with an optional ``<column>_unit``. A row with any bad value
is skipped as a whole and reported with its line number; good rows are stored.
Importing the same file again changes nothing; a changed value replaces the old.
"""

from __future__ import annotations

import csv
import datetime as dt
import enum
import hashlib
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from hl7_clinical.codes import CodeMap, CodeMapError, CodeMapping
from hl7_clinical.definitions import Definitions, FeatureRules
from hl7_clinical.identity import effective_issuer
from tace import phi
from tace.db import LabObservation, insert_ignore, table, utcnow
from tace.jobs import wake_waiting_jobs

_RESERVED = {"patient_id", "issuer", "date"}


class CsvError(ValueError):
    """The file cannot be imported at all (missing columns, unreadable)."""


class ValueChange(enum.StrEnum):
    """What importing one cell did: a new value, a new value replacing another, or nothing."""

    added = "added"
    changed = "changed"
    unchanged = "unchanged"


@dataclass
class ImportReport:
    rows: int = 0
    imported_rows: int = 0
    changes: Counter[ValueChange] = field(default_factory=Counter)
    problems: list[str] = field(default_factory=list)

    @property
    def bad_rows(self) -> int:
        return self.rows - self.imported_rows

    @property
    def values_added(self) -> int:
        return self.changes[ValueChange.added]

    @property
    def values_changed(self) -> int:
        return self.changes[ValueChange.changed]

    @property
    def values_unchanged(self) -> int:
        return self.changes[ValueChange.unchanged]


@dataclass(frozen=True)
class _Column:
    header: str
    feature: str
    mapping: CodeMapping | None


def parse_date(text: str) -> dt.datetime:
    text = text.strip()
    for pattern in (
        "%Y-%m-%d %H:%M:%S",
        "%Y-%m-%dT%H:%M:%S",
        "%Y-%m-%d %H:%M",
        "%Y-%m-%dT%H:%M",
        "%Y-%m-%d",
        "%Y%m%d%H%M%S",
        "%Y%m%d",
    ):
        try:
            return dt.datetime.strptime(text, pattern)
        except ValueError:
            continue
    raise ValueError(f"date {text!r} is not YYYY-MM-DD[ HH:MM[:SS]]")


def _columns(header: Sequence[str], definitions: Definitions, codes: CodeMap) -> list[_Column]:
    by_loinc = codes.loinc_columns()
    columns, unknown = [], []
    for name in header:
        clean = name.strip()
        if clean in _RESERVED or clean.endswith("_unit") or not clean:
            continue
        code = clean.removeprefix("LN:")
        if clean in definitions:
            mapping = next((m for c, m in by_loinc.items() if m.feature == clean), None)
            columns.append(_Column(name, clean, mapping))
        elif code in by_loinc:
            columns.append(_Column(name, by_loinc[code].feature, by_loinc[code]))
        else:
            unknown.append(clean)
    if unknown:
        raise CsvError(
            f"columns that are neither schema features nor known LOINC codes: {', '.join(unknown)}"
        )
    return columns


def _problem(exc: ValueError) -> str:
    """The schema's words for a bad value, without the feature's name (the caller adds its own)."""
    return str(getattr(exc, "detail", exc))


def _value(column: _Column, definition: FeatureRules, raw: str, unit: str) -> tuple[float, str | None]:
    """The canonical number (and the category text for nominal features), read by the schema's rules."""
    text = raw.strip()
    if definition.kind != "continuous":
        try:
            parsed = definition.to_number(text)
        except ValueError as exc:
            raise ValueError(f"{column.feature}: {_problem(exc)}") from None
        if isinstance(parsed, str):
            assert definition.categories is not None
            return float(definition.categories.index(parsed)), parsed
        assert parsed is not None
        return parsed, None
    try:
        number = float(text)
    except ValueError:
        raise ValueError(f"{column.feature}: {text!r} is not a number") from None
    if unit and unit != (definition.unit or ""):
        if column.mapping is None:
            raise ValueError(f"{column.feature}: unit {unit!r} given, only {definition.unit} is accepted")
        try:
            number = column.mapping.convert(number, unit)
        except CodeMapError as exc:
            raise ValueError(f"{column.feature}: {exc}") from None
    elif not unit and column.mapping is not None and definition.unit not in (None, ""):
        number = column.mapping.convert(number, definition.unit)
    try:
        checked = definition.to_number(number)
    except ValueError as exc:
        raise ValueError(f"{column.feature}: {_problem(exc)}") from None
    assert isinstance(checked, float)
    return checked, None


def import_csv(
    engine: Engine,
    path: Path,
    definitions: Definitions,
    codes: CodeMap,
    *,
    default_issuer: str | None,
) -> ImportReport:
    report = ImportReport()
    try:
        handle = path.open(newline="", encoding="utf-8-sig")
    except OSError as exc:
        raise CsvError(f"{path}: {exc.strerror}") from None
    with handle:
        reader = csv.DictReader(handle)
        header = reader.fieldnames or []
        for required in ("patient_id", "date"):
            if required not in header:
                raise CsvError(f"{path}: missing column {required!r}")
        columns = _columns(header, definitions, codes)
        woken: set[str] = set()
        for line, row in enumerate(reader, start=2):
            report.rows += 1
            try:
                values = _row_values(row, columns, definitions, default_issuer)
            except ValueError as exc:
                report.problems.append(f"line {line}: {exc}")
                continue
            patient_id, issuer, when, cells = values
            patient_hash = phi.patient_hash(patient_id, issuer)
            phi.protect(patient_id)
            with engine.begin() as connection:
                for feature, number, text, raw, unit in cells:
                    change = _upsert(
                        connection,
                        patient_id,
                        issuer,
                        patient_hash,
                        when,
                        feature,
                        number,
                        text,
                        raw,
                        unit,
                        path,
                        line,
                        definitions[feature],
                    )
                    report.changes[change] += 1
                if patient_hash not in woken:
                    wake_waiting_jobs(connection, patient_hash)
                    woken.add(patient_hash)
            report.imported_rows += 1
    return report


def _row_values(
    row: Mapping[str, str | None],
    columns: list[_Column],
    definitions: Definitions,
    default_issuer: str | None,
) -> tuple[str, str | None, dt.datetime, list[tuple[str, float, str | None, str, str]]]:
    patient_id = (row.get("patient_id") or "").strip()
    if not patient_id:
        raise ValueError("patient_id is empty")
    if len(patient_id) > 64 or any(c in patient_id for c in "^~\\&|\r\n"):
        raise ValueError("patient_id is not a usable identifier")
    issuer = effective_issuer(row.get("issuer"), default_issuer)
    when = parse_date(row.get("date") or "")
    cells, errors = [], []
    for column in columns:
        raw = (row.get(column.header) or "").strip()
        if not raw:
            continue
        unit = (row.get(f"{column.header}_unit") or "").strip()
        try:
            number, text = _value(column, definitions[column.feature], raw, unit)
        except ValueError as exc:
            errors.append(str(exc))
            continue
        cells.append((column.feature, number, text, raw, unit))
    if errors:
        raise ValueError("; ".join(errors))
    if not cells:
        raise ValueError("no values")
    return patient_id, issuer, when, cells


def _upsert(
    connection: sa.Connection,
    patient_id: str,
    issuer: str | None,
    patient_hash: str,
    when: dt.datetime,
    feature: str,
    number: float,
    text: str | None,
    raw: str,
    unit: str,
    path: Path,
    line: int,
    definition: FeatureRules,
) -> ValueChange:
    """Store one value; an existing different value for the same patient, date and feature is superseded."""
    labs = table(LabObservation)
    key = f"csv:{patient_hash}:{when.isoformat()}:{feature}"
    current = connection.execute(
        sa.select(labs.c.id, labs.c.value, labs.c.value_text).where(
            labs.c.observation_key == key, labs.c.superseded_at.is_(None)
        )
    ).first()
    if current is not None and current.value == number and current.value_text == text:
        return ValueChange.unchanged
    now = utcnow()
    if current is not None:
        connection.execute(labs.update().where(labs.c.id == current.id).values(superseded_at=now))
    fingerprint = hashlib.sha256(f"{number!r}|{text}".encode()).hexdigest()[:8]
    insert_ignore(
        connection,
        labs,
        {
            "patient_id": patient_id,
            "issuer_of_patient_id": issuer,
            "patient_hash": patient_hash,
            "feature": feature,
            "code": feature,
            "code_system": "schema",
            "raw_value": raw,
            "raw_unit": unit or None,
            "value": number,
            "unit": definition.unit,
            "result_status": "F",
            "observed_at": when,
            "received_at": now,
            "source_kind": "csv",
            "source_id": f"{path.name[:120]}:{line}:{feature}:{fingerprint}",
            "observation_key": key,
            "value_text": text,
        },
    )
    return ValueChange.changed if current is not None else ValueChange.added
