"""ACK construction: the sender's delimiters and character set, through python-hl7.

These pin what we rely on in python-hl7 (segment assembly with any delimiters,
escaping with the sender's escape character), so an upgrade that changes it fails
here rather than at a hospital's interface engine.
"""

from __future__ import annotations

import hl7
import pytest

from hl7_clinical.ack import build_ack, frame
from hl7_clinical.oru import read_header
from tests.support.hl7_messages import oru


def _odd_delimiters(message: str) -> str:
    return message.replace("MSH|^~\\&|", "MSH|$%*@|").replace("ORU^R01^ORU_R01", "ORU$R01$ORU_R01")


def test_ack_in_the_senders_delimiters_parses_back_with_them() -> None:
    header = read_header(_odd_delimiters(oru("A0001", [])).encode())
    ack = build_ack(header, "AE", "PID-3 | has ^ no $ MR * id", hl7_error="204", facility="TACE")
    parsed = hl7.parse(ack.text)
    assert parsed.separators == "\r|%$@" and parsed.esc == "*"
    assert str(parsed.segment("MSH")(2)) == "$%*@"
    assert parsed.extract_field("MSH", 1, 9, 1, 2) == "R01"
    assert parsed.extract_field("MSA", 1, 1) == "AE"
    assert parsed.extract_field("MSA", 1, 2) == "A0001"
    assert parsed.extract_field("MSA", 1, 3) == "PID-3 | has ^ no $ MR * id"
    assert "*F*" in ack.text and "*S*" in ack.text and "*E*" in ack.text
    assert parsed.extract_field("ERR", 1, 3, 1, 1) == "204"
    assert parsed.extract_field("ERR", 1, 3, 1, 2) == "Unknown key identifier"


def test_version_2_3_error_segment_uses_the_senders_subcomponent_separator() -> None:
    header = read_header(_odd_delimiters(oru("A0002", [], version="2.3")).encode())
    ack = build_ack(header, "AR", "refused", hl7_error="200")
    err = next(line for line in ack.text.split("\r") if line.startswith("ERR"))
    assert err == "ERR|$$$200@Unsupported message type@HL70357"


@pytest.mark.parametrize(
    ("charset", "codec"),
    [("8859/1", "latin-1"), ("UNICODE UTF-8", "utf-8"), ("", "utf-8"), ("", "latin-1")],
)
def test_ack_is_written_in_the_declared_character_set(charset: str, codec: str) -> None:
    message = oru("A0003", [], charset=charset, sender="LAB\u00c9|H\u00d4P")
    header = read_header(message.encode(codec))
    assert header.sending_application == "LAB\u00c9"
    ack = build_ack(header, "AA")
    wire = frame(ack)
    assert wire.startswith(b"\x0bMSH|") and wire.endswith(b"\x1c\r")
    assert "|LAB\u00c9|H\u00d4P|" in wire[1:-2].decode(codec)
    if charset:
        assert wire[1:-2].decode(codec).split("\r")[0].split("|")[17] == charset


def test_unreadable_header_gets_a_bare_nak() -> None:
    ack = build_ack(None, "AR", "message does not start with an MSH segment", hl7_error="100")
    assert ack.codec == "utf-8"
    assert ack.text.split("\r")[1] == "MSA|AR||message does not start with an MSH segment"
