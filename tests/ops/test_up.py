"""`tace up`: everything on embedded defaults, a series and labs in, the SR listed, Ctrl-C and back."""

from __future__ import annotations

import pytest

from tests.support.listener import storescu
from tests.support.services import require_tool, wait_until

pytestmark = pytest.mark.slow

LABS = ["OBX|1|NM|1751-7^Albumin^LN||31|g/L|||||F|||20260114072000"]


def test_up_receives_a_series_and_labs_lists_the_sr_and_survives_a_restart(start_up, ct_series) -> None:
    require_tool("storescu", "/usr/bin/storescu")
    up = start_up(required_features="albumin", labs_retry_seconds=120)
    banner = up.output.read_text()
    assert (
        f"DICOM    AE TACE on port {up.dicom_port}" in banner
        and f"HL7      MLLP on port {up.hl7_port}" in banner
    )
    assert "SRs to   none: SRs are kept on disk" in banner
    assert "DEMO model (synthetic training data)" in banner, "the banner must take DEMO from the checkpoint"
    assert "filesystem" not in up.data_dir.name
    before = up.metrics()

    files = ct_series(slices=12, rows=64, columns=64, patient_id="UP0001")
    assert storescu(up.dicom_port, files).returncode == 0
    waiting = wait_until(
        lambda: next((j for j in up.api("/api/jobs") if j["state"] == "waiting_for_labs"), None),
        60,
        what="the job to wait for labs",
    )
    assert "MSA|AA|" in up.send_labs("UPLAB1", "UP0001", LABS)
    wait_until(
        lambda: up.api(f"/api/jobs/{waiting['id']}")["job"]["state"] == "no_destination", 60, what="the SR"
    )
    (sr,) = up.api("/api/srs")
    assert sr["job_id"] == waiting["id"] and (up.data_dir / sr["sr_path"]).is_file()

    after = up.metrics()
    assert (
        after['tace_instances_received_total{kind="ct"}']
        - before.get('tace_instances_received_total{kind="ct"}', 0)
        == 12
    )
    assert after['tace_hl7_messages_total{ack="AA"}'] >= 1
    assert after['tace_series_completed_total{result="complete"}'] >= 1
    assert after['tace_jobs{state="no_destination"}'] == 1
    assert after['tace_stage_seconds_count{stage="model"}'] >= 1

    second = ct_series(slices=12, rows=64, columns=64, patient_id="UP0002", seed=3)
    assert storescu(up.dicom_port, second).returncode == 0
    pending = wait_until(
        lambda: next(
            (j for j in up.api("/api/jobs") if j["id"] != waiting["id"] and j["state"] == "waiting_for_labs"),
            None,
        ),
        60,
        what="the second job to wait",
    )
    assert up.interrupt() == 0
    assert "stopped" in up.output.read_text()

    up.start()
    assert {j["id"]: j["state"] for j in up.api("/api/jobs")} == {
        waiting["id"]: "no_destination",
        pending["id"]: "waiting_for_labs",
    }
    assert "MSA|AA|" in up.send_labs("UPLAB2", "UP0002", LABS)
    wait_until(
        lambda: up.api(f"/api/jobs/{pending['id']}")["job"]["state"] == "no_destination",
        60,
        what="the second SR",
    )
    assert len(up.api("/api/srs")) == 2
