"""The record: SQLModel tables, engines and sessions.

The database, not the broker, is the source of truth: a DICOM instance is
acknowledged only after its row is committed, and a job exists as a row before
any message about it is published. SQLite (WAL, synchronous FULL) serves a
single machine; PostgreSQL serves a scale-out deployment with the same schema.

Timestamps we make are UTC and timezone-aware. Times copied from DICOM and HL7
(study time, observation time) are the site's local wall-clock time, kept naive
as the sources give them, so they compare with each other without guessing a zone.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any, cast

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.exc import OperationalError
from sqlmodel import Column, Field, Session, SQLModel, create_engine


class DatabaseUnavailable(Exception):
    """The database cannot be reached; the message is one line naming it."""


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(sa.types.TypeDecorator[datetime]):
    """Aware UTC datetimes on every backend (SQLite has no time zones)."""

    impl = sa.DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given for a UTC column")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        return value.replace(tzinfo=UTC) if value is not None else None


def _utc_column(nullable: bool = True, index: bool = False) -> Any:
    return Field(default=None, sa_column=Column(UTCDateTime(), nullable=nullable, index=index))


def _created_column() -> Any:
    return Field(default_factory=utcnow, sa_column=Column(UTCDateTime(), nullable=False))


def _enum_type(enum_class: type[enum.StrEnum]) -> sa.Enum:
    """Enums stored as plain strings, so adding a state needs no ALTER TYPE on PostgreSQL."""
    return sa.Enum(
        enum_class,
        native_enum=False,
        length=24,
        values_callable=lambda members: [m.value for m in members],
    )


def _json_column() -> Any:
    return Field(default=None, sa_column=Column(sa.JSON(), nullable=True))


class SeriesState(enum.StrEnum):
    receiving = "receiving"
    complete = "complete"
    ineligible = "ineligible"


class JobState(enum.StrEnum):
    received = "received"
    queued = "queued"
    running = "running"
    waiting_for_labs = "waiting_for_labs"
    predicted = "predicted"
    sent = "sent"
    no_destination = "no_destination"
    """Predicted and the SR kept in the data dir: no destination is configured, nothing was sent."""
    failed = "failed"
    superseded = "superseded"


TERMINAL_JOB_STATES = frozenset(
    {JobState.sent, JobState.no_destination, JobState.failed, JobState.superseded}
)


class Stage(enum.StrEnum):
    """The task a job needs next; replay restarts from one of these."""

    infer = "infer"
    send = "send"


class Study(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    study_instance_uid: str = Field(max_length=64, unique=True, index=True)
    patient_id: str | None = Field(default=None, max_length=64)
    issuer_of_patient_id: str | None = Field(default=None, max_length=64)
    patient_hash: str = Field(max_length=32, index=True)
    patient_name: str | None = Field(default=None, max_length=324)
    patient_birth_date: str | None = Field(default=None, max_length=8)
    patient_sex: str | None = Field(default=None, max_length=16)
    study_datetime: datetime | None = Field(default=None, sa_type=sa.DateTime())
    accession_number: str | None = Field(default=None, max_length=16)
    study_description: str | None = Field(default=None, max_length=64)
    generation: int = 0
    """Counts the study's jobs: it and the model version make the SR's UIDs."""
    ineligible_reason: str | None = None
    """Why the study got no job (a phase the model needs is missing), while it has none."""
    created_at: datetime = _created_column()


class Series(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    series_instance_uid: str = Field(max_length=64, unique=True, index=True)
    study_id: int = Field(foreign_key="study.id", index=True)
    modality: str | None = Field(default=None, max_length=16)
    series_number: int | None = None
    series_description: str | None = Field(default=None, max_length=64)
    state: SeriesState = Field(default=SeriesState.receiving, sa_type=_enum_type(SeriesState), index=True)
    ineligible_reason: str | None = None
    instance_count: int = 0
    total_bytes: int = Field(default=0, sa_type=sa.BigInteger)
    generation: int = 0
    first_received_at: datetime | None = _utc_column()
    last_received_at: datetime | None = _utc_column()
    completed_at: datetime | None = _utc_column()
    created_at: datetime = _created_column()
    tags: dict[str, Any] | None = _json_column()
    """The first instance's phase-relevant header (``SeriesTags.to_dict``), kept at ingest."""
    phase: str | None = Field(default=None, max_length=24)
    phase_confidence: str | None = Field(default=None, max_length=8)
    phase_evidence: str | None = None


class Instance(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    sop_instance_uid: str = Field(max_length=64, unique=True, index=True)
    sop_class_uid: str = Field(max_length=64)
    series_id: int = Field(foreign_key="series.id", index=True)
    instance_number: int | None = None
    image_type: str | None = Field(default=None, max_length=200)
    plane: str | None = Field(default=None, max_length=16)
    frames: int = 1
    transfer_syntax_uid: str = Field(max_length=64)
    path: str = Field(description="relative to the data dir")
    size: int = Field(sa_type=sa.BigInteger)
    sha256: str = Field(max_length=64)
    calling_ae: str | None = Field(default=None, max_length=16)
    received_at: datetime = _created_column()


class AssociationOutcome(enum.StrEnum):
    open = "open"
    released = "released"
    aborted = "aborted"
    rejected = "rejected"


class Association(SQLModel, table=True):
    """Every DICOM association, accepted or not: who sent what, and how it ended."""

    id: int | None = Field(default=None, primary_key=True)
    listener: str = Field(max_length=128, index=True, description="host:pid of the receiving process")
    peer_host: str = Field(max_length=64)
    peer_port: int | None = None
    calling_ae: str | None = Field(default=None, max_length=16)
    called_ae: str | None = Field(default=None, max_length=16)
    tls: bool = False
    outcome: AssociationOutcome = Field(
        default=AssociationOutcome.open, sa_type=_enum_type(AssociationOutcome), index=True
    )
    reason: str | None = None
    instances_stored: int = 0
    instances_discarded: int = 0
    instances_failed: int = 0
    bytes_received: int = Field(default=0, sa_type=sa.BigInteger)
    discarded_by_class: dict[str, int] | None = _json_column()
    started_at: datetime = _created_column()
    ended_at: datetime | None = _utc_column(index=True)


class SeriesAssociation(SQLModel, table=True):
    """Which associations carried which series: completion waits for all of them to end."""

    series_id: int = Field(foreign_key="series.id", primary_key=True)
    association_id: int = Field(foreign_key="association.id", primary_key=True, index=True)
    first_at: datetime = _created_column()


class Job(SQLModel, table=True):
    """One attempt to turn a ready study (at one generation) into an SR in the PACS.

    ``series_id`` is the reference series (the phase the others are aligned to);
    ``selection`` records every series of the study with its phase decision and
    why it was or was not used, so the choice can be explained later.
    """

    __table_args__ = (sa.UniqueConstraint("series_id", "generation", name="uq_job_series_gen"),)

    id: int | None = Field(default=None, primary_key=True)
    series_id: int = Field(foreign_key="series.id", index=True)
    generation: int = 1
    state: JobState = Field(default=JobState.received, sa_type=_enum_type(JobState), index=True)
    stage: Stage = Field(default=Stage.infer, sa_type=_enum_type(Stage))
    attempts: int = 0
    lost_leases: int = 0
    publish_count: int = 0
    lease: str | None = Field(default=None, max_length=64)
    error: str | None = None
    created_at: datetime = _created_column()
    updated_at: datetime = _created_column()
    published_at: datetime | None = _utc_column()
    started_at: datetime | None = _utc_column()
    heartbeat_at: datetime | None = _utc_column()
    finished_at: datetime | None = _utc_column()
    not_before: datetime | None = _utc_column()
    superseded_by_id: int | None = Field(default=None, foreign_key="job.id")
    study_id: int | None = Field(default=None, foreign_key="study.id", index=True)
    selection: dict[str, Any] | None = _json_column()
    predecessor_job_id: int | None = Field(default=None, foreign_key="job.id")
    """The earlier job whose SR this job's SR replaces (and withdraws when it is sent)."""


class JobEvent(SQLModel, table=True):
    """The timeline of a job: one row per state transition, never updated."""

    id: int | None = Field(default=None, primary_key=True)
    job_id: int = Field(foreign_key="job.id", index=True)
    at: datetime = _created_column()
    state: JobState = Field(sa_type=_enum_type(JobState))
    stage: Stage = Field(sa_type=_enum_type(Stage))
    detail: str | None = None


class Hl7Message(SQLModel, table=True):
    """Every HL7 message as received (raw bytes), stored before it is acknowledged.

    A sender's control ID names one message; a later message that reuses it with
    other content is kept too, flagged with ``conflict_of`` (the message it collides
    with) and never applied, so the unique key covers unflagged messages only.
    """

    __table_args__ = (
        sa.Index(
            "uq_hl7_sender_control",
            "sender",
            "control_id",
            unique=True,
            sqlite_where=sa.text("conflict_of IS NULL"),
            postgresql_where=sa.text("conflict_of IS NULL"),
        ),
    )

    id: int | None = Field(default=None, primary_key=True)
    sender: str = Field(max_length=200, description="MSH-3^MSH-4: sending application and facility")
    control_id: str = Field(max_length=199)
    message_type: str | None = Field(default=None, max_length=20)
    version: str | None = Field(default=None, max_length=20)
    processing_id: str | None = Field(default=None, max_length=4)
    patient_hash: str | None = Field(default=None, max_length=32, index=True)
    raw: bytes = Field(sa_type=sa.LargeBinary)
    sha256: str = Field(max_length=64)
    ack_code: str = Field(max_length=2)
    detail: str | None = None
    observations: int = 0
    received_at: datetime = _created_column()
    conflict_of: int | None = Field(default=None, foreign_key="hl7message.id")


class LabObservation(SQLModel, table=True):
    """One clinical value as received, in canonical units when it could be mapped."""

    __table_args__ = (sa.UniqueConstraint("source_kind", "source_id", name="uq_lab_source"),)

    id: int | None = Field(default=None, primary_key=True)
    patient_id: str = Field(max_length=64)
    issuer_of_patient_id: str | None = Field(default=None, max_length=64)
    patient_hash: str = Field(max_length=32, index=True)
    feature: str | None = Field(default=None, max_length=64, index=True)
    code: str | None = Field(default=None, max_length=64)
    code_system: str | None = Field(default=None, max_length=32)
    raw_value: str | None = None
    raw_unit: str | None = Field(default=None, max_length=64)
    value: float | None = None
    unit: str | None = Field(default=None, max_length=64)
    comparator: str | None = Field(default=None, max_length=2)
    result_status: str = Field(default="F", max_length=1)
    observed_at: datetime | None = Field(default=None, sa_type=sa.DateTime(), index=True)
    received_at: datetime = _created_column()
    source_kind: str = Field(max_length=8)
    source_id: str = Field(max_length=200)
    rejected_reason: str | None = None
    superseded_at: datetime | None = _utc_column()
    observation_key: str | None = Field(default=None, max_length=300, index=True)
    message_id: int | None = Field(default=None, foreign_key="hl7message.id", index=True)
    value_text: str | None = None


class DeliveryState(enum.StrEnum):
    delivered = "delivered"
    retrying = "retrying"
    failed = "failed"


class DeliveryKind(enum.StrEnum):
    sr = "sr"
    rejection = "rejection"
    """The IOCM rejection note that withdraws the predecessor's SR."""
    hl7_result = "hl7_result"
    """The ORU^R01 with the prediction, to TACE_HL7_RESULT_DESTINATION (OBX-11 C when it corrects)."""
    fhir_report = "fhir_report"
    """The FHIR DiagnosticReport with the prediction, to TACE_FHIR_BASE_URL."""


class Delivery(SQLModel, table=True):
    """The outcome of sending one job's SR (its rejection note, its EHR result) to one destination."""

    __table_args__ = (
        sa.UniqueConstraint("job_id", "destination", "kind", name="uq_delivery_job_destination_kind"),
    )

    id: int | None = Field(default=None, primary_key=True)
    job_id: int = Field(foreign_key="job.id", index=True)
    destination: str = Field(max_length=128)
    kind: DeliveryKind = Field(default=DeliveryKind.sr, sa_type=_enum_type(DeliveryKind))
    sop_instance_uid: str = Field(max_length=64)
    state: DeliveryState = Field(sa_type=_enum_type(DeliveryState))
    dimse_status: int | None = None
    detail: str | None = None
    attempts: int = 0
    updated_at: datetime = _created_column()
    delivered_at: datetime | None = _utc_column()


class Prediction(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    job_id: int = Field(foreign_key="job.id", unique=True, index=True)
    probability: float
    label: str = Field(max_length=32)
    model_name: str = Field(max_length=64)
    model_version: str = Field(max_length=64)
    checkpoint_sha256: str = Field(max_length=64)
    demo_model: bool = False
    features: dict[str, Any] | None = _json_column()
    missing_features: list[str] | None = _json_column()
    timings: dict[str, float] | None = _json_column()
    sr_sop_instance_uid: str | None = Field(default=None, max_length=64)
    sr_series_instance_uid: str | None = Field(default=None, max_length=64)
    sr_path: str | None = None
    threshold: float | None = None
    """The checkpoint's decision threshold the label was decided at (None on rows made before it was kept)."""
    created_at: datetime = _created_column()
    image_stats: dict[str, Any] | None = _json_column()
    """Statistics of the volume the model read (``model.image_stats``), for image drift."""


class LinkState(enum.StrEnum):
    """How an outcome met its prediction: found by the rule, set by an admin, or not (with why)."""

    linked = "linked"
    manual = "manual"
    ambiguous = "ambiguous"
    unmatched = "unmatched"


class Outcome(SQLModel, table=True):
    """One mRECIST response assessment after TACE, as received (HL7 OBX or CSV row).

    Like a lab value it is never updated in place: a correction or a deletion
    supersedes the earlier row with the same ``outcome_key``; only the link columns
    change, when linking is recomputed or an admin resolves it.
    """

    __table_args__ = (sa.UniqueConstraint("source_kind", "source_id", name="uq_outcome_source"),)

    id: int | None = Field(default=None, primary_key=True)
    patient_id: str = Field(max_length=64)
    issuer_of_patient_id: str | None = Field(default=None, max_length=64)
    patient_hash: str = Field(max_length=32, index=True)
    tace_date: date | None = Field(default=None, sa_type=sa.Date())
    assessed_on: date = Field(sa_type=sa.Date())
    response: str | None = Field(
        default=None, max_length=2, description="CR, PR, SD or PD; None when deleted"
    )
    result_status: str = Field(default="F", max_length=1)
    source_kind: str = Field(max_length=8)
    source_id: str = Field(max_length=200)
    outcome_key: str = Field(max_length=300, index=True)
    message_id: int | None = Field(default=None, foreign_key="hl7message.id", index=True)
    received_at: datetime = _created_column()
    superseded_at: datetime | None = _utc_column()
    link_state: LinkState = Field(default=LinkState.unmatched, sa_type=_enum_type(LinkState), index=True)
    link_detail: str | None = None
    job_id: int | None = Field(default=None, foreign_key="job.id", index=True)
    linked_at: datetime | None = _utc_column()


def table(model: type[SQLModel]) -> sa.Table:
    """The Core table of a model, typed (SQLModel sets ``__table__`` only when the class is built)."""
    return cast(sa.Table, sa.inspect(model).local_table)


def insert_ignore(connection: sa.Connection, table: sa.Table, values: dict[str, Any]) -> bool:
    """INSERT unless a unique key already exists; True when a row was inserted."""
    from sqlalchemy.dialects import postgresql, sqlite

    dialect = postgresql if connection.dialect.name == "postgresql" else sqlite
    statement = (
        dialect.insert(table).values(**values).on_conflict_do_nothing().returning(sa.literal_column("1"))
    )
    return connection.execute(statement).first() is not None


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def make_engine(url: str, *, echo: bool = False) -> Engine:
    """An engine tuned for the backend: WAL and a busy timeout on SQLite, pre-ping on servers."""
    if url.startswith("sqlite"):
        db_path = url.split("///", 1)[1] if "///" in url else ""
        if db_path and db_path != ":memory:":
            Path(db_path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            url,
            echo=echo,
            connect_args={"check_same_thread": False, "timeout": 30},
        )
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
    return create_engine(
        url,
        echo=echo,
        pool_pre_ping=True,
        pool_size=5,
        max_overflow=10,
        connect_args={"connect_timeout": 5},
    )


def describe(engine: Engine) -> str:
    return engine.url.render_as_string(hide_password=True)


def check_database(engine: Engine) -> None:
    """Raise :class:`DatabaseUnavailable` with one readable line if the database is down."""
    try:
        with engine.connect() as connection:
            connection.execute(sa.text("SELECT 1"))
    except OperationalError as exc:
        reason = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
        raise DatabaseUnavailable(f"database {describe(engine)} is unreachable: {reason}") from None


@contextmanager
def session_scope(engine: Engine) -> Iterator[Session]:
    """A session that commits on success and rolls back on any exception."""
    with Session(engine, expire_on_commit=False) as session:
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise


metadata = SQLModel.metadata
