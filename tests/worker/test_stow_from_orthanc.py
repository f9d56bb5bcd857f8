"""Orthanc's DICOMweb plugin sends a CT series to `tace stow`: it completes and gets a job, as by C-STORE."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pydicom
import pytest
import sqlalchemy as sa

from tace.db import Instance, Series
from tests.support.gateway import Gateway
from tests.support.orthanc import Orthanc
from tests.support.services import free_port
from tests.support.stow import TOKEN

pytestmark = pytest.mark.slow


def test_a_series_stowed_by_orthanc_is_stored_completed_and_gets_a_job(
    gateway: Callable[..., Gateway], ct_series: Callable[..., list[Path]], tmp_path: Path, data_dir: Path
) -> None:
    port = free_port()
    sender = Orthanc(
        tmp_path / "orthanc-sender",
        dicomweb_servers={
            "tace": {
                "Url": f"http://127.0.0.1:{port}/dicomweb/",
                "HttpHeaders": {"Authorization": f"Bearer {TOKEN}"},
            }
        },
    ).start()
    try:
        files = ct_series(slices=12, rows=64, columns=64)
        series_ids = {sender.upload(f)["ParentSeries"] for f in files}
        system = gateway(stow_port=port, stow_token=TOKEN, series_quiet_seconds=2)
        system.start_listener()
        system.start("stow", "stow", port=port)
        sender.stow("tace", sorted(series_ids))
        job = system.wait_for_state("queued", timeout=60)
    finally:
        sender.stop()
    first = pydicom.dcmread(files[0], stop_before_pixels=True)
    with system.engine.connect() as connection:
        instances = connection.execute(sa.select(Instance.__table__)).all()
        series = connection.execute(sa.select(Series.__table__)).one()
    assert {row.sop_instance_uid for row in instances} == {
        str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files
    }
    by_uid = {row.sop_instance_uid: row for row in instances}
    for sent in files:
        uid = str(pydicom.dcmread(sent, stop_before_pixels=True).SOPInstanceUID)
        assert (data_dir / by_uid[uid].path).read_bytes() == sent.read_bytes()
    assert series.series_instance_uid == str(first.SeriesInstanceUID)
    assert job.series_id == series.id
