"""Every use of pynetdicom's private internals, in one place, for the versions read and tested.

pynetdicom's public API has no hook for what a hardened listener must control:
reading PDUs under a deadline, admitting or refusing a connection before the
peer has said anything, sharing the port between processes, finding the
staging file of a half-received C-STORE, or copying presentation contexts
cheaply. Each of those reaches into pynetdicom below its documented surface.
They all live here, against the minor versions in ``SUPPORTED`` (pyproject pins
the same range); ``tests/listener/test_pynetdicom_internals.py`` checks every
attribute and behaviour relied on, so an upgrade that changes one fails there,
loudly, instead of in a hospital.
"""

from __future__ import annotations

import contextlib
import copy
import select
import socket
import ssl
import threading
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

import pynetdicom
from pynetdicom import AE, _config
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.presentation import PresentationContext
from pynetdicom.transport import ThreadedAssociationServer

SUPPORTED = ("3.0",)
"""pynetdicom minor versions whose internals this module was written against."""

Reader = Callable[[socket.socket, int], bytearray]


class UnsupportedPynetdicom(RuntimeError):
    """The installed pynetdicom is not a version whose internals were checked."""


def check_version(version: str = pynetdicom.__version__) -> None:
    minor = ".".join(version.split(".")[:2])
    if minor not in SUPPORTED:
        raise UnsupportedPynetdicom(
            f"pynetdicom {version} is installed; the listener uses internals checked only for "
            f"{', '.join(SUPPORTED)} (see listener/pynetdicom_internals.py)"
        )


def configure_receiving_process() -> None:
    """Stream received datasets to files (bounded memory) and skip the per-PDU debug handlers."""
    _config.STORE_RECV_CHUNKED_DATASET = True
    _config.LOG_HANDLER_LEVEL = "none"


def set_poll_delay(assoc: Association, seconds: float) -> None:
    """How long the DUL reactor sleeps between polls; paid once per received instance."""
    assoc.dul._run_loop_delay = seconds


def install_reader(assoc: Association, reader: Reader) -> bool:
    """Make the DUL read PDUs through ``reader(sock, nbytes)`` instead of its own recv loop.

    The DUL reads each PDU as two calls: the 6-byte header, then the announced length.
    """
    transport = assoc.dul.socket
    if transport is None or transport.socket is None:
        return False
    sock = transport.socket

    def recv(nr_bytes: int) -> bytearray:
        return reader(sock, nr_bytes)

    transport.recv = recv  # type: ignore[method-assign]  # the DUL calls transport.recv; this is the hook
    return True


def send_reject(assoc: Association, result: int, source: int, diagnostic: int) -> None:
    """Answer the A-ASSOCIATE-RQ with an A-ASSOCIATE-RJ from inside EVT_REQUESTED, then end it."""
    assoc.acse.send_reject(result, source, diagnostic)
    assoc.kill()


def staging_files(assoc: Association) -> list[Path]:
    """Staging files of C-STOREs the association has received but not handed to the handler."""
    found = []
    message = assoc.dimse.message
    if message is not None and isinstance(message._data_set_path, Path):
        found.append(message._data_set_path)
    for _, primitive in list(assoc.dimse.msg_queue.queue):
        if isinstance(primitive, C_STORE) and isinstance(primitive._dataset_path, Path):
            found.append(primitive._dataset_path)
    return found


def discard_staging(assoc: Association) -> list[Path]:
    """Close and delete what :func:`staging_files` names, and drop the queued C-STOREs.

    Called once the connection has closed: the peer never gets an answer for
    these, so nothing of them may be stored or left behind.
    """
    removed = []
    message = assoc.dimse.message
    if message is not None and message._data_set_file is not None:
        removed += _close_and_unlink(message._data_set_file, message._data_set_path)
        message._data_set_file = None
        message._data_set_path = None
    while True:
        try:
            _, primitive = assoc.dimse.msg_queue.get_nowait()
        except Exception:  # noqa: BLE001 - queue.Empty
            break
        if isinstance(primitive, C_STORE) and primitive._dataset_file is not None:
            removed += _close_and_unlink(primitive._dataset_file, primitive._dataset_path)
    return removed


def _close_and_unlink(handle: Any, path: Any) -> list[Path]:
    with contextlib.suppress(OSError):
        handle.close()
    if not isinstance(path, Path):
        return []
    try:
        path.unlink()
    except FileNotFoundError:
        return []
    except OSError:
        return []
    return [path]


class CheapCopyContext(PresentationContext):
    """A supported context that deep-copies in microseconds.

    pynetdicom deep-copies every supported context for every association; with
    all storage classes that costs tens of milliseconds per association. UIDs are
    immutable, so a shallow copy with its own transfer-syntax list is equivalent.
    """

    def __deepcopy__(self, memo: dict[int, Any]) -> CheapCopyContext:
        clone = copy.copy(self)
        clone._transfer_syntax = list(self._transfer_syntax)
        return clone


class Gate(Protocol):
    """Decides about a connection before pynetdicom reads anything from it."""

    def admit(self, host: str, port: int) -> bool:
        """At accept, in the accept loop: False closes the connection at once."""

    def refuse(self, host: str, port: int) -> bool:
        """In the connection's thread: True answers A-ASSOCIATE-RJ without reading the request."""

    def abandoned(self, host: str, port: int) -> None:
        """The connection ended before pynetdicom took it over (refused or failed handshake)."""


REJECT_DRAIN_SECONDS = 10.0
"""How long a connection refused at accept waits for the peer's request (see _reject_without_reading)."""


class SharedPortServer(ThreadedAssociationServer):
    """pynetdicom's threaded server, hardened where its internals decide.

    * SO_REUSEPORT is set before bind (pynetdicom's ``server_bind`` overrides
      socketserver's and ignores ``allow_reuse_port``), so N processes share the port.
    * The accept loop only accepts: the TLS handshake runs in the connection's own
      thread under a deadline (pynetdicom's ``get_request`` handshakes in the accept
      loop, where one silent peer stops every other).
    * A :class:`Gate` sees every connection before its A-ASSOCIATE-RQ is read.
    """

    def __init__(
        self,
        *args: Any,
        gate: Gate,
        handshake_seconds: float,
        reject_pdu: bytes,
        **kwargs: Any,
    ) -> None:
        self._gate = gate
        self._handshake_seconds = handshake_seconds
        self._reject_pdu = reject_pdu
        super().__init__(*args, **kwargs)

    def server_bind(self) -> None:
        assert self.socket is not None
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        super().server_bind()

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        assert self.socket is not None
        return self.socket.accept()

    def verify_request(self, request: Any, client_address: Any) -> bool:
        return self._gate.admit(str(client_address[0]), int(client_address[1]))

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        host, port = str(client_address[0]), int(client_address[1])
        taken_over = False
        try:
            if self._gate.refuse(host, port):
                _reject_without_reading(request, self._reject_pdu)
                return
            if self.ssl_context is not None:
                request = _handshake(self.ssl_context, request, self._handshake_seconds)
            taken_over = True
            self.finish_request(request, client_address)
        except Exception:  # noqa: BLE001 - a failed handshake or a peer gone: close, serve the rest
            taken_over = False
            self.shutdown_request(request)
        finally:
            if not taken_over:
                self._gate.abandoned(host, port)


def _handshake(context: ssl.SSLContext, sock: socket.socket, seconds: float) -> ssl.SSLSocket:
    """A server-side TLS handshake that ends by ``seconds`` however slowly the peer drips."""
    deadline = time.monotonic() + seconds
    sock.setblocking(False)
    wrapped = context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("TLS handshake not complete in time")
        try:
            wrapped.do_handshake()
            break
        except ssl.SSLWantReadError:
            select.select([wrapped], [], [], remaining)
        except ssl.SSLWantWriteError:
            select.select([], [wrapped], [], remaining)
    wrapped.setblocking(True)
    return wrapped


def _reject_without_reading(sock: socket.socket, pdu: bytes) -> None:
    """Send the A-ASSOCIATE-RJ, then take the peer's request in before closing.

    Closing with the request unread (or arriving after the close) makes the
    kernel answer with a reset, and a reset discards the RJ still unread in the
    peer's buffer: the peer would see an abort instead of the rejection. A busy
    peer may send its request seconds after connecting, hence the long wait; it
    ends as soon as one whole PDU is in (or the peer closes).
    """
    try:
        sock.settimeout(REJECT_DRAIN_SECONDS)
        sock.sendall(pdu)
        sock.shutdown(socket.SHUT_WR)
        deadline = time.monotonic() + REJECT_DRAIN_SECONDS
        received = b""
        while time.monotonic() < deadline and len(received) < 1 << 16:
            chunk = sock.recv(4096)
            if not chunk:
                break
            received += chunk
            if len(received) >= 6 and len(received) >= 6 + int.from_bytes(received[2:6], "big"):
                break
    except OSError:
        pass
    finally:
        sock.close()


def start_server(
    ae: AE,
    address: tuple[str, int],
    *,
    contexts: list[PresentationContext],
    evt_handlers: list[Any],
    ssl_context: ssl.SSLContext | None,
    gate: Gate,
    handshake_seconds: float,
    reject_pdu: bytes,
) -> SharedPortServer:
    """``AE.start_server(block=False)`` with :class:`SharedPortServer` as the server class."""
    server = ae.make_server(
        address,
        ae_title=ae.ae_title,
        contexts=contexts,
        ssl_context=ssl_context,
        evt_handlers=evt_handlers,
        server_class=SharedPortServer,
        gate=gate,
        handshake_seconds=handshake_seconds,
        reject_pdu=reject_pdu,
    )
    assert isinstance(server, SharedPortServer)
    stamp = datetime.now().strftime("%Y%m%d%H%M%S")
    thread = threading.Thread(target=server.serve_forever, name=f"AcceptorServer@{stamp}", daemon=True)
    thread.start()
    ae._servers.append(server)
    return server
