"""The admin page in headless Chromium (Debian's chromium and chromedriver, nothing downloaded).

Screenshots go to ``test-artifacts/``; every page the browser shows is kept for the
session's identifier scan (the browser logs in without the phi role).
"""

from __future__ import annotations

import http.server
import struct
import tempfile
import threading
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pydicom
import pytest
import sqlalchemy as sa
from pydicom.uid import generate_uid
from sqlalchemy.engine import Engine

from tace import phi
from tace.db import (
    Delivery,
    DeliveryState,
    Instance,
    Job,
    JobState,
    Prediction,
    Series,
    Stage,
    make_engine,
    session_scope,
    utcnow,
)
from tace.jobs import claim, finish
from tace.schema import upgrade_schema
from tests.factories import add_jobs
from tests.support import responses
from tests.support.listener import storescu
from tests.support.outcomes import seed_site_cases, write_site_checkpoint
from tests.support.processes import REPO_ROOT, spawn, stop, tace_command, tace_env
from tests.support.services import free_port, require_tool, wait_for_port, wait_until

pytestmark = pytest.mark.slow
ARTIFACTS = REPO_ROOT / "test-artifacts"
WIDTHS = (1280, 390)
LONG_PATH = (
    "/var/lib/tace/dicom/1.2.826.0.1.3680043.8.498.10203040506070809101112131415161718192021"
    "/1.2.826.0.1.3680043.8.498.99887766554433221100998877665544332211009988"
    "/1.2.826.0.1.3680043.8.498.12121212121212121212121212121212121212121212.dcm"
)


def _record_page(driver: Any) -> None:
    responses.record("GET", driver.current_url, 0, driver.page_source)


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
    from selenium.webdriver.support.events import AbstractEventListener, EventFiringWebDriver

    class RecordPages(AbstractEventListener):
        def after_navigate_to(self, url: str, driver: Any) -> None:
            _record_page(driver)

        def after_click(self, element: Any, driver: Any) -> None:
            _record_page(driver)

        def after_navigate_back(self, driver: Any) -> None:
            _record_page(driver)

    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    driver.implicitly_wait(2)
    yield EventFiringWebDriver(driver, RecordPages())
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
        return browser.find_element(By.ID, "state").text == "predicted, no destination"

    wait_until(succeeded, 90, interval=1, what="the replayed job to be predicted (no destination configured)")
    assert "DEMO model" in browser.find_element(By.ID, "prediction").text
    ARTIFACTS.mkdir(exist_ok=True)
    screenshot = ARTIFACTS / "admin-replayed-job.png"
    assert browser.save_screenshot(str(screenshot))
    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _long_content_jobs(engine: Engine) -> dict[str, int]:
    """Jobs in every state an admin meets, with the long paths and UIDs real errors carry."""
    ids = add_jobs(engine, 56)
    failed, predicted, waiting = ids[-3:]
    with session_scope(engine) as session:
        series = session.get(Series, session.get(Job, failed).series_id)
        series.series_instance_uid = "1.2.826.0.1.3680043.8.498.1234567890123456789012345678901234567890"
        session.add(series)
    lease = claim(engine, failed, Stage.infer, stall_seconds=60)
    finish(
        engine,
        lease,
        JobState.failed,
        error=f"volume: {LONG_PATH}: not a readable DICOM file (InvalidDicomError: the 'DICM' prefix is missing)",
    )
    lease = claim(engine, predicted, Stage.infer, stall_seconds=60)
    with session_scope(engine) as session:
        session.add(
            Prediction(
                job_id=predicted,
                probability=0.734,
                label="disease_control",
                model_name="CLDCA",
                model_version="demo-20240501",
                checkpoint_sha256="ab" * 32,
                demo_model=True,
                features={
                    "albumin": {
                        "value": 3.9,
                        "unit": "g/dL",
                        "source": "HL7 LAB00017 from LIS^HOSP, OBX 1",
                        "status": "F",
                        "observed_at": "2024-05-01T08:00:00",
                        "comparator": None,
                    },
                    "afp": None,
                },
                missing_features=["afp", "portal_vein_thrombus"],
                sr_sop_instance_uid="1.2.826.0.1.3680043.8.498.55555555555555555555555555555555555555555",
                sr_series_instance_uid="1.2.826.0.1.3680043.8.498.6",
                sr_path="sr/1.2.3/1.2.3.4.dcm",
            )
        )
        session.add(
            Delivery(
                job_id=predicted,
                destination="PACS_WITH_A_LONG_NAME@pacs-archive.radiology.example-hospital.org:11112",
                sop_instance_uid="1.2.826.0.1.3680043.8.498.55555555555555555555555555555555555555555",
                state=DeliveryState.delivered,
                dimse_status=0,
                attempts=1,
                detail=f"stored; the PACS answered with a comment {LONG_PATH}",
            )
        )
        finish(engine, lease, JobState.predicted, stage=Stage.send, session=session)
    lease = claim(engine, waiting, Stage.infer, stall_seconds=60)
    finish(
        engine,
        lease,
        JobState.waiting_for_labs,
        not_before=utcnow() + timedelta(seconds=60),
        detail="waiting for labs: albumin, total_bilirubin, afp, platelets, inr, creatinine",
    )
    return {"failed": failed, "predicted": predicted, "waiting": waiting}


@pytest.fixture
def admin_api(data_dir: Path, tmp_path: Path) -> Iterator[tuple[str, dict[str, int]]]:
    """`tace api` as deployed (its own process, default bind address) over a seeded database."""
    engine = make_engine(f"sqlite:///{data_dir / 'tace.db'}")
    upgrade_schema(engine)
    jobs = _long_content_jobs(engine)
    engine.dispose()
    port = free_port()
    env = tace_env(data_dir=data_dir, api_port=port, api_token="browser-operator", log_format="json")
    process = spawn(tace_command("api"), env, tmp_path / "api.log")
    try:
        wait_for_port(port, timeout=60)
        yield f"http://127.0.0.1:{port}", jobs
    finally:
        stop(process)


def _listening_addresses(port: int) -> set[str]:
    """Local addresses of sockets listening on ``port`` (Linux /proc/net/tcp, hex little-endian)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, port_hex = local.split(":")
            if int(port_hex, 16) == port and state == "0A":
                found.add(address)
    return found


def _viewport(browser: Any, width: int) -> None:
    browser.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride",
        {"width": width, "height": 1100, "deviceScaleFactor": 1, "mobile": width < 600},
    )


def _overflow(browser: Any, element_id: str) -> dict[str, float]:
    return browser.execute_script(
        """
        const table = document.getElementById(arguments[0]);
        const page = document.documentElement;
        return {viewport: page.clientWidth, page: page.scrollWidth,
                right: table.getBoundingClientRect().right, table: table.scrollWidth,
                box: table.clientWidth};
        """,
        element_id,
    )


def _screenshot(browser: Any, name: str, width: int) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"{name}-{width}.png"
    assert browser.save_screenshot(str(path))
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert struct.unpack(">I", data[16:20])[0] == width


def test_jobs_and_job_pages_fit_a_desktop_and_a_phone(admin_api, browser) -> None:
    from selenium.webdriver.common.by import By

    base, jobs = admin_api
    port = int(base.rsplit(":", 1)[1])
    assert _listening_addresses(port) == {"0100007F"}  # 127.0.0.1: loopback unless configured
    browser.get(f"{base}/")
    browser.find_element(By.ID, "token").send_keys("browser-operator")
    browser.find_element(By.ID, "login").click()
    assert "jobs 1-50 of 56" in browser.find_element(By.ID, "pager").text
    assert browser.find_element(By.ID, "count-failed").text == "1"
    predicted_row = browser.find_element(By.ID, f"job-{jobs['predicted']}").text
    assert "disease control 0.73" in predicted_row and "DEMO" in predicted_row
    assert "UTC" in predicted_row
    for width in WIDTHS:
        _viewport(browser, width)
        browser.get(f"{base}/")
        assert LONG_PATH in browser.find_element(By.ID, f"job-{jobs['failed']}").text.replace("\n", "")
        sizes = _overflow(browser, "jobs")
        assert sizes["page"] <= sizes["viewport"] and sizes["right"] <= sizes["viewport"], (width, sizes)
        assert sizes["table"] <= sizes["box"], (width, sizes)
        _screenshot(browser, "admin-jobs", width)

        browser.get(f"{base}/jobs/{jobs['predicted']}")
        assert "1 used, 2 missing (imputed)" in browser.find_element(By.ID, "features-summary").text
        assert "download needs the phi role" in browser.find_element(By.ID, "sr").text
        for table in ("timeline", "features-used", "deliveries"):
            sizes = _overflow(browser, table)
            assert sizes["page"] <= sizes["viewport"] and sizes["right"] <= sizes["viewport"], (
                table,
                width,
                sizes,
            )
        _screenshot(browser, "admin-job", width)

        browser.get(f"{base}/jobs/{jobs['failed']}")
        assert LONG_PATH in browser.find_element(By.ID, "error").text.replace("\n", "")
        sizes = _overflow(browser, "timeline")
        assert sizes["page"] <= sizes["viewport"], (width, sizes)
        _screenshot(browser, "admin-failed-job", width)

    browser.get(f"{base}/jobs/{jobs['waiting']}")
    assert (
        "new labs for this patient wake the job at once" in browser.find_element(By.ID, "labs-deadline").text
    )
    browser.get(f"{base}/")
    browser.find_element(By.ID, "search").send_keys("1.2.826.0.1.3680043.8.498.1234567890")
    browser.find_element(By.ID, "search-go").click()
    assert len(browser.find_elements(By.CSS_SELECTOR, "#jobs tbody tr")) == 1


class _AttackerPage(http.server.BaseHTTPRequestHandler):
    target = ""

    def do_GET(self) -> None:
        body = (
            f'<form id="f" method="post" action="{self.target}">'
            '<input name="from_stage" value="infer"><input name="new_generation" value="true"></form>'
            "<script>document.getElementById('f').submit()</script>"
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


def test_a_page_on_another_port_cannot_replay_with_the_admins_session(
    admin_api, browser, data_dir: Path
) -> None:
    """Same host, other port: the same site for SameSite=Strict, so only the CSRF checks stop it."""
    from selenium.webdriver.common.by import By

    base, jobs = admin_api
    browser.get(f"{base}/login")
    browser.find_element(By.ID, "token").send_keys("browser-operator")
    browser.find_element(By.ID, "login").click()
    engine = make_engine(f"sqlite:///{data_dir / 'tace.db'}")
    jobs_before = _job_rows(engine)
    _AttackerPage.target = f"{base}/jobs/{jobs['failed']}/replay"
    attacker = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _AttackerPage)
    thread = threading.Thread(target=attacker.serve_forever, daemon=True)
    thread.start()
    try:
        browser.get(f"http://127.0.0.1:{attacker.server_address[1]}/")
        refusal = wait_until(
            lambda: "Refused" in browser.page_source and browser.find_element(By.ID, "error").text,
            20,
            what="the forged replay to be refused",
        )
    finally:
        attacker.shutdown()
        thread.join()
    assert f"request from http://127.0.0.1:{attacker.server_address[1]}" in refusal
    assert _job_rows(engine) == jobs_before
    engine.dispose()


def _job_rows(engine: Engine) -> list[tuple[Any, ...]]:
    with engine.connect() as connection:
        jobs = connection.execute(sa.select(Job.__table__.c.id, Job.__table__.c.state)).all()
        events = connection.execute(sa.select(sa.func.count()).select_from(sa.table("jobevent"))).scalar_one()
    return [*map(tuple, jobs), ("events", events)]


def test_the_session_cookie_is_secure_behind_a_local_tls_proxy(admin_api) -> None:
    """`tace api` trusts X-Forwarded-Proto from this machine (uvicorn's default), as a TLS proxy here sends."""
    import http.client

    base, _ = admin_api
    port = int(base.rsplit(":", 1)[1])

    def login(headers: dict[str, str]) -> str:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        connection.request(
            "POST",
            "/login",
            body="token=browser-operator",
            headers={"Content-Type": "application/x-www-form-urlencoded", **headers},
        )
        response = connection.getresponse()
        response.read()
        connection.close()
        assert response.status == 303
        return response.getheader("set-cookie", "").lower()

    assert "; secure" in login({"X-Forwarded-Proto": "https"})
    assert "; secure" not in login({})


def test_performance_view_renders_its_plots_in_chromium(
    data_dir: Path, tmp_path: Path, demo_checkpoint: Path, browser: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from selenium.webdriver.common.by import By

    monkeypatch.setattr(phi, "_hash_key", None)
    phi.load_hash_key(data_dir)
    engine = make_engine(f"sqlite:///{data_dir / 'tace.db'}")
    upgrade_schema(engine)
    seed_site_cases(engine)
    engine.dispose()
    checkpoint = write_site_checkpoint(demo_checkpoint, tmp_path / "site.safetensors")
    port = free_port()
    env = tace_env(
        data_dir=data_dir,
        api_port=port,
        api_token="perf-operator",
        model_checkpoint=checkpoint,
        log_format="json",
    )
    process = spawn(tace_command("api"), env, tmp_path / "api.log")
    try:
        wait_for_port(port, timeout=60)
        base = f"http://127.0.0.1:{port}"
        browser.get(f"{base}/login")
        browser.find_element(By.ID, "token").send_keys("perf-operator")
        browser.find_element(By.ID, "login").click()
        browser.find_element(By.ID, "nav-performance").click()
        assert "lies below the validated" in browser.find_element(By.ID, "warning-1").text
        for plot in ("roc-site-1", "calibration-site-1"):
            size = browser.execute_script(
                "const i = document.getElementById(arguments[0]); return [i.complete, i.naturalWidth];", plot
            )
            assert size[0] and size[1] > 300, (plot, size)
        assert "albumin" in browser.find_element(By.ID, "drift").text
        ARTIFACTS.mkdir(exist_ok=True)
        shot = ARTIFACTS / "admin-performance.png"
        assert browser.save_screenshot(str(shot))
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    finally:
        stop(process)
