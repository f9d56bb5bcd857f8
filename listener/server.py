"""The DICOM listener: a pynetdicom C-STORE/C-ECHO SCP wired to the ingestor.

Handlers get their dependencies bound (pynetdicom's ``(event, handler, args)``
form), turn every failure into a DIMSE status, and record each association:
who connected, what they sent, how it ended, and why it was refused.
"""

from __future__ import annotations

import ipaddress
import os
import tempfile
import threading
import weakref
from dataclasses import dataclass
from pathlib import Path

import pydicom.config
from pydicom.dataset import Dataset
from pynetdicom import AE, _config, evt
from pynetdicom.association import Association as PynetdicomAssociation
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.transport import ThreadedAssociationServer
from sqlalchemy.engine import Engine

from listener.contexts import supported_contexts
from listener.ingest import AssociationLedger, Ingestor
from tace.db import Association, AssociationOutcome, session_scope, utcnow
from tace.logging import get_logger, unit_of_work
from tace.metrics import metric
from tace.settings import Settings
from tace.storage import Storage
from tace.tls import server_tls_context

log = get_logger("tace.listener")

REJECT_PERMANENT = 0x01
SOURCE_SERVICE_USER = 0x01
REASON_NONE = 0x01
REASON_CALLING_AE = 0x03
REASON_CALLED_AE = 0x07
DUL_POLL_SECONDS = 0.0001
UNLIMITED_PDU_CAP = 64 * 1024 * 1024
PDU_SLACK = 64 * 1024


def tune_pynetdicom(staging_dir: Path) -> None:
    """Process-wide settings for a listener process (not for a process that does other work).

    Received datasets stream to a file in our staging dir instead of memory (bounded
    memory for huge instances; the file is renamed into place, never copied);
    pynetdicom's per-PDU debug handlers and pydicom's value validation are off (we
    validate the UIDs that matter ourselves); sockets reuse the port so several
    listener processes can share it.
    """
    staging_dir.mkdir(parents=True, exist_ok=True)
    tempfile.tempdir = str(staging_dir)
    _config.STORE_RECV_CHUNKED_DATASET = True
    _config.LOG_HANDLER_LEVEL = "none"
    pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE
    pydicom.config.settings.writing_validation_mode = pydicom.config.IGNORE
    ThreadedAssociationServer.allow_reuse_port = True


def _ae_titles(event: evt.Event) -> tuple[str, str]:
    """(calling, called) AE titles of the association request, stripped; empty when not yet known."""
    primitive = event.assoc.requestor.primitive
    if primitive is None:
        return "", ""
    return (primitive.calling_ae_title or "").strip(), (primitive.called_ae_title or "").strip()


def _status(code: int, comment: str | None) -> Dataset:
    status = Dataset()
    status.Status = code
    if comment:
        status.ErrorComment = comment[:64]
    return status


@dataclass
class _Open:
    ledger: AssociationLedger
    row_id: int | None


class Listener:
    def __init__(self, settings: Settings, engine: Engine, *, identity: str) -> None:
        self._settings = settings
        self._engine = engine
        self._identity = identity
        self._storage = Storage(settings.data_dir)
        self._ingestor = Ingestor(
            engine,
            self._storage,
            min_free_bytes=settings.min_free_bytes,
            default_issuer=settings.default_issuer,
        )
        self._open: weakref.WeakKeyDictionary[PynetdicomAssociation, _Open] = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()
        self._server: ThreadedAssociationServer | None = None
        self._tls = server_tls_context(
            settings.dicom_tls_cert,
            settings.dicom_tls_key,
            settings.dicom_tls_ca,
            settings.dicom_tls_require_client_cert,
        )
        self.ae = self._build_ae()

    def _build_ae(self) -> AE:
        s = self._settings
        ae = AE(ae_title=s.ae_title)
        ae.maximum_associations = s.dicom_max_associations
        ae.maximum_pdu_size = s.dicom_max_pdu
        ae.acse_timeout = s.dicom_acse_timeout
        ae.dimse_timeout = s.dicom_dimse_timeout
        ae.network_timeout = s.dicom_network_timeout
        ae.require_called_aet = False
        return ae

    def start(self) -> ThreadedAssociationServer:
        handlers: list[evt.EventHandlerType] = [
            (evt.EVT_REQUESTED, self._on_requested),
            (evt.EVT_REJECTED, self._on_rejected),
            (evt.EVT_ACCEPTED, self._on_accepted),
            (evt.EVT_C_ECHO, self._on_echo),
            (evt.EVT_C_STORE, self._on_store),
            (evt.EVT_CONN_CLOSE, self._on_closed),
            (evt.EVT_CONN_OPEN, self._on_connection),
        ]
        server = self.ae.start_server(
            (self._settings.bind_host, self._settings.dicom_port),
            block=False,
            evt_handlers=handlers,
            ssl_context=self._tls,
            contexts=supported_contexts(),
        )
        assert server is not None
        self._server = server
        log.info(
            "listener.started",
            ae_title=self._settings.ae_title,
            port=self._settings.dicom_port,
            tls=self._tls is not None,
            pid=os.getpid(),
        )
        return server

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None

    # --- association lifecycle -----------------------------------------------------

    def _on_connection(self, event: evt.Event) -> None:
        """Harden the new connection before the peer says anything.

        * Poll every 0.1 ms instead of 1 ms: storescu and most PACS wait for each
          C-STORE response before sending the next instance, so this latency is
          paid once per instance (pynetdicom documents the delay as the knob).
        * A socket timeout: pynetdicom reads a whole PDU in a blocking loop, so a
          peer that announces a length and then stalls would hold the connection
          (and an association slot) forever; with the timeout it is closed.
        * A PDU larger than our maximum (plus header) is refused before it is
          buffered, so a peer cannot make us hold gigabytes in memory.
        """
        dul = event.assoc.dul
        dul._run_loop_delay = DUL_POLL_SECONDS
        transport = dul.socket
        if transport is None or transport.socket is None:
            return
        transport.socket.settimeout(self._settings.dicom_network_timeout)
        limit = (self._settings.dicom_max_pdu or UNLIMITED_PDU_CAP) + PDU_SLACK
        read = transport.recv

        def bounded_recv(nr_bytes: int) -> bytearray:
            if nr_bytes > limit:
                raise OSError(f"PDU of {nr_bytes} bytes exceeds the {limit}-byte limit")
            return read(nr_bytes)

        transport.recv = bounded_recv  # type: ignore[method-assign]  # cap each PDU before pynetdicom buffers it

    def _peer(self, event: evt.Event) -> tuple[str, int | None]:
        info = event.assoc.requestor
        return str(info.address or "?"), info.port

    def _refusal(self, event: evt.Event) -> tuple[int, str] | None:
        settings = self._settings
        host, _ = self._peer(event)
        calling, called = _ae_titles(event)
        if settings.allowed_peer_networks:
            try:
                address = ipaddress.ip_address(host)
            except ValueError:
                return REASON_NONE, f"peer address {host} is not an IP address"
            if not any(address in network for network in settings.allowed_peer_networks):
                return REASON_NONE, f"peer {host} is not in the allowed networks"
        if settings.allowed_calling_aets and calling not in settings.allowed_calling_aets:
            return REASON_CALLING_AE, f"calling AE title {calling!r} is not allowed"
        if called != settings.ae_title:
            return REASON_CALLED_AE, f"called AE title {called!r} is not {settings.ae_title!r}"
        return None

    def _record_rejection(self, event: evt.Event, reason: str) -> None:
        host, port = self._peer(event)
        calling, called = _ae_titles(event)
        row = Association(
            listener=self._identity,
            peer_host=host,
            peer_port=port,
            calling_ae=calling[:16],
            called_ae=called[:16],
            tls=self._tls is not None,
            outcome=AssociationOutcome.rejected,
            reason=reason,
            started_at=utcnow(),
            ended_at=utcnow(),
        )
        try:
            with session_scope(self._engine) as session:
                session.add(row)
        except Exception:
            log.exception("association.record_failed")
        metric("associations").labels(outcome="rejected").inc()
        log.warning("association.rejected", peer=host, calling_ae=row.calling_ae, reason=reason)

    def _on_requested(self, event: evt.Event) -> None:
        refusal = self._refusal(event)
        if refusal is None:
            return
        diagnostic, reason = refusal
        event.assoc._tace_rejection_recorded = True  # type: ignore[attr-defined]  # marks our own refusal for EVT_REJECTED
        self._record_rejection(event, reason)
        event.assoc.acse.send_reject(REJECT_PERMANENT, SOURCE_SERVICE_USER, diagnostic)
        event.assoc.kill()

    def _on_rejected(self, event: evt.Event) -> None:
        if not getattr(event.assoc, "_tace_rejection_recorded", False):
            self._record_rejection(event, "too many associations")

    def _on_accepted(self, event: evt.Event) -> None:
        host, port = self._peer(event)
        calling, called = _ae_titles(event)
        calling = calling[:16]
        row_id: int | None = None
        try:
            with session_scope(self._engine) as session:
                row = Association(
                    listener=self._identity,
                    peer_host=host,
                    peer_port=port,
                    calling_ae=calling,
                    called_ae=called[:16],
                    tls=self._tls is not None,
                    started_at=utcnow(),
                )
                session.add(row)
                session.flush()
                row_id = row.id
        except Exception:
            log.exception("association.record_failed")
        with self._lock:
            self._open[event.assoc] = _Open(
                AssociationLedger(association_id=row_id, calling_ae=calling), row_id
            )
        log.info("association.accepted", association_id=row_id, peer=host, calling_ae=calling)

    def _on_echo(self, event: evt.Event) -> int:
        return 0x0000

    def _on_store(self, event: evt.Event) -> Dataset:
        request = event.request
        assert isinstance(request, C_STORE), "bound to EVT_C_STORE only"
        with self._lock:
            state = self._open.get(event.assoc)
        if state is None:
            state = _Open(AssociationLedger(association_id=None, calling_ae=""), None)
        try:
            path = Path(event.dataset_path)
        except AttributeError:
            return _status(0xC001, "listener not configured for streamed datasets")
        with unit_of_work(association_id=state.row_id):
            outcome = self._ingestor.store(
                path,
                sop_class_uid=str(request.AffectedSOPClassUID),
                sop_instance_uid=str(request.AffectedSOPInstanceUID),
                ledger=state.ledger,
            )
        return _status(outcome.status, outcome.comment)

    def _on_closed(self, event: evt.Event) -> None:
        with self._lock:
            state = self._open.pop(event.assoc, None)
        if state is None:
            return
        state.ledger.close()
        if state.row_id is None:
            return
        assoc = event.assoc
        outcome = AssociationOutcome.released if assoc.is_released else AssociationOutcome.aborted
        ledger = state.ledger
        try:
            with session_scope(self._engine) as session:
                row = session.get(Association, state.row_id)
                if row is not None:
                    row.outcome = outcome
                    row.ended_at = utcnow()
                    row.instances_stored = ledger.stored
                    row.instances_failed = ledger.failed
                    row.instances_discarded = sum(ledger.discarded.values())
                    row.bytes_received = ledger.bytes_received
                    row.discarded_by_class = dict(ledger.discarded) or None
                    session.add(row)
        except Exception:
            log.exception("association.record_failed", association_id=state.row_id)
        if ledger.discarded:
            log.info(
                "association.discarded_non_ct", association_id=state.row_id, by_class=dict(ledger.discarded)
            )
        metric("associations").labels(outcome=outcome.value).inc()
        log.info(
            "association.ended",
            association_id=state.row_id,
            outcome=outcome,
            stored=ledger.stored,
            failed=ledger.failed,
            bytes=ledger.bytes_received,
        )
