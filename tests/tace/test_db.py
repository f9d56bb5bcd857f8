from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlmodel import select

from tace.db import Job, JobState, UTCDateTime, make_engine, session_scope, utcnow
from tace.schema import current_revision, head_revision
from tests.factories import add_jobs
from tests.support.processes import tace_env

TABLES = {"study", "series", "instance", "job", "jobevent", "labobservation", "prediction"}


def test_schema_is_at_head_with_every_table(engine: Engine) -> None:
    assert current_revision(engine) == head_revision()
    assert TABLES <= set(sa.inspect(engine).get_table_names())


def test_timestamps_round_trip_as_aware_utc(engine: Engine) -> None:
    (job_id,) = add_jobs(engine, 1)
    with session_scope(engine) as session:
        job = session.get(Job, job_id)
        assert job is not None
        assert job.created_at.tzinfo is not None
        assert abs((utcnow() - job.created_at).total_seconds()) < 60
        assert job.state == JobState.received


def test_naive_datetime_is_refused_for_utc_columns() -> None:
    import datetime as dt

    import pytest

    with pytest.raises(ValueError, match="naive"):
        UTCDateTime().process_bind_param(dt.datetime(2026, 1, 1), sa.dialects.sqlite.dialect())


def test_sqlite_runs_in_wal_mode_with_full_sync(sqlite_engine: Engine) -> None:
    with sqlite_engine.connect() as connection:
        assert connection.execute(sa.text("PRAGMA journal_mode")).scalar() == "wal"
        assert connection.execute(sa.text("PRAGMA synchronous")).scalar() == 2


def _db_upgrade(data_dir: Path, database_url: str | None) -> subprocess.CompletedProcess[str]:
    settings = {"data_dir": data_dir}
    if database_url:
        settings["database_url"] = database_url
    return subprocess.run(
        [sys.executable, "-m", "tace", "db", "upgrade"],
        env=tace_env(**settings),
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_cli_db_upgrade_creates_schema_on_sqlite(data_dir: Path) -> None:
    result = _db_upgrade(data_dir, None)
    assert result.returncode == 0, result.stderr
    assert f"at revision {head_revision()}" in result.stdout
    engine = make_engine(f"sqlite:///{data_dir / 'tace.db'}")
    assert TABLES <= set(sa.inspect(engine).get_table_names())


def test_cli_db_upgrade_creates_schema_on_postgresql(data_dir: Path, postgres_url: str) -> None:
    result = _db_upgrade(data_dir, postgres_url)
    assert result.returncode == 0, result.stderr
    engine = make_engine(postgres_url)
    try:
        assert TABLES <= set(sa.inspect(engine).get_table_names())
        with session_scope(engine) as session:
            assert session.exec(select(Job)).all() == []
    finally:
        engine.dispose()


def test_cli_reports_unreachable_database_in_one_line(data_dir: Path) -> None:
    result = _db_upgrade(data_dir, "postgresql://nobody@127.0.0.1:1/none")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(
        "tace: error: database postgresql+psycopg://nobody@127.0.0.1:1/none is unreachable"
    )
    assert "Traceback" not in result.stderr


def test_migrations_match_the_models(engine: Engine) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    from tace.db import metadata

    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        assert compare_metadata(context, metadata) == []
