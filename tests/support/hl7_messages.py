"""Realistic ORU^R01 messages of the kind a hospital lab system sends."""

from __future__ import annotations

from collections.abc import Sequence

PATIENT_A = "PID|1||MRN4711^^^HOSP^MR~123-45-678^^^SSA^SS||Doe^Jane^^^^^L||19570311|F"
PATIENT_B = "PID|1||MRN6022^^^HOSP^MR||Roe^Richard^^^^^L||19490102|M"
OBR = "OBR|1|PL1001|FL2001|24323-8^Comprehensive metabolic panel^LN|||20260114073000"


def oru(
    control_id: str,
    observations: Sequence[str],
    *,
    patient: str = PATIENT_A,
    version: str = "2.5.1",
    message_type: str = "ORU^R01^ORU_R01",
    processing: str = "P",
    charset: str = "",
    obr: str = OBR,
    sender: str = "LABSYS|HOSP",
) -> str:
    msh = f"MSH|^~\\&|{sender}|TACE|HOSP|20260114091500||{message_type}|{control_id}|{processing}|{version}"
    if charset:
        msh += f"||||||{charset}"
    return "\r".join([msh, patient, obr, *observations]) + "\r"


def patient_group(pid: str, observations: Sequence[str], *, order: str = "2001") -> list[str]:
    """One PATIENT_RESULT group of an ORU^R01: the PID, one order and its results."""
    obr = f"OBR|1|PL{order}|FL{order}|24323-8^Comprehensive metabolic panel^LN|||20260114073000"
    return [pid, obr, *observations]


def two_patient_oru(
    control_id: str,
    first: Sequence[str],
    second: Sequence[str],
    *,
    second_pid: str = PATIENT_B,
) -> str:
    """An ORU^R01 with two PATIENT_RESULT groups (the standard allows the group to repeat)."""
    head = oru(control_id, first).rstrip("\r")
    return "\r".join([head, *patient_group(second_pid, second, order="3001")]) + "\r"


CBC = [
    "OBX|1|NM|6690-2^Leukocytes [#/volume] in Blood^LN||6.2|10*9/L|4.0-10.0|N|||F|||20260114071500",
    "OBX|2|NM|789-8^Erythrocytes [#/volume] in Blood^LN||4.31|10*12/L|3.9-5.2|N|||F|||20260114071500",
    "OBX|3|NM|718-7^Hemoglobin [Mass/volume] in Blood^LN||128|g/L|120-160|N|||F|||20260114071500",
    "OBX|4|NM|777-3^Platelets [#/volume] in Blood^LN||143000|{cells}/uL|150000-400000|L|||F|||20260114071500",
    "OBX|5|NM|751-8^Neutrophils [#/volume] in Blood^LN||3.9|10*3/uL|1.8-7.5|N|||F|||20260114071500",
    "OBX|6|NM|731-0^Lymphocytes [#/volume] in Blood^LN||1.4|10*3/uL|1.0-4.0|N|||F|||20260114071500",
]
LIVER = [
    "OBX|1|NM|1742-6^ALT^LN||48|U/L|7-56|N|||F|||20260114072000",
    "OBX|2|NM|1920-8^AST^LN||1.1|ukat/L|0.1-0.6|H|||F|||20260114072000",
    "OBX|3|NM|6768-6^ALP^LN||132|U/L|44-147|N|||F|||20260114072000",
    "OBX|4|NM|2324-2^GGT^LN||88|U/L|9-48|H|||F|||20260114072000",
    "OBX|5|NM|1975-2^Bilirubin.total^LN||34.2|umol/L|3-21|H|||F|||20260114072000",
    "OBX|6|NM|1968-7^Bilirubin.direct^LN||12|umol/L|0-5|H|||F|||20260114072000",
    "OBX|7|NM|1751-7^Albumin^LN||31|g/L|35-52|L|||F|||20260114072000",
    "OBX|8|SN|1834-1^Alpha-1-Fetoprotein^LN||>^1000|ng/mL|<8|H|||F|||20260114072000",
    "OBX|9|NM|2160-0^Creatinine^LN||88.4|umol/L|53-97|N|||F|||20260114072000",
    "OBX|10|NM|22664-7^Urea [Moles/volume]^LN||7.1|mmol/L|2.5-7.1|N|||F|||20260114072000",
]
COAGULATION = [
    "OBX|1|NM|6301-6^INR^LN||1.3|{INR}|0.9-1.1|H|||F|||20260114072500",
    "OBX|2|NM|5902-2^Prothrombin time^LN||14.8|s|11-13.5|H|||F|||20260114072500",
]
