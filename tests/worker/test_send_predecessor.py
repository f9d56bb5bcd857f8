"""A study's earlier SR that reached the PACS only after its successor was queued is still withdrawn."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from pynetdicom import AE, evt
from pynetdicom.sop_class import Comprehensive3DSRStorage, KeyObjectSelectionDocumentStorage
from sqlalchemy.engine import Engine
from sqlmodel import select

from listener.completion import CompletionPolicy, scan
from listener.eligibility import EligibilityRules
from listener.study import StudyPolicy
from tace.app.synthetic_ct import liver_study
from tace.contract import ContractSource
from tace.db import Delivery, DeliveryKind, DeliveryState, Job, Prediction, session_scope, utcnow
from tace.jobs import create_study_job
from tace.settings import Destination
from tace.storage import Storage
from tests.support.ingest import ingest_files
from worker.context import WorkerContext
from worker.infer import run_infer
from worker.send import run_send, store_sr


@pytest.fixture
def pacs() -> Iterator[tuple[int, list[pydicom.Dataset]]]:
    """A PACS that keeps every object it is sent."""
    received: list[pydicom.Dataset] = []

    def store(event: evt.Event) -> int:
        received.append(event.dataset)
        return 0x0000

    ae = AE(ae_title="PACS")
    ae.add_supported_context(Comprehensive3DSRStorage)
    ae.add_supported_context(KeyObjectSelectionDocumentStorage)
    server = ae.start_server(("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_STORE, store)])
    yield server.socket.getsockname()[1], received
    server.shutdown()


def test_an_sr_delivered_after_its_successor_was_queued_is_named_and_withdrawn(
    make_settings, sqlite_engine: Engine, demo_checkpoint: Path, pacs, tmp_path: Path
) -> None:
    port, received = pacs
    settings = make_settings(
        model_checkpoint=demo_checkpoint,
        device="cpu",
        broker_url="memory://",
        required_features=[],
        destinations=[f"PACS@127.0.0.1:{port}"],
    )
    storage = Storage(settings.data_dir)
    storage.ensure()
    study = liver_study("siemens", tmp_path / "s", size=16, dose_report=False, phases=("portal_venous",))
    ingest_files(sqlite_engine, storage, [p for s in study.values() for p in s.paths])
    policy = CompletionPolicy(
        0.0, 0.0, EligibilityRules(min_slices=8), StudyPolicy(ContractSource(demo_checkpoint))
    )
    scan(sqlite_engine, policy)
    ctx = WorkerContext(settings, sqlite_engine)
    with session_scope(sqlite_engine) as session:
        (first,) = session.exec(select(Job)).all()
    assert first.id is not None and first.study_id is not None
    assert run_infer(ctx, first.id) == "predicted"

    # The study changes while the first job's send is under way: its successor finds no delivered SR.
    with session_scope(sqlite_engine) as session:
        second = create_study_job(
            session,
            study_id=first.study_id,
            series_id=first.series_id,
            generation=2,
            selection=first.selection or {},
            detail="study changed",
        )
        assert second.predecessor_job_id is None
        second_id = second.id
        old = session.exec(select(Prediction).where(Prediction.job_id == first.id)).one()
    assert second_id is not None and old.sr_path is not None
    # ... and that send then completes: the first SR is in the PACS.
    destination = Destination.parse(f"PACS@127.0.0.1:{port}")
    assert store_sr(settings, destination, storage.resolve(old.sr_path)).delivered
    with session_scope(sqlite_engine) as session:
        session.add(
            Delivery(
                job_id=first.id,
                destination=str(destination),
                kind=DeliveryKind.sr,
                sop_instance_uid=old.sr_sop_instance_uid or "",
                state=DeliveryState.delivered,
                delivered_at=utcnow(),
            )
        )

    assert run_infer(ctx, second_id) == "predicted"
    assert run_send(ctx, second_id) == "sent"

    with session_scope(sqlite_engine) as session:
        job = session.get(Job, second_id)
        assert job is not None and job.predecessor_job_id == first.id
    first_sr, new_sr, note = received
    assert (
        new_sr.PredecessorDocumentsSequence[0]
        .ReferencedSeriesSequence[0]
        .ReferencedSOPSequence[0]
        .ReferencedSOPInstanceUID
        == first_sr.SOPInstanceUID
    )
    assert note.SOPClassUID == KeyObjectSelectionDocumentStorage
    withdrawn = note.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]
    assert withdrawn.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == first_sr.SOPInstanceUID
