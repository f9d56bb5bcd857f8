"""Clinical features of a patient as of a study date: what the model is given.

For every schema feature: the latest usable value within its look-back window
before the study (final and corrected results preferred to preliminary ones;
history flags have no window), its canonical unit, where it came from and when.
Features without a value are listed as missing, never filled with zero here.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from hl7_clinical.definitions import Definitions, FeatureRules
from hl7_clinical.statuses import FINAL, PRELIMINARY
from tace.db import Hl7Message, LabObservation, table


@dataclass(frozen=True)
class FeatureValue:
    name: str
    value: float
    unit: str | None
    observed_at: dt.datetime | None
    source: str
    status: str
    text: str | None = None
    comparator: str | None = None


@dataclass(frozen=True)
class RejectedObservation:
    code: str | None
    raw_value: str | None
    raw_unit: str | None
    observed_at: dt.datetime | None
    source: str
    reason: str


@dataclass
class ClinicalFeatures:
    at: dt.datetime
    patient_hash: str
    values: dict[str, FeatureValue | None] = field(default_factory=dict)
    rejected: list[RejectedObservation] = field(default_factory=list)

    @property
    def missing(self) -> list[str]:
        return [name for name, value in self.values.items() if value is None]

    def model_input(self) -> dict[str, object]:
        """Name -> value in canonical units (coded features as their text), None when missing."""
        out: dict[str, object] = {}
        for name, value in self.values.items():
            if value is None:
                out[name] = None
            else:
                out[name] = (
                    value.text if value.text is not None and value.value != value.value else value.value
                )
        return out

    def provenance(self) -> dict[str, dict[str, object] | None]:
        return {
            name: None
            if value is None
            else {
                "value": value.value,
                "unit": value.unit,
                "source": value.source,
                "status": value.status,
                "observed_at": value.observed_at.isoformat() if value.observed_at else None,
                "comparator": value.comparator,
                "text": value.text,
            }
            for name, value in self.values.items()
        }


def _source(row: sa.Row, messages: Mapping[int, tuple[str, str]]) -> str:
    if row.source_kind == "hl7" and row.message_id in messages:
        control, sender = messages[row.message_id]
        return f"HL7 {control} from {sender}, OBX {row.source_id.split(':')[1]}"
    if row.source_kind == "csv":
        name, line = row.source_id.split(":")[:2]
        return f"CSV {name} line {line}"
    return f"{row.source_kind} {row.source_id}"


def issuer_condition(
    column: sa.ColumnElement[str | None], issuers: Collection[str | None]
) -> sa.ColumnElement[bool]:
    """``column`` is one of ``issuers``, where None means "stored without an issuer"."""
    named = [issuer for issuer in issuers if issuer is not None]
    conditions = [column.in_(named)] if named else []
    if None in issuers:
        conditions.append(column.is_(None))
    return sa.or_(*conditions) if conditions else sa.false()


def clinical_features(
    engine: Engine,
    *,
    patient_id: str,
    issuer: str | None,
    patient_hash: str,
    at: dt.datetime,
    definitions: Definitions,
    lab_issuers: Collection[str | None] | None = None,
) -> ClinicalFeatures:
    """``lab_issuers``: the issuers stored labs may carry for this patient (default: ``issuer`` alone;
    see :meth:`hl7_clinical.identity.IdentityRules.lab_issuers`)."""
    labs = table(LabObservation)
    with engine.connect() as connection:
        rows = connection.execute(
            sa.select(labs)
            .where(
                labs.c.patient_id == patient_id,
                issuer_condition(
                    labs.c.issuer_of_patient_id, [issuer] if lab_issuers is None else lab_issuers
                ),
                labs.c.superseded_at.is_(None),
            )
            .order_by(labs.c.observed_at.desc(), labs.c.id.desc())
        ).all()
        message_ids = {r.message_id for r in rows if r.message_id is not None}
        messages = {}
        if message_ids:
            message = table(Hl7Message)
            messages = {
                m.id: (m.control_id, m.sender)
                for m in connection.execute(
                    sa.select(message.c.id, message.c.control_id, message.c.sender).where(
                        message.c.id.in_(message_ids)
                    )
                )
            }
    result = ClinicalFeatures(at=at, patient_hash=patient_hash)
    for name, definition in definitions.items():
        result.values[name] = _pick(name, definition, rows, at, messages)
    _derive_indirect_bilirubin(result, definitions)
    window = max((d.window_days or 0 for d in definitions.values()), default=30)
    for row in rows:
        if row.rejected_reason and (
            row.observed_at is None or row.observed_at >= at - dt.timedelta(days=window)
        ):
            result.rejected.append(
                RejectedObservation(
                    row.code,
                    row.raw_value,
                    row.raw_unit,
                    row.observed_at,
                    _source(row, messages),
                    row.rejected_reason,
                )
            )
    return result


def _pick(
    name: str,
    definition: FeatureRules,
    rows: Sequence[sa.Row[Any]],
    at: dt.datetime,
    messages: Mapping[int, tuple[str, str]],
) -> FeatureValue | None:
    earliest = at - dt.timedelta(days=definition.window_days) if definition.window_days is not None else None
    usable = [
        r
        for r in rows
        if r.feature == name
        and r.rejected_reason is None
        and r.value is not None
        and r.result_status in FINAL + PRELIMINARY
        and (
            definition.window_days is None or (r.observed_at is not None and earliest <= r.observed_at <= at)
        )
    ]
    for statuses in (FINAL, PRELIMINARY):
        for row in usable:
            if row.result_status in statuses:
                return FeatureValue(
                    name=name,
                    value=float(row.value),
                    unit=row.unit,
                    observed_at=row.observed_at,
                    source=_source(row, messages),
                    status=row.result_status,
                    text=row.value_text,
                    comparator=row.comparator,
                )
    return None


def _derive_indirect_bilirubin(result: ClinicalFeatures, definitions: Definitions) -> None:
    """Indirect bilirubin = total - direct, when it was not measured but both parts were."""
    if "indirect_bilirubin" not in definitions or result.values.get("indirect_bilirubin") is not None:
        return
    total, direct = result.values.get("total_bilirubin"), result.values.get("direct_bilirubin")
    if total is None or direct is None or direct.value > total.value:
        return
    times = [t for t in (total.observed_at, direct.observed_at) if t is not None]
    result.values["indirect_bilirubin"] = FeatureValue(
        name="indirect_bilirubin",
        value=round(total.value - direct.value, 4),
        unit=total.unit,
        observed_at=min(times) if times else None,
        source=f"derived: total ({total.source}) - direct ({direct.source})",
        status="derived",
    )
