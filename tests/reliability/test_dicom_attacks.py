"""Attacks on the DICOM listener over real sockets, one class at a time, at every stage it applies to.

Slow drips at every protocol stage, compression bombs in every compressed transfer
syntax the listener accepts, truncation in every class of element, and an abort
at every PDU of a C-STORE. A real sender must be served throughout, nothing
half-received may be recorded or left on disk, and the receiving process's
memory stays bounded.
"""

from __future__ import annotations

import socket
import ssl
import struct
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
import pytest
import sqlalchemy as sa
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    RLELossless,
)
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage, Verification

from listener.contexts import decodable_transfer_syntaxes
from tace.db import Association, Instance
from tests.support.certificates import Certificates, make_certificates
from tests.support.dicom_wire import (
    StoreRequest,
    WireClient,
    abort,
    associate_rq,
    dataset_bytes,
    encode,
    p_data,
    release_rq,
)
from tests.support.listener import ListenerProcess, send_datasets
from tests.support.services import wait_until

pytestmark = pytest.mark.slow

QUICK = {"dicom_acse_timeout": 3, "dicom_network_timeout": 3, "dicom_dimse_timeout": 3}
CT = str(CTImageStorage)


def _instances(listener: ListenerProcess) -> list[sa.Row]:
    with listener.engine.connect() as connection:
        return list(connection.execute(sa.select(Instance.__table__)).all())


def _associations(listener: ListenerProcess) -> list[sa.Row]:
    with listener.engine.connect() as connection:
        return list(connection.execute(sa.select(Association.__table__)).all())


def _staged(listener: ListenerProcess) -> list[Path]:
    return [p for p in (listener.data_dir / "staging").rglob("*") if p.is_file()]


def _stored_files(listener: ListenerProcess) -> list[Path]:
    return [p for p in (listener.data_dir / "dicom").rglob("*") if p.is_file()]


def _echo(port: int, calling: str = "GOOD") -> bool:
    ae = AE(ae_title=calling)
    ae.acse_timeout = ae.network_timeout = 10
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", port, ae_title="TACE")
    if not assoc.is_established:
        return False
    status = assoc.send_c_echo()
    assoc.release()
    return bool(status) and status.Status == 0


# --- slow drips -----------------------------------------------------------------------------


@dataclass
class Drip:
    """Sends ``payload`` one byte every ``interval`` seconds from a thread, after ``prelude``."""

    client: WireClient
    payload: bytes
    interval: float
    prelude: Callable[[WireClient], None] | None = None
    closed_after: float | None = None
    sent: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> Drip:
        if self.prelude is not None:
            self.prelude(self.client)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._started = time.monotonic()
        self._thread.start()
        return self

    def _run(self) -> None:
        sock = self.client.sock
        sock.settimeout(0.05)
        for index in range(len(self.payload)):
            if self._stop.is_set():
                return
            try:
                if self.peer_closed(sock):
                    break
                sock.sendall(self.payload[index : index + 1])
                self.sent = index + 1
            except OSError:
                break
            self._stop.wait(self.interval)
        else:
            return
        self.closed_after = time.monotonic() - self._started

    @staticmethod
    def peer_closed(sock: socket.socket) -> bool:
        """Whether the listener closed the connection (whatever it sent before is read and dropped)."""
        try:
            while sock.recv(65536):
                pass
        except TimeoutError:
            return False
        except (ConnectionResetError, BrokenPipeError):
            return True
        return True

    def wait_closed(self, within: float) -> float:
        assert self._thread is not None
        self._thread.join(within)
        self._stop.set()
        assert self.closed_after is not None, (
            f"still open after {within}s ({self.sent} of {len(self.payload)} bytes dripped)"
        )
        assert self.sent < len(self.payload), "the whole payload went through: nothing was bounded"
        return self.closed_after


def _ct_store_request(ct_series, *, fragment: int = 4096) -> StoreRequest:
    (path,) = ct_series(slices=1, rows=64, columns=64, seed=77)
    return StoreRequest.from_file(path, fragment=fragment)


def _associated(request: StoreRequest) -> Callable[[WireClient], None]:
    def prelude(client: WireClient) -> None:
        client.associate(request.abstract_syntax, request.transfer_syntax)

    return prelude


def _after_command(request: StoreRequest) -> Callable[[WireClient], None]:
    def prelude(client: WireClient) -> None:
        client.associate(request.abstract_syntax, request.transfer_syntax)
        client.send(request.pdus[0])

    return prelude


@pytest.mark.parametrize("stage", ["association-request", "command", "dataset", "release-request"])
def test_a_pdu_dripped_one_byte_at_a_time_is_cut_off_at_every_stage(
    stage: str, ct_series, start_listener
) -> None:
    """Each byte arrives well within the per-read timeout; only a bound on the whole PDU ends it."""
    listener = start_listener(**QUICK)
    request = _ct_store_request(ct_series)
    payload, prelude, interval = {
        "association-request": (associate_rq(CT, request.transfer_syntax), None, 0.5),
        "command": (request.pdus[0], _associated(request), 0.5),
        "dataset": (request.pdus[1], _after_command(request), 0.5),
        "release-request": (release_rq(), _associated(request), 1.0),
    }[stage]
    drip = Drip(WireClient(listener.port), payload, interval=interval, prelude=prelude).start()
    time.sleep(1)
    assert _echo(listener.port), "a real sender is served while the drip is on"
    assert drip.wait_closed(within=20) < 20
    assert _echo(listener.port)


def test_a_dimse_message_of_many_tiny_pdus_is_cut_off(ct_series, start_listener) -> None:
    """Complete one-byte PDUs keep the idle timer happy; the message as a whole must still end."""
    listener = start_listener(**QUICK)
    request = _ct_store_request(ct_series)
    client = WireClient(listener.port)
    _after_command(request)(client)
    tiny = p_data(b"\x00", command=False, last=False)
    client.sock.settimeout(0.05)
    started = time.monotonic()
    closed_after = None
    for _ in range(120):
        try:
            if Drip.peer_closed(client.sock):
                closed_after = time.monotonic() - started
                break
            client.send(tiny)
        except OSError:
            closed_after = time.monotonic() - started
            break
        time.sleep(0.5)
    client.close()
    assert closed_after is not None and closed_after < 30, "a 120-PDU drip of one byte each went through"
    assert _echo(listener.port)
    wait_until(lambda: not _staged(listener), 15, what="the partial dataset to leave staging")
    assert _instances(listener) == []


def test_slow_clients_hold_no_association_slot_and_real_senders_are_served(ct_series, start_listener) -> None:
    """Issue 15 item 4: connections that announce a PDU and drip hold every slot today.

    Six drip from the sender's own host, twenty more from another host (beyond the
    per-host bound for connections still negotiating); afterwards every place they
    held is free again.
    """
    listener = start_listener(dicom_max_associations=2, dicom_acse_timeout=4, dicom_network_timeout=4)
    request = _ct_store_request(ct_series)
    rq = associate_rq(CT, request.transfer_syntax)
    drips = [Drip(WireClient(listener.port), rq, interval=0.5).start() for _ in range(6)]
    crowd = [Drip(WireClient(listener.port, source="127.0.0.2"), rq, interval=0.5).start() for _ in range(20)]
    time.sleep(1)
    ae = AE(ae_title="GOOD")
    ae.acse_timeout = ae.network_timeout = 10
    ae.add_requested_context(CTImageStorage, request.transfer_syntax)
    held = [ae.associate("127.0.0.1", listener.port, ae_title="TACE") for _ in range(2)]
    assert all(a.is_established for a in held), "both slots must be free for senders that negotiate"
    (path,) = ct_series(slices=1, rows=64, columns=64, seed=78)
    assert held[0].send_c_store(pydicom.dcmread(path)).Status == 0
    for assoc in held:
        assoc.release()
    for drip in drips + crowd:
        assert drip.wait_closed(within=20) < 20
    assert {r.outcome for r in _associations(listener)} == {"released"}
    clients = [WireClient(listener.port) for _ in range(8)]
    for client in clients:
        client.send(rq)
    answers = {client.read_pdu(timeout=10)[0] for client in clients}
    assert answers <= {0x02, 0x03}, "each is negotiated (AC, or RJ for a busy slot), none cut off at accept"
    for client in clients:
        client.close()


def test_a_peer_outside_the_allowed_networks_is_refused_before_it_sends_anything(start_listener) -> None:
    listener = start_listener(allowed_peer_networks="10.0.0.0/8", dicom_acse_timeout=30)
    client = WireClient(listener.port)
    pdu_type, body = client.read_pdu(timeout=5)
    assert (pdu_type, body[1:4]) == (0x03, bytes([0x01, 0x01, 0x01])), "an A-ASSOCIATE-RJ at accept"
    assert client.closed_within(5) < 5
    wait_until(lambda: _associations(listener), 10, what="the rejection record")
    (row,) = _associations(listener)
    assert (row.outcome, row.reason) == ("rejected", "peer 127.0.0.1 is not in the allowed networks")


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    return make_certificates(tmp_path_factory.mktemp("pki"))


def test_a_tls_handshake_dripped_or_never_started_does_not_block_other_peers(
    certificates: Certificates, start_listener
) -> None:
    listener = start_listener(
        dicom_tls_cert=certificates.server_cert,
        dicom_tls_key=certificates.server_key,
        dicom_tls_ca=certificates.ca,
        dicom_tls_require_client_cert="true",
        **QUICK,
    )
    silent = WireClient(listener.port)
    hello = b"\x16\x03\x01\x02\x00" + bytes(512)
    drip = Drip(WireClient(listener.port), hello, interval=0.5).start()
    time.sleep(0.5)
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(certificates.ca))
    context.load_cert_chain(certificates.client_cert, certificates.client_key)
    ae = AE(ae_title="TLSCLIENT")
    ae.acse_timeout = ae.network_timeout = ae.connection_timeout = 10
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", listener.port, ae_title="TACE", tls_args=(context, "localhost"))
    assert assoc.is_established, "a stalled handshake must not stop the accept loop"
    assert assoc.send_c_echo().Status == 0
    assoc.release()
    assert silent.closed_within(20) < 20
    assert drip.wait_closed(within=20) < 20


# --- compression bombs ---------------------------------------------------------------------

GIB = 1 << 30
MAX_INSTANCE = 64 << 20


def _vm_kib(pid: int, field_name: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1])
    raise AssertionError(f"{field_name} missing for {pid}")


class PeakRss:
    """Highest VmRSS of a process, sampled every 10 ms while in the ``with`` block."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak_kib = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(0.01):
            self.peak_kib = max(self.peak_kib, _vm_kib(self.pid, "VmRSS"))

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _element_le(tag: tuple[int, int], vr: bytes, length: int) -> bytes:
    group, element = tag
    if vr in (b"OB", b"OW", b"OF", b"OD", b"OL", b"OV", b"SQ", b"UC", b"UN", b"UR", b"UT", b"SV", b"UV"):
        return struct.pack("<HH2sHL", group, element, vr, 0, length)
    return struct.pack("<HH2sH", group, element, vr, length)


def _header(path: Path, *, transfer_syntax: UID, **changes: object) -> Dataset:
    """The header of a synthetic CT slice (no pixel data), re-labelled for another encoding."""
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    for keyword, value in changes.items():
        setattr(ds, keyword, value)
    ds.file_meta.TransferSyntaxUID = transfer_syntax
    return ds


def _explicit_le(ds: Dataset) -> bytes:
    return encode(ds)


def _deflate(*parts: bytes | tuple[bytes, int]) -> bytes:
    """A raw deflate stream of ``parts``; ``(chunk, n)`` is ``chunk`` repeated n times.

    Each part ends at a full flush (no back-reference crosses it), so one compressed
    1 MiB chunk of zeros can be repeated to describe a gibibyte in about a megabyte.
    """
    out = []
    for part in parts:
        chunk, repeat = part if isinstance(part, tuple) else (part, 1)
        compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
        out.append((compressor.compress(chunk) + compressor.flush(zlib.Z_FULL_FLUSH)) * repeat)
    out.append(zlib.compressobj(9, zlib.DEFLATED, -15).flush(zlib.Z_FINISH))
    return b"".join(out)


def _deflate_bombs(path: Path) -> dict[str, tuple[StoreRequest, int]]:
    """Deflated datasets that expand far beyond what their header declares, and the status due."""
    ds = _header(path, transfer_syntax=DeflatedExplicitVRLittleEndian)
    declared = int(ds.Rows) * int(ds.Columns) * 2
    header = _explicit_le(ds)
    mib = bytes(1 << 20)
    pixel_gib = _element_le((0x7FE0, 0x0010), b"OW", GIB)
    pixels_ok = _element_le((0x7FE0, 0x0010), b"OW", declared) + bytes(declared)
    padding = _element_le((0xFFFC, 0xFFFC), b"OB", GIB)
    huge = _header(path, transfer_syntax=DeflatedExplicitVRLittleEndian, Rows=32768, Columns=32768)
    huge_pixels = _element_le((0x7FE0, 0x0010), b"OW", 2 * 32768 * 32768)
    comment = _element_le((0x0020, 0x4000), b"UT", GIB)
    before_comment = Dataset()
    for element in ds:
        if element.tag < 0x00204000:
            before_comment.add(element)
    after_comment = Dataset()
    for element in ds:
        if element.tag > 0x00204000:
            after_comment.add(element)
    sop = str(ds.SOPInstanceUID)
    syntax = str(DeflatedExplicitVRLittleEndian)

    def request(stream: bytes) -> StoreRequest:
        return StoreRequest.build(CT, sop, syntax, stream, fragment=16000)

    return {
        "pixel data 1 GiB for a 64x64 image": (request(_deflate(header + pixel_gib, (mib, 1024))), 0xC000),
        "1 GiB trailing padding": (request(_deflate(header + pixels_ok + padding, (mib, 1024))), 0xC000),
        "1 GiB text element in the header": (
            request(
                _deflate(_explicit_le(before_comment) + comment, (mib, 1024), _explicit_le(after_comment))
            ),
            0xC000,
        ),
        "declares a 2 GiB image": (request(_deflate(_explicit_le(huge) + huge_pixels, (mib, 1024))), 0xA700),
    }


def _jpeg(marker: int, precision: int, rows: int, columns: int) -> bytes:
    sof = struct.pack(">HHBHHB", marker, 11, precision, rows, columns, 1) + bytes([1, 0x11, 0])
    return b"\xff\xd8" + sof + b"\xff\xd9"


def _j2k(rows: int, columns: int, high_throughput: bool) -> bytes:
    siz = struct.pack(
        ">HHHLLLLLLLLH",
        0xFF51,
        41,
        0x4000 if high_throughput else 0,
        columns,
        rows,
        0,
        0,
        columns,
        rows,
        0,
        0,
        1,
    ) + bytes([15, 1, 1])
    return b"\xff\x4f" + siz + b"\xff\xd9"


def _rle(segments: int) -> bytes:
    header = struct.pack("<16L", segments, *[64] * segments, *[0] * (15 - segments))
    return header + b"\x81\x00" * 8


FRAME_HEADERS: dict[str, Callable[[int, int], bytes]] = {
    "1.2.840.10008.1.2.4.50": lambda r, c: _jpeg(0xFFC0, 8, r, c),
    "1.2.840.10008.1.2.4.51": lambda r, c: _jpeg(0xFFC1, 12, r, c),
    "1.2.840.10008.1.2.4.57": lambda r, c: _jpeg(0xFFC3, 16, r, c),
    "1.2.840.10008.1.2.4.70": lambda r, c: _jpeg(0xFFC3, 16, r, c),
    "1.2.840.10008.1.2.4.80": lambda r, c: _jpeg(0xFFF7, 16, r, c),
    "1.2.840.10008.1.2.4.81": lambda r, c: _jpeg(0xFFF7, 16, r, c),
    "1.2.840.10008.1.2.4.90": lambda r, c: _j2k(r, c, False),
    "1.2.840.10008.1.2.4.91": lambda r, c: _j2k(r, c, False),
    "1.2.840.10008.1.2.4.201": lambda r, c: _j2k(r, c, True),
    "1.2.840.10008.1.2.4.202": lambda r, c: _j2k(r, c, True),
    "1.2.840.10008.1.2.4.203": lambda r, c: _j2k(r, c, True),
    str(RLELossless): lambda r, c: _rle(2),
}


def _encapsulated(path: Path, syntax: str, frame: bytes, frames: int = 1, **changes: object) -> StoreRequest:
    ds = _header(path, transfer_syntax=UID(syntax), **changes)
    bits = 8 if syntax == "1.2.840.10008.1.2.4.50" else 16
    ds.BitsAllocated = bits
    ds.BitsStored = min(int(ds.BitsStored), bits)
    ds.HighBit = ds.BitsStored - 1
    if frames > 1:
        ds.NumberOfFrames = frames
    ds.PixelData = encapsulate([frame] * frames)
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    return StoreRequest.build(CT, str(ds.SOPInstanceUID), syntax, _explicit_le(ds))


def _codestream_bombs(path: Path) -> dict[str, tuple[StoreRequest, int]]:
    """Per encapsulated syntax: a frame whose codestream declares far more than Rows x Columns,
    and a header whose Rows x Columns x frames declare more than the largest allowed instance."""
    bombs = {}
    for syntax in decodable_transfer_syntaxes():
        if syntax in (ImplicitVRLittleEndian, ExplicitVRLittleEndian, ExplicitVRBigEndian):
            continue
        if syntax == DeflatedExplicitVRLittleEndian:
            continue
        make = FRAME_HEADERS.get(str(syntax))
        assert make is not None, f"no bomb written for accepted transfer syntax {syntax} ({syntax.name})"
        if syntax != RLELossless:
            bombs[f"{syntax.name}: codestream 60000x60000 in a 64x64 image"] = (
                _encapsulated(path, syntax, make(60000, 60000)),
                0xC000,
            )
        bombs[f"{syntax.name}: declares 65535x65535 x 64 frames"] = (
            _encapsulated(path, syntax, make(65535, 65535), frames=64, Rows=65535, Columns=65535),
            0xA700,
        )
    return bombs


def test_compression_bombs_in_every_compressed_syntax_are_refused_with_bounded_memory(
    ct_series, start_listener
) -> None:
    """Issue 15 item 5: a deflated CT expanding 1 MB -> 1 GiB was inflated in memory and stored."""
    listener = start_listener(dicom_max_instance_bytes=MAX_INSTANCE)
    (path,) = ct_series(slices=1, rows=64, columns=64, seed=91)
    assert send_datasets(listener.port, [pydicom.dcmread(path)])[0].Status == 0
    time.sleep(1)
    idle_kib = _vm_kib(listener.pid, "VmRSS")
    bombs = {**_deflate_bombs(path), **_codestream_bombs(path)}
    got = {}
    with PeakRss(listener.pid) as rss:
        for name, (request, _) in bombs.items():
            client = WireClient(listener.port)
            try:
                got[name] = client.store(request)
            except (ConnectionError, OSError) as exc:
                got[name] = f"connection lost: {exc}"
            finally:
                client.close()
    limit_kib = 2 * idle_kib + MAX_INSTANCE // 1024
    peak_kib = max(rss.peak_kib, _vm_kib(listener.pid, "VmHWM"))
    print(f"listener VmRSS idle {idle_kib} KiB, peak {peak_kib} KiB, bound {limit_kib} KiB")
    assert {name: got[name] for name in bombs} == {name: status for name, (_, status) in bombs.items()}
    assert peak_kib < limit_kib, f"listener RSS peaked at {peak_kib} KiB; idle {idle_kib} KiB"
    assert len(_instances(listener)) == 1
    assert len(_stored_files(listener)) == 1
    wait_until(lambda: not _staged(listener), 10, what="staging to be empty")


# --- truncation ----------------------------------------------------------------------------

FEW = b"abcdefgh"
HUGE = 0xFFFFFFF0
UNDEFINED = 0xFFFFFFFF
ITEM = struct.pack("<HHL", 0xFFFE, 0xE000, UNDEFINED)
ITEM_END = struct.pack("<HHL", 0xFFFE, 0xE00D, 0)


def _tag_le(group: int, element: int, length: int) -> bytes:
    return struct.pack("<HHL", group, element, length)


def _trailing_cases() -> dict[str, bytes]:
    """Raw elements after the pixel data, each declaring more than is present."""
    seq = _element_le((0xFFFA, 0xFFFA), b"SQ", UNDEFINED)
    return {
        "short VR text (LO) declaring 60000 bytes": _element_le((0x7FE1, 0x0010), b"LO", 60000) + FEW,
        "long VR text (UT) declaring 4 GiB": _element_le((0x7FE1, 0x1001), b"UT", HUGE) + FEW,
        "long VR binary (OB) declaring 4 GiB": _element_le((0xFFFC, 0xFFFC), b"OB", HUGE) + FEW,
        "unknown VR (UN) declaring 4 GiB": _element_le((0x7FE1, 0x1002), b"UN", HUGE) + FEW,
        "sequence of defined length declaring 4 GiB": _element_le((0xFFFA, 0xFFFA), b"SQ", HUGE) + ITEM,
        "sequence of undefined length without its delimiter": seq + _tag_le(0xFFFE, 0xE000, 0),
        "item of defined length declaring 2 GiB": seq + _tag_le(0xFFFE, 0xE000, 0x7FFFFFF0) + FEW,
        "item of undefined length without its delimiter": seq
        + ITEM
        + _element_le((0x0008, 0x0100), b"SH", 4)
        + b"ABCD",
        "text element inside an item declaring 4 GiB": seq
        + ITEM
        + _element_le((0x0040, 0xA160), b"UT", HUGE)
        + FEW,
    }


def _truncations(path: Path, rle_path: Path) -> dict[str, StoreRequest]:
    ds = pydicom.dcmread(path)
    sop = str(ds.SOPInstanceUID)
    whole = dataset_bytes(path)
    cases = {
        f"explicit LE, {name}": StoreRequest.build(CT, sop, str(ExplicitVRLittleEndian), whole + tail)
        for name, tail in _trailing_cases().items()
    }
    header = pydicom.dcmread(path, stop_before_pixels=True)
    below = Dataset()
    for element in header:
        if element.tag < 0x00204000:
            below.add(element)
    cases["explicit LE, image comments (UT) in the header declaring 4 GiB"] = StoreRequest.build(
        CT,
        sop,
        str(ExplicitVRLittleEndian),
        _explicit_le(below) + _element_le((0x0020, 0x4000), b"UT", HUGE) + FEW,
    )
    cases["explicit LE, referenced image sequence in the header declaring 4 GiB"] = StoreRequest.build(
        CT,
        sop,
        str(ExplicitVRLittleEndian),
        _explicit_le(Dataset({e.tag: e for e in header if e.tag < 0x00081140}))
        + _element_le((0x0008, 0x1140), b"SQ", HUGE)
        + ITEM,
    )
    cases["explicit LE, native pixel data cut short"] = StoreRequest.build(
        CT, sop, str(ExplicitVRLittleEndian), whole[:-3000]
    )
    implicit = encode(pydicom.dcmread(path), implicit=True)
    cases["implicit LE, element declaring 4 GiB"] = StoreRequest.build(
        CT, sop, str(ImplicitVRLittleEndian), implicit + _tag_le(0x7FE1, 0x1001, HUGE) + FEW
    )
    big = encode(pydicom.dcmread(path), little=False)
    cases["explicit BE, long VR text declaring 4 GiB"] = StoreRequest.build(
        CT,
        sop,
        str(ExplicitVRBigEndian),
        big + struct.pack(">HH2sHL", 0x7FE1, 0x1001, b"UT", 0, HUGE) + FEW,
    )
    rle = dataset_bytes(rle_path)
    rle_sop = str(pydicom.dcmread(rle_path, stop_before_pixels=True).SOPInstanceUID)
    cases["encapsulated (RLE), fragment cut short"] = StoreRequest.build(
        CT, rle_sop, str(RLELossless), rle[:-200]
    )
    cases["encapsulated (RLE), no sequence delimiter"] = StoreRequest.build(
        CT, rle_sop, str(RLELossless), rle[:-8]
    )
    deflated = zlib.compressobj(9, zlib.DEFLATED, -15)
    stream = deflated.compress(whole) + deflated.flush(zlib.Z_FINISH)
    cases["deflated, stream cut short"] = StoreRequest.build(
        CT, sop, str(DeflatedExplicitVRLittleEndian), stream[: len(stream) // 2]
    )
    cut = zlib.compressobj(9, zlib.DEFLATED, -15)
    cases["deflated, complete stream of a cut dataset"] = StoreRequest.build(
        CT, sop, str(DeflatedExplicitVRLittleEndian), cut.compress(whole[:-3000]) + cut.flush(zlib.Z_FINISH)
    )
    return cases


def test_truncation_in_every_class_of_element_is_refused_with_c000(ct_series, start_listener) -> None:
    """Issue 15 item 6: an element or sequence declaring gigabytes with a few bytes present was stored."""
    listener = start_listener()
    (path,) = ct_series(slices=1, rows=64, columns=64, seed=93)
    (rle_path,) = ct_series(slices=1, rows=64, columns=64, seed=94, compression="rle")
    got = {}
    cases = _truncations(path, rle_path)
    for name, request in cases.items():
        client = WireClient(listener.port)
        try:
            got[name] = f"0x{client.store(request):04X}"
        finally:
            client.close()
    assert {name: status[:3] for name, status in got.items()} == {name: "0xC" for name in cases}, got
    assert _instances(listener) == []
    assert _stored_files(listener) == []
    assert send_datasets(listener.port, [pydicom.dcmread(path), pydicom.dcmread(rle_path)])[1].Status == 0


# --- aborts and partial files --------------------------------------------------------------


def test_abort_or_reset_at_every_pdu_of_a_c_store_leaves_nothing(ct_series, start_listener) -> None:
    """Issue 15 item 7: an association aborted mid C-STORE left the partial dataset in staging."""
    listener = start_listener(**QUICK)
    request = _ct_store_request(ct_series, fragment=2048)
    assert len(request.pdus) >= 4
    for cut in range(len(request.pdus)):
        for ending in ("A-ABORT", "TCP reset mid-PDU"):
            client = WireClient(listener.port)
            client.associate(request.abstract_syntax, request.transfer_syntax)
            for pdu in request.pdus[:cut]:
                client.send(pdu)
            if ending == "A-ABORT":
                client.send(abort())
                client.closed_within(10)
                client.close()
            else:
                client.send(request.pdus[cut][: len(request.pdus[cut]) // 2])
                time.sleep(0.05)
                client.reset()
    wait_until(
        lambda: len([r for r in _associations(listener) if r.outcome != "open"]) == 2 * len(request.pdus),
        20,
        what="every association to be recorded as ended",
    )
    wait_until(lambda: not _staged(listener), 15, what="staging to be empty")
    assert _instances(listener) == []
    assert _stored_files(listener) == []
    assert {(r.outcome, r.instances_stored) for r in _associations(listener)} == {("aborted", 0)}


def test_a_command_with_an_overlong_sop_instance_uid_leaves_no_file(ct_series, start_listener) -> None:
    listener = start_listener(**QUICK)
    (path,) = ct_series(slices=1, rows=64, columns=64, seed=95)
    request = StoreRequest.from_file(path, sop_instance="1.2." + "3" * 70)
    client = WireClient(listener.port)
    client.associate(request.abstract_syntax, request.transfer_syntax)
    for pdu in request.pdus:
        client.send(pdu)
    try:
        pdu_type, _ = client.read_pdu(timeout=10)
        assert pdu_type in (0x04, 0x07), "a refusal status or an abort, never silence"
    except ConnectionError:
        pass
    client.close()
    wait_until(lambda: not _staged(listener), 15, what="the refused dataset to leave staging")
    assert _instances(listener) == []
    assert send_datasets(listener.port, [pydicom.dcmread(path)])[0].Status == 0


def test_orphans_in_a_receivers_staging_folder_are_swept(ct_series, start_listener) -> None:
    """Whatever path leaves a file behind, the periodic sweep removes it (here: planted, an hour old)."""
    listener = start_listener(dicom_network_timeout=2)
    folder = listener.data_dir / "staging" / str(listener.pid)
    wait_until(folder.is_dir, 10, what="the receiver's staging folder")
    orphan = folder / "tmp-orphan.dcm"
    orphan.write_bytes(b"\x00" * 128 + b"DICM" + b"Doe^Jane")
    hour_ago = time.time() - 3600
    import os

    os.utime(orphan, (hour_ago, hour_ago))
    fresh = folder / "tmp-fresh.dcm"
    fresh.write_bytes(b"in progress")
    wait_until(lambda: not orphan.exists(), 20, what="the orphan to be swept")
    assert fresh.exists(), "a file younger than the network timeout may still be in use"
    (path,) = ct_series(slices=1, rows=64, columns=64, seed=96)
    assert send_datasets(listener.port, [pydicom.dcmread(path)])[0].Status == 0
