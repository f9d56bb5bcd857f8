"""The listener against real senders: DCMTK storescu and pynetdicom, over real sockets."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pydicom
import pytest
import redis
import sqlalchemy as sa
from pynetdicom import AE, _config
from pynetdicom.sop_class import CTImageStorage, Verification

from tace import phi
from tace.db import Association, Instance, Job, JobState, Series, SeriesState, Study
from tests.support.listener import ListenerProcess, send_datasets, storescu
from tests.support.services import RedisServer, wait_until

pytestmark = [pytest.mark.slow]


def _dataset_bytes(path: Path) -> bytes:
    """The encoded dataset after the file meta group: what travelled over the wire."""
    raw = path.read_bytes()
    assert raw[128:132] == b"DICM"
    group_length = int.from_bytes(raw[140:144], "little")
    return raw[144 + group_length :]


def _rows(listener: ListenerProcess, model: type, **where: object) -> list[sa.Row]:
    table = model.__table__
    query = sa.select(table)
    for key, value in where.items():
        query = query.where(table.c[key] == value)
    with listener.engine.connect() as connection:
        return list(connection.execute(query).all())


def _series_state(listener: ListenerProcess, uid: str) -> str | None:
    rows = _rows(listener, Series, series_instance_uid=uid)
    return str(rows[0].state) if rows else None


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_storescu_series_lands_byte_exact_completes_and_queues_one_job_in_redis(
    dcmtk: None,
    ct_series,
    start_listener,
    redis_server: RedisServer,
    database: str,
    request: pytest.FixtureRequest,
) -> None:
    files = ct_series(slices=100, shuffle_instance_numbers=True)
    # A quiet timeout far beyond the wait: only the release grace (1 s) can complete it.
    settings: dict[str, object] = {"broker_url": redis_server.url, "series_quiet_seconds": 600}
    if database == "postgresql":
        settings["database_url"] = request.getfixturevalue("postgres_url")
    listener = start_listener(**settings)
    sent = storescu(listener.port, files)
    assert sent.returncode == 0, sent.stderr

    series_uid = str(pydicom.dcmread(files[0], stop_before_pixels=True).SeriesInstanceUID)
    wait_until(
        lambda: _series_state(listener, series_uid) == "complete", 120, what="completion by the release grace"
    )

    rows = _rows(listener, Instance)
    assert len(rows) == 100
    for source in files:
        ds = pydicom.dcmread(source, stop_before_pixels=True)
        stored = (
            listener.data_dir
            / "dicom"
            / ds.StudyInstanceUID
            / ds.SeriesInstanceUID
            / f"{ds.SOPInstanceUID}.dcm"
        )
        assert _dataset_bytes(stored) == _dataset_bytes(source)
    (series,) = _rows(listener, Series)
    assert (series.instance_count, series.generation) == (100, 1)
    (job,) = _rows(listener, Job)
    client = redis.Redis.from_url(redis_server.url)
    wait_until(lambda: client.llen("infer") == 1, 10, what="the job message in Redis")
    message = json.loads(client.lindex("infer", 0))
    assert message["headers"]["task"] == "tace.infer"
    assert message["headers"]["argsrepr"] == f"[{job.id}]"
    wait_until(
        lambda: str(_rows(listener, Job)[0].state) == JobState.queued, 10, what="the job marked published"
    )
    (association,) = _rows(listener, Association)
    assert (association.outcome, association.instances_stored, association.calling_ae) == (
        "released",
        100,
        "STORESCU",
    )


def test_two_series_over_one_association_and_one_series_over_two(ct_series, start_listener) -> None:
    listener = start_listener()
    first = [pydicom.dcmread(p) for p in ct_series(slices=16, rows=64, columns=64, seed=1)]
    second = [pydicom.dcmread(p) for p in ct_series(slices=16, rows=64, columns=64, seed=2, series_number=4)]
    statuses = send_datasets(listener.port, first + second)
    assert all(s is not None and s.Status == 0 for s in statuses)

    split = [pydicom.dcmread(p) for p in ct_series(slices=20, rows=64, columns=64, seed=3)]
    ae = AE(ae_title="PYSCU")
    ae.add_requested_context(CTImageStorage, split[0].file_meta.TransferSyntaxUID)
    held = ae.associate("127.0.0.1", listener.port, ae_title="TACE")
    assert all(held.send_c_store(ds).Status == 0 for ds in split[:10])
    assert send_datasets(listener.port, split[10:])[-1].Status == 0

    uids = [first[0].SeriesInstanceUID, second[0].SeriesInstanceUID, split[0].SeriesInstanceUID]
    wait_until(
        lambda: _series_state(listener, uids[0]) == "complete" == _series_state(listener, uids[1]),
        15,
        what="both series of the shared association",
    )
    time.sleep(2.5)
    assert _series_state(listener, uids[2]) == "receiving", (
        "completed while an association carrying it is open"
    )
    held.release()
    wait_until(lambda: _series_state(listener, uids[2]) == "complete", 15, what="the split series")
    jobs = _rows(listener, Job)
    assert len(jobs) == 3
    (split_series,) = _rows(listener, Series, series_instance_uid=uids[2])
    assert split_series.instance_count == 20


@pytest.mark.parametrize(("compression", "propose"), [("jpeg2000", "-xv"), ("rle", "-xr"), ("jpegls", "-xt")])
def test_compressed_series_is_accepted_and_decodes(
    dcmtk: None, ct_series, start_listener, compression: str, propose: str
) -> None:
    from worker.volume import read_volume

    files = ct_series(slices=16, rows=64, columns=64, compression=compression)
    listener = start_listener()
    sent = storescu(listener.port, files, extra=[propose])
    assert sent.returncode == 0, sent.stderr
    rows = _rows(listener, Instance)
    assert len(rows) == 16
    assert {r.transfer_syntax_uid for r in rows} == {
        str(pydicom.dcmread(files[0]).file_meta.TransferSyntaxUID)
    }
    volume = read_volume([listener.data_dir / r.path for r in rows])
    assert volume.hu.shape == (16, 64, 64)


def test_disallowed_calling_ae_and_peer_network_get_proper_rejections(start_listener) -> None:
    listener = start_listener(allowed_calling_aets="CT1,CT2")
    ae = AE(ae_title="INTRUDER")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", listener.port, ae_title="TACE")
    assert assoc.is_rejected
    rejection = assoc.acceptor.primitive
    assert (rejection.result, rejection.result_source, rejection.diagnostic) == (0x01, 0x01, 0x03)
    allowed = AE(ae_title="CT1")
    allowed.add_requested_context(Verification)
    ok = allowed.associate("127.0.0.1", listener.port, ae_title="TACE")
    assert ok.is_established and ok.send_c_echo().Status == 0
    ok.release()
    wrong_called = allowed.associate("127.0.0.1", listener.port, ae_title="NOTTACE")
    assert wrong_called.is_rejected and wrong_called.acceptor.primitive.diagnostic == 0x07
    listener.stop()

    fenced = start_listener(allowed_peer_networks="10.0.0.0/8")
    outside = AE(ae_title="CT1")
    outside.add_requested_context(Verification)
    refused = outside.associate("127.0.0.1", fenced.port, ae_title="TACE")
    assert refused.is_rejected
    assert (refused.acceptor.primitive.result, refused.acceptor.primitive.diagnostic) == (0x01, 0x01)
    wait_until(
        lambda: len(_rows(fenced, Association, outcome="rejected")) == 3, 10, what="the refusal at accept"
    )
    reasons = sorted(r.reason for r in _rows(fenced, Association, outcome="rejected"))
    assert reasons == [
        "called AE title 'NOTTACE' is not 'TACE'",
        "calling AE title 'INTRUDER' is not allowed",
        "peer 127.0.0.1 is not in the allowed networks",
    ]


def _raw_sender_config():
    class Raw:
        def __enter__(self):
            self.before = _config.STORE_SEND_CHUNKED_DATASET
            _config.STORE_SEND_CHUNKED_DATASET = True

        def __exit__(self, *exc):
            _config.STORE_SEND_CHUNKED_DATASET = self.before

    return Raw()


@pytest.mark.filterwarnings("ignore:Expected explicit VR:UserWarning")
def test_garbage_and_truncated_datasets_get_c000_and_the_next_association_is_served(
    ct_series, start_listener, tmp_path: Path
) -> None:
    listener = start_listener()
    good, second, third = ct_series(slices=3, rows=64, columns=64)
    truncated = tmp_path / "truncated.dcm"
    truncated.write_bytes(good.read_bytes()[:-3000])
    garbage = tmp_path / "garbage.dcm"
    head = second.read_bytes()
    meta_end = 132 + 12 + int(pydicom.dcmread(second).file_meta.FileMetaInformationGroupLength)
    garbage.write_bytes(head[:meta_end] + bytes(range(256)) * 40)
    with _raw_sender_config():
        statuses = send_datasets(listener.port, [truncated, garbage, third])
    assert statuses[0].Status & 0xF000 == 0xC000 and "truncated" in statuses[0].ErrorComment
    assert statuses[1].Status & 0xF000 == 0xC000 and statuses[1].ErrorComment
    assert statuses[2].Status == 0
    assert send_datasets(listener.port, [pydicom.dcmread(good)])[0].Status == 0
    assert sorted(r.sop_instance_uid for r in _rows(listener, Instance)) == sorted(
        str(pydicom.dcmread(p).SOPInstanceUID) for p in (good, third)
    )


def test_instance_uid_disagreeing_with_the_command_is_refused(ct_series, start_listener) -> None:
    from pydicom.uid import generate_uid
    from pynetdicom.dimse_primitives import C_STORE

    listener = start_listener()
    (path,) = ct_series(slices=1, rows=32, columns=32)
    ds = pydicom.dcmread(path)
    ae = AE(ae_title="PYSCU")
    ae.add_requested_context(CTImageStorage, ds.file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", listener.port, ae_title="TACE")
    original = C_STORE.AffectedSOPInstanceUID.fset

    def lie(self, value):
        original(self, generate_uid() if value == ds.SOPInstanceUID else value)

    try:
        C_STORE.AffectedSOPInstanceUID = property(C_STORE.AffectedSOPInstanceUID.fget, lie)
        status = assoc.send_c_store(ds)
    finally:
        C_STORE.AffectedSOPInstanceUID = property(C_STORE.AffectedSOPInstanceUID.fget, original)
        assoc.release()
    assert status.Status == 0xC000
    assert status.ErrorComment == "SOPInstanceUID differs from the C-STORE request"
    assert _rows(listener, Instance) == []


def test_repeated_instance_is_idempotent_and_changed_bytes_replace(ct_series, start_listener) -> None:
    listener = start_listener()
    (path,) = ct_series(slices=1, rows=32, columns=32)
    ds = pydicom.dcmread(path)
    assert [s.Status for s in send_datasets(listener.port, [ds, ds])] == [0, 0]
    (row,) = _rows(listener, Instance)
    ds.WindowCenter = "40"
    assert send_datasets(listener.port, [ds])[0].Status == 0
    (replaced,) = _rows(listener, Instance)
    assert replaced.id == row.id and replaced.sha256 != row.sha256
    assert pydicom.dcmread(listener.data_dir / replaced.path).WindowCenter == 40
    (series,) = _rows(listener, Series)
    assert series.instance_count == 1


def test_non_ct_objects_are_accepted_counted_and_not_kept(start_listener) -> None:
    listener = start_listener()
    mr = pydicom.dcmread(pydicom.data.get_testdata_file("MR_small.dcm", download=False))
    assert send_datasets(listener.port, [mr])[0].Status == 0
    assert _rows(listener, Instance) == []
    assert not (listener.data_dir / "dicom").exists() or not any((listener.data_dir / "dicom").iterdir())
    wait_until(lambda: _rows(listener, Association, outcome="released"), 10, what="association row")
    (association,) = _rows(listener, Association)
    assert association.discarded_by_class == {str(mr.SOPClassUID): 1}
    assert association.instances_discarded == 1


def test_low_disk_watermark_refuses_with_a700(ct_series, start_listener) -> None:
    listener = start_listener(min_free_bytes=10**18)
    (path,) = ct_series(slices=1, rows=32, columns=32)
    (status,) = send_datasets(listener.port, [pydicom.dcmread(path)])
    assert status.Status == 0xA700 and status.ErrorComment == "storage below free-space watermark"
    assert _rows(listener, Instance) == []


def test_read_only_storage_gives_a700_and_records_nothing(ct_series, start_listener, data_dir: Path) -> None:
    import subprocess

    dicom = data_dir / "dicom"
    dicom.mkdir(parents=True, exist_ok=True)
    if subprocess.run(["mount", "--bind", str(dicom), str(dicom)], capture_output=True).returncode != 0:
        pytest.skip("cannot bind-mount here (needs root)")
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(dicom)], check=True, capture_output=True)
        listener = start_listener()
        (path,) = ct_series(slices=1, rows=32, columns=32)
        (status,) = send_datasets(listener.port, [pydicom.dcmread(path)])
        assert status.Status == 0xA700 and "Read-only file system" in status.ErrorComment
        assert _rows(listener, Instance) == [] and _rows(listener, Series) == []
        assert list(dicom.iterdir()) == []
    finally:
        subprocess.run(["umount", str(dicom)], capture_output=True)


def test_ineligible_series_is_recorded_with_its_reason_and_gets_no_job(ct_series, start_listener) -> None:
    listener = start_listener(series_description_pattern="ARTERIAL|PORTAL")
    scout = [
        pydicom.dcmread(p)
        for p in ct_series(
            slices=2, rows=32, columns=32, seed=4, image_type=("ORIGINAL", "PRIMARY", "LOCALIZER")
        )
    ]
    short = [pydicom.dcmread(p) for p in ct_series(slices=5, rows=32, columns=32, seed=5)]
    venous = [
        pydicom.dcmread(p)
        for p in ct_series(slices=16, rows=32, columns=32, seed=6, series_description="VENOUS 5mm")
    ]
    assert all(s.Status == 0 for s in send_datasets(listener.port, scout + short + venous))
    uids = [s[0].SeriesInstanceUID for s in (scout, short, venous)]
    wait_until(lambda: all(_series_state(listener, u) == "ineligible" for u in uids), 15, what="ineligible")
    reasons = {r.series_instance_uid: r.ineligible_reason for r in _rows(listener, Series)}
    assert (
        reasons[uids[0]] == "series description 'ABD ARTERIAL 2.5mm' does not match 'ARTERIAL|PORTAL'"
        or reasons[uids[0]] == "localizer (scout) series"
    )
    assert reasons[uids[1]] == "5 axial ORIGINAL/PRIMARY slice(s), 16 needed"
    assert reasons[uids[2]] == "series description 'VENOUS 5mm' does not match 'ARTERIAL|PORTAL'"
    assert _rows(listener, Job) == []


def test_late_instance_reopens_and_the_next_job_supersedes(ct_series, start_listener) -> None:
    listener = start_listener()
    datasets = [pydicom.dcmread(p) for p in ct_series(slices=17, rows=32, columns=32, seed=8)]
    assert all(s.Status == 0 for s in send_datasets(listener.port, datasets[:16]))
    uid = datasets[0].SeriesInstanceUID
    wait_until(lambda: _series_state(listener, uid) == "complete", 15, what="first completion")
    assert send_datasets(listener.port, datasets[16:])[0].Status == 0
    wait_until(lambda: len(_rows(listener, Job)) == 2, 15, what="the second job")
    first, second = sorted(_rows(listener, Job), key=lambda j: j.id)
    assert (first.state, first.superseded_by_id) == (JobState.superseded, second.id)
    assert second.generation == 2
    (series,) = _rows(listener, Series)
    assert (series.state, series.instance_count) == (SeriesState.complete, 17)


def test_kill_9_mid_transfer_loses_no_acknowledged_instance(ct_series, start_listener) -> None:
    listener = start_listener()
    datasets = [pydicom.dcmread(p) for p in ct_series(slices=60, rows=128, columns=128, seed=9)]
    acknowledged: list[str] = []
    ae = AE(ae_title="PYSCU")
    ae.dimse_timeout = ae.network_timeout = 3
    ae.add_requested_context(CTImageStorage, datasets[0].file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", listener.port, ae_title="TACE")
    killer = threading.Thread(target=lambda: None)
    for index, ds in enumerate(datasets):
        if index == 25:
            killer = threading.Thread(target=listener.kill)
            killer.start()
        status = assoc.send_c_store(ds) if assoc.is_established else None
        if status is not None and "Status" in status and status.Status == 0:
            acknowledged.append(str(ds.SOPInstanceUID))
    killer.join()
    assert 25 <= len(acknowledged) < 60

    restarted = start_listener(series_quiet_seconds=30)
    stored = {r.sop_instance_uid: r for r in _rows(restarted, Instance)}
    for uid in acknowledged:
        row = stored[uid]
        assert (restarted.data_dir / row.path).is_file()
        assert pydicom.dcmread(restarted.data_dir / row.path).SOPInstanceUID == uid
    remaining = [ds for ds in datasets if str(ds.SOPInstanceUID) not in stored]
    assert all(s.Status == 0 for s in send_datasets(restarted.port, remaining))
    uid = datasets[0].SeriesInstanceUID
    wait_until(lambda: _series_state(restarted, uid) == "complete", 20, what="completion after restart")
    assert len(_rows(restarted, Job)) == 1
    assert len(_rows(restarted, Instance)) == 60
    leftovers = list((restarted.data_dir / "staging").rglob("*.dcm"))
    assert leftovers == []


def test_the_listener_process_never_loads_torch(start_listener) -> None:
    listener = start_listener()
    maps = Path(f"/proc/{listener.pid}/maps").read_text()
    assert "libtorch" not in maps and "torch" not in maps


def test_parallel_senders_from_the_first_moment_all_succeed(dcmtk: None, ct_series, start_listener) -> None:
    """Three storescu at once on a fresh listener: per-process set-up must be safe under concurrency."""
    import subprocess

    listener = start_listener()
    folders = [ct_series(slices=20, rows=64, columns=64, seed=300 + n, series_number=n + 1) for n in range(3)]
    senders = [
        subprocess.Popen(
            ["/usr/bin/storescu", "-aec", "TACE", "127.0.0.1", str(listener.port), *map(str, files)],
            env={"TCP_NODELAY": "1", "PATH": "/usr/bin:/bin"},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        for files in folders
    ]
    outputs = [sender.communicate(timeout=120)[0] for sender in senders]
    assert [sender.returncode for sender in senders] == [0, 0, 0], outputs
    assert len(_rows(listener, Instance)) == 60


def test_a_spawned_receiver_hashes_patients_with_the_parents_key(
    dcmtk: None, ct_series, start_listener, data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Receivers are spawned: they must load the installation's hash key like any other process."""
    files = ct_series(slices=4, rows=32, columns=32, patient_id="SYN0001", issuer_of_patient_id="HOSP")
    listener = start_listener(listener_processes=2)
    sent = storescu(listener.port, files)
    assert sent.returncode == 0, sent.stderr

    receivers = {row.listener for row in _rows(listener, Association)}
    assert receivers and all(not r.endswith(f":{listener.pid}") for r in receivers), "a child served"
    monkeypatch.setattr(phi, "_hash_key", None)
    phi.load_hash_key(data_dir)
    (study,) = _rows(listener, Study)
    assert study.patient_hash == phi.patient_hash("SYN0001", "HOSP")


def test_an_instance_uid_already_in_another_series_is_refused_and_the_first_series_kept(
    ct_series, start_listener
) -> None:
    """Issue 15 item 8: the row moved to the second series and the first series' job failed with a gap."""
    listener = start_listener()
    first_files = ct_series(slices=16, rows=32, columns=32, seed=21)
    first = [pydicom.dcmread(p) for p in first_files]
    assert all(s.Status == 0 for s in send_datasets(listener.port, first))
    (other,) = ct_series(slices=1, rows=32, columns=32, seed=21, series_number=9)
    intruder = pydicom.dcmread(other)
    assert intruder.StudyInstanceUID == first[0].StudyInstanceUID
    assert intruder.SeriesInstanceUID != first[0].SeriesInstanceUID
    intruder.SOPInstanceUID = intruder.file_meta.MediaStorageSOPInstanceUID = first[3].SOPInstanceUID
    (status,) = send_datasets(listener.port, [intruder])
    assert status.Status == 0xC000
    assert status.ErrorComment == "SOP Instance UID already stored in another series"

    uid = str(first[0].SeriesInstanceUID)
    wait_until(lambda: _series_state(listener, uid) == "complete", 15, what="the first series to complete")
    (series,) = _rows(listener, Series)
    assert (series.series_instance_uid, series.instance_count) == (uid, 16)
    rows = _rows(listener, Instance)
    assert len(rows) == 16 and {r.series_id for r in rows} == {series.id}
    kept = _rows(listener, Instance, sop_instance_uid=str(first[3].SOPInstanceUID))[0]
    assert _dataset_bytes(listener.data_dir / kept.path) == _dataset_bytes(first_files[3])
    assert not (listener.data_dir / "dicom" / first[0].StudyInstanceUID / intruder.SeriesInstanceUID).exists()
    assert len(_rows(listener, Job)) == 1
