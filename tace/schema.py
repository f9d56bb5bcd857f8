"""Schema creation and migration (Alembic), callable from the CLI and at start-up.

Several processes may start at once against the same database (``tace up``, a
compose deployment), so upgrades are serialised: a PostgreSQL advisory lock on
servers, a file lock beside the SQLite database file.
"""

from __future__ import annotations

import fcntl
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection, Engine

_MIGRATIONS = Path(__file__).parent / "migrations"
_ADVISORY_LOCK_KEY = 0x7ACE


def _config(connection: Connection) -> Config:
    config = Config()
    config.set_main_option("script_location", str(_MIGRATIONS))
    config.attributes["connection"] = connection
    return config


@contextmanager
def _serialised(engine: Engine) -> Iterator[Connection]:
    if engine.dialect.name == "sqlite":
        database = engine.url.database
        lock_path = Path(f"{database}.migrate-lock") if database and database != ":memory:" else None
        if lock_path is None:
            with engine.begin() as connection:
                yield connection
            return
        with lock_path.open("a") as lock_file:
            fcntl.flock(lock_file, fcntl.LOCK_EX)
            try:
                with engine.begin() as connection:
                    yield connection
            finally:
                fcntl.flock(lock_file, fcntl.LOCK_UN)
        return
    with engine.begin() as connection:
        connection.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _ADVISORY_LOCK_KEY})
        yield connection


def upgrade_schema(engine: Engine, revision: str = "head") -> None:
    with _serialised(engine) as connection:
        command.upgrade(_config(connection), revision)


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def head_revision() -> str | None:
    config = Config()
    config.set_main_option("script_location", str(_MIGRATIONS))
    return ScriptDirectory.from_config(config).get_current_head()
