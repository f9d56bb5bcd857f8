"""Reading PDUs under deadlines that a slow peer cannot stretch.

A socket timeout bounds one read, so a peer that sends one byte a second keeps a
PDU (and its association) alive forever. Here every deadline covers a whole
unit of the protocol:

* the A-ASSOCIATE-RQ must be complete ``negotiation_seconds`` after the
  connection opened;
* every later PDU must be complete ``pdu_seconds`` after its first byte;
* a DIMSE message (command and dataset, in any number of PDUs) may take longer
  than ``message_grace_seconds`` only while it arrives at ``MIN_MESSAGE_RATE``
  or faster, so a stream of tiny complete PDUs ends too.

A PDU larger than the negotiated maximum (plus header slack) is refused before
anything is buffered. A deadline or limit that is hit raises ``OSError``, which
pynetdicom's DUL treats as the connection closing.
"""

from __future__ import annotations

import socket
import struct
import time
from dataclasses import dataclass, field

MIN_MESSAGE_RATE = 1024
"""Bytes per second a DIMSE message must average once it is older than the grace period."""
P_DATA_TF = 0x04
PDU_TYPES = frozenset(range(0x01, 0x08))
MAX_COMMAND_BYTES = 1 << 16
CHUNK = 1 << 20


@dataclass
class _Message:
    """The DIMSE message being received: when it started, how much has come, its command so far."""

    started: float | None = None
    received: int = 0
    command: bytearray = field(default_factory=bytearray)

    def observe(self, body: bytes | bytearray, now: float, grace: float) -> None:
        offset = 0
        while offset + 6 <= len(body):
            (length,) = struct.unpack_from(">L", body, offset)
            control = body[offset + 5]
            data = body[offset + 6 : offset + 4 + length]
            offset += 4 + length
            if self.started is None:
                self.started, self.received = now, 0
            self.received += len(data)
            if control & 0x01:
                if len(self.command) < MAX_COMMAND_BYTES:
                    self.command += data
                if control & 0x02 and _without_dataset(self.command):
                    self._reset()
            elif control & 0x02:
                self._reset()
        if self.started is not None:
            elapsed = now - self.started
            if elapsed > grace and self.received < MIN_MESSAGE_RATE * elapsed:
                raise OSError(
                    f"DIMSE message arriving at {self.received / elapsed:.0f} B/s after {elapsed:.0f} s"
                )

    def _reset(self) -> None:
        self.started = None
        self.received = 0
        self.command = bytearray()


def _without_dataset(command: bytearray) -> bool:
    """Whether the command set (implicit VR LE) says no dataset follows (CommandDataSetType 0x0101)."""
    offset = 0
    while offset + 8 <= len(command):
        group, element, length = struct.unpack_from("<HHL", command, offset)
        if (group, element) == (0x0000, 0x0800):
            return command[offset + 8 : offset + 10] == b"\x01\x01"
        offset += 8 + length
    return False


class PduReader:
    """The DUL's ``recv(n)`` for one connection: first the 6-byte PDU header, then its body."""

    def __init__(
        self,
        *,
        max_pdu: int,
        negotiation_seconds: float,
        pdu_seconds: float,
        message_grace_seconds: float,
    ) -> None:
        self._limit = max_pdu
        self._pdu_seconds = pdu_seconds
        self._grace = message_grace_seconds
        self._deadline = time.monotonic() + negotiation_seconds
        self._negotiating = True
        self._in_body = False
        self._pdu_type = 0
        self._message = _Message()

    def __call__(self, sock: socket.socket, nr_bytes: int) -> bytearray:
        if not self._in_body and not self._negotiating:
            self._deadline = time.monotonic() + self._pdu_seconds
        if nr_bytes > self._limit:
            raise OSError(f"PDU of {nr_bytes} bytes exceeds the {self._limit}-byte limit")
        data = _read(sock, nr_bytes, self._deadline)
        if not self._in_body:
            if len(data) == 6 and data[0] in PDU_TYPES:
                self._in_body = True
                self._pdu_type = data[0]
            return data
        self._in_body = False
        self._negotiating = False
        if self._pdu_type == P_DATA_TF and len(data) == nr_bytes:
            self._message.observe(data, time.monotonic(), self._grace)
        return data


def _read(sock: socket.socket, count: int, deadline: float) -> bytearray:
    """``count`` bytes, or fewer if the peer closed; TimeoutError once ``deadline`` passes."""
    buffer = bytearray(count)
    got = 0
    with memoryview(buffer) as view:
        while got < count:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"PDU incomplete at its deadline ({got} of {count} bytes)")
            sock.settimeout(remaining)
            received = sock.recv_into(view[got:], min(count - got, CHUNK))
            if not received:
                break
            got += received
    if got < count:
        del buffer[got:]
    return buffer
