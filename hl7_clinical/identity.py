"""Which patient a message is about, in the terms DICOM uses (PatientID + issuer).

PID-3 may repeat (MRN, national ID, lab number); the configured identifier type
and assigning authority pick the one that matches the PACS's PatientID.

The matching policy (README, "Matching labs to CT"): a patient is the pair
(patient ID, issuer), and labs meet a CT only under the same issuer, because the
same number under two issuers is two patients. The issuer of an HL7 identifier is

1. the DICOM issuer its assigning authority is mapped to (``hl7_authority_issuers``;
   an empty value means "the PACS sends these patients without an issuer"),
2. else the issuer configured for the sending facility (``hl7_facility_issuers``),
3. else the assigning authority as sent.

An identifier without an issuer, on either side, is taken to be
``default_issuer``'s, else it has none. The mapping also applies to labs stored
before it was configured, so setting it lets a waiting job find labs that had
already arrived under the authority's own name.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from hl7_clinical.oru import MessageError, PatientIdentifier
from tace.settings import Settings


@dataclass(frozen=True)
class IdentityRules:
    id_type: str | None = "MR"
    authority: str | None = None
    default_issuer: str | None = None
    facility_issuers: Mapping[str, str] | None = None
    authority_issuers: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_settings(cls, settings: Settings) -> IdentityRules:
        return cls(
            id_type=settings.hl7_patient_id_type,
            authority=settings.hl7_assigning_authority,
            default_issuer=settings.default_issuer,
            facility_issuers=settings.hl7_facility_issuers,
            authority_issuers=settings.hl7_authority_issuers,
        )

    def issuer(self, issuer: str | None) -> str | None:
        """The issuer a DICOM IssuerOfPatientID (or its absence) stands for."""
        return effective_issuer(issuer, self.default_issuer)

    def authority_for(self, issuer: str | None) -> str | None:
        """The HL7 assigning authority the EHR knows the patients of a DICOM issuer by.

        The inverse of the inbound rules: the configured authority of the MRN, else
        an authority mapped to this issuer, else the issuer as the PACS sent it.
        """
        if self.authority:
            return self.authority
        effective = self.issuer(issuer)
        for authority, target in self.authority_issuers.items():
            if self.issuer(target) == effective:
                return authority
        return effective

    def lab_issuers(self, issuer: str | None) -> list[str | None]:
        """Issuers that stored labs may carry and still belong to ``issuer``'s patients.

        ``issuer`` is already effective (see :meth:`issuer`). Besides itself: every
        assigning authority mapped to it, and "none" when it is the default issuer
        (labs stored before the default was set).
        """
        found: list[str | None] = [issuer]
        for authority, target in self.authority_issuers.items():
            if self.issuer(target) == issuer and authority not in found:
                found.append(authority)
        if issuer is not None and issuer == self.default_issuer and None not in found:
            found.append(None)
        return found


@dataclass(frozen=True)
class PatientKey:
    patient_id: str
    issuer: str | None


def effective_issuer(issuer: str | None, default_issuer: str | None) -> str | None:
    return (issuer or "").strip() or default_issuer


def describe_issuer(issuer: str | None) -> str:
    """An issuer as people read it in messages: never ``None``."""
    return f"issuer {issuer}" if issuer else "no issuer"


def choose_patient(
    identifiers: Sequence[PatientIdentifier], sending_facility: str, rules: IdentityRules
) -> PatientKey:
    if not identifiers:
        raise MessageError(
            "no patient identifier in PID-3: the results cannot be attributed", code="AR", hl7_error="101"
        )
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
    if chosen.authority in rules.authority_issuers:
        return PatientKey(chosen.id, rules.issuer(rules.authority_issuers[chosen.authority]))
    override = (rules.facility_issuers or {}).get(sending_facility)
    return PatientKey(chosen.id, override or rules.issuer(chosen.authority))
