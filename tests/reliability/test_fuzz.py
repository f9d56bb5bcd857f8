"""Fuzzing the two doors: the C-STORE handler and the HL7 intake, 10,000 cases each.

Mutations are seeded, so a failure reproduces. Every case must end in a status
(DIMSE) or an ACK (HL7); nothing may raise, hang, or lose what was accepted.
"""

from __future__ import annotations

import random
import signal
import uuid
from pathlib import Path

import pydicom
import pydicom.config
import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hl7_clinical.codes import CodeMap
from hl7_clinical.identity import IdentityRules
from hl7_clinical.intake import Hl7Intake, IntakePolicy
from listener.ingest import AssociationLedger, Ingestor
from model.schema import FeatureSchema
from tace.app.synthetic_ct import SeriesSpec, make_series
from tace.db import Hl7Message, Instance, make_engine
from tace.schema import upgrade_schema
from tace.storage import Storage, sha256_of
from tests.support.hl7_messages import CBC, COAGULATION, LIVER, oru

pytestmark = pytest.mark.slow

CASES = 10_000
KNOWN_STATUSES = {0x0000, 0xA700, 0xA900, 0xC000}


def _corpus(tmp_path: Path) -> list[bytes]:
    files = [
        pydicom.data.get_testdata_file(name, download=False)
        for name in (
            "CT_small.dcm",
            "MR_small.dcm",
            "MR_small_RLE.dcm",
            "JPEG2000.dcm",
            "MR_small_jp2klossless.dcm",
            "MR_small_jpeg_ls_lossless.dcm",
            "SC_rgb_rle.dcm",
            "rtplan.dcm",
            "image_dfl.dcm",
        )
    ]
    blobs = [Path(f).read_bytes() for f in files if f]
    for compression in ("none", "rle", "jpeg2000"):
        for ds in make_series(SeriesSpec(slices=2, rows=48, columns=48, compression=compression, seed=5)):
            path = tmp_path / f"{uuid.uuid4().hex}.dcm"
            ds.save_as(path, enforce_file_format=True)
            blobs.append(path.read_bytes())
    return blobs


def _mutate(rng: random.Random, data: bytes) -> bytes:
    buffer = bytearray(data)
    for _ in range(rng.randint(1, 3)):
        choice = rng.random()
        position = rng.randrange(len(buffer)) if buffer else 0
        if choice < 0.35:
            for _ in range(rng.randint(1, 16)):
                if buffer:
                    buffer[rng.randrange(len(buffer))] = rng.randrange(256)
        elif choice < 0.55:
            del buffer[position:]
        elif choice < 0.7:
            length = rng.randint(1, 512)
            buffer[position:position] = buffer[position : position + length]
        elif choice < 0.85:
            buffer[position:position] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 64)))
        else:
            buffer[position : position + 4] = rng.randrange(1 << 32).to_bytes(4, "little")
    return bytes(buffer)


class _Timeout(Exception):
    pass


def _alarm(signum, frame):
    raise _Timeout


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_cstore_handler_survives_ten_thousand_mutated_datasets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pydicom.config.settings, "reading_validation_mode", pydicom.config.IGNORE)
    root = tmp_path / "data"
    storage = Storage(root)
    storage.ensure()
    engine = make_engine(f"sqlite:///{root / 'tace.db'}")
    upgrade_schema(engine)
    ingestor = Ingestor(engine, storage, min_free_bytes=0)
    ledger = AssociationLedger(association_id=None, calling_ae="FUZZER")
    corpus = _corpus(tmp_path)
    originals = [
        pydicom.dcmread(pydicom.filebase.DicomBytesIO(blob), stop_before_pixels=True) for blob in corpus
    ]
    rng = random.Random(20261126)
    statuses: dict[int, int] = {}
    accepted: set[str] = set()
    previous = signal.signal(signal.SIGALRM, _alarm)
    try:
        for case in range(CASES):
            index = rng.randrange(len(corpus))
            meta = originals[index].file_meta
            staged = storage.staging_dir / f"fuzz-{case}.dcm"
            staged.write_bytes(_mutate(rng, corpus[index]))
            signal.alarm(10)
            try:
                outcome = ingestor.store(
                    staged,
                    sop_class_uid=str(meta.MediaStorageSOPClassUID),
                    sop_instance_uid=str(meta.MediaStorageSOPInstanceUID),
                    ledger=ledger,
                )
            except _Timeout:
                pytest.fail(f"case {case} hung")
            finally:
                signal.alarm(0)
            assert outcome.status in KNOWN_STATUSES, (case, hex(outcome.status), outcome.comment)
            statuses[outcome.status] = statuses.get(outcome.status, 0) + 1
            if outcome.stored:
                accepted.add(str(meta.MediaStorageSOPInstanceUID))
            assert not staged.exists(), "the staging file must always be cleaned up"
    finally:
        signal.signal(signal.SIGALRM, previous)
    assert statuses.get(0x0000, 0) > 500 and statuses.get(0xC000, 0) > 500, statuses
    table = Instance.__table__
    with engine.connect() as connection:
        rows = connection.execute(sa.select(table.c.sop_instance_uid, table.c.path, table.c.sha256)).all()
    assert {row.sop_instance_uid for row in rows} == accepted
    for row in rows:
        assert sha256_of(root / row.path) == row.sha256, "the row must describe the bytes on disk"
    engine.dispose()


MESSAGES = [
    oru("F0001", CBC),
    oru("F0002", LIVER),
    oru("F0003", COAGULATION),
    oru("F0004", CBC[:2], version="2.3"),
    oru("F0005", LIVER[:3], charset="UNICODE UTF-8"),
]


@st.composite
def hl7_inputs(draw: st.DrawFn) -> bytes:
    base = bytearray(draw(st.sampled_from(MESSAGES)).encode())
    for _ in range(draw(st.integers(0, 4))):
        kind = draw(st.integers(0, 5))
        position = draw(st.integers(0, max(len(base) - 1, 0)))
        if kind == 0 and base:
            base[position] = draw(st.integers(0, 255))
        elif kind == 1:
            del base[position : position + draw(st.integers(1, 40))]
        elif kind == 2:
            base[position:position] = draw(st.binary(min_size=1, max_size=40))
        elif kind == 3:
            base[position:position] = draw(
                st.sampled_from([b"|", b"^", b"~", b"\\", b"&", b"\r", b"\rOBX|", b"\x00"])
            )
        elif kind == 4:
            del base[position:]
        else:
            base[position:position] = draw(st.text(max_size=20)).encode("utf-8", "surrogatepass")
    return bytes(base)


@pytest.fixture(scope="module")
def intake(tmp_path_factory: pytest.TempPathFactory) -> Hl7Intake:
    root = tmp_path_factory.mktemp("hl7fuzz")
    engine = make_engine(f"sqlite:///{root / 'tace.db'}")
    upgrade_schema(engine)
    definitions = FeatureSchema.load().by_name()
    return Hl7Intake(
        engine, CodeMap.load(definitions), definitions, IntakePolicy(IdentityRules(default_issuer="HOSP"))
    )


@settings(
    max_examples=CASES,
    deadline=None,
    database=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(raw=hl7_inputs())
def test_hl7_intake_acknowledges_ten_thousand_mutated_messages(intake: Hl7Intake, raw: bytes) -> None:
    ack, result = intake.handle(raw)
    assert ack.to_bytes()
    separator = ack.text[3]
    segments = ack.text.split("\r")
    assert segments[0].startswith("MSH") and segments[0].count(separator) >= 11
    msa = next(s for s in segments if s.startswith("MSA" + separator)).split(separator)
    assert msa[1] in ("AA", "AE", "AR")
    assert result.code == msa[1]
    if result.message_id is not None:
        with intake._engine.connect() as connection:
            stored = connection.execute(
                sa.select(Hl7Message.__table__.c.raw).where(Hl7Message.__table__.c.id == result.message_id)
            ).scalar_one()
        assert stored == raw or result.duplicate
