"""The prediction as an HL7 v2.5.1 ORU^R01, for an EHR or a tumour-board system.

One message per job: PID with the patient's identifier as the PACS sent it
(``ID^^^issuer``), OBR with the accession number (placer order number and
placer field 1) and the study date and time, OBX 1 the predicted response (CWE
in the SR's declared private code system ``99TACE``, a local system by HL7's
``99zzz`` rule), OBX 2 the probability of disease control (NM, UCUM ``1``),
OBX 3 the decision threshold when recorded, OBX 4 the model name and version,
and NTE segments with the research-use caveat and, for a demo model, the
synthetic-data caveat. A superseding job's message reports the same filler
order number (OBR-3) with OBR-25 and every OBX-11 ``C``, so the receiver
replaces the earlier result instead of adding a second one. MSH-7 is the
prediction time and MSH-10 is derived from the SR: a retry is the same message.

python-hl7 builds the segments and escapes every value, as it does for our ACKs.
"""

from __future__ import annotations

import datetime as dt

import hl7

from worker.ehr_result import MODEL_CODE, EhrResult
from worker.sr import PREDICTED_RESPONSE, PROBABILITY, SCHEME, THRESHOLD

VERSION = "2.5.1"
_SEPARATORS = "\r|~^&"


class _Writer:
    def __init__(self) -> None:
        self.message = hl7.Message(separators=_SEPARATORS, esc="\\")

    def text(self, value: str) -> str:
        return str(self.message.escape(value))

    def segment(self, name: str, fields: dict[int, str | tuple[str, ...]]) -> hl7.Segment:
        """A segment from field number -> escaped value, or -> the components of its first repetition."""
        segment = self.message.create_segment([self.message.create_field([name])])
        for number, value in sorted(fields.items()):
            if isinstance(value, tuple):
                for index, part in enumerate(value, start=1):
                    segment.assign_field(self.text(part), number, 1, index)
            else:
                segment.assign_field(value if name == "MSH" and number <= 2 else self.text(value), number)
        return segment


def _ts(value: dt.datetime) -> str:
    """HL7 TS in UTC for times we made (stored aware, or naive UTC by SQLite)."""
    aware = value if value.tzinfo else value.replace(tzinfo=dt.UTC)
    return aware.astimezone(dt.UTC).strftime("%Y%m%d%H%M%S+0000")


def _pid_name(dicom_name: str | None) -> tuple[str, ...] | str:
    """DICOM PN ``family^given^middle^prefix^suffix`` as XPN ``family^given^middle^suffix^prefix``."""
    family, given, middle, prefix, suffix = ((dicom_name or "").split("=")[0].split("^") + [""] * 5)[:5]
    components = [family, given, middle, suffix, prefix]
    while components and not components[-1]:
        components.pop()
    return tuple(components) if components else '""'


def build_oru(
    result: EhrResult,
    *,
    corrected: bool,
    sending_application: str,
    sending_facility: str,
    receiving_application: str,
    receiving_facility: str,
) -> str:
    """The ORU^R01 as text with CR segment separators (no MLLP framing)."""
    w = _Writer()
    status = "C" if corrected else "F"
    observed = _ts(result.predicted_at)
    msh: dict[int, str | tuple[str, ...]] = {
        1: "|",
        2: "^~\\&",
        3: sending_application,
        4: sending_facility,
        5: receiving_application,
        6: receiving_facility,
        7: observed,
        9: ("ORU", "R01", "ORU_R01"),
        10: result.message_key,
        11: "P",
        12: VERSION,
        18: "UNICODE UTF-8",
    }
    identifier = (
        result.patient_id or "",
        "",
        "",
        result.assigning_authority or "",
        result.patient_id_type or "",
    )
    pid: dict[int, str | tuple[str, ...]] = {
        1: "1",
        3: identifier if result.assigning_authority or result.patient_id_type else (result.patient_id or ""),
        5: _pid_name(result.patient_name),
    }
    if result.patient_birth_date:
        pid[7] = result.patient_birth_date
    if result.patient_sex in ("M", "F", "O"):
        pid[8] = result.patient_sex
    service = (str(PREDICTED_RESPONSE.value), str(PREDICTED_RESPONSE.meaning), SCHEME)
    obr: dict[int, str | tuple[str, ...]] = {
        1: "1",
        3: (result.report_key, "TACE"),
        4: service,
        22: observed,
        25: status,
    }
    if result.accession_number:
        obr[2] = (result.accession_number, "PACS")
        obr[18] = result.accession_number
    if result.study_datetime is not None:
        obr[7] = result.study_datetime.strftime("%Y%m%d%H%M%S")
    code, meaning = result.response_code
    observations: list[tuple[str, tuple[str, ...], str | tuple[str, ...], tuple[str, ...] | None]] = [
        ("CWE", service, (code, meaning, SCHEME), None),
        (
            "NM",
            (str(PROBABILITY.value), str(PROBABILITY.meaning), SCHEME),
            f"{result.probability:.3f}",
            ("1", "no units", "UCUM"),
        ),
    ]
    if result.threshold is not None:
        observations.append(
            (
                "NM",
                (str(THRESHOLD.value), str(THRESHOLD.meaning), SCHEME),
                f"{result.threshold:.3f}",
                ("1", "no units", "UCUM"),
            )
        )
    observations.append(("ST", (*MODEL_CODE, SCHEME), f"{result.model_name} {result.model_version}", None))
    segments = [
        w.segment("MSH", msh),
        w.segment("PID", pid),
        w.segment("OBR", obr),
    ]
    for number, note in enumerate(result.caveats(), start=1):
        segments.append(w.segment("NTE", {1: str(number), 2: "L", 3: note}))
    for number, (value_type, code_3, value, units) in enumerate(observations, start=1):
        obx: dict[int, str | tuple[str, ...]] = {
            1: str(number),
            2: value_type,
            3: code_3,
            5: value,
            11: status,
            14: observed,
        }
        if units is not None:
            obx[6] = units
        segments.append(w.segment("OBX", obx))
    return str(w.message.create_message(segments))
