"""Patient identifiers: pseudonymous keys for logs and a registry of values to scrub.

Logs leave the hospital network (support bundles, log shippers), so they must never
carry a name, an ID or a birth date. Components log :func:`patient_hash` instead,
and register the identifiers they read with :func:`protect`, so that an identifier
that slips into a message from a third-party library is still removed.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import threading
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tace.storage import read_or_create_secret

REDACTED = "[redacted]"

_KEY_FILE = "patient-hash.key"
_MAX_PROTECTED = 100_000
_MIN_PROTECTED_LEN = 3

_lock = threading.Lock()
_protected: OrderedDict[str, None] = OrderedDict()
_hash_key: bytes | None = None


def load_hash_key(data_dir: Path) -> bytes:
    """Read (or create once) the per-installation key of the patient hash.

    A plain hash of a medical record number is reversible by enumerating the number
    space, so the hash is keyed; the key lives in the data dir that every process of
    a deployment shares, which keeps hashes comparable across machines.
    """
    global _hash_key
    key_bytes = read_or_create_secret(data_dir / _KEY_FILE, lambda: secrets.token_hex(32)).encode()
    with _lock:
        _hash_key = key_bytes
    return key_bytes


def use_ephemeral_hash_key() -> None:
    """A random key for a process that has no data dir (offline tools): its hashes match no other."""
    global _hash_key
    with _lock:
        _hash_key = secrets.token_bytes(32)


def patient_hash(patient_id: str | None, issuer: str | None = None) -> str:
    """A stable, keyed pseudonym for (issuer, patient ID), safe to log and display."""
    if not patient_id:
        return "unknown"
    key = _hash_key if _hash_key is not None else b"tace-unkeyed"
    message = f"{issuer or ''}\x00{patient_id}".encode()
    return hmac.new(key, message, hashlib.sha256).hexdigest()[:16]


_TOKEN = re.compile(r"[^\W_]+(?:[-./][^\W_]+)*")
_ESCAPE_OR_TOKEN = re.compile(r"\\x[0-9a-fA-F]{2}|\\u[0-9a-fA-F]{4}|[^\W_]+(?:[-./][^\W_]+)*")
"""Escaped bytes (as in a repr of raw DICOM) separate tokens: ``\\x00SYN0001`` holds ``SYN0001``."""


def _tokens(text: str) -> list[str]:
    return [t for t in _TOKEN.findall(text) if len(t) >= _MIN_PROTECTED_LEN]


_DATASET_IDENTIFIERS = (
    "PatientID",
    "PatientName",
    "PatientBirthDate",
    "OtherPatientIDs",
    "OtherPatientNames",
    "PatientBirthName",
    "PatientMotherBirthName",
)
_COMPACT_DATE = re.compile(r"(\d{4})(\d{2})(\d{2})")
_ISO_DATE = re.compile(r"(\d{4})-(\d{2})-(\d{2})")


def _spellings(text: str) -> set[str]:
    """A date as DICOM writes it and as error messages and non-conformant headers do."""
    for pattern, template in ((_COMPACT_DATE, "{}-{}-{}"), (_ISO_DATE, "{}{}{}")):
        match = pattern.fullmatch(text)
        if match:
            return {text, template.format(*match.groups())}
    return {text}


def protect(*values: object) -> None:
    """Remember identifier values so that any later log line containing them is scrubbed.

    Values are remembered as word tokens ("Doe^Jane" as "Doe" and "Jane"), so an
    identifier is found however a message formats it, and scrubbing a log line
    costs one scan of the line whatever the number of remembered identifiers.
    Dates are remembered in both spellings (19570311 and 1957-03-11): a library
    that rejects a birth date may quote it either way.
    """
    with _lock:
        for value in values:
            if value is None:
                continue
            text = str(value).strip()
            spellings = _spellings(text)
            for token in {*spellings, *(t for s in spellings for t in _tokens(s))}:
                if len(token) < _MIN_PROTECTED_LEN:
                    continue
                if token in _protected:
                    _protected.move_to_end(token)
                    continue
                _protected[token] = None
                if len(_protected) > _MAX_PROTECTED:
                    _protected.popitem(last=False)


def protect_dataset(dataset: Any) -> None:
    """Remember the patient identifiers of a DICOM dataset (anything with ``get(keyword)``).

    Every process that reads a dataset calls this before anything can log about it:
    libraries (pydicom, highdicom, pynetdicom) echo element values in warnings.
    """
    values: list[object] = []
    for keyword in _DATASET_IDENTIFIERS:
        value = dataset.get(keyword)
        if value is None or value == "":
            continue
        is_multi = isinstance(value, Sequence) and not isinstance(value, (str, bytes))
        values.extend(value if is_multi else [value])
    protect(*values)


def scrub(text: str) -> str:
    """Replace every protected token and every HL7 PID segment body in ``text``."""
    if "PID|" in text:
        text = _PID_SEGMENT.sub("PID|" + REDACTED, text)
    if not _protected:
        return text
    protected = _protected
    return _ESCAPE_OR_TOKEN.sub(
        lambda match: REDACTED if match.group(0) in protected else match.group(0), text
    )


def forget_all() -> None:
    """Clear the registry (tests, and a process that starts a new unit of isolation)."""
    with _lock:
        _protected.clear()


_PID_SEGMENT = re.compile(r"PID\|[^\r\n]*")
