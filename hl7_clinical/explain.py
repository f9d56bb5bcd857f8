"""Why a patient has no usable value for a feature, in words an administrator can act on.

A job that waits for labs, and `tace labs show` with an empty answer, say why:
labs filed under another issuer for the same patient ID (with the setting that
would match them), values outside the look-back window or from after the study,
values rejected at intake, results the lab could not obtain or withdrew, or
nothing received at all. The text names features, issuers, settings and day
counts, never a patient identifier or a date, so it may go into job timelines and
logs that people without the phi role read.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from hl7_clinical.definitions import Definitions
from hl7_clinical.identity import IdentityRules
from hl7_clinical.statuses import REMOVING, USABLE
from tace.db import LabObservation, table

_LISTED = 6


@dataclass(frozen=True)
class LabsExplanation:
    reasons: tuple[str, ...]

    def __str__(self) -> str:
        return "; ".join(self.reasons)


def _hint(found_under: str | None, issuer: str | None) -> str:
    """The setting that would make labs filed under ``found_under`` count for ``issuer``'s patients."""
    if found_under is None:
        return f"if identifiers without an issuer are {issuer}'s, set TACE_DEFAULT_ISSUER={issuer}"
    return f'if they are the same patient, set TACE_HL7_AUTHORITY_ISSUERS="{found_under}={issuer or ""}"'


def _under(issuer: str | None) -> str:
    return f"under issuer {issuer}" if issuer is not None else "without an issuer"


def _elsewhere(rows: Sequence[sa.Row], issuer: str | None) -> str:
    counts = Counter(row.issuer_of_patient_id for row in rows)
    parts = []
    for other, count in sorted(counts.items(), key=lambda item: (item[0] is None, item[0] or "")):
        parts.append(f"{_under(other)} ({count} value(s); {_hint(other, issuer)})")
    return ", and ".join(parts)


def _feature_reason(
    name: str, window_days: float | None, rows: Sequence[sa.Row], at: dt.datetime, reference: str
) -> str:
    usable = [
        r for r in rows if r.rejected_reason is None and r.value is not None and r.result_status in USABLE
    ]
    if usable:
        timed = [r.observed_at for r in usable if r.observed_at is not None]
        before = [t for t in timed if t <= at]
        if before:
            days = (at - max(before)).total_seconds() / 86400
            window = f" (look-back {window_days:g} days)" if window_days is not None else ""
            return f"{name}: the latest value is {days:.0f} days before {reference}{window}"
        if timed:
            days = (min(timed) - at).total_seconds() / 86400
            return f"{name}: only values from after {reference} (the first {days:.1f} days later)"
        return f"{name}: values without an observation time"
    rejected = [r for r in rows if r.rejected_reason is not None]
    if rejected:
        return f"{name}: {len(rejected)} value(s) rejected at intake (see tace labs show)"
    statuses = {r.result_status for r in rows}
    if statuses & REMOVING:
        return f"{name}: withdrawn by the lab (result status {'/'.join(sorted(statuses & REMOVING))})"
    if "X" in statuses:
        return f"{name}: the lab could not obtain a result (status X)"
    return f"{name}: no usable value (result status {'/'.join(sorted(statuses))})"


def explain_missing_labs(
    engine: Engine,
    *,
    patient_id: str,
    issuer: str | None,
    at: dt.datetime,
    definitions: Definitions,
    features: Sequence[str],
    rules: IdentityRules,
    reference: str = "the study",
) -> LabsExplanation:
    """Why each of ``features`` has no value for (``patient_id``, ``issuer``) at ``at``.

    ``issuer`` is the effective DICOM issuer (:meth:`IdentityRules.issuer`); labs
    count for it under :meth:`IdentityRules.lab_issuers`, as in feature assembly.
    ``reference`` names the moment ``at`` in the sentences ("the study").
    """
    accepted = rules.lab_issuers(issuer)
    labs = table(LabObservation)
    with engine.connect() as connection:
        rows = connection.execute(
            sa.select(
                labs.c.issuer_of_patient_id,
                labs.c.feature,
                labs.c.value,
                labs.c.result_status,
                labs.c.rejected_reason,
                labs.c.observed_at,
            ).where(labs.c.patient_id == patient_id, labs.c.superseded_at.is_(None))
        ).all()
    here = [r for r in rows if r.issuer_of_patient_id in accepted]
    elsewhere = [r for r in rows if r.issuer_of_patient_id not in accepted]
    if not here:
        if elsewhere:
            return LabsExplanation(
                (
                    f"no labs for this patient {_under(issuer)}; labs for the same "
                    f"patient ID exist {_elsewhere(elsewhere, issuer)}",
                )
            )
        return LabsExplanation(("no labs received for this patient ID, under any issuer",))
    reasons: list[str] = []
    never: list[str] = []
    for name in features:
        mine = [r for r in here if r.feature == name]
        if mine:
            definition = definitions.get(name)
            window = definition.window_days if definition else None
            reasons.append(_feature_reason(name, window, mine, at, reference))
            continue
        theirs = [r for r in elsewhere if r.feature == name]
        if theirs:
            reasons.append(f"{name}: only {_elsewhere(theirs, issuer)}")
        else:
            never.append(name)
    if never:
        shown = ", ".join(never[:_LISTED])
        more = f" and {len(never) - _LISTED} more" if len(never) > _LISTED else ""
        reasons.append(f"never received for this patient: {shown}{more}")
    return LabsExplanation(tuple(reasons))
