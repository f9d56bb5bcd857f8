"""Outcome ORU^R01 over a real MLLP socket to `tace hl7`: stored, linked, or refused whole."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
import sqlalchemy as sa

from tace import phi
from tace.db import LabObservation, LinkState, Outcome
from tests.support.hl7_messages import oru
from tests.support.mllp import msa
from tests.support.outcomes import add_prediction

RESPONSE = "OBX|{n}|CWE|{code}^mRECIST response^L||{value}||||||F|||20260301"
ALBUMIN = "OBX|1|NM|1751-7^Albumin^LN||31|g/L|||||F|||20260114072000"


@pytest.fixture
def keyed(data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """This process hashes patients with the data dir's key, as the gateway's processes do."""
    monkeypatch.setattr(phi, "_hash_key", None)
    phi.load_hash_key(data_dir)


def test_outcome_oru_over_mllp_is_stored_with_the_labs_and_linked(start_hl7, keyed) -> None:
    listener = start_hl7(outcome_obx_code="RESP")
    job = add_prediction(
        listener.engine, patient_id="MRN4711", issuer="HOSP", study_date=dt.date(2026, 1, 2), probability=0.3
    )
    ack = listener.exchange(
        oru("MO1", [ALBUMIN, RESPONSE.format(n=2, code="RESP", value="PD^Progressive disease^L")])
    )
    assert msa(ack)[1:3] == ["AA", "MO1"], ack
    assert "stored 1 observation(s) and 1 outcome(s), 0 rejected" in ack
    with listener.engine.connect() as connection:
        (row,) = connection.execute(sa.select(Outcome.__table__)).all()
        labs = connection.execute(sa.select(sa.func.count()).select_from(LabObservation.__table__)).scalar()
    assert (row.response, row.assessed_on, row.link_state, row.job_id) == (
        "PD",
        dt.date(2026, 3, 1),
        LinkState.linked,
        job,
    )
    assert labs == 1


def test_a_bad_outcome_value_over_mllp_is_refused_and_nothing_is_stored(start_hl7) -> None:
    listener = start_hl7()
    message = oru("MO2", [ALBUMIN, RESPONSE.format(n=2, code="TACE-MRECIST", value="maybe")])
    ack = listener.exchange(message)
    fields = msa(ack)
    assert fields[1] == "AE"
    assert "OBX 2: mRECIST response 'maybe' is not CR, PR, SD or PD; nothing stored" in ack
    with listener.engine.connect() as connection:
        for model in (Outcome, LabObservation):
            assert connection.execute(sa.select(sa.func.count()).select_from(model.__table__)).scalar() == 0
