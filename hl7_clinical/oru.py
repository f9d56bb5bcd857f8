r"""Reading HL7 v2 ORU^R01 messages (2.3 to 2.5.1) into typed values.

Segments and fields are split with the delimiters the MSH declares (python-hl7's
full tree parse of every component costs five times as much, about 0.7 ms for a
ten-result message, and its unescaping expands repeat escapes such as
``\.sp999999999\`` without a bound); this module decides what the fields mean:
the sender, and for each patient group (ORU^R01's PATIENT_RESULT, which repeats)
the patient identifiers and each observation's code, value, comparator, unit,
status and time. Results that no PID precedes cannot be attributed and refuse
the whole message, as does a second MSH: one MLLP frame carries one message.
The MSH is read from the raw bytes first, so even a message that cannot be
decoded or parsed is acknowledged, in its own delimiters and character set.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
from dataclasses import dataclass, field

SEGMENT_SEPARATORS = re.compile(r"\r\n|\r|\n")
_VERSION = re.compile(r"\d+(\.\d+){1,2}")
_COMPARATORS = ("<=", ">=", "<>", "<", ">", "=")
_CHARSETS = {
    "": "utf-8",
    "UNICODE UTF-8": "utf-8",
    "UTF-8": "utf-8",
    "ASCII": "ascii",
    "8859/1": "latin-1",
    "8859/15": "iso8859-15",
}


class MessageError(ValueError):
    """The message can be acknowledged but not used; ``code`` is the MSA-1 to answer."""

    def __init__(self, message: str, code: str = "AE", hl7_error: str = "207") -> None:
        super().__init__(message)
        self.code = code
        self.hl7_error = hl7_error


@dataclass(frozen=True)
class Header:
    """The MSH fields we use; ``codec`` is the Python codec the ACK is written in.

    Values are decoded in the declared character set when the MSH is valid in it;
    otherwise (unknown or wrong MSH-18) byte for byte as Latin-1, so that an
    acknowledgement written back in Latin-1 echoes exactly the sender's bytes.
    """

    field_separator: str
    encoding: str
    sending_application: str
    sending_facility: str
    receiving_application: str
    receiving_facility: str
    message_type: str
    trigger: str
    control_id: str
    processing_id: str
    version: str
    charset: str
    codec: str = "latin-1"

    @property
    def sender(self) -> str:
        return f"{self.sending_application}^{self.sending_facility}"[:200]

    @property
    def intact(self) -> bool:
        """Whether MSH-12 holds a version number, i.e. the fields before it kept their places.

        A message whose segment separator and first fields were lost reads the PID's
        identifiers and name as MSH-10 onward; such a header's values are not logged.
        """
        return _VERSION.fullmatch(self.version) is not None

    @property
    def component_separator(self) -> str:
        return self.encoding[0] if self.encoding else "^"


def read_header(raw: bytes) -> Header:
    """The MSH of a message, from bytes, whatever the rest of the message holds."""
    first = SEGMENT_SEPARATORS.split(raw.decode("latin-1"), maxsplit=1)[0]
    if not first.startswith("MSH") or len(first) < 8:
        raise MessageError("message does not start with an MSH segment", code="AR", hl7_error="100")
    header = _header_from_line(first, "latin-1")
    codec = _CHARSETS.get(header.charset)
    if codec is None or codec == "latin-1":
        return header
    try:
        return _header_from_line(first.encode("latin-1").decode(codec), codec)
    except (UnicodeDecodeError, MessageError):
        return header


def _usable_delimiters(delimiters: str) -> bool:
    """Distinct, and none a letter, digit, space or control character (which values contain)."""
    return len(set(delimiters)) == len(delimiters) and not any(
        (c.isascii() and c.isalnum()) or c.isspace() or ord(c) < 32 or ord(c) == 127 for c in delimiters
    )


def _header_from_line(first: str, codec: str) -> Header:
    separator = first[3]
    fields = first.split(separator)
    encoding = fields[1] if len(fields) > 1 else "^~\\&"
    component = encoding[0] if encoding else "^"
    if not _usable_delimiters(separator + encoding[:4]):
        raise MessageError(
            "MSH-1 and MSH-2 must be distinct delimiters, none a letter, digit, space or control character",
            code="AR",
            hl7_error="102",
        )

    def get(number: int, component_index: int = 0) -> str:
        index = number - 1
        if index >= len(fields):
            return ""
        parts = fields[index].split(component)
        return parts[component_index].strip() if component_index < len(parts) else ""

    control_id = get(10)
    if not control_id:
        raise MessageError("MSH-10 (message control ID) is empty", code="AR", hl7_error="101")
    return Header(
        field_separator=separator,
        encoding=encoding,
        sending_application=get(3),
        sending_facility=get(4),
        receiving_application=get(5),
        receiving_facility=get(6),
        message_type=get(9, 0).upper(),
        trigger=get(9, 1).upper(),
        control_id=control_id[:199],
        processing_id=get(11, 0).upper(),
        version=get(12, 0),
        charset=get(18, 0).upper(),
        codec=codec,
    )


def decode(raw: bytes, header: Header) -> str:
    encoding = _CHARSETS.get(header.charset)
    if encoding is None:
        raise MessageError(
            f"character set {header.charset!r} (MSH-18) is not supported", code="AR", hl7_error="203"
        )
    try:
        return raw.decode(encoding)
    except UnicodeDecodeError as exc:
        raise MessageError(
            f"bytes at offset {exc.start} are not valid {encoding.upper()} as MSH-18 declares",
            code="AR",
            hl7_error="102",
        ) from None


@dataclass(frozen=True)
class PatientIdentifier:
    id: str
    authority: str
    type_code: str


@dataclass(frozen=True)
class Observation:
    index: int
    value_type: str
    code: str
    code_text: str
    code_system: str
    alternate_code: str
    alternate_system: str
    sub_id: str
    raw_value: str
    value: float | None
    comparator: str | None
    unit: str
    status: str
    observed_at: dt.datetime | None
    order_key: str


@dataclass(frozen=True)
class PatientGroup:
    """One PATIENT_RESULT group: a PID and the results that follow it up to the next PID."""

    number: int
    segment: int
    identifiers: list[PatientIdentifier] = field(default_factory=list)
    observations: list[Observation] = field(default_factory=list)


@dataclass(frozen=True)
class OruMessage:
    header: Header
    groups: list[PatientGroup] = field(default_factory=list)

    @property
    def observations(self) -> list[Observation]:
        return [o for group in self.groups for o in group.observations]


def parse_timestamp(text: str) -> dt.datetime | None:
    """HL7 TS/DTM as the site's local wall time (a UTC offset, if any, is dropped like DICOM's)."""
    match = re.match(r"^(\d{4})(\d{2})?(\d{2})?(\d{2})?(\d{2})?(\d{2})?(?:\.(\d{1,4}))?", text.strip())
    if not match:
        return None
    year, month, day, hour, minute, second, fraction = match.groups()
    try:
        return dt.datetime(
            int(year),
            int(month or 1),
            int(day or 1),
            int(hour or 0),
            int(minute or 0),
            int(second or 0),
            int((fraction or "0").ljust(6, "0")[:6]),
        )
    except ValueError:
        return None


def split_comparator(text: str) -> tuple[str | None, str]:
    stripped = text.strip()
    for comparator in _COMPARATORS:
        if stripped.startswith(comparator):
            return comparator, stripped[len(comparator) :].strip()
    return None, stripped


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def _value(value_type: str, raw: str, component: str) -> tuple[float | None, str | None]:
    """Numeric value and comparator of OBX-5 for NM, SN and numeric-looking ST."""
    if value_type == "SN":
        parts = raw.split(component)
        comparator = parts[0].strip() or None
        number = _number(parts[1]) if len(parts) > 1 else None
        if len(parts) > 2 and parts[2].strip():
            return None, comparator
        return number, comparator if comparator in _COMPARATORS else None
    if value_type in ("NM", "ST", "TX", ""):
        comparator, rest = split_comparator(raw)
        return _number(rest), comparator
    return None, None


def unescape(text: str, header: Header) -> str:
    """Resolve the HL7 delimiter escapes (\\F\\, \\S\\, \\T\\, \\R\\, \\E\\) in a text value."""
    escape = header.encoding[2] if len(header.encoding) > 2 else "\\"
    if escape not in text:
        return text
    delimiters = {
        "F": header.field_separator,
        "S": header.encoding[0] if header.encoding else "^",
        "R": header.encoding[1] if len(header.encoding) > 1 else "~",
        "E": escape,
        "T": header.encoding[3] if len(header.encoding) > 3 else "&",
    }
    pattern = re.escape(escape) + r"([FSRET])" + re.escape(escape)
    return re.sub(pattern, lambda match: delimiters[match.group(1)], text)


_RESULT_SEGMENTS = frozenset({"ORC", "OBR", "OBX", "TQ1", "TQ2", "CTD", "FT1", "CTI", "SPM", "TCD"})
_BATCH_SEGMENTS = frozenset({"FHS", "BHS", "BTS", "FTS"})


def _check_one_message(names: list[str]) -> None:
    """One frame, one message: a second MSH (or a batch envelope) is never merged into the first.

    ``names`` are the first three characters of each segment, so that a second message
    with another field separator is seen too.
    """
    headers = [number for number, name in enumerate(names, start=1) if name == "MSH"]
    if len(headers) > 1:
        where = ", ".join(str(n) for n in headers[:-1]) + f" and {headers[-1]}"
        raise MessageError(
            f"{len(headers)} messages in one MLLP frame (MSH at segments {where}): send one per frame",
            code="AR",
            hl7_error="100",
        )
    batch = next((name for name in names if name in _BATCH_SEGMENTS), None)
    if batch is not None:
        raise MessageError(
            f"batch segment {batch} in a message: send one message per MLLP frame", code="AR", hl7_error="100"
        )


def parse_oru(text: str, header: Header) -> OruMessage:
    """Segments by CR, fields by the MSH field separator; only the fields we use are split further."""
    separator = header.field_separator
    component = header.component_separator
    repetition = header.encoding[1] if len(header.encoding) > 1 else "~"
    segments = [line.split(separator) for line in SEGMENT_SEPARATORS.split(text) if line.strip()]
    if not segments or segments[0][0] != "MSH":
        raise MessageError("message does not start with an MSH segment", code="AR", hl7_error="100")
    _check_one_message([fields[0][:3] for fields in segments])

    def field(fields: list[str], number: int) -> str:
        return fields[number] if number < len(fields) else ""

    groups: list[PatientGroup] = []
    order_key, order_time = "", None
    index = 0
    for number, fields in enumerate(segments, start=1):
        name = fields[0]
        if name == "PID":
            groups.append(PatientGroup(number=len(groups) + 1, segment=number))
            order_key, order_time = "", None
            for item in field(fields, 3).split(repetition):
                parts = item.split(component) + [""] * 5
                if parts[0].strip():
                    groups[-1].identifiers.append(
                        PatientIdentifier(
                            parts[0].strip(), parts[3].split("&")[0].strip(), parts[4].strip().upper()
                        )
                    )
            continue
        if name in _RESULT_SEGMENTS and not groups:
            raise MessageError(
                f"{name} (segment {number}) before any PID: its results cannot be attributed to a patient",
                code="AR",
                hl7_error="100",
            )
        if name == "OBR":
            filler = field(fields, 3).split(component)[0]
            placer = field(fields, 2).split(component)[0]
            order_time = parse_timestamp(field(fields, 7))
            order_key = filler or placer or field(fields, 7)
        elif name == "OBX":
            value_type = field(fields, 2).upper()
            code = field(fields, 3).split(component) + [""] * 6
            raw_value = field(fields, 5)
            value, comparator = _value(value_type, raw_value, component)
            index += 1
            groups[-1].observations.append(
                Observation(
                    index=index,
                    value_type=value_type,
                    code=code[0].strip(),
                    code_text=unescape(code[1].strip(), header),
                    code_system=code[2].strip().upper(),
                    alternate_code=code[3].strip(),
                    alternate_system=code[5].strip().upper(),
                    sub_id=field(fields, 4),
                    raw_value=unescape(raw_value, header),
                    value=value,
                    comparator=comparator,
                    unit=unescape(field(fields, 6).split(component)[0].strip(), header),
                    status=(field(fields, 11) or "F").strip().upper()[:1],
                    observed_at=parse_timestamp(field(fields, 14)) or order_time,
                    order_key=order_key,
                )
            )
    return OruMessage(header=header, groups=groups)


def content_digest(raw: bytes) -> str:
    """What makes two messages the same message: every byte except MSH-7 and the line endings.

    A sender that resends after a lost ACK may stamp a new MSH-7 (date/time of
    message) or change CR to CR LF; that is still the message we stored.
    """
    text = raw.decode("latin-1")
    segments = [line for line in SEGMENT_SEPARATORS.split(text) if line.strip()]
    if segments and segments[0].startswith("MSH") and len(segments[0]) > 3:
        separator = segments[0][3]
        fields = segments[0].split(separator)
        if len(fields) > 6:
            fields[6] = ""
        segments[0] = separator.join(fields)
    return hashlib.sha256("\r".join(segments).encode("latin-1")).hexdigest()
