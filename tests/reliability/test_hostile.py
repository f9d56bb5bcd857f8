"""Hostile and broken peers: the listener and the HL7 feed keep serving everyone else."""

from __future__ import annotations

import random
import socket
import struct
import time

import pytest
from pynetdicom import AE
from pynetdicom.sop_class import Verification

from tace.db import Association
from tests.support.hl7_messages import CBC, LIVER, oru
from tests.support.mllp import END, START, msa, read_frame
from tests.support.services import wait_until

pytestmark = pytest.mark.slow


def _echo(port: int) -> bool:
    ae = AE(ae_title="PROBE")
    ae.acse_timeout = ae.network_timeout = 5
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", port, ae_title="TACE")
    if not assoc.is_established:
        return False
    status = assoc.send_c_echo()
    assoc.release()
    return bool(status) and status.Status == 0


def _closed_within(sock: socket.socket, seconds: float) -> float:
    """Seconds until the server closed ``sock`` (fails the test if it stays open)."""
    start = time.monotonic()
    sock.settimeout(seconds)
    try:
        while sock.recv(65536):
            pass
    except TimeoutError:
        pytest.fail(f"connection still open after {seconds}s")
    except ConnectionResetError:
        pass
    return time.monotonic() - start


def test_pdu_announcing_a_huge_length_does_not_stop_the_listener(start_listener) -> None:
    listener = start_listener(dicom_network_timeout=3, dicom_acse_timeout=3)
    hostile = socket.create_connection(("127.0.0.1", listener.port))
    hostile.sendall(struct.pack(">BBL", 0x01, 0x00, 0xFFFFFFF0) + b"\x00" * 64)
    assert _echo(listener.port), "others are still served while the hostile PDU is pending"
    assert _closed_within(hostile, 30) < 30
    assert _echo(listener.port)


def test_slow_loris_association_is_closed_by_the_timeouts(start_listener) -> None:
    listener = start_listener(dicom_network_timeout=3, dicom_acse_timeout=3)
    slow = socket.create_connection(("127.0.0.1", listener.port))
    slow.sendall(b"\x01")
    time.sleep(1)
    assert _echo(listener.port)
    assert _closed_within(slow, 20) < 20


def test_more_associations_than_allowed_are_rejected_with_local_limit_exceeded(start_listener) -> None:
    """(The pause lets the readiness probe's bare TCP connection time out of its slot first.)"""
    listener = start_listener(dicom_max_associations=2, dicom_acse_timeout=1)
    time.sleep(2)
    held = []
    for _ in range(2):
        ae = AE(ae_title="HOLDER")
        ae.add_requested_context(Verification)
        assoc = ae.associate("127.0.0.1", listener.port, ae_title="TACE")
        assert assoc.is_established
        held.append(assoc)
    extra = AE(ae_title="EXTRA")
    extra.add_requested_context(Verification)
    refused = extra.associate("127.0.0.1", listener.port, ae_title="TACE")
    assert refused.is_rejected
    primitive = refused.acceptor.primitive
    assert (primitive.result, primitive.result_source, primitive.diagnostic) == (0x02, 0x03, 0x02)
    for assoc in held:
        assoc.release()
    wait_until(lambda: _echo(listener.port), 10, what="a free slot once the holders released")
    table = Association.__table__
    with listener.engine.connect() as connection:
        reasons = [r.reason for r in connection.execute(table.select().where(table.c.outcome == "rejected"))]
    assert reasons and set(reasons) == {"too many associations"}


def test_mllp_block_that_never_ends_and_silent_connections(start_hl7) -> None:
    listener = start_hl7(hl7_max_message_bytes=8192, hl7_idle_timeout_seconds=2)
    endless = listener.connect()
    endless.sendall(START + oru("NEVER1", CBC).encode())
    for _ in range(20):
        try:
            endless.sendall(b"OBX|1|TX|1751-7^A^LN||" + b"y" * 1000 + b"\r")
        except (BrokenPipeError, ConnectionResetError):
            break
    ack = read_frame(endless)
    assert msa(ack)[1:3] == ["AR", "NEVER1"] and "larger than 8192 bytes" in ack
    silent = listener.connect()
    assert _closed_within(silent, 10) < 10
    assert msa(listener.exchange(oru("AFTER1", LIVER[:2])))[1] == "AA"


def test_mllp_network_fuzz_every_frame_gets_an_ack_or_a_clean_close(start_hl7) -> None:
    listener = start_hl7()
    rng = random.Random(99)
    base = [oru(f"NET{n:04d}", CBC if n % 2 else LIVER).encode() for n in range(10)]
    answered = closed = 0
    sock = listener.connect()
    for case in range(400):
        data = bytearray(rng.choice(base))
        for _ in range(rng.randint(1, 4)):
            position = rng.randrange(len(data))
            operation = rng.random()
            if operation < 0.4:
                data[position] = rng.randrange(256)
            elif operation < 0.6:
                del data[position : position + rng.randint(1, 50)]
            else:
                data[position:position] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 20)))
        frame = bytes(data) if rng.random() < 0.05 else START + bytes(data) + END
        try:
            sock.sendall(frame)
            ack = read_frame(sock) if frame.startswith(START) and END not in bytes(data) else None
            if ack is None:
                raise ConnectionError("not a clean single frame; expecting a close")
            assert msa(ack)[1] in ("AA", "AE", "AR"), case
            answered += 1
        except (ConnectionError, TimeoutError, AssertionError) as exc:
            if isinstance(exc, AssertionError):
                raise
            sock.close()
            closed += 1
            sock = listener.connect()
    sock.close()
    assert answered > 300
    wait_until(
        lambda: msa(listener.exchange(oru("ALIVE1", LIVER[:2])))[1] == "AA", 10, what="the server alive"
    )
