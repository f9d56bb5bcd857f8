"""One HL7 message in -> stored raw, observations recorded -> the ACK to send back.

Order: the raw bytes and the parsed observations commit in one transaction,
then the ACK is built. A message that can be acknowledged but not used (AE) or
refused (AR) is still stored with its reason, so nothing a sender handed over is
lost. Each patient group's results are stored for that group's patient; if any
group cannot be attributed, none is stored. A repeated MSH-10 from the same
sender with the same content is acknowledged again as before and not applied
twice; with other content it is a conflict: the message is kept, flagged with
the message it collides with, not applied, and answered AE (duplicate key).
:meth:`Hl7Intake.handle` never raises.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from hl7_clinical.ack import Ack, build_ack
from hl7_clinical.codes import CodeMap, CodeMapError, CodeMapping
from hl7_clinical.definitions import Definitions
from hl7_clinical.identity import IdentityRules, PatientKey, choose_patient
from hl7_clinical.oru import (
    Header,
    MessageError,
    Observation,
    OruMessage,
    content_digest,
    decode,
    parse_oru,
    read_header,
)
from hl7_clinical.outcomes import OutcomeCodes, OutcomeRecord, hl7_outcome_row, outcome_records, supersede
from hl7_clinical.statuses import REMOVING, USABLE
from tace import phi
from tace.db import Hl7Message, LabObservation, Outcome, insert_ignore, table, utcnow
from tace.jobs import wake_waiting_jobs
from tace.logging import get_logger, unit_of_work
from tace.metrics import metric
from tace.outcomes import LinkWindow, relink

log = get_logger("tace.hl7.intake")

SUPPORTED_VERSIONS = ("2.3", "2.3.1", "2.4", "2.5", "2.5.1")


@dataclass(frozen=True)
class IntakeResult:
    code: str
    text: str
    hl7_error: str | None = None
    message_id: int | None = None
    duplicate: bool = False
    conflict_of: int | None = None
    applied: int = 0
    rejected: int = 0
    outcomes: int = 0


@dataclass(frozen=True)
class _Attributed:
    """The observations of one patient group, with the patient they belong to."""

    patient: PatientKey
    patient_hash: str
    observations: list[Observation]
    """The lab values; outcome OBX are in ``outcomes``."""
    outcomes: list[OutcomeRecord]


@dataclass(frozen=True)
class IntakePolicy:
    identity: IdentityRules
    refuse_processing_ids: frozenset[str] = frozenset()
    facility: str = ""
    outcome_codes: OutcomeCodes = field(default_factory=OutcomeCodes)
    link_window: LinkWindow = field(default_factory=LinkWindow)


class Hl7Intake:
    def __init__(
        self,
        engine: Engine,
        codes: CodeMap,
        definitions: Definitions,
        policy: IntakePolicy,
    ) -> None:
        self._engine = engine
        self._local = threading.local()
        self._codes = codes
        self._definitions = definitions
        self._policy = policy
        message, observation = table(Hl7Message), table(LabObservation)
        self._insert_message = sa.insert(message).returning(message.c.id)
        self._insert_observation = sa.insert(observation)
        self._supersede = (
            observation.update()
            .where(
                observation.c.patient_hash == sa.bindparam("hash"),
                observation.c.observation_key == sa.bindparam("key"),
                observation.c.superseded_at.is_(None),
            )
            .values(superseded_at=sa.bindparam("now", type_=observation.c.superseded_at.type))
        )

    def handle(self, raw: bytes) -> tuple[Ack, IntakeResult]:
        """The ACK text for ``raw`` and what was done; never raises."""
        header: Header | None = None
        try:
            header = read_header(raw)
            result = self._process(raw, header)
        except MessageError as exc:
            result = IntakeResult(exc.code, str(exc), exc.hl7_error)
            if header is None:
                self._store_unreadable(raw, str(exc))
        except sa.exc.SQLAlchemyError as exc:
            log.error("hl7.database_error", error=str(getattr(exc, "orig", exc) or exc).splitlines()[0])
            result = IntakeResult("AE", "message not stored: database unavailable, please resend", "207")
        except Exception as exc:
            log.exception("hl7.unexpected_error")
            result = IntakeResult("AE", f"gateway error ({exc.__class__.__name__}), please resend", "207")
        ack = build_ack(
            header, result.code, result.text, hl7_error=result.hl7_error, facility=self._policy.facility
        )
        metric("hl7").labels(ack=result.code).inc()
        return ack, result

    def _process(self, raw: bytes, header: Header) -> IntakeResult:
        digest = hashlib.sha256(raw).hexdigest()
        logged = (
            {"hl7_control_id": header.control_id, "sender": header.sender}
            if header.intact
            else {"hl7_header": "garbled: control ID and sender not logged"}
        )
        with unit_of_work(**logged):
            refusal = self._refusal(header)
            if refusal is not None:
                return self._store(raw, digest, header, refusal, [])
            try:
                message = parse_oru(decode(raw, header), header)
                groups = self._attribute(message)
                if not message.observations:
                    raise MessageError("no OBX segments: nothing to record", code="AE", hl7_error="101")
            except MessageError as exc:
                return self._store(raw, digest, header, IntakeResult(exc.code, str(exc), exc.hl7_error), [])
            return self._store(raw, digest, header, IntakeResult("AA", "stored"), groups)

    def _attribute(self, message: OruMessage) -> list[_Attributed]:
        """Every patient group with its patient, or a MessageError naming the group that has none."""
        if not message.groups:
            raise MessageError(
                "no PID segment: the results cannot be attributed to a patient", code="AR", hl7_error="100"
            )
        attributed = []
        for group in message.groups:
            try:
                patient = choose_patient(
                    group.identifiers, message.header.sending_facility, self._policy.identity
                )
            except MessageError as exc:
                if len(message.groups) == 1:
                    raise
                raise MessageError(
                    f"patient group {group.number} (PID at segment {group.segment}): {exc}; nothing stored",
                    code=exc.code,
                    hl7_error=exc.hl7_error,
                ) from None
            phi.protect(patient.patient_id)
            codes = self._policy.outcome_codes
            attributed.append(
                _Attributed(
                    patient,
                    phi.patient_hash(patient.patient_id, patient.issuer),
                    [o for o in group.observations if codes.kind(o) is None],
                    outcome_records(group.observations, codes),
                )
            )
        return attributed

    @contextlib.contextmanager
    def _connection(self) -> Iterator[Connection]:
        """A transaction on this thread's own connection (no pool round trip per message)."""
        connection: Connection | None = getattr(self._local, "connection", None)
        if connection is None or connection.closed or connection.invalidated:
            connection = self._local.connection = self._engine.connect()
        try:
            with connection.begin():
                yield connection
        except sa.exc.DBAPIError as exc:
            if exc.connection_invalidated or isinstance(exc, sa.exc.OperationalError):
                connection.close()
                self._local.connection = None
            raise

    def _refusal(self, header: Header) -> IntakeResult | None:
        if header.message_type != "ORU" or header.trigger != "R01":
            kind = f"{header.message_type}^{header.trigger}".strip("^")
            return IntakeResult("AR", f"message type {kind} is not supported (ORU^R01 only)", "200")
        if header.version and header.version not in SUPPORTED_VERSIONS:
            return IntakeResult("AR", f"HL7 version {header.version} is not supported (2.3 to 2.5.1)", "203")
        if header.processing_id in self._policy.refuse_processing_ids:
            return IntakeResult("AR", f"processing ID {header.processing_id} is refused here", "202")
        return None

    def _earlier(self, header: Header) -> Sequence[sa.Row[Any, Any, Any, Any]]:
        """Messages stored under this sender and control ID, the accepted one first."""
        messages = table(Hl7Message)
        with self._engine.connect() as connection:
            return connection.execute(
                sa.select(messages.c.id, messages.c.ack_code, messages.c.raw, messages.c.conflict_of)
                .where(messages.c.sender == header.sender, messages.c.control_id == header.control_id)
                .order_by(messages.c.conflict_of.is_not(None), messages.c.id)
            ).all()

    def _store_unreadable(self, raw: bytes, reason: str) -> None:
        digest = hashlib.sha256(raw).hexdigest()
        try:
            with self._engine.begin() as connection:
                insert_ignore(
                    connection,
                    table(Hl7Message),
                    {
                        "sender": "(unreadable)",
                        "control_id": f"sha256:{digest[:40]}",
                        "raw": raw,
                        "sha256": digest,
                        "ack_code": "AR",
                        "detail": reason,
                        "observations": 0,
                        "received_at": utcnow(),
                    },
                )
        except sa.exc.SQLAlchemyError:
            log.exception("hl7.store_failed")

    def _store(
        self,
        raw: bytes,
        digest: str,
        header: Header,
        verdict: IntakeResult,
        groups: list[_Attributed],
    ) -> IntakeResult:
        """One transaction: the raw message, its observations, corrections, and waking waiting jobs."""
        hashes = {group.patient_hash for group in groups}
        now = utcnow()
        try:
            with self._connection() as connection:
                count = sum(len(group.observations) + len(group.outcomes) for group in groups)
                message_id = connection.execute(
                    self._insert_message, self._message_row(raw, digest, header, verdict, hashes, now, count)
                ).scalar_one()
                applied = rejected = outcomes = 0
                for group in groups:
                    outcomes += self._store_outcomes(connection, message_id, group, now)
                    rows = [self._row(message_id, group, o, now) for o in group.observations]
                    for row, observation in zip(rows, group.observations, strict=True):
                        if observation.status in REMOVING or observation.status == "C":
                            connection.execute(
                                self._supersede,
                                {"hash": group.patient_hash, "key": row["observation_key"], "now": now},
                            )
                    if rows:
                        connection.execute(self._insert_observation, rows)
                    usable = sum(1 for row in rows if row["rejected_reason"] is None)
                    applied += usable
                    rejected += len(rows) - usable
                    if usable:
                        wake_waiting_jobs(connection, group.patient_hash)
        except sa.exc.IntegrityError:
            repeated = self._repeated(raw, digest, header, now)
            if repeated is None:
                raise
            return repeated
        log.info(
            "hl7.stored",
            message_id=message_id,
            ack=verdict.code,
            applied=applied,
            rejected=rejected,
            outcomes=outcomes,
            patient_hashes=sorted(hashes),
        )
        text = verdict.text
        if verdict.code == "AA":
            patients = f" for {len(hashes)} patients" if len(hashes) > 1 else ""
            recorded = f" and {outcomes} outcome(s)" if outcomes else ""
            text = f"stored {applied} observation(s){recorded}{patients}, {rejected} rejected"
        return IntakeResult(
            verdict.code,
            text,
            verdict.hl7_error,
            message_id=message_id,
            applied=applied,
            rejected=rejected,
            outcomes=outcomes,
        )

    def _store_outcomes(
        self, connection: Connection, message_id: int, group: _Attributed, now: dt.datetime
    ) -> int:
        """The group's outcomes, corrections superseding what they correct, then the patient relinked."""
        if not group.outcomes:
            return 0
        rows = [
            hl7_outcome_row(
                record,
                message_id=message_id,
                patient_id=group.patient.patient_id,
                issuer=group.patient.issuer,
                patient_hash=group.patient_hash,
                now=now,
            )
            for record in group.outcomes
        ]
        for row, record in zip(rows, group.outcomes, strict=True):
            if record.observation.status in REMOVING or record.observation.status == "C":
                supersede(connection, group.patient_hash, str(row["outcome_key"]), now)
        connection.execute(sa.insert(table(Outcome)), rows)
        relink(connection, self._policy.link_window, group.patient_hash)
        return sum(1 for record in group.outcomes if record.response is not None)

    def _message_row(
        self,
        raw: bytes,
        digest: str,
        header: Header,
        verdict: IntakeResult,
        hashes: set[str],
        now: object,
        observations: int,
        conflict_of: int | None = None,
    ) -> dict[str, object]:
        return {
            "sender": header.sender,
            "control_id": header.control_id,
            "message_type": f"{header.message_type}^{header.trigger}"[:20],
            "version": header.version[:20],
            "processing_id": header.processing_id[:4],
            "patient_hash": next(iter(hashes)) if len(hashes) == 1 else None,
            "raw": raw,
            "sha256": digest,
            "ack_code": verdict.code,
            "detail": None if verdict.code == "AA" else verdict.text,
            "observations": observations,
            "received_at": now,
            "conflict_of": conflict_of,
        }

    def _repeated(self, raw: bytes, digest: str, header: Header, now: object) -> IntakeResult | None:
        """The control ID was used before: the same message again, or a conflict to keep and flag.

        None when no message of this control ID exists (the integrity error was another one).
        """
        earlier = self._earlier(header)
        if not earlier:
            return None
        content = content_digest(raw)
        same = next((row for row in earlier if content_digest(row.raw) == content), None)
        if same is not None:
            log.info("hl7.duplicate", message_id=same.id)
            return IntakeResult(
                same.ack_code,
                f"duplicate of message {same.id}, not applied again",
                "205" if same.conflict_of is not None else None,
                message_id=same.id,
                duplicate=True,
                conflict_of=same.conflict_of,
            )
        accepted = earlier[0]
        text = (
            f"control ID {header.control_id} was already used for different content "
            f"(message {accepted.id}); kept as a conflict, not applied: send it with a new control ID"
        )
        verdict = IntakeResult("AE", text, "205")
        with self._connection() as connection:
            message_id = connection.execute(
                self._insert_message,
                self._message_row(raw, digest, header, verdict, set(), now, 0, accepted.id),
            ).scalar_one()
        log.warning("hl7.control_id_conflict", message_id=message_id, conflict_of=accepted.id)
        return IntakeResult("AE", text, "205", message_id=message_id, conflict_of=accepted.id)

    def _row(
        self, message_id: int, group: _Attributed, observation: Observation, now: object
    ) -> dict[str, object]:
        """The LabObservation row of one OBX; ``rejected_reason`` says why it cannot be used."""
        patient = group.patient
        mapping = self._codes.lookup(observation.code_system, observation.code)
        if mapping is None and observation.alternate_code:
            mapping = self._codes.lookup(observation.alternate_system, observation.alternate_code)
        key = f"{observation.order_key}|{observation.code_system}:{observation.code}|{observation.sub_id}"[
            :300
        ]
        row: dict[str, object] = {
            "patient_id": patient.patient_id,
            "issuer_of_patient_id": patient.issuer,
            "patient_hash": group.patient_hash,
            "feature": mapping.feature if mapping else None,
            "code": observation.code[:64],
            "code_system": observation.code_system[:32],
            "raw_value": observation.raw_value,
            "raw_unit": observation.unit[:64] or None,
            "value": None,
            "unit": mapping.canonical if mapping else None,
            "comparator": observation.comparator,
            "result_status": observation.status,
            "observed_at": observation.observed_at,
            "received_at": now,
            "source_kind": "hl7",
            "source_id": f"{message_id}:{observation.index}",
            "rejected_reason": None,
            "superseded_at": None,
            "observation_key": key,
            "message_id": message_id,
            "value_text": observation.raw_value[:500] or None,
        }
        row["rejected_reason"] = self._rejection(mapping, observation, row)
        return row

    def _rejection(
        self, mapping: CodeMapping | None, observation: Observation, row: dict[str, object]
    ) -> str | None:
        if mapping is None:
            system = f" ({observation.code_system})" if observation.code_system else ""
            label = f"{observation.code}{system} {observation.code_text!r}"
            return f"code {label} is not mapped to a clinical feature"
        if observation.status == "X" or observation.status in REMOVING:
            return None
        if observation.status not in USABLE:
            return f"result status {observation.status!r} is not usable"
        if observation.value is None:
            return f"value {observation.raw_value!r} is not numeric"
        try:
            value = mapping.convert(observation.value, observation.unit)
        except CodeMapError as exc:
            return str(exc)
        definition = self._definitions[mapping.feature]
        if not definition.in_range(value):
            low, high = definition.valid_range or (value, value)
            return f"{value:g} {definition.unit} is outside the possible range {low:g}..{high:g}"
        row["value"] = value
        return None
