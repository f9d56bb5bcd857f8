"""HL7 acknowledgements: AA, AE (with an ERR segment and MSA-3 text) and AR."""

from __future__ import annotations

import datetime as dt
import itertools
import os

from hl7_clinical.oru import Header

START_BLOCK = b"\x0b"
END_BLOCK = b"\x1c\r"
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
    "207": "Application internal error",
}


def _clean(text: str, separator: str) -> str:
    """No delimiter may leak from free text into the ACK structure."""
    for character in (separator, "^", "~", "\\", "&", "\r", "\n"):
        text = text.replace(character, " ")
    return text[:200]


def build_ack(
    header: Header | None,
    code: str,
    text: str = "",
    *,
    hl7_error: str | None = None,
    facility: str = "",
    application: str = "TACE",
) -> str:
    """The ACK for ``header`` (or a bare NAK when the MSH itself was unreadable)."""
    separator = header.field_separator if header else "|"
    encoding = header.encoding if header else "^~\\&"
    version = (header.version if header and header.version else "2.5.1")[:8]
    now = dt.datetime.now().strftime("%Y%m%d%H%M%S")
    control = f"TACE{os.getpid()}{next(_counter):08d}"
    trigger = header.trigger if header and header.trigger else ""
    msh = separator.join(
        [
            "MSH",
            encoding,
            application,
            facility,
            header.sending_application if header else "",
            header.sending_facility if header else "",
            now,
            "",
            f"ACK^{trigger}^ACK" if trigger else "ACK",
            control,
            header.processing_id or "P" if header else "P",
            version,
        ]
    )
    msa = separator.join(["MSA", code, header.control_id if header else "", _clean(text, separator)])
    segments = [msh, msa]
    if code != "AA":
        number = hl7_error or "207"
        label = _ERROR_TEXT.get(number, "Application error")
        severity = "E"
        if version.startswith(("2.3", "2.4")):
            segments.append(separator.join(["ERR", f"^^^{number}&{label}&HL70357"]))
        else:
            segments.append(
                separator.join(
                    [
                        "ERR",
                        "",
                        "",
                        f"{number}^{label}^HL70357",
                        severity,
                        "",
                        "",
                        "",
                        _clean(text, separator),
                    ]
                )
            )
    return "\r".join(segments) + "\r"


def frame(message: str) -> bytes:
    return START_BLOCK + message.encode("utf-8") + END_BLOCK
