"""Files put through the listener's durable ingest in-process, as one association would."""

from __future__ import annotations

import shutil
from pathlib import Path

import pydicom
from sqlalchemy.engine import Engine

from listener.ingest import AssociationLedger, Ingestor
from tace.storage import Storage


def ingest_files(engine: Engine, storage: Storage, paths: list[Path]) -> None:
    ingestor = Ingestor(engine, storage, min_free_bytes=0)
    ledger = AssociationLedger(association_id=None, calling_ae="TEST")
    for path in paths:
        staged = storage.staging_dir / path.name
        shutil.copy(path, staged)
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        assert ingestor.store(
            staged, sop_class_uid=ds.SOPClassUID, sop_instance_uid=ds.SOPInstanceUID, ledger=ledger
        ).ok
    ledger.close()
