"""What every command shares: the Typer apps, the runtime (settings, database) and errors."""

from __future__ import annotations

import json
import signal
import threading
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from sqlalchemy.engine import Engine

from tace.settings import Settings, SettingsError, load_settings

EXIT_USAGE = 2
EXIT_NOT_FOUND = 1

app = typer.Typer(
    name="tace",
    help=(
        "TACE response gateway: DICOM and HL7 in, CLDCA prediction out as a DICOM SR.\n\n"
        "Research use only; not a medical device."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
jobs_app = typer.Typer(help="List, inspect and replay jobs.", no_args_is_help=True)
labs_app = typer.Typer(help="Import and show clinical values.", no_args_is_help=True)
model_app = typer.Typer(help="Model checkpoints: demo weights and metadata.", no_args_is_help=True)
db_app = typer.Typer(help="Database schema.", no_args_is_help=True)
bench_app = typer.Typer(help="Performance benchmarks (they print ratios).", no_args_is_help=True)
app.add_typer(jobs_app, name="jobs")
app.add_typer(labs_app, name="labs")
app.add_typer(model_app, name="model")
app.add_typer(db_app, name="db")
app.add_typer(bench_app, name="bench")


def fail(message: str, code: int = EXIT_USAGE) -> NoReturn:
    """One line on stderr and a non-zero exit, never a traceback."""
    typer.echo(f"tace: error: {message}", err=True)
    raise typer.Exit(code)


@dataclass
class Runtime:
    """What every command may need, built on first use so --help needs nothing."""

    config_file: Path | None
    log_level: str | None
    _settings: Settings | None = None
    _engine: Engine | None = field(default=None, repr=False)

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            overrides: dict[str, Any] = {}
            if self.log_level:
                overrides["log_level"] = self.log_level
            try:
                self._settings = load_settings(self.config_file, **overrides)
            except SettingsError as exc:
                fail(str(exc))
            from tace.process import init_process

            init_process(self._settings)
        return self._settings

    def configure(self) -> None:
        """Load settings and set up logging, for commands that need nothing else."""
        self.settings  # noqa: B018 - the property does the work

    def engine(self, *, upgrade: bool = True) -> Engine:
        """The database, checked and (by default) migrated to the current schema."""
        if self._engine is None:
            from tace.db import DatabaseUnavailable, check_database, make_engine
            from tace.schema import upgrade_schema

            engine = make_engine(self.settings.effective_database_url)
            try:
                check_database(engine)
                if upgrade:
                    upgrade_schema(engine)
            except DatabaseUnavailable as exc:
                fail(str(exc))
            self._engine = engine
        return self._engine


def runtime_of(ctx: typer.Context) -> Runtime:
    runtime = ctx.find_object(Runtime)
    assert runtime is not None
    return runtime


@app.callback()
def root(
    ctx: typer.Context,
    config: Annotated[
        Path | None,
        typer.Option("--config", "-c", help="TOML settings file (also TACE_CONFIG)."),
    ] = None,
    log_level: Annotated[
        str | None, typer.Option(help="debug, info, warning or error (also TACE_LOG_LEVEL).")
    ] = None,
) -> None:
    ctx.obj = Runtime(config_file=config, log_level=log_level)


def stop_on_signals() -> threading.Event:
    """An event set by SIGINT or SIGTERM, so loops finish their unit of work and exit."""
    stop = threading.Event()

    def handler(signum: int, _frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)
    return stop


def print_json(value: Any) -> None:
    from tace.app.admin import to_jsonable

    typer.echo(json.dumps(to_jsonable(value), indent=2))


def short_time(value: datetime | None) -> str:
    return value.astimezone().strftime("%Y-%m-%d %H:%M:%S") if value else "-"
