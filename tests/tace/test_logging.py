from __future__ import annotations

import io
import json
import logging

import pytest

from tace import phi
from tace.logging import configure_logging, get_logger, unit_of_work


class _Pipe(io.StringIO):
    def isatty(self) -> bool:
        return False


@pytest.fixture
def captured(tmp_path_factory: pytest.TempPathFactory) -> _Pipe:
    from tests.conftest import product_log_file

    stream = _Pipe()
    configure_logging("debug", "auto", stream=stream)
    yield stream
    phi.forget_all()
    configure_logging("debug", "json", stream=product_log_file(tmp_path_factory).open("a"))


def _lines(stream: _Pipe) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]


def test_json_when_not_a_terminal_with_bound_context(captured: _Pipe) -> None:
    with unit_of_work(job_id=7, series="1.2.3"):
        get_logger("test").info("job.started", attempt=1)
    get_logger("test").info("after")
    first, second = _lines(captured)
    assert first["event"] == "job.started"
    assert (first["job_id"], first["series"], first["attempt"]) == (7, "1.2.3", 1)
    assert first["level"] == "info"
    assert "timestamp" in first
    assert "job_id" not in second


def test_patient_id_bound_into_a_log_call_never_reaches_the_output(captured: _Pipe) -> None:
    secret_id, secret_name, secret_birth = "MRN884211", "Doe^Jane", "19571103"
    log = get_logger("test").bind(PatientID=secret_id)
    log.info("received", patient_name=secret_name, patient_birth_date=secret_birth)
    output = captured.getvalue()
    for secret in (secret_id, secret_name, secret_birth):
        assert secret not in output
    (line,) = _lines(captured)
    assert line["PatientID"] == phi.REDACTED
    assert line["patient_name"] == phi.REDACTED


def test_protected_values_are_scrubbed_from_free_text_and_stdlib_loggers(captured: _Pipe) -> None:
    phi.protect("MRN884211", "Doe^Jane")
    logging.getLogger("pynetdicom.events").warning("bad dataset for MRN884211 (Doe^Jane)")
    get_logger("test").error("failed", detail="patient MRN884211 has no labs")
    output = captured.getvalue()
    assert "MRN884211" not in output and "Doe^Jane" not in output
    lines = _lines(captured)
    assert lines[0]["logger"] == "pynetdicom.events"
    assert lines[0]["event"] == f"bad dataset for {phi.REDACTED} ({phi.REDACTED}^{phi.REDACTED})"


def test_hl7_pid_segments_are_scrubbed(captured: _Pipe) -> None:
    get_logger("test").warning("unparsed", raw="MSH|^~\\&|LAB\rPID|1||12345^^^HOSP^MR||Roe^Richard\rOBX|1")
    output = captured.getvalue()
    assert "Roe^Richard" not in output and "12345" not in output
    assert "OBX|1" in output


def test_exception_tracebacks_are_scrubbed(captured: _Pipe) -> None:
    phi.protect("MRN884211")
    try:
        raise ValueError("no study for MRN884211")
    except ValueError:
        get_logger("test").exception("crashed")
    assert "MRN884211" not in captured.getvalue()
    assert "ValueError" in captured.getvalue()


def test_patient_hash_is_keyed_and_stable(tmp_path) -> None:
    phi.load_hash_key(tmp_path)
    first = phi.patient_hash("MRN884211", "HOSP")
    assert first == phi.patient_hash("MRN884211", "HOSP")
    assert first != phi.patient_hash("MRN884211", "OTHER")
    assert "MRN884211" not in first and len(first) == 16
    assert (tmp_path / "patient-hash.key").stat().st_mode & 0o077 == 0


def test_loggers_created_before_configuration_follow_it(captured: _Pipe) -> None:
    early = get_logger("module.level")
    stream = _Pipe()
    configure_logging("info", "auto", stream=stream)
    early.info("late.configured", job_id=3)
    (line,) = _lines(stream)
    assert line["event"] == "late.configured" and line["job_id"] == 3


def test_values_glued_to_escaped_bytes_are_scrubbed(captured: _Pipe) -> None:
    phi.protect("SYN0001", "19600101")
    logging.getLogger("py.warnings").warning("Invalid value for VR LO: b'\\x00SYN0001'")
    get_logger("test").warning("raw", value=repr(b"\x00SYN0001\x0019600101"))
    output = captured.getvalue()
    assert "SYN0001" not in output and "19600101" not in output
    assert output.count(phi.REDACTED) == 3
