"""Database and relay commands."""

from __future__ import annotations

import typer

from tace.app.cli.base import app, db_app, runtime_of, stop_on_signals


@db_app.command("upgrade")
def db_upgrade(ctx: typer.Context) -> None:
    """Create or migrate the schema to the current version."""
    from tace.db import describe
    from tace.schema import current_revision

    engine = runtime_of(ctx).engine(upgrade=True)
    typer.echo(f"database {describe(engine)} at revision {current_revision(engine)}")


@app.command()
def relay(ctx: typer.Context) -> None:
    """Publish committed jobs to the broker and re-publish lost ones (runs until stopped)."""
    from tace.queue import Publisher, make_celery
    from tace.relay import Relay

    runtime = runtime_of(ctx)
    settings = runtime.settings
    engine = runtime.engine()
    stop = stop_on_signals()
    Relay(
        engine,
        Publisher(make_celery(settings)),
        stall_seconds=settings.job_stall_seconds,
    ).run(stop, settings.relay_interval_seconds)
