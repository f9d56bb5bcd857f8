"""The admin page in headless Chromium (Debian's chromium and chromedriver, nothing downloaded)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pydicom
import pytest
import sqlalchemy as sa
from pydicom.uid import generate_uid

from tace.db import Instance, make_engine
from tests.support.listener import storescu
from tests.support.processes import REPO_ROOT
from tests.support.services import require_tool, wait_until

pytestmark = pytest.mark.slow
ARTIFACTS = REPO_ROOT / "test-artifacts"


@pytest.fixture
def browser():
    chromium = require_tool("chromium", "/usr/bin/chromium")
    driver_path = require_tool("chromedriver", "/usr/bin/chromedriver")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-quic",
        "--no-first-run",
        "--window-size=1280,900",
        f"--user-data-dir={tempfile.mkdtemp(prefix='tace-chromium-')}",
    ):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    driver.implicitly_wait(2)
    yield driver
    driver.quit()


def test_admin_logs_in_sees_a_failed_job_replays_it_and_sees_it_succeed(
    start_up, ct_series, browser, tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By

    require_tool("storescu", "/usr/bin/storescu")
    up = start_up(required_features="none")
    files = ct_series(slices=10, rows=64, columns=64, patient_id="WEB0001", patient_name="Web^Patient")
    duplicate = pydicom.dcmread(files[2])
    duplicate.SOPInstanceUID = duplicate.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    duplicate.save_as(tmp_path / "dup.dcm")
    assert storescu(up.dicom_port, [*files, tmp_path / "dup.dcm"]).returncode == 0
    failed = wait_until(
        lambda: next((j for j in up.api("/api/jobs") if j["state"] == "failed"), None),
        90,
        what="the job to fail",
    )

    engine = make_engine(f"sqlite:///{up.data_dir / 'tace.db'}")
    table = Instance.__table__
    with engine.begin() as connection:
        path = connection.execute(
            sa.select(table.c.path).where(table.c.sop_instance_uid == str(duplicate.SOPInstanceUID))
        ).scalar_one()
        connection.execute(table.delete().where(table.c.sop_instance_uid == str(duplicate.SOPInstanceUID)))
    (up.data_dir / path).unlink()
    engine.dispose()

    base = f"http://127.0.0.1:{up.api_port}"
    browser.get(f"{base}/")
    assert browser.current_url.endswith("/login")
    browser.find_element(By.ID, "token").send_keys(up.token)
    browser.find_element(By.ID, "login").click()
    browser.find_element(By.ID, "filter-failed").click()
    row = browser.find_element(By.ID, f"job-{failed['id']}")
    assert "failed" in row.text and "duplicate slice positions" in row.text
    assert "Web^Patient" not in browser.page_source and "WEB0001" not in browser.page_source
    row.find_element(By.LINK_TEXT, str(failed["id"])).click()
    assert "duplicate slice positions" in browser.find_element(By.ID, "error").text
    browser.find_element(By.ID, "replay-infer").click()
    assert browser.find_element(By.ID, "message").text == "replaying from infer"

    def succeeded() -> bool:
        browser.refresh()
        return browser.find_element(By.ID, "state").text == "sent"

    wait_until(succeeded, 90, interval=1, what="the replayed job to be sent")
    assert "DEMO model" in browser.find_element(By.ID, "prediction").text
    ARTIFACTS.mkdir(exist_ok=True)
    screenshot = ARTIFACTS / "admin-replayed-job.png"
    assert browser.save_screenshot(str(screenshot))
    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
