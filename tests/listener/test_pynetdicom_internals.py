"""The pynetdicom internals the listener relies on: present, and behaving as relied on.

Every private attribute, method and behaviour used by
``listener/pynetdicom_internals.py`` is exercised here against the installed
pynetdicom, over real sockets where the behaviour is about sockets. An upgrade
that renames, removes or changes one of them fails this file by name.
"""

from __future__ import annotations

import copy
import queue
import re
import socket
import tempfile
import threading
import tomllib
from pathlib import Path

import pydicom
import pynetdicom
import pytest
from pynetdicom import AE, _config, evt
from pynetdicom.association import Association
from pynetdicom.dimse_messages import DIMSEMessage
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.sop_class import CTImageStorage, Verification
from pynetdicom.transport import AssociationSocket, ThreadedAssociationServer

from listener import pynetdicom_internals as internals
from tests.support.dicom_wire import StoreRequest, WireClient
from tests.support.services import free_port, wait_until

REPO = Path(__file__).resolve().parents[2]
REJECT = bytes([0x03, 0, 0, 0, 0, 4, 0, 1, 1, 1])


def test_the_installed_pynetdicom_is_a_checked_version_and_pyproject_pins_the_same() -> None:
    internals.check_version()
    with pytest.raises(internals.UnsupportedPynetdicom, match="3.1.0"):
        internals.check_version("3.1.0")
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    (pin,) = [d for d in project if re.match(r"pynetdicom\b", d)]
    allowed = {f"{major}.{minor}" for major, minor in re.findall(r"(\d+)\.(\d+)", pin)}
    lower, upper = sorted(allowed)
    assert pin == f"pynetdicom>={lower},<{upper}", pin
    assert internals.SUPPORTED == (lower,), "pyproject's pin and SUPPORTED must name the same minor"
    assert pynetdicom.__version__.startswith(lower + ".")


def test_private_attributes_relied_on_exist_with_the_expected_types() -> None:
    for name in ("STORE_RECV_CHUNKED_DATASET", "LOG_HANDLER_LEVEL"):
        assert hasattr(_config, name), name
    ae = AE()
    assert isinstance(ae._servers, list)
    assoc = Association(ae, "acceptor")
    assert isinstance(assoc.dul._run_loop_delay, float)
    assert assoc.dul.socket is None and hasattr(assoc.dul, "socket")
    assert callable(assoc.acse.send_reject)
    assert assoc.dimse.message is None
    assert isinstance(assoc.dimse.msg_queue, queue.Queue)
    left, right = socket.socketpair()
    transport = AssociationSocket(assoc, client_socket=left)
    assert transport.socket is left and callable(transport.recv)
    left.close()
    right.close()
    message = DIMSEMessage()
    assert message._data_set_file is None and message._data_set_path is None
    primitive = C_STORE()
    assert primitive._dataset_file is None and primitive._dataset_path is None
    for name in ("server_bind", "get_request", "verify_request", "process_request_thread", "finish_request"):
        assert callable(getattr(ThreadedAssociationServer, name)), name
    context = internals.CheapCopyContext()
    context.abstract_syntax = CTImageStorage
    context.transfer_syntax = ["1.2.840.10008.1.2.1"]
    assert isinstance(context._transfer_syntax, list)
    clone = copy.deepcopy(context)
    clone.transfer_syntax = ["1.2.840.10008.1.2"]
    assert context.transfer_syntax == ["1.2.840.10008.1.2.1"], "a copy must not share the syntax list"


class RecordingGate:
    def __init__(self, *, admit: bool = True, refuse: bool = False) -> None:
        self.calls: list[tuple[str, str, int]] = []
        self._admit, self._refuse = admit, refuse

    def admit(self, host: str, port: int) -> bool:
        self.calls.append(("admit", host, port))
        return self._admit

    def refuse(self, host: str, port: int) -> bool:
        self.calls.append(("refuse", host, port))
        return self._refuse

    def abandoned(self, host: str, port: int) -> None:
        self.calls.append(("abandoned", host, port))


def _server(port: int, gate: RecordingGate, handlers: list | None = None) -> tuple[AE, object]:
    ae = AE(ae_title="TACE")
    ae.add_supported_context(Verification)
    ae.add_supported_context(CTImageStorage, ["1.2.840.10008.1.2.1"])
    server = internals.start_server(
        ae,
        ("127.0.0.1", port),
        contexts=ae.supported_contexts,
        evt_handlers=handlers or [],
        ssl_context=None,
        gate=gate,
        handshake_seconds=5,
        reject_pdu=REJECT,
    )
    return ae, server


def _echo(port: int) -> int | None:
    ae = AE(ae_title="PROBE")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", port, ae_title="TACE")
    if not assoc.is_established:
        return None
    status = assoc.send_c_echo()
    assoc.release()
    return int(status.Status)


def test_two_servers_share_one_port_and_the_gate_sees_every_connection_first() -> None:
    port = free_port()
    gate = RecordingGate()
    first_ae, first = _server(port, gate)
    second_ae, second = _server(port, gate)
    try:
        assert first.socket.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) == 1
        for _ in range(4):
            assert _echo(port) == 0
        assert [call[0] for call in gate.calls].count("admit") == 4
        assert [call[0] for call in gate.calls].count("refuse") == 4
        assert first_ae._servers == [first] and second_ae._servers == [second]
    finally:
        first.shutdown()
        second.shutdown()
    assert first_ae._servers == [] and second_ae._servers == []


def test_the_gate_closes_or_rejects_before_the_request_is_read() -> None:
    port = free_port()
    _, server = _server(port, RecordingGate(admit=False))
    try:
        client = WireClient(port)
        assert client.closed_within(5) < 5
    finally:
        server.shutdown()
    port = free_port()
    gate = RecordingGate(refuse=True)
    _, server = _server(port, gate)
    try:
        client = WireClient(port)
        assert client.read_pdu(timeout=5) == (0x03, REJECT[6:])
        assert client.closed_within(5) < 5
        # The server waits for the request it never read, or for us to close, before it lets go.
        client.sock.close()
        wait_until(lambda: gate.calls[-1][0] == "abandoned", 5, what="the gate told of the end")
    finally:
        server.shutdown()


def test_the_reader_the_poll_delay_and_send_reject_act_on_the_association() -> None:
    reads: list[int] = []

    def reader(sock: socket.socket, count: int) -> bytearray:
        reads.append(count)
        data = bytearray()
        while len(data) < count:
            chunk = sock.recv(count - len(data))
            if not chunk:
                break
            data += chunk
        return data

    delays: list[float] = []

    def on_open(event: evt.Event) -> None:
        internals.set_poll_delay(event.assoc, 0.0002)
        delays.append(event.assoc.dul._run_loop_delay)
        assert internals.install_reader(event.assoc, reader)

    def on_requested(event: evt.Event) -> None:
        if event.assoc.requestor.primitive.calling_ae_title.strip() == "REFUSED":
            internals.send_reject(event.assoc, 0x01, 0x01, 0x03)

    port = free_port()
    handlers = [(evt.EVT_CONN_OPEN, on_open), (evt.EVT_REQUESTED, on_requested)]
    _, server = _server(port, RecordingGate(), handlers)
    try:
        assert _echo(port) == 0
        assert delays == [0.0002]
        assert reads[:2] == [6, reads[1]] and reads[1] > 6, "header, then the announced body"
        refused = AE(ae_title="REFUSED")
        refused.add_requested_context(Verification)
        assoc = refused.associate("127.0.0.1", port, ae_title="TACE")
        assert assoc.is_rejected
        primitive = assoc.acceptor.primitive
        assert (primitive.result, primitive.result_source, primitive.diagnostic) == (0x01, 0x01, 0x03)
    finally:
        server.shutdown()


def test_staging_files_name_and_discard_the_file_of_a_half_received_c_store(
    tmp_path: Path, ct_series
) -> None:
    (path,) = ct_series(slices=1, rows=64, columns=64)
    staging = tmp_path / "staging"
    staging.mkdir()
    request = StoreRequest.from_file(path, fragment=2048)
    found: list[list[Path]] = []
    discarded: list[list[Path]] = []
    closed = threading.Event()

    def on_close(event: evt.Event) -> None:
        discarded.append(internals.discard_staging(event.assoc))
        closed.set()

    before = (_config.STORE_RECV_CHUNKED_DATASET, _config.LOG_HANDLER_LEVEL, tempfile.tempdir)
    internals.configure_receiving_process()
    tempfile.tempdir = str(staging)
    port = free_port()
    ae, server = _server(port, RecordingGate(), [(evt.EVT_CONN_CLOSE, on_close)])
    try:
        client = WireClient(port)
        client.associate(request.abstract_syntax, request.transfer_syntax)
        for pdu in request.pdus[:3]:
            client.send(pdu)

        def partial() -> list[Path]:
            files = [f for assoc in ae.active_associations for f in internals.staging_files(assoc)]
            return files if files and files[0].stat().st_size > 2048 else []

        found.append(wait_until(partial, 10, what="the staging file of the partial C-STORE"))
        assert found[0][0].parent == staging
        client.reset()
        assert closed.wait(10)
    finally:
        server.shutdown()
        _config.STORE_RECV_CHUNKED_DATASET, _config.LOG_HANDLER_LEVEL, tempfile.tempdir = before
    assert discarded == [found[0]]
    assert list(staging.iterdir()) == []
    assert pydicom.dcmread(path).Rows == 64
