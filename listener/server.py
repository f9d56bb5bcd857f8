"""The DICOM listener: a pynetdicom C-STORE/C-ECHO SCP wired to the ingestor.

Handlers get their dependencies bound (pynetdicom's ``(event, handler, args)``
form), turn every failure into a DIMSE status, and record each association:
who connected, what they sent, how it ended, and why it was refused.
"""

from __future__ import annotations

import os
import tempfile
import threading
import weakref
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import pydicom.config
from pydicom.dataset import Dataset
from pynetdicom import AE, evt
from pynetdicom.association import Association as PynetdicomAssociation
from pynetdicom.dimse_primitives import C_STORE
from sqlalchemy.engine import Engine

from listener import pynetdicom_internals as internals
from listener.admission import Admission
from listener.contexts import supported_contexts
from listener.ingest import AssociationLedger, Ingestor
from listener.pdu_reader import PduReader
from listener.staging import Sweeper, own_folder
from tace.db import Association, AssociationOutcome, session_scope, utcnow
from tace.logging import get_logger, unit_of_work
from tace.metrics import metric
from tace.settings import Settings
from tace.storage import Storage
from tace.tls import server_tls_context

log = get_logger("tace.listener")

REJECT_PERMANENT = 0x01
REJECT_TRANSIENT = 0x02
SOURCE_SERVICE_USER = 0x01
SOURCE_PRESENTATION = 0x03
REASON_NONE = 0x01
REASON_LOCAL_LIMIT = 0x02
REASON_CALLING_AE = 0x03
REASON_CALLED_AE = 0x07
REJECT_AT_ACCEPT = bytes([0x03, 0x00, 0x00, 0x00, 0x00, 0x04, 0x00, REJECT_PERMANENT, SOURCE_SERVICE_USER, 1])
"""A-ASSOCIATE-RJ (permanent, service user, no reason given) sent before the request is read."""
DUL_POLL_SECONDS = 0.0001
UNLIMITED_PDU_CAP = 64 * 1024 * 1024
PDU_SLACK = 64 * 1024


def tune_process(staging_dir: Path) -> None:
    """Process-wide settings for a receiving process (not for a process that does other work).

    Received datasets stream to a file in this process's staging folder instead of
    memory (bounded memory for huge instances; the file is renamed into place,
    never copied); pynetdicom's per-PDU debug handlers and pydicom's value
    validation are off (we validate the UIDs that matter ourselves). Refuses to run
    on a pynetdicom whose internals were not checked.
    """
    internals.check_version()
    folder = own_folder(staging_dir)
    folder.mkdir(parents=True, exist_ok=True)
    tempfile.tempdir = str(folder)
    internals.configure_receiving_process()
    pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE
    pydicom.config.settings.writing_validation_mode = pydicom.config.IGNORE


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
            max_instance_bytes=settings.dicom_max_instance_bytes,
        )
        self._open: weakref.WeakKeyDictionary[PynetdicomAssociation, _Open] = weakref.WeakKeyDictionary()
        self._refused: weakref.WeakSet[PynetdicomAssociation] = weakref.WeakSet()
        self._closed: weakref.WeakSet[PynetdicomAssociation] = weakref.WeakSet()
        self._handling: set[Path] = set()
        self._lock = threading.Lock()
        self._server: internals.SharedPortServer | None = None
        self._tls = server_tls_context(
            settings.dicom_tls_cert,
            settings.dicom_tls_key,
            settings.dicom_tls_ca,
            settings.dicom_tls_require_client_cert,
        )
        self._admission = Admission(
            slots=settings.dicom_max_associations,
            networks=settings.allowed_peer_networks,
            on_outside=self._record_outside,
        )
        self._sweeper = Sweeper(
            self._storage.staging_dir,
            self._live_staging,
            interval_seconds=min(max(settings.dicom_network_timeout, 1.0), 60.0),
            orphan_after_seconds=2 * settings.dicom_network_timeout + 60,
        )
        self.ae = self._build_ae()

    def _build_ae(self) -> AE:
        s = self._settings
        ae = AE(ae_title=s.ae_title)
        ae.maximum_associations = s.dicom_max_associations + self._admission.max_pending
        ae.maximum_pdu_size = s.dicom_max_pdu
        ae.acse_timeout = s.dicom_acse_timeout
        ae.dimse_timeout = s.dicom_dimse_timeout
        ae.network_timeout = s.dicom_network_timeout
        ae.require_called_aet = False
        return ae

    def start(self) -> internals.SharedPortServer:
        handlers: list[evt.EventHandlerType] = [
            (evt.EVT_REQUESTED, self._on_requested),
            (evt.EVT_REJECTED, self._on_rejected),
            (evt.EVT_ACCEPTED, self._on_accepted),
            (evt.EVT_C_ECHO, self._on_echo),
            (evt.EVT_C_STORE, self._on_store),
            (evt.EVT_CONN_CLOSE, self._on_closed),
            (evt.EVT_CONN_OPEN, self._on_connection),
        ]
        server = internals.start_server(
            self.ae,
            (self._settings.bind_host, self._settings.dicom_port),
            contexts=supported_contexts(),
            evt_handlers=handlers,
            ssl_context=self._tls,
            gate=self._admission,
            handshake_seconds=self._settings.dicom_acse_timeout,
            reject_pdu=REJECT_AT_ACCEPT,
        )
        self._server = server
        self._sweeper.start()
        log.info(
            "listener.started",
            ae_title=self._settings.ae_title,
            port=self._settings.dicom_port,
            tls=self._tls is not None,
            pid=os.getpid(),
        )
        return server

    def stop(self) -> None:
        self._sweeper.stop()
        if self._server is not None:
            self._server.shutdown()
            self._server = None

    def _live_staging(self) -> Iterable[Path]:
        with self._lock:
            live = set(self._handling)
        for assoc in self.ae.active_associations:
            live.update(internals.staging_files(assoc))
        return live

    # --- association lifecycle -----------------------------------------------------

    def _on_connection(self, event: evt.Event) -> None:
        """Harden the new connection before the peer says anything.

        * Poll every 0.1 ms instead of 1 ms: storescu and most PACS wait for each
          C-STORE response before sending the next instance, so this latency is
          paid once per instance (pynetdicom documents the delay as the knob).
        * PDUs are read under deadlines for the whole request, PDU and message
          (:mod:`listener.pdu_reader`), so a peer that drips holds nothing for long.
        * A PDU larger than our maximum (plus header) is refused before it is
          buffered, so a peer cannot make us hold gigabytes in memory.
        """
        s = self._settings
        internals.set_poll_delay(event.assoc, DUL_POLL_SECONDS)
        reader = PduReader(
            max_pdu=(s.dicom_max_pdu or UNLIMITED_PDU_CAP) + PDU_SLACK,
            negotiation_seconds=s.dicom_acse_timeout,
            pdu_seconds=s.dicom_network_timeout,
            message_grace_seconds=s.dicom_dimse_timeout,
        )
        internals.install_reader(event.assoc, reader)

    def _peer(self, event: evt.Event) -> tuple[str, int | None]:
        info = event.assoc.requestor
        return str(info.address or "?"), info.port

    def _refusal(self, event: evt.Event) -> tuple[int, str] | None:
        """AE-title checks; the peer's network was checked when the connection was accepted."""
        settings = self._settings
        calling, called = _ae_titles(event)
        if settings.allowed_calling_aets and calling not in settings.allowed_calling_aets:
            return REASON_CALLING_AE, f"calling AE title {calling!r} is not allowed"
        if called != settings.ae_title:
            return REASON_CALLED_AE, f"called AE title {called!r} is not {settings.ae_title!r}"
        return None

    def _record_outside(self, host: str, port: int) -> None:
        self._record(host, port, "", "", f"peer {host} is not in the allowed networks")

    def _record_rejection(self, event: evt.Event, reason: str) -> None:
        host, port = self._peer(event)
        calling, called = _ae_titles(event)
        metric("associations").labels(outcome="rejected").inc()
        self._record(host, port, calling[:16], called[:16], reason)

    def _record(self, host: str, port: int | None, calling: str, called: str, reason: str) -> None:
        row = Association(
            listener=self._identity,
            peer_host=host,
            peer_port=port,
            calling_ae=calling,
            called_ae=called,
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
        log.warning("association.rejected", peer=host, calling_ae=calling, reason=reason)

    def _refuse(self, event: evt.Event, reason: str, result: int, source: int, diagnostic: int) -> None:
        with self._lock:
            self._refused.add(event.assoc)
        self._record_rejection(event, reason)
        internals.send_reject(event.assoc, result, source, diagnostic)

    def _on_requested(self, event: evt.Event) -> None:
        refusal = self._refusal(event)
        if refusal is not None:
            diagnostic, reason = refusal
            self._refuse(event, reason, REJECT_PERMANENT, SOURCE_SERVICE_USER, diagnostic)
            return
        host, port = self._peer(event)
        if not self._admission.take_slot(host, port or 0):
            self._refuse(
                event, "too many associations", REJECT_TRANSIENT, SOURCE_PRESENTATION, REASON_LOCAL_LIMIT
            )

    def _on_rejected(self, event: evt.Event) -> None:
        with self._lock:
            ours = event.assoc in self._refused
        if not ours:
            self._record_rejection(event, "refused in negotiation (unsupported protocol or context)")

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
        state = _Open(AssociationLedger(association_id=row_id, calling_ae=calling), row_id)
        with self._lock:
            closed = event.assoc in self._closed
            if not closed:
                self._open[event.assoc] = state
        log.info("association.accepted", association_id=row_id, peer=host, calling_ae=calling)
        if closed:
            self._finish(event.assoc, state)

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
        with self._lock:
            self._handling.add(path)
        try:
            with unit_of_work(association_id=state.row_id):
                outcome = self._ingestor.store(
                    path,
                    sop_class_uid=str(request.AffectedSOPClassUID),
                    sop_instance_uid=str(request.AffectedSOPInstanceUID),
                    ledger=state.ledger,
                )
        finally:
            with self._lock:
                self._handling.discard(path)
        return _status(outcome.status, outcome.comment)

    def _on_closed(self, event: evt.Event) -> None:
        """Every connection ends here: its slot is freed and nothing it left in staging survives."""
        host, port = self._peer(event)
        self._admission.release(host, port or 0)
        discarded = internals.discard_staging(event.assoc)
        if discarded:
            log.info("association.partial_discarded", files=len(discarded))
        with self._lock:
            self._closed.add(event.assoc)
            state = self._open.pop(event.assoc, None)
        if state is not None:
            self._finish(event.assoc, state)

    def _finish(self, assoc: PynetdicomAssociation, state: _Open) -> None:
        """Write how the association ended (the connection may close before EVT_ACCEPTED is done)."""
        state.ledger.close()
        if state.row_id is None:
            return
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
