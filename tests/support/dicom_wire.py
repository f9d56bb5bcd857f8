"""A DICOM upper-layer client written byte by byte, for peers that misbehave on purpose.

pynetdicom and DCMTK always send well-formed, complete PDUs; an attack test needs
to stop, drip or abort at any byte of any PDU. The PDUs are built here from
PS3.8 (section 9.3) so the test controls every byte that goes on the wire.
"""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset
from pydicom.filewriter import write_dataset

APPLICATION_CONTEXT = b"1.2.840.10008.3.1.1.1"
IMPLEMENTATION_UID = b"1.2.826.0.1.3680043.9.7433.1.1"
VERIFICATION = "1.2.840.10008.1.1"
CONTEXT_ID = 1
A_ASSOCIATE_AC = 0x02
A_ASSOCIATE_RJ = 0x03
A_RELEASE_RP = 0x06
A_ABORT = 0x07


def _item(item_type: int, payload: bytes) -> bytes:
    return struct.pack(">BBH", item_type, 0, len(payload)) + payload


def _pdu(pdu_type: int, payload: bytes) -> bytes:
    return struct.pack(">BBL", pdu_type, 0, len(payload)) + payload


def _uid(value: str) -> bytes:
    return value.encode()


def associate_rq(
    abstract_syntax: str,
    transfer_syntax: str,
    *,
    calling: str = "WIRE",
    called: str = "TACE",
    max_pdu: int = 16384,
) -> bytes:
    context = struct.pack(">BBBB", CONTEXT_ID, 0, 0, 0)
    context += _item(0x30, _uid(abstract_syntax)) + _item(0x40, _uid(transfer_syntax))
    user = _item(0x51, struct.pack(">L", max_pdu)) + _item(0x52, IMPLEMENTATION_UID)
    body = struct.pack(">HH", 1, 0) + called.ljust(16).encode() + calling.ljust(16).encode() + bytes(32)
    body += _item(0x10, APPLICATION_CONTEXT) + _item(0x20, context) + _item(0x50, user)
    return _pdu(0x01, body)


def release_rq() -> bytes:
    return _pdu(0x05, bytes(4))


def abort() -> bytes:
    return _pdu(A_ABORT, bytes(4))


def p_data(fragment: bytes, *, command: bool, last: bool) -> bytes:
    control = (1 if command else 0) | (2 if last else 0)
    pdv = struct.pack(">LBB", len(fragment) + 2, CONTEXT_ID, control) + fragment
    return _pdu(0x04, pdv)


def encode(ds: Dataset, *, implicit: bool = False, little: bool = True) -> bytes:
    """``ds`` encoded as a dataset (no file meta) in the given VR encoding and byte order."""
    buffer = DicomBytesIO()
    buffer.is_implicit_VR = implicit
    buffer.is_little_endian = little
    write_dataset(buffer, ds)
    return buffer.getvalue()


def _implicit_le(ds: Dataset) -> bytes:
    return encode(ds, implicit=True)


def c_store_command(sop_class: str, sop_instance: str, message_id: int = 1) -> bytes:
    """The command set of a C-STORE-RQ, group length first (PS3.7 E.1)."""
    ds = Dataset()
    ds.AffectedSOPClassUID = sop_class
    ds.CommandField = 0x0001
    ds.MessageID = message_id
    ds.Priority = 0
    ds.CommandDataSetType = 0x0000
    ds.AffectedSOPInstanceUID = sop_instance
    body = _implicit_le(ds)
    return struct.pack("<HHLL", 0x0000, 0x0000, 4, len(body)) + body


def c_echo_command(message_id: int = 1) -> bytes:
    ds = Dataset()
    ds.AffectedSOPClassUID = VERIFICATION
    ds.CommandField = 0x0030
    ds.MessageID = message_id
    ds.CommandDataSetType = 0x0101
    body = _implicit_le(ds)
    return struct.pack("<HHLL", 0x0000, 0x0000, 4, len(body)) + body


@dataclass(frozen=True)
class StoreRequest:
    """A C-STORE as the PDUs it travels in: the command, then the dataset in fragments."""

    abstract_syntax: str
    transfer_syntax: str
    pdus: list[bytes]

    @classmethod
    def build(
        cls, sop_class: str, sop_instance: str, transfer_syntax: str, dataset: bytes, *, fragment: int = 8192
    ) -> StoreRequest:
        pdus = [p_data(c_store_command(sop_class, sop_instance), command=True, last=True)]
        chunks = [dataset[i : i + fragment] for i in range(0, len(dataset), fragment)] or [b""]
        for index, chunk in enumerate(chunks):
            pdus.append(p_data(chunk, command=False, last=index == len(chunks) - 1))
        return cls(sop_class, transfer_syntax, pdus)

    @classmethod
    def from_file(cls, path: Path, *, fragment: int = 8192, sop_instance: str | None = None) -> StoreRequest:
        """The dataset bytes exactly as stored after the file meta (never re-encoded)."""
        meta = pydicom.dcmread(path, stop_before_pixels=True).file_meta
        return cls.build(
            str(meta.MediaStorageSOPClassUID),
            sop_instance or str(meta.MediaStorageSOPInstanceUID),
            str(meta.TransferSyntaxUID),
            dataset_bytes(path),
            fragment=fragment,
        )


def dataset_bytes(path: Path) -> bytes:
    """What follows the file meta group: the dataset as it travels over the wire."""
    raw = path.read_bytes()
    group_length = int.from_bytes(raw[140:144], "little")
    return raw[144 + group_length :]


class WireClient:
    """One TCP connection speaking raw PDUs."""

    def __init__(self, port: int, *, host: str = "127.0.0.1", source: str | None = None) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if source:
            self.sock.bind((source, 0))
        self.sock.settimeout(30)
        self.sock.connect((host, port))

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def drip(self, data: bytes, interval: float) -> Iterator[int]:
        """Send one byte per ``interval`` seconds; yields the bytes sent so far (stop early by breaking)."""
        for index in range(len(data)):
            self.sock.sendall(data[index : index + 1])
            yield index + 1
            time.sleep(interval)

    def read_pdu(self, timeout: float = 30) -> tuple[int, bytes]:
        self.sock.settimeout(timeout)
        header = self._exactly(6)
        pdu_type, _, length = struct.unpack(">BBL", header)
        return pdu_type, self._exactly(length)

    def _exactly(self, count: int) -> bytes:
        data = b""
        while len(data) < count:
            chunk = self.sock.recv(count - len(data))
            if not chunk:
                raise ConnectionError(f"closed after {len(data)} of {count} bytes")
            data += chunk
        return data

    def associate(self, abstract_syntax: str, transfer_syntax: str, *, calling: str = "WIRE") -> None:
        self.send(associate_rq(abstract_syntax, transfer_syntax, calling=calling))
        pdu_type, body = self.read_pdu()
        if pdu_type != A_ASSOCIATE_AC:
            raise ConnectionError(f"association not accepted (PDU type {pdu_type:#04x}, {body.hex()})")
        if not _context_accepted(body):
            raise ConnectionError("presentation context not accepted")

    def store(self, request: StoreRequest) -> int:
        """Associate, send the C-STORE, return its status and release."""
        self.associate(request.abstract_syntax, request.transfer_syntax)
        for pdu in request.pdus:
            self.send(pdu)
        status = self.read_status()
        self.send(release_rq())
        self.read_pdu()
        return status

    def read_status(self, timeout: float = 30) -> int:
        """The Status (0000,0900) of the next DIMSE response."""
        command = b""
        while True:
            pdu_type, body = self.read_pdu(timeout)
            if pdu_type != 0x04:
                raise ConnectionError(f"expected P-DATA, got PDU type {pdu_type:#04x}")
            offset = 0
            while offset < len(body):
                (length,) = struct.unpack(">L", body[offset : offset + 4])
                control = body[offset + 5]
                command += body[offset + 6 : offset + 4 + length]
                offset += 4 + length
                if control & 0x03 == 0x03:
                    ds = read_dataset(BytesIO(command), is_implicit_VR=True, is_little_endian=True)
                    return int(ds.Status)

    def reset(self) -> None:
        """Close with a TCP RST (SO_LINGER 0), as a crashed peer or a middlebox does."""
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()

    def closed_within(self, seconds: float) -> float:
        """Seconds until the server closed the connection; raises if it stays open."""
        start = time.monotonic()
        deadline = start + seconds
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"connection still open after {seconds}s")
            self.sock.settimeout(remaining)
            try:
                if not self.sock.recv(65536):
                    return time.monotonic() - start
            except (ConnectionResetError, BrokenPipeError):
                return time.monotonic() - start
            except TimeoutError:
                continue

    def close(self) -> None:
        self.sock.close()


def _context_accepted(body: bytes) -> bool:
    offset = 68
    while offset + 4 <= len(body):
        item_type, _, length = struct.unpack(">BBH", body[offset : offset + 4])
        if item_type == 0x21:
            return body[offset + 6] == 0
        offset += 4 + length
    return False
