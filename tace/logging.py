"""Structured logging for every process of the gateway.

One JSON object per line when stdout is not a terminal (log shippers parse it), a
readable console format otherwise. Standard-library loggers (pynetdicom, celery,
sqlalchemy, uvicorn) go through the same processors, so the patient-identifier
guard below applies to third-party messages too.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator, Mapping, MutableMapping
from contextlib import contextmanager
from typing import Any, TextIO

import structlog
from structlog.types import EventDict, Processor, WrappedLogger

from tace import phi

_IDENTIFIER_KEYS = frozenset(
    {
        "patientid",
        "patientname",
        "patientsname",
        "patientbirthdate",
        "birthdate",
        "dob",
        "dateofbirth",
        "mrn",
        "otherpatientids",
        "otherpatientnames",
        "patientaddress",
        "patientmothersbirthname",
    }
)

_NOISY_LOGGERS = {
    "pynetdicom": logging.WARNING,
    "sqlalchemy": logging.WARNING,
    "alembic": logging.WARNING,
    "celery": logging.INFO,
    "kombu": logging.WARNING,
    "amqp": logging.WARNING,
    "uvicorn.access": logging.WARNING,
    "highdicom": logging.WARNING,
    "pydicom": logging.ERROR,
    "dicomweb_client": logging.WARNING,
}


_renders_json = False


def renders_json() -> bool:
    """Whether configure_logging chose JSON lines, so nothing else may write to the console."""
    return _renders_json


def _normalise_key(key: str) -> str:
    return "".join(ch for ch in key.lower() if ch.isalnum())


def _clean(value: Any) -> Any:
    if isinstance(value, str):
        return phi.scrub(value)
    if type(value).__name__ == "PersonName":
        return phi.REDACTED
    if isinstance(value, Mapping):
        return {k: (phi.REDACTED if _is_identifier_key(k) else _clean(v)) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [_clean(v) for v in value]
    if isinstance(value, (int, float, bool)) or value is None:
        return value
    return phi.scrub(str(value))


def _is_identifier_key(key: object) -> bool:
    return isinstance(key, str) and _normalise_key(key) in _IDENTIFIER_KEYS


def redact_patient_identifiers(logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
    """Drop identifier fields and scrub known identifier values anywhere in the event.

    Key names catch the honest mistake (``log.info("x", patient_id=...)``); the value
    registry catches identifiers embedded in free text, such as a library echoing a
    dataset or an HL7 segment in an error message.
    """
    for key in list(event_dict):
        if _is_identifier_key(key):
            event_dict[key] = phi.REDACTED
        elif key not in ("timestamp", "level", "logger"):
            event_dict[key] = _clean(event_dict[key])
    return event_dict


def _shared_chain() -> list[Processor]:
    return [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]


def _finish_chain() -> list[Processor]:
    """Rendering of exceptions happens before redaction so tracebacks are scrubbed too."""
    return [
        structlog.processors.format_exc_info,
        redact_patient_identifiers,
    ]


def configure_logging(level: str = "info", fmt: str = "auto", stream: TextIO | None = None) -> None:
    """Route structlog and stdlib logging through one renderer on ``stream``."""
    stream = stream if stream is not None else sys.stderr
    is_tty = stream.isatty()
    use_json = fmt == "json" or (fmt == "auto" and not is_tty)
    global _renders_json
    _renders_json = use_json
    renderer: Processor = (
        structlog.processors.JSONRenderer() if use_json else structlog.dev.ConsoleRenderer(colors=is_tty)
    )
    numeric_level = logging.getLevelNamesMapping()[level.upper()]

    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *_shared_chain(),
            structlog.stdlib.PositionalArgumentsFormatter(),
            *_finish_chain(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*_shared_chain(), *_finish_chain()],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
    )
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for existing in list(root.handlers):
        root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(numeric_level)
    logging.captureWarnings(True)
    for name, noisy_level in _NOISY_LOGGERS.items():
        logging.getLogger(name).setLevel(max(noisy_level, numeric_level))


def get_logger(name: str | None = None, **initial: Any) -> structlog.stdlib.BoundLogger:
    """A lazy logger: safe at import time, it renders with whatever configure_logging set later."""
    return structlog.stdlib.get_logger(name, **initial)


@contextmanager
def unit_of_work(**context: Any) -> Iterator[MutableMapping[str, Any]]:
    """Bind ids (job, series, association) to every log line emitted inside the block."""
    with structlog.contextvars.bound_contextvars(**context):
        yield context
