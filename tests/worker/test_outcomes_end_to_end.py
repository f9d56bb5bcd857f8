"""Closing the loop with real peers: CT (DCMTK storescu) and labs (MLLP) in, SRs out to Orthanc,
outcomes back over MLLP and from CSV, then `tace model performance`, `tace cohort export` and
`tace evaluate` on the gateway's own cases.

The AUC is recomputed here by hand (every disease-control/progression pair counted,
ties half) from the stored predictions and the outcome labels, so a wrong join, a
flipped class or a lost outcome shows as a different number.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa

from tace.app.synthetic_ct import liver_study
from tace.db import Job, Prediction, Series, Study
from tests.support.gateway import Gateway
from tests.support.hl7_messages import oru
from tests.support.listener import storescu
from tests.support.mllp import msa
from tests.support.services import wait_until

pytestmark = pytest.mark.slow

RESPONSES = {
    "MRN7001": "PD",
    "MRN7002": "SD",
    "MRN7003": "PD",
    "MRN7004": "PR",
    "MRN7005": "CR",
    "MRN7006": "PD",
}
OVER_MLLP = ("MRN7001", "MRN7002", "MRN7003")
"""The other three patients' outcomes come from a CSV export."""
OUTCOME_OBX = "OBX|1|CWE|TACE-MRECIST^mRECIST response^L||{value}^{value}^L||||||F|||20260301"


def _mllp(gateway: Gateway, message: str) -> str:
    with socket.create_connection(("127.0.0.1", gateway.hl7_port), timeout=10) as sock:
        sock.sendall(b"\x0b" + message.encode() + b"\x1c\r")
        data = b""
        while not data.endswith(b"\x1c\r"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    return data.decode()


def _tace(gateway: Gateway, *args: str, **settings: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tace", *args],
        env=gateway.env(**settings),
        capture_output=True,
        text=True,
        timeout=300,
    )


def _stored_predictions(gateway: Gateway) -> dict[str, tuple[int, float]]:
    """Patient ID -> (job id, stored probability of disease control)."""
    job, series, study, prediction = (
        Job.__table__,
        Series.__table__,
        Study.__table__,
        Prediction.__table__,
    )
    with gateway.engine.connect() as connection:
        rows = connection.execute(
            sa.select(study.c.patient_id, job.c.id, prediction.c.probability).select_from(
                prediction.join(job, job.c.id == prediction.c.job_id)
                .join(series, series.c.id == job.c.series_id)
                .join(study, study.c.id == series.c.study_id)
            )
        ).all()
    return {row.patient_id: (row.id, float(row.probability)) for row in rows}


def mann_whitney_auc(control: list[float], progression: list[float]) -> float:
    """P(a disease-control case scores above a progression case), ties counted half."""
    wins = 0.0
    for c in control:
        for p in progression:
            wins += 1.0 if c > p else 0.5 if c == p else 0.0
    return wins / (len(control) * len(progression))


def test_outcomes_over_mllp_and_csv_give_the_hand_computed_auc_and_the_export_evaluates_to_it(
    gateway, ct_series, tmp_path: Path, demo_checkpoint: Path
) -> None:
    system = gateway(performance_min_outcomes=2)
    system.start_hl7()
    system.start_listener()
    system.start_worker()
    files: list[Path] = []
    for n, patient in enumerate(RESPONSES):
        albumin = 25 + 4 * n
        labs = oru(
            f"LAB{n:04d}",
            [f"OBX|1|NM|1751-7^Albumin^LN||{albumin}|g/L|||||F|||20260114072000"],
            patient=f"PID|1||{patient}^^^HOSP^MR||Doe^Jane",
        )
        assert msa(_mllp(system, labs))[1] == "AA"
        files += ct_series(slices=8, rows=32, columns=32, patient_id=patient, seed=100 + n)
    sent = storescu(system.dicom_port, files)
    assert sent.returncode == 0, sent.stderr
    wait_until(
        lambda: len([j for j in system.jobs() if str(j.state) == "sent"]) == len(RESPONSES) or None,
        240,
        what=f"six sent jobs (jobs: {[(j.id, str(j.state), j.error) for j in system.jobs()]})",
    )
    assert len(system.orthanc.sr_instances()) == len(RESPONSES)
    stored = _stored_predictions(system)
    assert set(stored) == set(RESPONSES)
    assert len({p for _, p in stored.values()}) == len(RESPONSES), "distinct scores, so the AUC can tell"

    for n, patient in enumerate(OVER_MLLP):
        message = oru(
            f"OUT{n:04d}",
            [OUTCOME_OBX.format(value=RESPONSES[patient])],
            patient=f"PID|1||{patient}^^^HOSP^MR||Doe^Jane",
        )
        ack = _mllp(system, message)
        assert msa(ack)[1] == "AA" and "1 outcome(s)" in ack, ack
    rows = [f"{p},HOSP,2026-03-02,{r}" for p, r in RESPONSES.items() if p not in OVER_MLLP]
    csv_file = tmp_path / "outcomes.csv"
    csv_file.write_text("patient_id,issuer,assessment_date,response\n" + "\n".join(rows) + "\n")
    imported = _tace(system, "outcomes", "import", str(csv_file))
    assert imported.returncode == 0, imported.stderr
    assert imported.stdout.startswith("3 of 3 rows imported: 3 outcomes added")
    unlinked = _tace(system, "outcomes", "unlinked", "--json")
    assert json.loads(unlinked.stdout) == []

    shown = _tace(system, "model", "performance", "--json")
    assert shown.returncode == 0, shown.stderr
    performance = json.loads(shown.stdout)
    (version,) = performance["versions"]
    # image drift from what the worker read (8-slice series) against the demo cohort's 6-slice volumes
    images = {row["statistic"]: row for row in performance["drift"]["images"]}
    assert (images["slices"]["live_median"], images["slices"]["training_median"]) == (8.0, 6.0)
    assert images["body_hu_mean"]["live_median"] is not None
    # thickness as the listener read it (2.5 mm); the demo cohort's manifest gives none
    assert (images["slice_thickness_mm"]["live_median"], images["slice_thickness_mm"]["training_median"]) == (
        2.5,
        None,
    )
    assert (version["outcomes"], version["progressions"]) == (6, 3)
    control = [stored[p][1] for p, r in RESPONSES.items() if r != "PD"]
    progression = [stored[p][1] for p, r in RESPONSES.items() if r == "PD"]
    by_hand = mann_whitney_auc(control, progression)
    print(f"live AUC {version['auc']['value']} vs by hand {by_hand} (6 outcomes, 3 progressive)")
    assert version["auc"]["value"] == pytest.approx(by_hand, abs=1e-12)
    # six outcomes give a wide interval: under the alert level once six are enough to judge by
    assert performance["alerts"] == [] and version["auc"]["low"] < 0.6
    alerted = _tace(system, "model", "performance", performance_alert_min_outcomes=6)
    assert "WARNING: model " in alerted.stdout and "under the alert level 0.60" in alerted.stdout

    cohort = tmp_path / "cohort"
    exported = _tace(system, "cohort", "export", str(cohort))
    assert exported.returncode == 0, exported.stderr
    assert exported.stdout.startswith("6 cases written to")
    evaluated = _tace(
        system,
        "evaluate",
        str(demo_checkpoint),
        str(cohort / "manifest.csv"),
        "--out",
        str(tmp_path / "eval"),
    )
    assert evaluated.returncode == 0, evaluated.stderr
    report = json.loads((tmp_path / "eval" / "evaluation.json").read_text())
    by_case = {case["case_id"]: case["probability"] for case in report["cases"]}
    differences = [abs(by_case[f"job{job_id}"] - probability) for job_id, probability in stored.values()]
    print(f"evaluate vs stored probabilities: largest difference {max(differences):.2e}")
    assert max(differences) < 1e-4
    print(f"evaluate on the export: AUC {report['metrics']['auc']} vs live {version['auc']['value']}")
    assert report["metrics"]["auc"] == pytest.approx(version["auc"]["value"], abs=1e-12)


def test_a_three_phase_cohort_export_evaluates_to_the_gateways_own_probabilities(
    gateway, tmp_path: Path, three_phase_checkpoint: Path
) -> None:
    """The worker aligned three phases before predicting; the export hands `tace evaluate` the same input."""
    system = gateway()
    system.settings["model_checkpoint"] = three_phase_checkpoint
    system.start_listener()
    system.start_worker()
    patients = {"MRN8101": "PD", "MRN8102": "CR"}
    files: list[Path] = []
    for n, patient in enumerate(patients):
        study = liver_study("ge", tmp_path / patient, size=32, seed=n, patient_id=patient, dose_report=False)
        files += [p for series in study.values() for p in series.paths]
    sent = storescu(system.dicom_port, files, extra=["-R"])
    assert sent.returncode == 0, sent.stderr
    wait_until(
        lambda: len([j for j in system.jobs() if str(j.state) == "sent"]) == 2 or None,
        300,
        what=f"two sent jobs (jobs: {[(j.id, str(j.state), j.error) for j in system.jobs()]})",
    )
    csv_file = tmp_path / "outcomes.csv"
    csv_file.write_text(
        "patient_id,issuer,assessment_date,response\n"
        + "".join(f"{p},HOSP,2026-03-02,{r}\n" for p, r in patients.items())
    )
    assert _tace(system, "outcomes", "import", str(csv_file)).returncode == 0
    cohort = tmp_path / "cohort"
    exported = _tace(system, "cohort", "export", str(cohort))
    assert exported.returncode == 0, exported.stderr
    header = (cohort / "manifest.csv").read_text().splitlines()[0].split(",")
    assert header[2:5] == ["volume_arterial", "volume_delayed", "volume_portal_venous"]
    evaluated = _tace(
        system,
        "evaluate",
        str(three_phase_checkpoint),
        str(cohort / "manifest.csv"),
        "--out",
        str(tmp_path / "eval"),
    )
    assert evaluated.returncode == 0, evaluated.stderr
    report = json.loads((tmp_path / "eval" / "evaluation.json").read_text())
    by_case = {case["case_id"]: case["probability"] for case in report["cases"]}
    stored = _stored_predictions(system)
    differences = [abs(by_case[f"job{job_id}"] - probability) for job_id, probability in stored.values()]
    print(f"three phases: evaluate vs stored probabilities, largest difference {max(differences):.2e}")
    assert len(differences) == 2 and max(differences) < 1e-4
