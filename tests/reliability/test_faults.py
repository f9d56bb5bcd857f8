"""Faults injected into real processes: nothing that was acknowledged may be lost.

Each test kills, stops or starves a real peer (the listener, Redis, PostgreSQL,
a worker, the PACS, the disk) and then checks the record: every instance that
got 0x0000 is on disk and in the database, every series completes once, every
job reaches one end, and the PACS holds one SR.
"""

from __future__ import annotations

import random
import subprocess
import threading
import time
from pathlib import Path

import pydicom
import pytest
import sqlalchemy as sa
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage

from tace.db import Instance, Job, Series, Study, make_engine
from tace.schema import upgrade_schema
from tests.support.gateway import Gateway
from tests.support.listener import ListenerProcess, send_datasets
from tests.support.processes import tace_command
from tests.support.services import RedisServer, wait_until

pytestmark = pytest.mark.slow


def _count(engine, table, **where) -> int:
    query = sa.select(sa.func.count()).select_from(table)
    for key, value in where.items():
        query = query.where(table.c[key] == value)
    with engine.connect() as connection:
        return int(connection.execute(query).scalar_one())


def _sender(port: int, datasets: list, acknowledged: set[str], lock: threading.Lock) -> None:
    ae = AE(ae_title="SENDER")
    ae.dimse_timeout = ae.network_timeout = ae.acse_timeout = 5
    ae.add_requested_context(CTImageStorage, datasets[0].file_meta.TransferSyntaxUID)
    try:
        assoc = ae.associate("127.0.0.1", port, ae_title="TACE")
    except OSError:
        return
    for ds in datasets:
        if not assoc.is_established:
            return
        status = assoc.send_c_store(ds)
        if status and "Status" in status and status.Status == 0:
            with lock:
                acknowledged.add(str(ds.SOPInstanceUID))
    if assoc.is_established:
        assoc.release()


def test_listener_killed_during_five_concurrent_associations_loses_nothing(
    ct_series, data_dir: Path, tmp_path: Path, postgres_url: str
) -> None:
    settings = {
        "database_url": postgres_url,
        "series_quiet_seconds": 120,
        "release_grace_seconds": 1,
        "min_free_bytes": 0,
        "min_slices": 8,
        "log_format": "json",
    }
    listener = ListenerProcess(data_dir, tmp_path / "listener.log", settings).start()
    series = [
        [
            pydicom.dcmread(p)
            for p in ct_series(slices=100, rows=64, columns=64, seed=40 + n, series_number=n + 1)
        ]
        for n in range(5)
    ]
    acknowledged: set[str] = set()
    lock = threading.Lock()
    senders = [threading.Thread(target=_sender, args=(listener.port, s, acknowledged, lock)) for s in series]
    for thread in senders:
        thread.start()
    time.sleep(random.Random(7).uniform(0.6, 1.6))
    listener.kill()
    for thread in senders:
        thread.join()
    assert 0 < len(acknowledged) < 500, len(acknowledged)

    restarted = ListenerProcess(data_dir, tmp_path / "listener-2.log", settings, port=listener.port).start()
    engine = restarted.engine
    table = Instance.__table__
    with engine.connect() as connection:
        stored = dict(connection.execute(sa.select(table.c.sop_instance_uid, table.c.path)).all())
    for uid in acknowledged:
        assert uid in stored, f"acknowledged instance {uid} lost"
        assert pydicom.dcmread(data_dir / stored[uid], stop_before_pixels=True).SOPInstanceUID == uid

    retries = [
        threading.Thread(
            target=lambda s=s: send_datasets(
                restarted.port, [d for d in s if str(d.SOPInstanceUID) not in acknowledged]
            )
        )
        for s in series
    ]
    for thread in retries:
        thread.start()
    for thread in retries:
        thread.join()
    wait_until(lambda: _count(engine, Series.__table__, state="complete") == 5, 30, what="five completions")
    assert _count(engine, Instance.__table__) == 500
    jobs = _count(engine, Job.__table__)
    assert jobs == 5 and _count(engine, Job.__table__, state="superseded") == 0
    assert list((data_dir / "staging").rglob("*.dcm")) == []
    restarted.close()


def test_redis_down_for_a_minute_while_series_complete(
    ct_series, gateway_factory, redis_server: RedisServer
) -> None:
    system: Gateway = gateway_factory(broker_url=redis_server.url, destinations="")
    system.start_listener()
    system.start_worker()
    redis_server.stop()
    outage_started = time.monotonic()
    for seed in range(3):
        files = ct_series(slices=10, rows=32, columns=32, seed=60 + seed, series_number=seed + 1)
        assert send_datasets(system.dicom_port, [pydicom.dcmread(p) for p in files])[-1].Status == 0
    wait_until(lambda: len(system.jobs()) == 3, 30, what="three jobs committed while Redis is down")
    time.sleep(max(0.0, 60 - (time.monotonic() - outage_started)))
    assert {str(j.state) for j in system.jobs()} == {"received"}, "nothing can be published without a broker"
    redis_server.start()
    # No destination is configured, so a finished job ends as predicted with nothing sent.
    wait_until(
        lambda: all(str(j.state) == "no_destination" for j in system.jobs()), 120, what="all jobs to finish"
    )
    for job in system.jobs():
        assert [state for state, _ in system.events(job.id)].count("no_destination") == 1


def test_postgresql_restarted_during_ingest(
    ct_series, data_dir: Path, tmp_path: Path, private_postgres
) -> None:
    engine = make_engine(private_postgres.url)
    upgrade_schema(engine)
    engine.dispose()
    settings = {
        "database_url": private_postgres.url,
        "series_quiet_seconds": 120,
        "min_free_bytes": 0,
        "log_format": "json",
    }
    listener = ListenerProcess(data_dir, tmp_path / "listener.log", settings).start()
    datasets = [pydicom.dcmread(p) for p in ct_series(slices=60, rows=64, columns=64, seed=77)]
    ae = AE(ae_title="SENDER")
    ae.add_requested_context(CTImageStorage, datasets[0].file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", listener.port, ae_title="TACE")
    statuses: dict[str, int] = {}
    for index, ds in enumerate(datasets):
        if index == 15:
            private_postgres.stop("fast")
        if index == 40:
            private_postgres.start()
        statuses[str(ds.SOPInstanceUID)] = int(assoc.send_c_store(ds).Status)
    assoc.release()
    refused = [uid for uid, status in statuses.items() if status == 0xA700]
    accepted = [uid for uid, status in statuses.items() if status == 0]
    assert len(refused) >= 20 and set(statuses.values()) <= {0, 0xA700}
    assert all(statuses[str(ds.SOPInstanceUID)] == 0 for ds in datasets[45:]), (
        "ingest resumes after the outage"
    )
    engine = listener.engine
    table = Instance.__table__
    with engine.connect() as connection:
        rows = dict(connection.execute(sa.select(table.c.sop_instance_uid, table.c.path)).all())
        (series,) = connection.execute(sa.select(Series.__table__)).all()
        studies = _count(engine, Study.__table__)
    assert set(rows) == set(accepted)
    assert series.instance_count == len(rows) and studies == 1
    for uid in refused:
        assert not list(data_dir.rglob(f"{uid}.dcm")), "a refused instance left a file behind"
    resent = send_datasets(listener.port, [ds for ds in datasets if str(ds.SOPInstanceUID) in refused])
    assert all(s.Status == 0 for s in resent)
    assert _count(engine, Instance.__table__) == 60
    listener.close()


def test_pacs_refusals_outage_and_worker_killed_during_send(
    ct_series, gateway_factory, scripted_pacs
) -> None:
    scripted_pacs.plan = [0xA700, 0xC000]
    system: Gateway = gateway_factory(destinations=scripted_pacs.destination, send_retry_max_seconds=1)
    system.start_listener()
    system.start_worker()
    files = ct_series(slices=10, rows=32, columns=32, seed=90)
    send_datasets(system.dicom_port, [pydicom.dcmread(p) for p in files])
    failed = system.wait_for_state("failed", timeout=120)
    assert (
        failed.error == f"send: {scripted_pacs.destination} refused: status 0xC000 (scripted refusal 0xC000)"
    )
    details = [detail or "" for _, detail in system.events(failed.id)]
    assert any(d.startswith("retrying in") and "status 0xA700" in d for d in details), details

    scripted_pacs.stop()
    replay = subprocess.run(
        tace_command("jobs", "replay", str(failed.id), "--from-stage", "send"),
        env=system.env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert replay.returncode == 0, replay.stderr
    wait_until(
        lambda: (system.job(failed.id).error or "").startswith("retrying"), 60, what="a retry while down"
    )
    assert "cannot connect" in system.job(failed.id).error or "not established" in system.job(failed.id).error
    scripted_pacs.delay_seconds = 6
    scripted_pacs.start()
    running = wait_until(
        lambda: next(
            (j for j in system.jobs() if str(j.state) == "running" and str(j.stage) == "send"), None
        ),
        60,
        interval=0.05,
        what="the send to start",
    )
    time.sleep(1)
    system.kill("worker")
    system.start_worker("rescuer")
    system.wait_for_state("sent", timeout=120, job_id=running.id)
    uids = {uid for uid, status in scripted_pacs.received if status == 0}
    assert len(uids) == 1 and len(scripted_pacs.stored) == 1, scripted_pacs.received


def test_disk_low_water_mark_refuses_before_the_disk_fills(ct_series, data_dir: Path, tmp_path: Path) -> None:
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(data_dir)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    try:
        listener = ListenerProcess(
            data_dir, tmp_path / "listener.log", {"min_free_bytes": 8 * 1024 * 1024, "log_format": "json"}
        ).start()
        datasets = [pydicom.dcmread(p) for p in ct_series(slices=60, rows=512, columns=512, seed=11)]
        statuses = send_datasets(listener.port, datasets)
        codes = [int(s.Status) for s in statuses]
        first_refusal = codes.index(0xA700)
        assert 10 < first_refusal and all(code == 0xA700 for code in codes[first_refusal:])
        assert {s.ErrorComment for s in statuses[first_refusal:]} == {"storage below free-space watermark"}
        free = subprocess.run(
            ["df", "--output=avail", "-B1", str(data_dir)], capture_output=True, text=True
        ).stdout.split()[-1]
        assert int(free) > 6 * 1024 * 1024, "the watermark kept the disk from filling"
        assert "No space left" not in listener.log.read_text()
        assert _count(listener.engine, Instance.__table__) == first_refusal
        listener.close()
    finally:
        subprocess.run(["umount", "-l", str(data_dir)], capture_output=True)
