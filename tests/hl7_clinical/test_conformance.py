"""Patient safety and ACK conformance of the HL7 feed, with a real MLLP client against `tace hl7`.

Each test here was written against a reported failure: labs of a second patient
group stored for the first patient, two messages in one frame merged, a reused
control ID with other content dropped silently, and ACKs that ignored the
sender's delimiters and character set.
"""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from tace.db import Hl7Message, LabObservation
from tests.support.hl7_messages import (
    PATIENT_A,
    PATIENT_B,
    oru,
    patient_group,
    two_patient_oru,
)
from tests.support.mllp import END, START, Hl7Listener, msa, read_frame_bytes

pytestmark = pytest.mark.slow

ALT_A = "OBX|1|NM|1742-6^ALT^LN||48|U/L|||||F|||20260114072000"
ALT_B = "OBX|1|NM|1742-6^ALT^LN||777|U/L|||||F|||20260114072000"
CREATININE_B = "OBX|2|NM|2160-0^Creatinine^LN||88.4|umol/L|||||F|||20260114072000"


def _observations(listener: Hl7Listener) -> list[tuple[str, str | None, str | None, float | None]]:
    table = LabObservation.__table__
    with listener.engine.connect() as connection:
        rows = connection.execute(
            sa.select(table.c.patient_id, table.c.issuer_of_patient_id, table.c.feature, table.c.value)
        ).all()
    return sorted((r.patient_id, r.issuer_of_patient_id, r.feature, r.value) for r in rows)


def _messages(listener: Hl7Listener) -> list[sa.Row]:
    table = Hl7Message.__table__
    with listener.engine.connect() as connection:
        return list(connection.execute(sa.select(table).order_by(table.c.id)).all())


def test_each_patient_group_of_an_oru_is_stored_for_its_own_patient(start_hl7) -> None:
    listener = start_hl7(default_issuer="HOSP")
    message = two_patient_oru("GRP0001", [ALT_A], [ALT_B, CREATININE_B])
    ack = listener.exchange(message)
    assert _observations(listener) == [
        ("MRN4711", "HOSP", "alt", 48.0),
        ("MRN6022", "HOSP", "alt", 777.0),
        ("MRN6022", "HOSP", "creatinine", pytest.approx(1.0, rel=1e-3)),
    ]
    assert msa(ack)[1:4] == ["AA", "GRP0001", "stored 3 observation(s) for 2 patients, 0 rejected"]
    (stored,) = _messages(listener)
    assert stored.ack_code == "AA" and stored.observations == 3
    assert stored.raw == message.encode()


def test_observations_outside_a_patient_group_are_refused_and_nothing_is_stored(start_hl7) -> None:
    listener = start_hl7()
    msh = oru("GRP0002", []).split("\r")[0]
    obr = "OBR|1|PL1|FL1|24323-8^Metabolic panel^LN|||20260114073000"
    orphan_first = "\r".join([msh, obr, ALT_B, *patient_group(PATIENT_A, [ALT_A])]) + "\r"
    ack = listener.exchange(orphan_first)
    assert msa(ack)[1:3] == ["AR", "GRP0002"]
    assert "OBR (segment 2) before any PID" in msa(ack)[3]
    pid_without_id = "PID|1||^^^HOSP^MR||Roe^Richard"
    unattributable = two_patient_oru("GRP0003", [ALT_A], [ALT_B], second_pid=pid_without_id)
    ack = listener.exchange(unattributable)
    assert msa(ack)[1:3] == ["AR", "GRP0003"]
    assert "patient group 2" in msa(ack)[3] and "nothing stored" in msa(ack)[3]
    assert _observations(listener) == []
    assert [(m.control_id, m.ack_code, m.observations) for m in _messages(listener)] == [
        ("GRP0002", "AR", 0),
        ("GRP0003", "AR", 0),
    ]


def test_two_messages_in_one_frame_are_refused_not_merged(start_hl7) -> None:
    listener = start_hl7()
    first = oru("CAT0001", [ALT_A])
    second = oru("CAT0002", [ALT_B, CREATININE_B], patient=PATIENT_B)
    sock = listener.connect()
    ack = listener.exchange(first + second, sock)
    assert msa(ack)[1:3] == ["AR", "CAT0001"]
    assert msa(ack)[3] == "2 messages in one MLLP frame (MSH at segments 1 and 5): send one per frame"
    assert _observations(listener) == []
    (stored,) = _messages(listener)
    assert stored.ack_code == "AR" and stored.raw == (first + second).encode()
    assert msa(listener.exchange(second, sock))[1:3] == ["AA", "CAT0002"], "the connection still serves"
    sock.close()
    assert [row[0] for row in _observations(listener)] == ["MRN6022", "MRN6022"]


def test_reused_control_id_with_other_content_is_kept_and_flagged(start_hl7) -> None:
    listener = start_hl7()
    albumin = "OBX|1|NM|1751-7^Albumin^LN||{value}|g/L|||||F|||20260114072000"
    original = oru("CTLDUP7", [albumin.format(value=31)])
    other = oru("CTLDUP7", [albumin.format(value=45)])
    sock = listener.connect()
    assert msa(listener.exchange(original, sock))[1] == "AA"
    conflict = listener.exchange(other, sock)
    assert msa(conflict)[1:3] == ["AE", "CTLDUP7"]
    assert "control ID CTLDUP7 was already used for different content" in msa(conflict)[3]
    assert "205^Duplicate key identifier^HL70357" in conflict
    resent_original = original.replace("20260114091500", "20260114093000")
    again = listener.exchange(resent_original, sock)
    assert msa(again)[1] == "AA" and "duplicate of message" in msa(again)[3]
    assert msa(listener.exchange(other, sock))[1] == "AE", "a resent conflict stays a conflict"
    sock.close()
    rows = _messages(listener)
    assert [(m.control_id, m.ack_code, m.raw) for m in rows] == [
        ("CTLDUP7", "AA", original.encode()),
        ("CTLDUP7", "AE", other.encode()),
    ]
    assert rows[1].conflict_of == rows[0].id
    table = LabObservation.__table__
    with listener.engine.connect() as connection:
        values = connection.execute(sa.select(table.c.feature, table.c.value)).all()
    assert [(r.feature, r.value) for r in values] == [("albumin", pytest.approx(3.1))]


def test_ack_uses_the_senders_encoding_characters(start_hl7) -> None:
    listener = start_hl7()
    message = (
        oru("CTLENC7", [ALT_A.replace("^", "$")], patient="PID|1||MRN4711$$$HOSP$MR||Doe$Jane")
        .replace("MSH|^~\\&|", "MSH|$%*@|")
        .replace("ORU^R01^ORU_R01", "ORU$R01$ORU_R01")
        .replace("24323-8^Comprehensive metabolic panel^LN", "24323-8$CMP$LN")
    )
    ack = listener.exchange(message)
    msh, msa_line = ack.split("\r")[:2]
    assert msh.startswith("MSH|$%*@|") and "|ACK$R01$ACK|" in msh, msh
    assert msa_line.split("|")[1:3] == ["AA", "CTLENC7"]
    assert "^" not in ack and "~" not in ack and "&" not in ack
    refused = message.replace("CTLENC7", "CTLENC8").replace("ORU$R01$ORU_R01", "ADT$A01$ADT_A01")
    nak = listener.exchange(refused)
    assert msa(nak)[1] == "AR" and "|200$Unsupported message type$HL70357|" in nak
    assert nak.split("\r")[0].split("|")[8] == "ACK$A01$ACK"
    assert _observations(listener) == [("MRN4711", "HOSP", "alt", 48.0)]


def test_ack_uses_the_messages_character_set(start_hl7) -> None:
    listener = start_hl7()
    text = oru("LAT0001", [ALT_A], patient="PID|1||MRN4711^^^HOSP^MR||Doe^Jane", charset="8859/1")
    message = text.replace("|", "\u00e9").encode("latin-1")
    assert message[3] == 0xE9
    sock = listener.connect()
    sock.sendall(START + message + END)
    raw_ack = read_frame_bytes(sock)
    sock.close()
    assert raw_ack[3] == 0xE9, raw_ack[:20]
    ack = raw_ack.decode("latin-1")
    segments = ack.split("\r")
    assert segments[0].split("\u00e9")[17] == "8859/1", "the ACK declares the character set it is written in"
    assert segments[1].split("\u00e9")[1:3] == ["AA", "LAT0001"]
    assert _observations(listener) == [("MRN4711", "HOSP", "alt", 48.0)]
