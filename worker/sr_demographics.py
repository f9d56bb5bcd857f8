"""Patient and study attributes for the SR, tolerant of the CT headers PACSs accept every day.

highdicom copies these attributes from the first evidence header and refuses
(or lets through, for ``dciodvfy`` to flag) what does not conform: a missing
AccessionNumber, a birth date written ``1958-08-17`` or with month 13, a name
without ``^``, values longer than their VR allows, PatientSex ``male``. A
prediction must never fail over a demographic field, so the SR gets what is
valid, a repaired value where the intent is unambiguous, and an empty value
(these are all type 2) otherwise. Each change is logged by attribute keyword and
action, never with the value, because the values are patient identifiers.
"""

from __future__ import annotations

import copy
import datetime as dt
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from pydicom.charset import convert_encodings, decode_bytes
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from tace.logging import get_logger

log = get_logger("tace.worker.sr")

SEXES = frozenset({"M", "F", "O"})
_SEX_WORDS = {"MALE": "M", "FEMALE": "F", "OTHER": "O"}
_DATE_SEPARATED = re.compile(r"^(\d{4})[-./](\d{2})[-./](\d{2})$")
_TIME_SEPARATED = re.compile(r"^(\d{2}):(\d{2})(?::(\d{2})(\.\d{1,6})?)?$")
_TIME = re.compile(r"^(\d{2})(\d{2})?(\d{2})?(\.\d{1,6})?$")


@dataclass(frozen=True)
class Repair:
    """One attribute that was not copied as it was: ``action`` says what was done, in words."""

    keyword: str
    action: str


_PN_DELIMITERS = {0x5C, 0x3D, 0x5E}


def _text(header: Dataset, keyword: str) -> str:
    """The value as text, decoded here so pydicom never validates it: its warnings quote the value."""
    element: DataElement | RawDataElement = header.get_item(keyword)
    if not isinstance(element, RawDataElement):
        if element.value is None:
            return ""
        if isinstance(element.value, MultiValue):
            return "\\".join(str(part) for part in element.value).strip()
        return str(element.value).strip()
    if not element.value:
        return ""
    encodings = convert_encodings(header.get("SpecificCharacterSet") or "ISO_IR 6")
    delimiters = _PN_DELIMITERS if keyword.endswith("Name") else set()
    return decode_bytes(element.value, encodings, delimiters).strip(" \x00")


def _date(value: str) -> tuple[str, str | None]:
    """A DA value, repaired from a separated form; empty when it is no calendar date."""
    separated = _DATE_SEPARATED.match(value)
    candidate = "".join(separated.groups()) if separated else value
    try:
        dt.datetime.strptime(candidate, "%Y%m%d")
    except ValueError:
        return "", "dropped: not a valid date"
    if len(candidate) != 8:
        return "", "dropped: not a valid date"
    return candidate, "repaired: separators removed" if separated else None


def _time(value: str) -> tuple[str, str | None]:
    separated = _TIME_SEPARATED.match(value)
    candidate = "".join(part or "" for part in separated.groups()) if separated else value
    parts = _TIME.match(candidate)
    if parts is None:
        return "", "dropped: not a valid time"
    hours, minutes, seconds = (int(p) if p else 0 for p in parts.groups()[:3])
    if hours > 23 or minutes > 59 or seconds > 60:
        return "", "dropped: not a valid time"
    return candidate, "repaired: separators removed" if separated else None


def _identifier(limit: int) -> Callable[[str], tuple[str, str | None]]:
    """Identifiers are dropped, not cut: a shortened ID could name another patient or study."""

    def check(value: str) -> tuple[str, str | None]:
        if len(value) > limit or "\\" in value:
            return "", f"dropped: longer than {limit} characters or holds a backslash"
        return value, None

    return check


def _person_name(value: str) -> tuple[str, str | None]:
    """``Doe, John`` becomes ``Doe^John``; a name without components is the family name (``Doe^``)."""
    name, action = value, None
    if "^" not in name and "=" not in name:
        family, comma, given = name.partition(",")
        if comma:
            name, action = f"{family.strip()}^{given.strip()}", "repaired: comma form made family^given"
        else:
            name, action = f"{name}^", "repaired: whole value taken as the family name"
    if "\\" in name:
        return "", "dropped: holds a backslash"
    groups = name.split("=")
    if any(len(group) > 64 for group in groups):
        name = "=".join(group[:64] for group in groups)
        action = "repaired: cut to 64 characters per component group"
    return name, action


def sex_code(value: str | None) -> str | None:
    """PatientSex as its code (``female`` -> ``F``); None when it names no sex."""
    upper = (value or "").strip().upper()
    code = _SEX_WORDS.get(upper, upper)
    return code if code in SEXES else None


def _sex(value: str) -> tuple[str, str | None]:
    upper = value.upper()
    if upper in SEXES:
        return upper, None if upper == value else "repaired: made upper case"
    if upper in _SEX_WORDS:
        return _SEX_WORDS[upper], "repaired: word made a code"
    return "", "dropped: not one of M, F, O"


_RULES: dict[str, Callable[[str], tuple[str, str | None]]] = {
    "PatientID": _identifier(64),
    "PatientName": _person_name,
    "PatientBirthDate": _date,
    "PatientSex": _sex,
    "AccessionNumber": _identifier(16),
    "StudyID": _identifier(16),
    "StudyDate": _date,
    "StudyTime": _time,
    "ReferringPhysicianName": _person_name,
}
_OPTIONAL = frozenset({"ReferringPhysicianName"})
"""Type 2 in the SR too, but so often absent from CT headers that adding it empty is not news."""


def conform(header: Dataset) -> tuple[Dataset, list[Repair]]:
    """A copy of ``header`` whose patient and study attributes are all present and valid."""
    fixed = copy.deepcopy(header)
    repairs = []
    for keyword, rule in _RULES.items():
        value = ""
        if keyword not in header:
            action: str | None = None if keyword in _OPTIONAL else "added empty: absent"
        else:
            value = _text(header, keyword)
            action = None
            if value:
                value, action = rule(value)
        setattr(fixed, keyword, value)
        if action is not None:
            repairs.append(Repair(keyword, action))
    return fixed, repairs


def conformed_evidence(evidence: Sequence[Dataset]) -> list[Dataset]:
    """The evidence with its first header (the one the SR's demographics come from) conformed."""
    first, repairs = conform(evidence[0])
    for repair in repairs:
        log.warning("sr.demographic_repaired", attribute=repair.keyword, action=repair.action)
    return [first, *evidence[1:]]
