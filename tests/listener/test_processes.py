"""Several receiving processes on one port: they really serve, agree on patient hashes, and back off."""

from __future__ import annotations

import itertools
import json
from datetime import datetime
from pathlib import Path

import pydicom
import pytest
import sqlalchemy as sa

from tace import phi
from tace.db import Association, Series, SeriesAssociation, Study
from tests.support.listener import ListenerProcess, send_datasets
from tests.support.services import wait_until

pytestmark = [pytest.mark.slow]


def _events(log: Path, name: str) -> list[dict[str, object]]:
    found = []
    for line in log.read_text(errors="replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and record.get("event") == name:
            found.append(record)
    return found


def test_receivers_share_the_port_and_hash_patients_alike(
    ct_series, start_listener, data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 16 goal 1: every receiver but one died with EADDRINUSE, so one process served all."""
    listener = start_listener(listener_processes=2)
    wait_until(
        lambda: len(_events(listener.log, "listener.receiver_ready")) >= 2, 60, what="two receivers ready"
    )
    for n in range(12):
        (path,) = ct_series(slices=1, rows=32, columns=32, seed=500 + n, issuer_of_patient_id="HOSP")
        assert send_datasets(listener.port, [pydicom.dcmread(path)])[0].Status == 0

    link, association, study = SeriesAssociation.__table__, Association.__table__, Study.__table__
    series = Series.__table__
    query = sa.select(association.c.listener, study.c.study_instance_uid, study.c.patient_hash).select_from(
        link.join(association, link.c.association_id == association.c.id)
        .join(series, link.c.series_id == series.c.id)
        .join(study, series.c.study_id == study.c.id)
    )
    with listener.engine.connect() as connection:
        rows = connection.execute(query).all()
    assert len({r.study_instance_uid for r in rows}) == 12
    receivers = {r.listener for r in rows}
    assert len(receivers) >= 2, f"one process served every association: {receivers}"
    assert all(not r.endswith(f":{listener.pid}") for r in receivers), "the supervisor itself served"
    monkeypatch.setattr(phi, "_hash_key", None)
    phi.load_hash_key(data_dir)
    assert {r.patient_hash for r in rows} == {phi.patient_hash("SYN0001", "HOSP")}


def test_a_receiver_failing_at_start_is_reported_once_and_retried_with_backoff(
    data_dir: Path, tmp_path: Path
) -> None:
    """Issue 16 goal 1: a receiver dying at start was respawned at once, forever (53 deaths in 30 s)."""
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    listener = ListenerProcess(
        data_dir,
        tmp_path / "listener.log",
        {
            "listener_processes": 2,
            "dicom_tls_cert": garbage,
            "dicom_tls_key": garbage,
            "log_format": "json",
            "min_free_bytes": 0,
        },
    )
    listener.start(wait=False)

    def retries_by_slot() -> dict[object, list[dict[str, object]]]:
        found: dict[object, list[dict[str, object]]] = {}
        for record in _events(listener.log, "listener.receiver_retry"):
            found.setdefault(record["slot"], []).append(record)
        return found

    try:
        wait_until(
            lambda: len(retries_by_slot()) == 2 and all(len(r) >= 3 for r in retries_by_slot().values()),
            90,
            what="three failed starts in each of the two slots",
        )
        failures = _events(listener.log, "listener.receiver_failed")
        retries = _events(listener.log, "listener.receiver_retry")
    finally:
        listener.close()
    assert len(failures) == 1, "one report of the error, not one per death"
    assert "SSLError" in str(failures[0]["error"])
    assert failures[0]["level"] == "error"
    for records in retries_by_slot().values():
        delays = [float(str(r["retry_in"])) for r in records]
        assert delays[:3] == [1.0, 2.0, 4.0], delays
        times = [datetime.fromisoformat(str(r["timestamp"])) for r in records]
        for (earlier, later), delay in zip(itertools.pairwise(times), delays, strict=False):
            assert (later - earlier).total_seconds() >= delay, "restarted before its backoff was over"
    assert all(record["level"] != "error" for record in retries)
