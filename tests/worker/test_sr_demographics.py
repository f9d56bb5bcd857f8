"""Non-conformant CT demographics never fail the SR; what reaches the SR is valid (dciodvfy)."""

from __future__ import annotations

import logging
import subprocess
from collections.abc import Callable
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from structlog.testing import capture_logs

from tace.app.synthetic_ct import SeriesSpec, make_series
from tests.support.services import require_tool
from worker.clinical_summary import ClinicalSummary
from worker.sr import SrContent, build_sr, sr_identity

CONTENT = SrContent(
    probability=0.42,
    label="progressive_disease",
    model_name="CLDCA",
    model_version="demo-1",
    checkpoint_sha256="cd" * 32,
    demo=True,
    clinical=ClinicalSummary(43, (), ()),
)


def _delete(keyword: str) -> Callable[[Dataset], None]:
    return lambda ds: delattr(ds, keyword)


def _set(keyword: str, value: str) -> Callable[[Dataset], None]:
    return lambda ds: setattr(ds, keyword, value)


# (change to every CT header, attribute, value expected in the SR, action logged or None)
CASES = {
    "accession missing": (_delete("AccessionNumber"), "AccessionNumber", "", "added empty: absent"),
    "birth date with dashes": (
        _set("PatientBirthDate", "1958-08-17"),
        "PatientBirthDate",
        "19580817",
        "repaired: separators removed",
    ),
    "birth date month 13": (
        _set("PatientBirthDate", "19581317"),
        "PatientBirthDate",
        "",
        "dropped: not a valid date",
    ),
    "birth date missing": (_delete("PatientBirthDate"), "PatientBirthDate", "", "added empty: absent"),
    "name without caret": (
        _set("PatientName", "Jane Quill"),
        "PatientName",
        "Jane Quill^",
        "repaired: whole value taken as the family name",
    ),
    "name in comma form": (
        _set("PatientName", "Quill, Jane"),
        "PatientName",
        "Quill^Jane",
        "repaired: comma form made family^given",
    ),
    "name over 64 characters": (
        _set("PatientName", "Q" * 70 + "^Jane"),
        "PatientName",
        "Q" * 64,
        "repaired: cut to 64 characters per component group",
    ),
    "patient id over 64 characters": (
        _set("PatientID", "7" * 70),
        "PatientID",
        "",
        "dropped: longer than 64 characters or holds a backslash",
    ),
    "accession over 16 characters": (
        _set("AccessionNumber", "A" * 20),
        "AccessionNumber",
        "",
        "dropped: longer than 16 characters or holds a backslash",
    ),
    "study id over 16 characters": (
        _set("StudyID", "S" * 20),
        "StudyID",
        "",
        "dropped: longer than 16 characters or holds a backslash",
    ),
    "sex as a word": (_set("PatientSex", "female"), "PatientSex", "F", "repaired: word made a code"),
    "sex unknown code": (_set("PatientSex", "U"), "PatientSex", "", "dropped: not one of M, F, O"),
    "sex missing": (_delete("PatientSex"), "PatientSex", "", "added empty: absent"),
    "study date with dashes": (
        _set("StudyDate", "2026-01-15"),
        "StudyDate",
        "20260115",
        "repaired: separators removed",
    ),
    "study time out of range": (_set("StudyTime", "256100"), "StudyTime", "", "dropped: not a valid time"),
    "study time with colons": (
        _set("StudyTime", "09:30:00"),
        "StudyTime",
        "093000",
        "repaired: separators removed",
    ),
    "referring physician over 64": (
        _set("ReferringPhysicianName", "R" * 70 + "^X"),
        "ReferringPhysicianName",
        "R" * 64,
        "repaired: cut to 64 characters per component group",
    ),
    "patient id read as two values": (
        _set("PatientID", "A12\\B34"),
        "PatientID",
        "",
        "dropped: longer than 64 characters or holds a backslash",
    ),
    "name read as two values": (
        _set("PatientName", "Doe^John\\Roe^Jane"),
        "PatientName",
        "",
        "dropped: holds a backslash",
    ),
    "conformant header": (lambda ds: None, "PatientName", "Synthetic^Patient", None),
}


def _headers(change: Callable[[Dataset], None]) -> list[Dataset]:
    datasets = make_series(SeriesSpec(slices=3, rows=16, columns=16))
    for ds in datasets:
        del ds.PixelData
        change(ds)
    return datasets


@pytest.mark.parametrize("case", list(CASES))
def test_sr_is_made_valid_from_a_non_conformant_header(case: str, tmp_path: Path) -> None:
    dciodvfy = require_tool("dciodvfy")
    change, keyword, expected, action = CASES[case]
    headers = _headers(change)
    with capture_logs() as logs:
        sr = build_sr(headers, CONTENT, sr_identity(headers[0].SeriesInstanceUID, "demo-1", 1))
    assert str(sr.get(keyword, "")) == expected
    assert keyword in sr
    path = tmp_path / "sr.dcm"
    sr.save_as(path, enforce_file_format=True)
    verify = subprocess.run([dciodvfy, str(path)], capture_output=True, text=True)
    errors = [line for line in (verify.stdout + verify.stderr).splitlines() if line.startswith("Error")]
    assert errors == []
    repairs = [entry for entry in logs if entry["event"] == "sr.demographic_repaired"]
    if action is None:
        assert repairs == []
    else:
        assert {"attribute": keyword, "action": action} in [
            {"attribute": e["attribute"], "action": e["action"]} for e in repairs
        ]
    original = str(make_series(SeriesSpec(slices=1, rows=16, columns=16))[0].get(keyword, ""))
    changed = str(headers[0].get(keyword, ""))
    for entry in repairs:
        shown = " ".join(str(v) for v in entry.values())
        for value in {original, changed}:
            assert len(value) < 4 or value not in shown


def test_the_source_headers_are_left_as_they_were() -> None:
    headers = _headers(_set("PatientBirthDate", "1958-08-17"))
    build_sr(headers, CONTENT, sr_identity(headers[0].SeriesInstanceUID, "demo-1", 1))
    assert headers[0].PatientBirthDate == "1958-08-17"


def test_values_read_from_a_file_are_checked_without_pydicom_quoting_them(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """pydicom's own validation warnings quote the value; a birth date must not reach a log that way."""
    (ct,) = make_series(SeriesSpec(slices=1, rows=16, columns=16))
    ct.PatientBirthDate = "1958-08-17"
    ct.PatientName = "Quill, Jane"
    ct.save_as(tmp_path / "ct.dcm", enforce_file_format=True)
    header = pydicom.dcmread(tmp_path / "ct.dcm", stop_before_pixels=True)
    with caplog.at_level(logging.DEBUG):
        sr = build_sr([header], CONTENT, sr_identity(header.SeriesInstanceUID, "demo-1", 1))
    assert (sr.PatientBirthDate, str(sr.PatientName)) == ("19580817", "Quill^Jane")
    assert "1958-08-17" not in caplog.text and "Quill, Jane" not in caplog.text
