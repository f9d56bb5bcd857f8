"""The HL7 listener with a real MLLP client over sockets."""

from __future__ import annotations

import datetime as dt
import socket

import hl7.client
import pytest
import sqlalchemy as sa

from tace.db import Hl7Message, LabObservation
from tests.support.hl7_messages import CBC, COAGULATION, LIVER, oru
from tests.support.mllp import END, START, Hl7Listener, msa, read_frame

pytestmark = pytest.mark.slow


def _values(listener: Hl7Listener) -> dict[str, tuple[float | None, str | None, str | None]]:
    table = LabObservation.__table__
    with listener.engine.connect() as connection:
        rows = connection.execute(
            sa.select(table.c.feature, table.c.value, table.c.unit, table.c.rejected_reason).where(
                table.c.superseded_at.is_(None), table.c.feature.is_not(None)
            )
        ).all()
    return {row.feature: (row.value, row.unit, row.rejected_reason) for row in rows}


def test_cbc_liver_and_coagulation_panels_are_acknowledged_and_converted(start_hl7, postgres_url) -> None:
    listener = start_hl7(database_url=postgres_url)
    with hl7.client.MLLPClient("127.0.0.1", listener.port) as client:
        for number, panel in enumerate((CBC, LIVER, COAGULATION), start=1):
            ack = client.send_message(oru(f"LAB{number:04d}", panel)).decode()
            assert msa(ack)[1:3] == ["AA", f"LAB{number:04d}"], ack
    values = _values(listener)
    expected = {
        "wbc": 6.2,
        "rbc": 4.31,
        "hemoglobin": 12.8,
        "platelets": 143.0,
        "neutrophils": 3.9,
        "lymphocytes": 1.4,
        "alt": 48.0,
        "ast": 66.0,
        "alp": 132.0,
        "ggt": 88.0,
        "total_bilirubin": 2.0,
        "direct_bilirubin": 0.7016,
        "albumin": 3.1,
        "afp": 1000.0,
        "creatinine": 1.0,
        "bun": 19.89,
        "inr": 1.3,
        "prothrombin_time": 14.8,
    }
    for feature, value in expected.items():
        stored, _unit, reason = values[feature]
        assert reason is None, (feature, reason)
        assert stored == pytest.approx(value, rel=2e-3), feature
    assert values["bun"][1] == "mg/dL" and values["platelets"][1] == "10*3/uL"


def test_correction_replaces_the_value_and_keeps_history(start_hl7) -> None:
    listener = start_hl7()
    first = oru("C0001", ["OBX|1|NM|1751-7^Albumin^LN||31|g/L|||||F|||20260114072000"])
    corrected = oru("C0002", ["OBX|1|NM|1751-7^Albumin^LN||36|g/L|||||C|||20260114072000"])
    assert msa(listener.exchange(first))[1] == "AA"
    assert msa(listener.exchange(corrected))[1] == "AA"
    assert _values(listener)["albumin"][0] == pytest.approx(3.6)
    table = LabObservation.__table__
    with listener.engine.connect() as connection:
        history = connection.execute(
            sa.select(table.c.value, table.c.result_status, table.c.superseded_at).where(
                table.c.feature == "albumin"
            )
        ).all()
    assert sorted((row.value, row.result_status, row.superseded_at is None) for row in history) == [
        (3.1, "F", False),
        (3.6, "C", True),
    ]


def test_cannot_be_obtained_and_wrong_patient(start_hl7) -> None:
    listener = start_hl7()
    sodium = "OBX|1|NM|2951-2^Sodium^LN||139|mmol/L|||||{status}|||20260114072000"
    assert msa(listener.exchange(oru("W0001", [sodium.format(status="F")])))[1] == "AA"
    assert _values(listener)["sodium"][0] == 139
    assert msa(listener.exchange(oru("W0002", [sodium.format(status="W")])))[1] == "AA"
    assert "sodium" not in {k for k, v in _values(listener).items() if v[0] is not None}
    potassium = "OBX|1|NM|2823-3^Potassium^LN||^|mmol/L|||||X|||20260114072000"
    assert msa(listener.exchange(oru("X0001", [potassium])))[1] == "AA"
    assert _values(listener)["potassium"] == (None, "mmol/L", None)


def test_unconvertible_unit_and_impossible_value_are_rejected_with_reasons(start_hl7) -> None:
    listener = start_hl7()
    message = oru(
        "U0001",
        [
            "OBX|1|NM|1975-2^Bilirubin^LN||2.0|mg/L|||||F|||20260114072000",
            "OBX|2|NM|2951-2^Sodium^LN||1390|mmol/L|||||F|||20260114072000",
            "OBX|3|NM|9999-9^Unknown test^LN||1|x|||||F|||20260114072000",
        ],
    )
    ack = listener.exchange(message)
    assert msa(ack)[1:4] == ["AA", "U0001", "stored 0 observation(s), 3 rejected"]
    values = _values(listener)
    assert values["total_bilirubin"][2].startswith("unit 'mg/L' cannot be converted to mg/dL")
    assert values["sodium"][2] == "1390 mmol/L is outside the possible range 100..180"
    table = LabObservation.__table__
    with listener.engine.connect() as connection:
        unknown = connection.execute(
            sa.select(table.c.rejected_reason).where(table.c.code == "9999-9")
        ).scalar_one()
    assert unknown == "code 9999-9 (LN) 'Unknown test' is not mapped to a clinical feature"


def test_application_errors_and_refusals(start_hl7) -> None:
    listener = start_hl7(hl7_refuse_processing_ids="T,D")
    no_obx = oru("E0001", [])
    ack = listener.exchange(no_obx)
    assert msa(ack)[1:4] == ["AE", "E0001", "no OBX segments: nothing to record"]
    assert "ERR|||101^Required field missing^HL70357|E||||no OBX segments: nothing to record" in ack
    foreign = oru("E0002", ["OBX|1|NM|1751-7^Albumin^LN||31|g/L|||||F"], patient="PID|1||4711^^^OTHER^PI")
    assert msa(listener.exchange(foreign))[1:4] == [
        "AE",
        "E0002",
        "no PID-3 identifier of type MR (found PI)",
    ]
    adt = oru("R0001", [], message_type="ADT^A01^ADT_A01")
    assert msa(listener.exchange(adt))[1:4] == [
        "AR",
        "R0001",
        "message type ADT\\S\\A01 is not supported (ORU\\S\\R01 only)",
    ]
    test_message = oru("R0002", ["OBX|1|NM|1751-7^Albumin^LN||31|g/L|||||F"], processing="T")
    assert msa(listener.exchange(test_message))[1:4] == ["AR", "R0002", "processing ID T is refused here"]
    old = oru("R0003", ["OBX|1|NM|1751-7^Albumin^LN||31|g/L|||||F"], version="2.2")
    assert msa(listener.exchange(old))[1] == "AR"
    with listener.engine.connect() as connection:
        stored = dict(connection.execute(sa.select(Hl7Message.control_id, Hl7Message.ack_code)).all())
    assert stored == {"E0001": "AE", "E0002": "AE", "R0001": "AR", "R0002": "AR", "R0003": "AR"}


def test_duplicate_control_id_is_acknowledged_and_not_applied_twice(start_hl7) -> None:
    listener = start_hl7()
    message = oru("D0001", ["OBX|1|NM|1751-7^Albumin^LN||31|g/L|||||F|||20260114072000"])
    sock = listener.connect()
    first = listener.exchange(message, sock)
    again = listener.exchange(message, sock)
    sock.close()
    assert msa(first)[1] == "AA" and msa(again)[1] == "AA" and "duplicate of message" in msa(again)[3]
    table = LabObservation.__table__
    with listener.engine.connect() as connection:
        assert connection.execute(sa.select(sa.func.count()).select_from(table)).scalar_one() == 1


def _next_is_accepted(listener: Hl7Listener, control_id: str) -> None:
    good = oru(control_id, ["OBX|1|NM|1751-7^Albumin^LN||40|g/L|||||F|||20260114072000"])
    assert msa(listener.exchange(good))[1:3] == ["AA", control_id]


def _closed(sock: socket.socket) -> bool:
    sock.settimeout(5)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


def test_malformed_input_gets_a_nak_or_a_clean_close_and_the_server_stays_up(start_hl7) -> None:
    listener = start_hl7(hl7_max_message_bytes=4096)
    unframed = listener.connect()
    unframed.sendall(b"MSH|^~\\&|no framing at all\r")
    assert _closed(unframed)
    _next_is_accepted(listener, "OK0001")

    garbage = listener.connect()
    garbage.sendall(START + bytes(range(1, 200)) + END)
    ack = read_frame(garbage)
    assert msa(ack)[1] == "AR" and "does not start with an MSH" in ack
    _next_is_accepted(listener, "OK0002")

    truncated = listener.connect()
    truncated.sendall(START + oru("T0001", CBC).encode()[:120])
    truncated.close()
    _next_is_accepted(listener, "OK0003")

    latin = oru("ENC001", ["OBX|1|ST|1751-7^Albumin^LN||Résumé|g/L|||||F"], charset="UNICODE UTF-8")
    ack = listener.exchange(latin.encode("latin-1"))
    assert msa(ack)[1:3] == ["AR", "ENC001"] and "not valid UTF-8" in ack

    huge = listener.connect()
    huge.sendall(
        START + oru("BIG001", ["OBX|1|TX|1751-7^A^LN||" + "x" * 10_000 + "|g/L|||||F"]).encode() + END
    )
    ack = read_frame(huge)
    assert msa(ack)[1:3] == ["AR", "BIG001"] and "larger than 4096 bytes" in ack
    assert _closed(huge)
    _next_is_accepted(listener, "OK0004")


def test_many_messages_on_one_persistent_connection(start_hl7) -> None:
    listener = start_hl7()
    sock = listener.connect()
    for number in range(25):
        when = (dt.datetime(2026, 1, 1) + dt.timedelta(hours=number)).strftime("%Y%m%d%H%M%S")
        message = oru(
            f"P{number:04d}", [f"OBX|1|NM|2951-2^Sodium^LN||{130 + number % 10}|mmol/L|||||F|||{when}"]
        )
        assert msa(listener.exchange(message, sock))[1] == "AA"
    sock.close()
    assert _values(listener)["sodium"][0] is not None
