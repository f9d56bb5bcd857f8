"""HL7 acknowledgements: AA, AE (with an ERR segment and MSA-3 text) and AR.

An ACK is written in the sender's own delimiters (MSH-1 and MSH-2, whatever they
are: ``$%*@`` is as valid as ``^~\\&``) and in the character set the message
declared in MSH-18, which the ACK declares too; otherwise a sender that parses
by its own delimiters misreads our answer. python-hl7 builds the segments and
escapes free text with the sender's escape character; this is the one module
that uses it, and tests/hl7_clinical/test_ack.py pins the behaviour we rely on.
"""

from __future__ import annotations

import datetime as dt
import itertools
import os
from dataclasses import dataclass

import hl7

from hl7_clinical.oru import Header

START_BLOCK = b"\x0b"
END_BLOCK = b"\x1c\r"
_DEFAULT_ENCODING = "^~\\&"
_counter = itertools.count(1)
_ERROR_TEXT = {
    "100": "Segment sequence error",
    "101": "Required field missing",
    "102": "Data type error",
    "200": "Unsupported message type",
    "201": "Unsupported event code",
    "202": "Unsupported processing id",
    "203": "Unsupported version id",
    "204": "Unknown key identifier",
    "205": "Duplicate key identifier",
    "207": "Application internal error",
}


@dataclass(frozen=True)
class Ack:
    """The acknowledgement text and the codec it goes on the wire in."""

    text: str
    codec: str = "utf-8"

    def to_bytes(self) -> bytes:
        return self.text.encode(self.codec, errors="replace")


def _delimiters(header: Header | None) -> tuple[str, str]:
    """(field separator, the four encoding characters), completed with the defaults."""
    if header is None:
        return "|", _DEFAULT_ENCODING
    encoding = header.encoding[:4]
    return header.field_separator, encoding + _DEFAULT_ENCODING[len(encoding) :]


class _Writer:
    """Segments in the sender's delimiters, through python-hl7's containers."""

    def __init__(self, separator: str, encoding: str) -> None:
        component, repetition, escape, subcomponent = encoding[0], encoding[1], encoding[2], encoding[3]
        self.message = hl7.Message(
            separators="\r" + separator + repetition + component + subcomponent, esc=escape
        )

    def segment(self, name: str, fields: dict[int, str | tuple[str, ...]]) -> hl7.Segment:
        """A segment from field number -> value, or -> the components of its first repetition."""
        segment = self.message.create_segment([self.message.create_field([name])])
        for number, value in sorted(fields.items()):
            if isinstance(value, tuple):
                for index, part in enumerate(value, start=1):
                    segment.assign_field(part, number, 1, index)
            else:
                segment.assign_field(value, number)
        return segment

    def text(self, value: str) -> str:
        """Free text, delimiters and other characters escaped as HL7 prescribes."""
        return str(self.message.escape(" ".join(value.split())[:200]))


def build_ack(
    header: Header | None,
    code: str,
    text: str = "",
    *,
    hl7_error: str | None = None,
    facility: str = "",
    application: str = "TACE",
) -> Ack:
    """The ACK for ``header`` (or a bare NAK in UTF-8 when the MSH itself was unreadable)."""
    separator, encoding = _delimiters(header)
    writer = _Writer(separator, encoding)
    version = (header.version if header and header.version else "2.5.1")[:8]
    trigger = header.trigger if header and header.trigger else ""
    msh: dict[int, str | tuple[str, ...]] = {
        1: separator,
        2: encoding,
        3: application,
        4: facility,
        5: header.sending_application if header else "",
        6: header.sending_facility if header else "",
        7: dt.datetime.now().astimezone().strftime("%Y%m%d%H%M%S%z"),
        9: ("ACK", trigger, "ACK") if trigger else "ACK",
        10: f"TACE{os.getpid()}{next(_counter):08d}",
        11: (header.processing_id or "P") if header else "P",
        12: version,
    }
    if header is not None and header.charset:
        msh[18] = header.charset
    msa: dict[int, str | tuple[str, ...]] = {1: code, 2: header.control_id if header else ""}
    if text:
        msa[3] = writer.text(text)
    segments = [writer.segment("MSH", msh), writer.segment("MSA", msa)]
    if code != "AA":
        number = hl7_error or "207"
        label = _ERROR_TEXT.get(number, "Application error")
        if version.startswith(("2.3", "2.4")):
            err = writer.segment("ERR", {})
            for index, part in enumerate((number, label, "HL70357"), start=1):
                err.assign_field(part, 1, 1, 4, index)
        else:
            err = writer.segment("ERR", {3: (number, label, "HL70357"), 4: "E", 8: writer.text(text)})
        segments.append(err)
    codec = header.codec if header is not None else "utf-8"
    return Ack(str(writer.message.create_message(segments)), codec)


def frame(ack: Ack) -> bytes:
    return START_BLOCK + ack.to_bytes() + END_BLOCK
