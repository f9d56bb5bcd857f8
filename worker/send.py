"""The send stage: the SR to every destination (C-STORE, or STOW-RS), with retries that make sense.

Connection failures, timeouts and 0xA7xx (out of resources) are transient: the
job goes back to ``predicted`` with a backoff (and jitter, so a PACS coming back
is not hit by every job at once) and the relay republishes it when due. 0xA9xx
and 0xCxxx mean the PACS will never take this object: the job fails with the
status and the PACS's comment. Destinations that accepted are not sent again;
the job is ``sent`` when every destination has accepted, and ``no_destination``
(never ``sent``) when none is configured: the SR stays in the data dir.

Configured EHR channels (an ORU^R01 over MLLP, a FHIR DiagnosticReport; see
:mod:`worker.ehr_send`) are destinations too, with the same retry classes and
Delivery rows of their own kinds: the job is ``sent`` when the SR and every
result are delivered.
"""

from __future__ import annotations

import datetime as dt
import random
from dataclasses import dataclass, replace
from pathlib import Path

import pydicom
import sqlalchemy as sa
from pydicom.errors import InvalidDicomError
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE
from sqlmodel import select

from hl7_clinical.identity import IdentityRules
from tace import phi
from tace.db import (
    Delivery,
    DeliveryKind,
    DeliveryState,
    Job,
    Prediction,
    Stage,
    session_scope,
    table,
    utcnow,
)
from tace.jobs import Lease, refresh_predecessor
from tace.logging import get_logger
from tace.metrics import metric
from tace.settings import Destination, DicomwebDestination, Settings
from tace.storage import atomic_write
from worker.context import WorkerContext
from worker.dicomweb_send import stow_instance
from worker.ehr_result import load_result
from worker.ehr_send import EhrChannel, ehr_channels
from worker.rejection import build_rejection, rejection_uid
from worker.send_result import SendResult
from worker.stage import StageOutcome, StageResult, run_claimed

log = get_logger("tace.worker.send")

BASE_BACKOFF_SECONDS = 5.0


def classify(status: int) -> tuple[bool, bool]:
    """(delivered, transient) for a C-STORE response status."""
    if status == 0x0000 or (status & 0xF000) == 0xB000:
        return True, False
    if (status & 0xFF00) == 0xA700:
        return False, True
    return False, False


def store_sr(settings: Settings, destination: Destination | DicomwebDestination, path: Path) -> SendResult:
    """One association, one C-STORE (or one STOW-RS request to a DICOMweb destination); never raises."""
    if isinstance(destination, DicomwebDestination):
        return stow_instance(settings, destination, path)
    ae = AE(ae_title=settings.ae_title)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = settings.dicom_send_timeout
    try:
        stored = pydicom.dcmread(path, stop_before_pixels=True)
    except (OSError, InvalidDicomError) as exc:
        return SendResult(False, False, None, f"stored object unreadable: {exc}")
    phi.protect_dataset(stored)
    sop_class = stored.file_meta.MediaStorageSOPClassUID
    ae.add_requested_context(sop_class, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    try:
        assoc = ae.associate(destination.host, destination.port, ae_title=destination.ae_title)
    except (OSError, ValueError) as exc:
        return SendResult(False, True, None, f"cannot connect: {exc}")
    if assoc.is_rejected:
        primitive = assoc.acceptor.primitive
        transient = primitive is not None and primitive.result == 0x02
        reason = (
            f"association rejected (result {primitive.result}, reason {primitive.diagnostic})"
            if primitive
            else "association rejected"
        )
        return SendResult(False, transient, None, reason)
    if not assoc.is_established and assoc.rejected_contexts and not assoc.accepted_contexts:
        # The peer answered and takes none of what was proposed: a retry gets the same answer.
        return SendResult(False, False, None, f"not accepted: the peer takes no SOP class {sop_class}")
    if not assoc.is_established:
        return SendResult(False, True, None, "association not established (peer unreachable or aborted)")
    try:
        response = assoc.send_c_store(path)
    except ValueError as exc:
        # pynetdicom's word for "the peer accepted no presentation context for this SOP
        # class": a PACS that does not take, say, Key Object Selection will not on a retry.
        assoc.abort()
        return SendResult(False, False, None, f"not accepted: {exc}")
    except (OSError, RuntimeError) as exc:
        assoc.abort()
        return SendResult(False, True, None, f"send failed: {exc.__class__.__name__}: {exc}")
    if assoc.is_established:
        assoc.release()
    if not response or "Status" not in response:
        return SendResult(False, True, None, "no response (timeout or association aborted)")
    status = int(response.Status)
    delivered, transient = classify(status)
    comment = str(response.get("ErrorComment", "") or "")
    detail = f"status 0x{status:04X}" + (f" ({comment})" if comment else "")
    return SendResult(delivered, transient, status, detail)


def backoff_seconds(attempt: int, cap: float) -> float:
    base = min(cap, BASE_BACKOFF_SECONDS * 2 ** max(attempt - 1, 0))
    return base * random.uniform(0.5, 1.5)


def run_send(ctx: WorkerContext, job_id: int) -> StageOutcome:
    return run_claimed(ctx, job_id, Stage.send, lambda lease: _send(ctx, lease))


@dataclass(frozen=True)
class _Predecessor:
    """The SR this job's SR replaces, and where it was delivered (there it must be withdrawn)."""

    path: Path
    sop_instance_uid: str
    destinations: frozenset[str]


def _predecessor(ctx: WorkerContext, job_id: int) -> _Predecessor | None:
    with session_scope(ctx.engine) as session:
        job = session.get(Job, job_id)
        if job is None or refresh_predecessor(session, job) is None:
            return None
        old = session.exec(select(Prediction).where(Prediction.job_id == job.predecessor_job_id)).first()
        delivered = session.exec(
            select(Delivery.destination).where(
                Delivery.job_id == job.predecessor_job_id,
                Delivery.kind == DeliveryKind.sr,
                Delivery.state == DeliveryState.delivered,
            )
        ).all()
    if old is None or old.sr_path is None or old.sr_sop_instance_uid is None:
        return None
    return _Predecessor(ctx.storage.resolve(old.sr_path), old.sr_sop_instance_uid, frozenset(delivered))


def _rejection_note(ctx: WorkerContext, predecessor: _Predecessor) -> tuple[Path, str]:
    """The IOCM note for the predecessor, built once and kept next to the SRs."""
    rejected = pydicom.dcmread(predecessor.path, stop_before_pixels=True)
    uid = rejection_uid(predecessor.sop_instance_uid)
    path = ctx.storage.sr_path(rejected.StudyInstanceUID, uid)
    if not path.exists():
        atomic_write(path, build_rejection(rejected), ctx.storage.staging_dir)
    return path, uid


def _send(ctx: WorkerContext, lease: Lease) -> StageResult:
    settings = ctx.settings
    with session_scope(ctx.engine) as session:
        prediction = session.exec(select(Prediction).where(Prediction.job_id == lease.job_id)).one()
        deliveries = {
            (d.destination, d.kind): d
            for d in session.exec(select(Delivery).where(Delivery.job_id == lease.job_id))
        }
    if prediction.sr_path is None or prediction.sr_sop_instance_uid is None:
        return StageResult.failed("send: no SR was stored for this job; replay from infer")
    path = ctx.storage.resolve(prediction.sr_path)
    channels = ehr_channels(settings)
    if not settings.destinations and not channels:
        return StageResult(
            StageOutcome.no_destination,
            detail="nothing sent: no destination configured (TACE_DESTINATIONS); "
            f"SR kept at {prediction.sr_path}",
        )
    predecessor = _predecessor(ctx, lease.job_id)
    pending, permanent, kept = [], [], []
    rejected = 0
    for destination in settings.destinations:
        name = str(destination)
        sr_done = _deliver(
            ctx, lease, deliveries, destination, DeliveryKind.sr, path, prediction.sr_sop_instance_uid
        )
        if sr_done.state == DeliveryState.delivered and predecessor and name in predecessor.destinations:
            try:
                note, note_uid = _rejection_note(ctx, predecessor)
            except (OSError, InvalidDicomError) as exc:
                kept.append((name, f"rejection note not built: {exc.__class__.__name__}"))
                continue
            note_done = _deliver(ctx, lease, deliveries, destination, DeliveryKind.rejection, note, note_uid)
            rejected += note_done.state == DeliveryState.delivered
            if note_done.state == DeliveryState.failed:
                # The new SR is in the PACS; a note it refuses for good must not fail that job.
                kept.append((name, note_done.detail))
                continue
            sr_done = note_done
        if sr_done.state == DeliveryState.retrying:
            pending.append((name, sr_done.detail, sr_done.attempts))
        elif sr_done.state == DeliveryState.failed:
            permanent.append((name, sr_done.detail))
    for name, done in _deliver_results(ctx, lease, deliveries, channels):
        if done.state == DeliveryState.retrying:
            pending.append((name, done.detail, done.attempts))
        elif done.state == DeliveryState.failed:
            permanent.append((name, done.detail))
    if permanent:
        reason = "; ".join(f"{name} refused: {detail}" for name, detail in permanent)
        return StageResult.failed(f"send: {reason}")
    if pending:
        attempt = max(a for _, _, a in pending)
        delay = backoff_seconds(attempt, settings.send_retry_max_seconds)
        reason = "; ".join(f"{name}: {detail}" for name, detail, _ in pending)
        return StageResult(
            StageOutcome.retrying,
            not_before=utcnow() + dt.timedelta(seconds=delay),
            error=f"retrying in {delay:.0f} s (attempt {attempt}): {reason}",
        )
    withdrawn = (
        f"; previous SR {predecessor.sop_instance_uid} withdrawn (IOCM rejection note) "
        f"at {rejected} destination(s)"
        if predecessor and rejected
        else ""
    )
    if kept:
        log.warning("send.rejection_not_delivered", destinations=[name for name, _ in kept])
        withdrawn += "; previous SR NOT withdrawn at " + "; ".join(f"{name}: {why}" for name, why in kept)
    sr_where = (
        f"SR {prediction.sr_sop_instance_uid} accepted by every destination"
        if settings.destinations
        else f"SR kept at {prediction.sr_path} (no TACE_DESTINATIONS)"
    )
    ehr_where = "; result delivered to " + ", ".join(_channel_label(c) for c in channels) if channels else ""
    return StageResult(StageOutcome.sent, detail=f"{sr_where}{withdrawn}{ehr_where}")


_CHANNEL_WORDS = {DeliveryKind.hl7_result: "HL7", DeliveryKind.fhir_report: "FHIR"}


def _channel_label(channel: EhrChannel) -> str:
    return f"{_CHANNEL_WORDS[channel.kind]} {channel.name}"


def _deliver_results(
    ctx: WorkerContext,
    lease: Lease,
    deliveries: dict[tuple[str, DeliveryKind], Delivery],
    channels: list[EhrChannel],
) -> list[tuple[str, _Delivered]]:
    """The prediction to each configured EHR channel (:mod:`worker.ehr_send`), as SRs go to the PACS."""
    if not channels:
        return []
    with session_scope(ctx.engine) as session:
        result = load_result(session, lease.job_id, IdentityRules.from_settings(ctx.settings))
    done = []
    for channel in channels:
        label = _channel_label(channel)
        previous = deliveries.get((channel.name, channel.kind))
        if previous is not None and previous.state == DeliveryState.delivered:
            done.append(
                (label, _Delivered(DeliveryState.delivered, previous.detail or "", previous.attempts))
            )
            continue
        if result is None:
            done.append((label, _Delivered(DeliveryState.failed, "no study or SR for this job", 0)))
            continue
        if result.patient_id is None:
            # A result without the patient's ID could only be filed by name, or under a placeholder.
            done.append((label, _Delivered(DeliveryState.failed, "the study has no patient ID; not sent", 0)))
            continue
        sent = channel.send(result, result.corrected(channel.name, channel.kind))
        # The detail is shown to roles without identifiers; a receiver may have quoted the patient.
        sent = replace(sent, detail=phi.scrub(sent.detail))
        attempts = (previous.attempts if previous else 0) + 1
        state, sent = _settle(ctx.settings, sent, attempts)
        _record(
            ctx, lease.job_id, channel.name, channel.kind, result.sr_sop_instance_uid, state, sent, attempts
        )
        metric("sends").labels(destination=channel.name, outcome=state.value).inc()
        log.info(
            f"{channel.kind.value}.delivery",
            destination=channel.name,
            state=state,
            detail=sent.detail,
            attempts=attempts,
        )
        done.append((label, _Delivered(state, sent.detail, attempts)))
    return done


@dataclass(frozen=True)
class _Delivered:
    state: DeliveryState
    detail: str
    attempts: int


def _deliver(
    ctx: WorkerContext,
    lease: Lease,
    deliveries: dict[tuple[str, DeliveryKind], Delivery],
    destination: Destination | DicomwebDestination,
    kind: DeliveryKind,
    path: Path,
    sop_uid: str,
) -> _Delivered:
    """One object to one destination unless it already arrived there; the outcome is recorded."""
    name = str(destination)
    previous = deliveries.get((name, kind))
    if previous is not None and previous.state == DeliveryState.delivered:
        return _Delivered(DeliveryState.delivered, previous.detail or "", previous.attempts)
    result = store_sr(ctx.settings, destination, path)
    attempts = (previous.attempts if previous else 0) + 1
    state, result = _settle(ctx.settings, result, attempts)
    _record(ctx, lease.job_id, name, kind, sop_uid, state, result, attempts)
    metric("sends").labels(destination=name, outcome=state.value).inc()
    log.info(f"{kind.value}.delivery", destination=name, state=state, detail=result.detail, attempts=attempts)
    return _Delivered(state, result.detail, attempts)


def _settle(settings: Settings, result: SendResult, attempts: int) -> tuple[DeliveryState, SendResult]:
    """The delivery's state; a refusal that stays "transient" for ``send_max_attempts`` fails for good,
    so a peer that always answers "try again" (an AE for a patient it does not know) is seen by someone."""
    if result.delivered:
        return DeliveryState.delivered, result
    if not result.transient:
        return DeliveryState.failed, result
    if attempts >= settings.send_max_attempts:
        return DeliveryState.failed, replace(
            result,
            transient=False,
            detail=f"gave up after {attempts} attempts (TACE_SEND_MAX_ATTEMPTS): {result.detail}",
        )
    return DeliveryState.retrying, result


def _record(
    ctx: WorkerContext,
    job_id: int,
    destination: str,
    kind: DeliveryKind,
    sop_uid: str,
    state: DeliveryState,
    result: SendResult,
    attempts: int,
) -> None:
    now = utcnow()
    delivery_table = table(Delivery)
    values = {
        "sop_instance_uid": sop_uid,
        "state": state,
        "dimse_status": result.status,
        "detail": result.detail[:500],
        "attempts": attempts,
        "updated_at": now,
        "delivered_at": now if result.delivered else None,
    }
    with ctx.engine.begin() as connection:
        updated = connection.execute(
            delivery_table.update()
            .where(
                delivery_table.c.job_id == job_id,
                delivery_table.c.destination == destination,
                delivery_table.c.kind == kind,
            )
            .values(**values)
        )
        if updated.rowcount == 0:
            connection.execute(
                sa.insert(delivery_table).values(job_id=job_id, destination=destination, kind=kind, **values)
            )
