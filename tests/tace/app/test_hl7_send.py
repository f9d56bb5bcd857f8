"""`tace hl7 send` against the real MLLP listener: ACK codes printed, exit status from them."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from importlib import resources
from pathlib import Path

import sqlalchemy as sa

from tace.app.mllp_client import control_id, parse_ack, split_messages
from tace.db import LabObservation
from tests.support.mllp import Hl7Listener
from tests.support.processes import tace_env
from tests.support.services import free_port

EXAMPLE_ORU = resources.files("tace.app") / "examples" / "oru-labs.hl7"


def send(*args: object, **settings: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tace", "hl7", "send", *map(str, args)],
        env=tace_env(**settings),
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_shipped_oru_file_is_acknowledged_and_stored(
    start_hl7: Callable[..., Hl7Listener], tmp_path: Path
) -> None:
    listener = start_hl7()
    result = send(EXAMPLE_ORU, hl7_port=listener.port, data_dir=tmp_path / "unused")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        f"{EXAMPLE_ORU}: EXAMPLE-HEM-1: AA stored 8 observation(s), 0 rejected",
        f"{EXAMPLE_ORU}: EXAMPLE-CHEM-1: AA stored 16 observation(s), 0 rejected",
    ]
    with listener.engine.connect() as connection:
        stored = connection.execute(sa.select(sa.func.count()).select_from(LabObservation)).scalar_one()
    assert stored == 24
    assert not (tmp_path / "unused").exists(), "a client made a data dir"


def test_refused_messages_exit_1_with_the_ack_code(
    start_hl7: Callable[..., Hl7Listener], tmp_path: Path
) -> None:
    listener = start_hl7(hl7_refuse_processing_ids="T")
    text = EXAMPLE_ORU.read_text().replace("|EXAMPLE-HEM-1|P|", "|EXAMPLE-HEM-1|T|")
    mixed = tmp_path / "mixed.hl7"
    mixed.write_text(text)
    result = send(mixed, "--port", listener.port)
    assert result.returncode == 1
    assert result.stdout.splitlines()[0] == f"{mixed}: EXAMPLE-HEM-1: AR processing ID T is refused here"
    assert result.stdout.splitlines()[1].startswith(f"{mixed}: EXAMPLE-CHEM-1: AA")


def test_no_listener_is_one_line_and_exit_2(tmp_path: Path) -> None:
    port = free_port()
    result = send(EXAMPLE_ORU, hl7_port=port)
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"tace: error: cannot connect to localhost:{port}: Connection refused (TACE_HL7_PORT, or --host/--port)"
    )
    empty = tmp_path / "empty.hl7"
    empty.write_text("\n\n")
    assert send(empty).stderr.strip() == f"tace: error: {empty}: no HL7 message in the file"


def test_files_split_into_messages_whatever_the_line_endings() -> None:
    one = "MSH|^~\\&|A|B|C|D|20260101||ORU^R01|C1|P|2.5.1\nPID|1||X^^^^MR\nOBX|1|NM|1751-7^Albumin^LN||31|g/L"
    two = one.replace("C1", "C2")
    data = f"\x0b{one}\r\n\x1c\r\n\n{two.replace(chr(10), chr(13))}\r".encode()
    messages = split_messages(data)
    assert messages == [one.replace("\n", "\r").encode() + b"\r", two.replace("\n", "\r").encode() + b"\r"]
    assert [control_id(m) for m in messages] == ["C1", "C2"]


def test_ack_codes_and_error_text_are_read_from_msa_and_err() -> None:
    assert parse_ack("MSH|^~\\&|T|T|L|L|20260101||ACK|A1|P|2.5.1\rMSA|AA|C1\r") == ("AA", "")
    rejected = "MSH|^~\\&|T|T|L|L|20260101||ACK|A2|P|2.5.1\rMSA|AE|C2\rERR||||E||||unit 'x' unknown\r"
    assert parse_ack(rejected) == ("AE", "unit 'x' unknown")
