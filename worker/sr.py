"""The result as a DICOM Comprehensive 3D SR (TID 1500) that radiologists open next to the CT.

Built with highdicom: device observer (the model, with a Device UID per model
version), procedure reported (the CT), one measurement group with the algorithm
identification (TID 4019: CLDCA, version, checkpoint hash), the predicted
response, the probability of disease control with the decision threshold it was
judged against, a one-line summary (the probability never shown as 1.000), the
clinical-data status with the missing values counted and named in the schema's
words, the values used with their observation dates and sources, and next to
the research-use caveat the model's validated AUC with its CI (and DEMO for a
model trained on synthetic data), and the series read per phase with every
other series of the study and why it was not used. Evidence is the CT instances
actually read, whose patient and study attributes are made conformant first
(:mod:`worker.sr_demographics`); the SR joins the CT's study in its own series,
UNVERIFIED, with Contributing Equipment as IHE AI Results asks, and names the
SR it replaces (Predecessor Documents Sequence). UIDs derive from (study, model
version, job generation): one SR series per study and model version, and a
redelivered job regenerates the same SR, so a PACS never holds two copies.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import highdicom as hd
from highdicom.sr import (
    AlgorithmIdentification,
    CodedConcept,
    Comprehensive3DSR,
    DeviceObserverIdentifyingAttributes,
    Measurement,
    MeasurementReport,
    MeasurementsAndQualitativeEvaluations,
    ObservationContext,
    ObserverContext,
    QualitativeEvaluation,
    TextContentItem,
    TrackingIdentifier,
)
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from tace.display import probability_text
from worker.clinical_summary import ClinicalSummary
from worker.sr_demographics import conformed_evidence

if TYPE_CHECKING:
    from model.predictor import PredictionResult

SCHEME = "99TACE"
SCHEME_NAME = "TACE response gateway codes"
MANUFACTURER = "TACE response gateway"
SR_SERIES_NUMBER = 9901

PREDICTED_RESPONSE = CodedConcept("TACE-RESP", SCHEME, "Predicted response to TACE")
DISEASE_CONTROL = CodedConcept("DC", SCHEME, "Disease control (CR+PR+SD)")
PROGRESSIVE_DISEASE = CodedConcept("PD", SCHEME, "Progressive disease")
PROBABILITY = CodedConcept("TACE-PDC", SCHEME, "Probability of disease control")
THRESHOLD = CodedConcept("TACE-THR", SCHEME, "Decision threshold for disease control")
CLINICAL_STATUS = CodedConcept("TACE-CLIN", SCHEME, "Clinical data status")
CLINICAL_COMPLETE = CodedConcept("COMPLETE", SCHEME, "Complete")
CLINICAL_INCOMPLETE = CodedConcept("INCOMPLETE", SCHEME, "Incomplete, missing values imputed")
MISSING_FEATURES = CodedConcept("TACE-MISS", SCHEME, "Missing clinical features")
VALUES_USED = CodedConcept("TACE-USED", SCHEME, "Clinical values used")
SUMMARY = CodedConcept("TACE-SUM", SCHEME, "Prediction summary")
DISCLAIMER = CodedConcept("121106", "DCM", "Comment")
SERIES_USED = CodedConcept("TACE-INPUT", SCHEME, "Image series used and not used")
UNITLESS = CodedConcept("1", "UCUM", "no units")
CT_PROCEDURE = CodedConcept("77477000", "SCT", "Computerized axial tomography")
REPORT_TITLE = codes.DCM.ImagingMeasurementReport

LABELS = {"disease_control": DISEASE_CONTROL, "progressive_disease": PROGRESSIVE_DISEASE}


@dataclass(frozen=True)
class SrIdentity:
    series_instance_uid: str
    sop_instance_uid: str
    device_uid: str
    instance_number: int


def sr_identity(study_uid: str, model_version: str, generation: int) -> SrIdentity:
    """Deterministic UIDs: one SR series per (study, model version), one SR per job generation."""
    return SrIdentity(
        series_instance_uid=generate_uid(entropy_srcs=["tace-sr-series", study_uid, model_version]),
        sop_instance_uid=generate_uid(entropy_srcs=["tace-sr", study_uid, model_version, str(generation)]),
        device_uid=generate_uid(entropy_srcs=["tace-device", "CLDCA", model_version]),
        instance_number=generation,
    )


@dataclass(frozen=True)
class SrContent:
    probability: float
    label: str
    model_name: str
    model_version: str
    checkpoint_sha256: str
    demo: bool
    clinical: ClinicalSummary
    threshold: float = 0.5
    """The checkpoint's decision threshold on the probability, chosen in cross-validation."""
    validation: str | None = None
    """The checkpoint's validated AUC with its CI, in words."""
    inputs: Sequence[str] = ()
    """The series used per phase, then the study's other series with why they were not used."""

    @classmethod
    def of(
        cls, prediction: PredictionResult, clinical: ClinicalSummary, inputs: Sequence[str] = ()
    ) -> SrContent:
        return cls(
            prediction.probability,
            prediction.label,
            prediction.model_name,
            prediction.model_version,
            prediction.checkpoint_sha256,
            prediction.demo,
            clinical,
            prediction.threshold,
            prediction.validation,
            tuple(inputs),
        )


def _disclaimer(content: SrContent) -> str:
    text = "Research use only; not for clinical decisions."
    text += f" Validation: {content.validation}." if content.validation else " Validation: none recorded."
    if content.demo:
        text += (
            f" The model that produced this result ({content.model_name} {content.model_version}) "
            "is a DEMO model trained on synthetic data; the prediction has no clinical meaning."
        )
    return text


def build_sr(
    evidence: Sequence[Dataset],
    content: SrContent,
    identity: SrIdentity,
    previous: Sequence[Dataset] | None = None,
) -> Comprehensive3DSR:
    """``evidence``: the source CT headers (pixel data not needed; their demographics need not conform);
    ``previous``: the SR this one replaces."""
    algorithm = AlgorithmIdentification(
        name=content.model_name,
        version=content.model_version,
        parameters=[f"checkpoint sha256 {content.checkpoint_sha256}"],
        manufacturer=MANUFACTURER,
    )
    device = ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=DeviceObserverIdentifyingAttributes(
            uid=identity.device_uid,
            name=f"{content.model_name} {content.model_version}"[:64],
            manufacturer_name=MANUFACTURER,
            model_name=content.model_name,
        ),
    )
    evaluations = [
        QualitativeEvaluation(PREDICTED_RESPONSE, LABELS[content.label]),
        QualitativeEvaluation(
            CLINICAL_STATUS, CLINICAL_INCOMPLETE if content.clinical.missing else CLINICAL_COMPLETE
        ),
    ]
    group = MeasurementsAndQualitativeEvaluations(
        tracking_identifier=TrackingIdentifier(
            uid=generate_uid(entropy_srcs=["tace-tracking", identity.sop_instance_uid]),
            identifier="TACE response prediction",
        ),
        algorithm_id=algorithm,
        measurements=[
            Measurement(name=PROBABILITY, value=round(content.probability, 4), unit=UNITLESS),
            Measurement(name=THRESHOLD, value=round(content.threshold, 4), unit=UNITLESS),
        ],
        qualitative_evaluations=evaluations,
    )
    group[0].ContentSequence.extend(_text_items(content))
    report = MeasurementReport(
        observation_context=ObservationContext(observer_device_context=device),
        procedure_reported=CT_PROCEDURE,
        imaging_measurements=[group],
        title=REPORT_TITLE,
    )
    demo = " DEMO" if content.demo else ""
    root = report[0]
    sr = Comprehensive3DSR(
        evidence=conformed_evidence(evidence),
        content=_childless(root),
        series_instance_uid=identity.series_instance_uid,
        series_number=SR_SERIES_NUMBER,
        sop_instance_uid=identity.sop_instance_uid,
        instance_number=identity.instance_number,
        manufacturer=MANUFACTURER,
        is_complete=True,
        is_final=False,
        is_verified=False,
        previous_versions=previous,
        contributing_equipment=[
            hd.ContributingEquipment(
                manufacturer=MANUFACTURER,
                purpose_of_reference=codes.DCM.ProcessingEquipment,
                manufacturer_model_name=content.model_name,
                software_versions=[content.model_version],
                contribution_description=f"AI prediction of TACE response{demo}"[:64],
            )
        ],
    )
    sr.ContentSequence = root.ContentSequence
    sr.SeriesDescription = f"AI TACE response ({content.model_name}{demo})"[:64]
    coding = Dataset()
    coding.CodingSchemeDesignator = SCHEME
    coding.CodingSchemeName = SCHEME_NAME
    coding.CodingSchemeResponsibleOrganization = MANUFACTURER
    sr.CodingSchemeIdentificationSequence = [coding]
    return sr


def _childless(root: Dataset) -> Dataset:
    """The report's root item without its children, for the SR constructor; they are attached after.

    highdicom deep-copies the content it is given, parses it back into content
    items and walks it for image references: about 60% of building an SR. Ours
    references no image (the evidence is given as such), so the constructor gets
    the root alone and the finished document is the same dataset.
    """
    skeleton = Dataset()
    for element in root:
        if element.keyword != "ContentSequence":
            skeleton.add(element)
    skeleton.ContentSequence = []
    return skeleton


def _summary(content: SrContent) -> str:
    words = "disease control" if content.label == "disease_control" else "progressive disease"
    return (
        f"Predicted {words}: probability of disease control {probability_text(content.probability)}"
        f" (threshold {content.threshold:.3f}); {content.clinical.missing_text}."
    )


def _text_items(content: SrContent) -> list[TextContentItem]:
    items = [TextContentItem(name=SUMMARY, value=_summary(content), relationship_type="CONTAINS")]
    if content.clinical.missing:
        items.append(
            TextContentItem(
                name=MISSING_FEATURES, value=content.clinical.missing_text, relationship_type="CONTAINS"
            )
        )
    if content.clinical.used:
        items.append(
            TextContentItem(
                name=VALUES_USED, value="\r\n".join(content.clinical.used), relationship_type="CONTAINS"
            )
        )
    if content.inputs:
        items.append(
            TextContentItem(
                name=SERIES_USED, value="\r\n".join(content.inputs)[:10240], relationship_type="CONTAINS"
            )
        )
    items.append(TextContentItem(name=DISCLAIMER, value=_disclaimer(content), relationship_type="CONTAINS"))
    return items
