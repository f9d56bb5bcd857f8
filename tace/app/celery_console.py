"""What Celery's worker writes to the console outside logging, kept out of JSON logs.

The worker prints an ASCII banner, and its signal handlers print shutdown
notices straight to ``sys.__stdout__`` through ``celery.apps.worker.safe_say``.
Where logs are JSON lines (a log shipper reads them) each such line breaks the
parser, so the banner is switched off with Celery's ``--quiet`` and the notices
become log events. These are Celery internals; tests/tace/app/test_celery_console.py
fails if an upgrade moves them.
"""

from __future__ import annotations

from typing import IO

from celery.apps import worker as celery_worker

from tace.logging import get_logger

log = get_logger("celery.apps.worker")


def _say(message: str, stream: IO[str] | None = None) -> None:
    log.info(message.strip())


def json_only(arguments: list[str]) -> list[str]:
    """``celery worker`` arguments for a worker whose console output must be JSON lines only."""
    celery_worker.safe_say = _say
    return ["--quiet", *arguments]
