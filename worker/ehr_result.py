"""What a result for the EHR says, gathered once for the HL7 v2 and the FHIR channel.

Both channels send the same facts as the SR: the patient as the PACS sent it
(ID and issuer), the accession number, the predicted response in the SR's
declared private code system, the probability of disease control (UCUM ``1``),
the model, and the research-use (and, for a demo model, synthetic-data) caveat.

Identifiers are derived, never drawn at random, so a retry or a replay sends the
same message again and a receiver that deduplicates keeps one result:
``report_key`` comes from the study (the EHR holds one answer per study, whichever
model gave it), so every later job's result corrects the same order / report;
``message_key`` comes from the SR instance UID (one per job generation). A
result is a correction wherever an earlier job of the study delivered one, not
only where its immediate predecessor did.

The patient goes as the EHR knows them: the PACS's issuer mapped back to the
HL7 assigning authority by the identity rules that match inbound labs.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime

from sqlmodel import Session, col, select

from hl7_clinical.identity import IdentityRules
from tace import phi
from tace.db import Delivery, DeliveryKind, DeliveryState, Job, Prediction, Series, Study
from worker.sr import LABELS

RESEARCH_USE = "Research use only; not for clinical decisions."
MODEL_CODE = ("TACE-MODEL", "Model name and version")
"""The OBX code of the model's name and version (the SR names them in its algorithm identification)."""


def _key(prefix: str, uid: str) -> str:
    return prefix + hashlib.sha256(uid.encode()).hexdigest()[:16].upper()


@dataclass(frozen=True)
class EhrResult:
    job_id: int
    study_instance_uid: str
    patient_id: str | None
    assigning_authority: str | None
    """The HL7 assigning authority of ``patient_id`` (PID-3.4; the FHIR identifier's system)."""
    patient_id_type: str | None
    """PID-3.5, e.g. MR."""
    patient_name: str | None
    patient_birth_date: str | None
    patient_sex: str | None
    accession_number: str | None
    study_datetime: datetime | None
    label: str
    probability: float
    threshold: float | None
    model_name: str
    model_version: str
    demo_model: bool
    predicted_at: datetime
    sr_sop_instance_uid: str
    sr_series_instance_uid: str
    corrects: frozenset[tuple[str, DeliveryKind]]
    """(destination, channel) pairs that hold an earlier result of the study: there this one corrects it."""

    @property
    def message_key(self) -> str:
        """MSH-10: 20 characters, the same on every attempt for this job's result."""
        return _key("TACE", self.sr_sop_instance_uid)

    @property
    def report_key(self) -> str:
        """OBR-3 and the DiagnosticReport identifier: one per study."""
        return _key("TACER", self.study_instance_uid)

    @property
    def response_code(self) -> tuple[str, str]:
        concept = LABELS[self.label]
        return str(concept.value), str(concept.meaning)

    def caveats(self) -> list[str]:
        notes = [RESEARCH_USE]
        if self.demo_model:
            notes.append(
                f"The model that produced this result ({self.model_name} {self.model_version}) is a DEMO "
                "model trained on synthetic data; the prediction has no clinical meaning."
            )
        return notes

    def corrected(self, destination: str, kind: DeliveryKind) -> bool:
        return (destination, kind) in self.corrects


def load_result(session: Session, job_id: int, rules: IdentityRules) -> EhrResult | None:
    """The job's result, or None when it has no SR (nothing to report yet)."""
    job = session.get(Job, job_id)
    prediction = session.exec(select(Prediction).where(Prediction.job_id == job_id)).first()
    if job is None or prediction is None or not prediction.sr_sop_instance_uid:
        return None
    if not prediction.sr_series_instance_uid:
        return None
    series = session.get(Series, job.series_id)
    study_id = job.study_id if job.study_id is not None else series.study_id if series is not None else None
    study = session.get(Study, study_id) if study_id is not None else None
    if study is None:
        return None
    # A receiver may quote them back (an AR's text, an OperationOutcome): logs must scrub them.
    phi.protect(
        study.patient_id,
        study.patient_name,
        study.patient_birth_date,
        study.accession_number,
        study.issuer_of_patient_id,
    )
    return EhrResult(
        job_id=job_id,
        study_instance_uid=study.study_instance_uid,
        patient_id=(study.patient_id or "").strip() or None,
        assigning_authority=rules.authority_for(study.issuer_of_patient_id),
        patient_id_type=rules.id_type,
        patient_name=study.patient_name,
        patient_birth_date=study.patient_birth_date,
        patient_sex=study.patient_sex,
        accession_number=study.accession_number,
        study_datetime=study.study_datetime,
        label=prediction.label,
        probability=prediction.probability,
        threshold=prediction.threshold,
        model_name=prediction.model_name,
        model_version=prediction.model_version,
        demo_model=prediction.demo_model,
        predicted_at=prediction.created_at,
        sr_sop_instance_uid=prediction.sr_sop_instance_uid,
        sr_series_instance_uid=prediction.sr_series_instance_uid,
        corrects=_earlier_results(session, study.id or 0, job_id),
    )


def _earlier_results(session: Session, study_id: int, job_id: int) -> frozenset[tuple[str, DeliveryKind]]:
    """Where an earlier job of the study delivered a result: the EHR holds the study's report there."""
    rows = session.exec(
        select(Delivery.destination, Delivery.kind)
        .join(Job, col(Job.id) == Delivery.job_id)
        .join(Series, col(Series.id) == Job.series_id)
        .where(
            col(Series.study_id) == study_id,
            col(Job.id) < job_id,
            col(Delivery.kind).in_((DeliveryKind.hl7_result, DeliveryKind.fhir_report)),
            col(Delivery.state) == DeliveryState.delivered,
        )
    ).all()
    return frozenset((destination, DeliveryKind(kind)) for destination, kind in rows)
