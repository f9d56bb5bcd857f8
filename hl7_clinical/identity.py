"""Which patient a message is about, in the terms DICOM uses (PatientID + issuer).

PID-3 may repeat (MRN, national ID, lab number); the configured identifier type
and assigning authority pick the one that matches the PACS's PatientID. The issuer
becomes the authority, unless the sending facility is configured to another one
or the message gives none, in which case the site default applies, exactly as for
DICOM objects without IssuerOfPatientID.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from hl7_clinical.oru import MessageError, PatientIdentifier


@dataclass(frozen=True)
class IdentityRules:
    id_type: str | None = "MR"
    authority: str | None = None
    default_issuer: str | None = None
    facility_issuers: Mapping[str, str] | None = None


@dataclass(frozen=True)
class PatientKey:
    patient_id: str
    issuer: str | None


def effective_issuer(issuer: str | None, default_issuer: str | None) -> str | None:
    return (issuer or "").strip() or default_issuer


def choose_patient(
    identifiers: Sequence[PatientIdentifier], sending_facility: str, rules: IdentityRules
) -> PatientKey:
    if not identifiers:
        raise MessageError("no patient identifier in PID-3", code="AE", hl7_error="101")
    candidates = list(identifiers)
    if rules.id_type:
        typed = [i for i in candidates if i.type_code == rules.id_type.upper()]
        if not typed and any(i.type_code for i in candidates):
            kinds = ", ".join(sorted({i.type_code or "(none)" for i in candidates}))
            raise MessageError(
                f"no PID-3 identifier of type {rules.id_type} (found {kinds})", code="AE", hl7_error="204"
            )
        candidates = typed or candidates
    if rules.authority:
        matching = [i for i in candidates if i.authority.upper() == rules.authority.upper()]
        if not matching:
            raise MessageError(
                f"no PID-3 identifier assigned by {rules.authority}", code="AE", hl7_error="204"
            )
        candidates = matching
    chosen = candidates[0]
    override = (rules.facility_issuers or {}).get(sending_facility)
    issuer = override or effective_issuer(chosen.authority, rules.default_issuer)
    return PatientKey(chosen.id, issuer)
