"""`/healthz`: the database, the broker and the storage, each checked for real."""

from __future__ import annotations

import os
import uuid
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from tace.queue import make_celery
from tace.settings import Settings
from tace.storage import Storage


def check_database(engine: Engine) -> str | None:
    try:
        with engine.connect() as connection:
            connection.execute(sa.text("SELECT 1"))
    except sa.exc.SQLAlchemyError as exc:
        return str(getattr(exc, "orig", exc) or exc).splitlines()[0]
    return None


def check_broker(settings: Settings) -> str | None:
    app = make_celery(settings)
    try:
        with app.connection_for_write() as connection:
            connection.ensure_connection(max_retries=1, timeout=3)
    except Exception as exc:  # noqa: BLE001 - kombu raises transport-specific errors
        return f"{exc.__class__.__name__}: {exc}"
    return None


def check_storage(settings: Settings) -> str | None:
    storage = Storage(settings.data_dir)
    probe = storage.staging_dir / f".health-{uuid.uuid4().hex}"
    try:
        storage.staging_dir.mkdir(parents=True, exist_ok=True)
        with probe.open("wb") as handle:
            handle.write(b"ok")
            handle.flush()
            os.fsync(handle.fileno())
        probe.unlink()
        free = storage.free_bytes()
    except OSError as exc:
        return f"{exc.strerror or exc}"
    if free < settings.min_free_bytes:
        return f"free space {free} bytes is below the watermark {settings.min_free_bytes}"
    return None


def health(settings: Settings, engine: Engine) -> tuple[bool, dict[str, Any]]:
    checks = {
        "database": check_database(engine),
        "broker": check_broker(settings),
        "storage": check_storage(settings),
    }
    healthy = all(problem is None for problem in checks.values())
    return healthy, {name: ("ok" if problem is None else problem) for name, problem in checks.items()}
