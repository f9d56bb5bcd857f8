"""Attack classes against the HL7 feed, over real sockets against `tace hl7`.

Multi-patient and concatenated messages must never put one patient's results
under another's identifier; slow-drip connections, at every stage of MLLP
framing, must be closed within the message timeout without holding up anyone
else. Each case asserts what matters: the ACK code, the rows in the database,
and that other clients are still served.
"""

from __future__ import annotations

import select
import socket
import threading
import time
from dataclasses import dataclass

import pytest
import sqlalchemy as sa

from tace.db import Hl7Message, LabObservation
from tests.support.hl7_messages import PATIENT_A, PATIENT_B, oru, patient_group
from tests.support.mllp import END, START, Hl7Listener, msa

pytestmark = pytest.mark.slow

PATIENT_C = "PID|1||MRN7033^^^HOSP^MR||Poe^Edgar||19600101|M"
ALBUMIN = "OBX|{n}|NM|1751-7^Albumin^LN||{value}|g/L|||||F|||20260114072000"


def _albumin(value: int, n: int = 1) -> str:
    return ALBUMIN.format(n=n, value=value)


def _stored(listener: Hl7Listener, control_id: str | None = None) -> dict[str, list[float]]:
    """Patient ID -> albumin values (g/dL) stored for that patient (from one message, if given)."""
    table, message = LabObservation.__table__, Hl7Message.__table__
    query = sa.select(table.c.patient_id, table.c.value).order_by(table.c.id)
    if control_id is not None:
        query = query.join(message, message.c.id == table.c.message_id).where(
            message.c.control_id == control_id
        )
    with listener.engine.connect() as connection:
        rows = connection.execute(query).all()
    found: dict[str, list[float]] = {}
    for row in rows:
        found.setdefault(row.patient_id, []).append(round(row.value, 2))
    return found


def _message_rows(listener: Hl7Listener, control_id: str) -> list[sa.Row]:
    table = Hl7Message.__table__
    with listener.engine.connect() as connection:
        return list(connection.execute(sa.select(table).where(table.c.control_id == control_id)).all())


def _msh(control_id: str) -> str:
    return oru(control_id, []).split("\r")[0]


MULTI_PATIENT = {
    "two groups": (
        [*patient_group(PATIENT_A, [_albumin(31)]), *patient_group(PATIENT_B, [_albumin(45)])],
        {"MRN4711": [3.1], "MRN6022": [4.5]},
    ),
    "three groups with visit and notes": (
        [
            *patient_group(PATIENT_A, [_albumin(31)]),
            PATIENT_B,
            "PV1|1|O|ONC^^^HOSP",
            "NTE|1||patient note",
            "ORC|RE|PL3001|FL3001",
            "OBR|1|PL3001|FL3001|24323-8^CMP^LN|||20260114073000",
            _albumin(45),
            "NTE|1||result note",
            *patient_group(PATIENT_C, [_albumin(38)], order="4001"),
        ],
        {"MRN4711": [3.1], "MRN6022": [4.5], "MRN7033": [3.8]},
    ),
    "second PID straight after a result": (
        [*patient_group(PATIENT_A, [_albumin(31)]), PATIENT_B, _albumin(45)],
        {"MRN4711": [3.1], "MRN6022": [4.5]},
    ),
    "same patient twice": (
        [*patient_group(PATIENT_A, [_albumin(31)]), *patient_group(PATIENT_A, [_albumin(33)], order="5001")],
        {"MRN4711": [3.1, 3.3]},
    ),
}


def test_multi_patient_results_are_stored_for_their_own_patients(start_hl7) -> None:
    listener = start_hl7()
    for number, (case, (segments, expected)) in enumerate(MULTI_PATIENT.items()):
        control_id = f"MP{number:04d}"
        ack = listener.exchange("\r".join([_msh(control_id), *segments]) + "\r")
        assert msa(ack)[1] == "AA", (case, ack)
        assert _stored(listener, control_id) == expected, case


UNATTRIBUTABLE = {
    "results before the first PID": (
        [
            "OBR|1|PL1|FL1|24323-8^CMP^LN|||20260114073000",
            _albumin(45),
            *patient_group(PATIENT_A, [_albumin(31)]),
        ],
        "AR",
        "OBR (segment 2) before any PID",
    ),
    "no PID at all": (
        ["OBR|1|PL1|FL1|24323-8^CMP^LN|||20260114073000", _albumin(31)],
        "AR",
        "before any PID",
    ),
    "order without PID first": (["ORC|RE|PL1|FL1", *patient_group(PATIENT_A, [_albumin(31)])], "AR", "ORC"),
    "second group without an identifier": (
        [*patient_group(PATIENT_A, [_albumin(31)]), *patient_group("PID|1||^^^HOSP^MR", [_albumin(45)])],
        "AR",
        "patient group 2",
    ),
    "second group with a foreign identifier only": (
        [*patient_group(PATIENT_A, [_albumin(31)]), *patient_group("PID|1||4711^^^OTHER^PI", [_albumin(45)])],
        "AE",
        "patient group 2 (PID at segment 5): no PID-3 identifier of type MR (found PI); nothing stored",
    ),
}


def test_results_that_cannot_be_attributed_refuse_the_whole_message(start_hl7) -> None:
    listener = start_hl7()
    for number, (case, (segments, code, reason)) in enumerate(UNATTRIBUTABLE.items()):
        control_id = f"UA{number:04d}"
        ack = listener.exchange("\r".join([_msh(control_id), *segments]) + "\r")
        assert msa(ack)[1] == code and reason in msa(ack)[3], (case, ack)
        (row,) = _message_rows(listener, control_id)
        assert row.ack_code == code and row.observations == 0, case
    assert _stored(listener) == {}


CONCATENATED = {
    "CR between messages": lambda a, b: a + b,
    "LF line endings": lambda a, b: (a + b).replace("\r", "\n"),
    "CR LF line endings": lambda a, b: (a + b).replace("\r", "\r\n"),
    "no terminator after the first": lambda a, b: a.rstrip("\r") + "\r" + b,
    "second with other delimiters": lambda a, b: a + b.replace("^", "$").replace("MSH|$~\\&|", "MSH|$%*@|"),
    "second with another field separator": lambda a, b: a + b.replace("|", "#"),
    "batch envelope": lambda a, b: "FHS|^~\\&\rBHS|^~\\&\r" + a + b + "BTS|2\rFTS|1\r",
}


def test_concatenated_messages_in_one_frame_are_refused(start_hl7) -> None:
    listener = start_hl7()
    sock = listener.connect()
    for number, (case, concatenate) in enumerate(CONCATENATED.items()):
        first = oru(f"CC{number:02d}A", [_albumin(31)])
        second = oru(f"CC{number:02d}B", [_albumin(45)], patient=PATIENT_B)
        sock.sendall(START + concatenate(first, second).encode() + END)
        assert msa(_read_ack(sock))[1] == "AR", case
        assert _stored(listener) == {}, case
        assert _message_rows(listener, f"CC{number:02d}B") == [], case
    final = oru("CC99B", [_albumin(45)], patient=PATIENT_B)
    assert msa(listener.exchange(final, sock))[1:3] == ["AA", "CC99B"], "the connection still serves"
    sock.close()
    assert _stored(listener) == {"MRN6022": [4.5]}


def test_two_frames_in_one_write_get_two_acks_each_for_its_own_patient(start_hl7) -> None:
    listener = start_hl7()
    first = oru("PF0001", [_albumin(31)])
    second = oru("PF0002", [_albumin(45)], patient=PATIENT_B)
    sock = listener.connect()
    sock.sendall(START + first.encode() + END + START + second.encode() + END)
    acks = [_read_ack(sock), _read_ack(sock)]
    sock.close()
    assert [msa(ack)[1:3] for ack in acks] == [["AA", "PF0001"], ["AA", "PF0002"]]
    assert _stored(listener) == {"MRN4711": [3.1], "MRN6022": [4.5]}


def _read_ack(sock: socket.socket) -> str:
    data = b""
    while not data.endswith(END):
        byte = sock.recv(1)
        if not byte:
            raise ConnectionError(f"closed after {data!r}")
        data += byte
    return data[1:-2].decode(errors="replace")


# --- slow drip at every stage of MLLP framing -------------------------------------------

MESSAGE_TIMEOUT = 3.0
DRIP_INTERVAL = 0.4


@dataclass
class Drip:
    """A client that sends ``head`` at once and then ``tail`` one byte per interval."""

    name: str
    head: bytes
    tail: bytes
    closed_after: float | None = None
    sent: int = 0

    def run(self, port: int, limit: float) -> None:
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        start = time.monotonic()
        try:
            sock.sendall(self.head)
            for position in range(len(self.tail) * 1000):
                if time.monotonic() - start > limit:
                    return
                readable, _, _ = select.select([sock], [], [], DRIP_INTERVAL)
                if readable and sock.recv(65536) == b"":
                    self.closed_after = time.monotonic() - start
                    return
                sock.sendall(self.tail[position % len(self.tail) : position % len(self.tail) + 1])
                self.sent += 1
        except (BrokenPipeError, ConnectionResetError):
            self.closed_after = time.monotonic() - start
        finally:
            sock.close()


def test_slow_drip_at_every_mllp_stage_is_closed_and_others_are_served(start_hl7) -> None:
    listener = start_hl7(hl7_message_timeout_seconds=MESSAGE_TIMEOUT, hl7_idle_timeout_seconds=60)
    message = oru("DRIP01", [_albumin(45)], patient=PATIENT_B).encode()
    drips = [
        Drip("before the start block", b"", b"\r\n \t"),
        Drip("inside the message", START + message[:40], message[40:]),
        Drip("before the end block", START + message, b"\r"),
        Drip("inside the end block", START + message + END[:1], b"\x1c"),
    ]
    threads = [
        threading.Thread(target=d.run, args=(listener.port, MESSAGE_TIMEOUT + 30), daemon=True) for d in drips
    ]
    for thread in threads:
        thread.start()
    time.sleep(1)
    served = [msa(listener.exchange(oru(f"GOOD{n:02d}", [_albumin(31)])))[1] for n in range(3)]
    assert served == ["AA", "AA", "AA"], "other clients are served while the drips run"
    for thread in threads:
        thread.join(MESSAGE_TIMEOUT + 40)
    for drip in drips:
        assert drip.closed_after is not None, f"{drip.name}: still open"
        assert drip.closed_after < MESSAGE_TIMEOUT + 15, (drip.name, drip.closed_after)
        assert drip.sent >= 3, f"{drip.name}: the drip really dripped ({drip.sent} bytes)"
    assert _message_rows(listener, "DRIP01") == [], "no partial message is stored"
    assert _stored(listener) == {"MRN4711": [3.1, 3.1, 3.1]}
    assert msa(listener.exchange(oru("AFTER1", [_albumin(40)])))[1] == "AA"


def test_a_slow_but_complete_message_within_the_timeout_is_accepted(start_hl7) -> None:
    listener = start_hl7(hl7_message_timeout_seconds=30)
    message = START + oru("SLOW01", [_albumin(45)], patient=PATIENT_B).encode() + END
    sock = listener.connect()
    for offset in range(0, len(message), 40):
        sock.sendall(message[offset : offset + 40])
        time.sleep(0.1)
    assert msa(_read_ack(sock))[1:3] == ["AA", "SLOW01"]
    sock.close()
    assert _stored(listener) == {"MRN6022": [4.5]}
