"""The prediction as a FHIR R4 DiagnosticReport, for an EHR that speaks FHIR.

Built with fhir.resources' R4B models (FHIR 4.3; DiagnosticReport, Observation
and Device are the same as in R4.0.1 for every element used here), so what we
send validates against the specification's types and cardinalities.

One DiagnosticReport per study and model version, identified by the SR series
UID (``urn:dicom:uid``), holding (contained) the Observation - the predicted
response as a CodeableConcept of the SR's declared code system, the
probability of disease control as a Quantity (UCUM ``1``), ``derivedFrom`` the
ImagingStudy by its Study Instance UID, ``device`` the model - and the model as
a Device with its DICOM Device UID. R4 lets no Device be a report's or an
observation's performer (practitioners, organisations and care teams only), so
the model is the Observation's ``device``, the element R4 defines for it. The
patient is referenced by identifier (patient ID, with the issuer as system when
it is a URI or an OID, else as the assigner's name). A superseding job's report
replaces the same identifier with status ``amended`` (new data, not an error).
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

from fhir.resources.R4B.diagnosticreport import DiagnosticReport

from worker.ehr_result import EhrResult
from worker.sr import MANUFACTURER, PREDICTED_RESPONSE, PROBABILITY, SCHEME, THRESHOLD, sr_identity

CODE_SYSTEM = f"urn:tace:{SCHEME}"
"""The FHIR system URI of the SR's declared private coding scheme (99TACE)."""
DICOM_UID = "urn:dicom:uid"
UCUM = "http://unitsofmeasure.org"
_OID = re.compile(r"^[0-2](\.(0|[1-9][0-9]*))+$")


REPORT_SYSTEM = "urn:tace:report"
"""The identifier system of our DiagnosticReports (values: :attr:`EhrResult.report_key`)."""


def report_identifier(result: EhrResult) -> tuple[str, str]:
    """(system, value) of the report: the same for every job of the study, whichever model version."""
    return REPORT_SYSTEM, result.report_key


def _coding(code: str, display: str) -> dict[str, Any]:
    return {"coding": [{"system": CODE_SYSTEM, "code": code, "display": display}], "text": display}


def _subject(result: EhrResult) -> dict[str, Any]:
    identifier: dict[str, Any] = {"value": result.patient_id}
    issuer = result.assigning_authority
    if issuer and _OID.match(issuer):
        identifier["system"] = f"urn:oid:{issuer}"
    elif issuer and re.match(r"^(https?://|urn:)\S+$", issuer):
        identifier["system"] = issuer
    elif issuer:
        identifier["assigner"] = {"display": issuer}
    return {"type": "Patient", "identifier": identifier}


def _instant(value: dt.datetime) -> str:
    aware = value if value.tzinfo else value.replace(tzinfo=dt.UTC)
    return aware.astimezone(dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _probability(code: str, display: str, value: float) -> dict[str, Any]:
    return {
        "code": _coding(code, display),
        "valueQuantity": {"value": round(value, 4), "unit": "1", "system": UCUM, "code": "1"},
    }


def build_report(result: EhrResult, *, amended: bool) -> DiagnosticReport:
    status = "amended" if amended else "final"
    code, meaning = result.response_code
    subject = _subject(result)
    imaging_study = {
        "type": "ImagingStudy",
        "identifier": {"system": DICOM_UID, "value": f"urn:oid:{result.study_instance_uid}"},
    }
    components = [_probability(str(PROBABILITY.value), str(PROBABILITY.meaning), result.probability)]
    if result.threshold is not None:
        components.append(_probability(str(THRESHOLD.value), str(THRESHOLD.meaning), result.threshold))
    device_uid = sr_identity(result.study_instance_uid, result.model_version, 0).device_uid
    issued = _instant(result.predicted_at)
    effective = result.study_datetime.date().isoformat() if result.study_datetime else None
    observation: dict[str, Any] = {
        "resourceType": "Observation",
        "id": "prediction",
        "status": status,
        "category": [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/observation-category",
                        "code": "imaging",
                    }
                ]
            }
        ],
        "code": _coding(str(PREDICTED_RESPONSE.value), str(PREDICTED_RESPONSE.meaning)),
        "subject": subject,
        "issued": issued,
        "valueCodeableConcept": _coding(code, meaning),
        "component": components,
        "derivedFrom": [imaging_study],
        "device": {"reference": "#model"},
        "note": [{"text": note} for note in result.caveats()],
    }
    device = {
        "resourceType": "Device",
        "id": "model",
        "identifier": [{"system": DICOM_UID, "value": f"urn:oid:{device_uid}"}],
        "manufacturer": MANUFACTURER,
        "deviceName": [{"name": result.model_name, "type": "model-name"}],
        "version": [{"value": result.model_version}],
    }
    report: dict[str, Any] = {
        "resourceType": "DiagnosticReport",
        "identifier": [dict(zip(("system", "value"), report_identifier(result), strict=True))],
        "status": status,
        "category": [
            {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0074", "code": "RAD"}]}
        ],
        "code": _coding(str(PREDICTED_RESPONSE.value), str(PREDICTED_RESPONSE.meaning)),
        "subject": subject,
        "issued": issued,
        "imagingStudy": [imaging_study],
        "result": [{"reference": "#prediction"}],
        "contained": [observation, device],
        "conclusion": (
            f"{meaning} predicted (probability of disease control {result.probability:.3f}). "
            + " ".join(result.caveats())
        ),
        "conclusionCode": [_coding(code, meaning)],
    }
    if effective:
        report["effectiveDateTime"] = effective
        observation["effectiveDateTime"] = effective
    if result.accession_number:
        report["identifier"].append(
            {
                "type": {
                    "coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "ACSN"}]
                },
                "value": result.accession_number,
            }
        )
    return DiagnosticReport.model_validate(report)
