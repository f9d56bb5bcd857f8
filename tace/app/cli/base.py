"""What every command shares: the Typer apps, the runtime (settings, database) and errors."""

from __future__ import annotations

import difflib
import enum
import json
import os
import signal
import threading
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from sqlalchemy.engine import Engine

from tace.settings import Settings, SettingsError, load_settings, unknown_variables

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
outcomes_app = typer.Typer(help="Import and link mRECIST outcomes.", no_args_is_help=True)
cohort_app = typer.Typer(help="Training cohorts from the gateway's own cases.", no_args_is_help=True)
bench_app = typer.Typer(help="Performance benchmarks (they print ratios).", no_args_is_help=True)
series_app = typer.Typer(
    help="Contrast phases of series, decided as the gateway does (to tune the rules).", no_args_is_help=True
)
app.add_typer(jobs_app, name="jobs")
app.add_typer(labs_app, name="labs")
app.add_typer(model_app, name="model")
app.add_typer(db_app, name="db")
app.add_typer(bench_app, name="bench")
app.add_typer(series_app, name="series")
app.add_typer(outcomes_app, name="outcomes")
app.add_typer(cohort_app, name="cohort")


def fail(message: str, code: int = EXIT_USAGE) -> NoReturn:
    """One line on stderr and a non-zero exit, never a traceback."""
    typer.echo(f"tace: error: {message}", err=True)
    raise typer.Exit(code)


@dataclass
class Runtime:
    """What every command may need, built on first use so --help needs nothing."""

    config_file: Path | None
    log_level: str | None
    command: str = ""
    """The running command without the program name (``jobs list``), which decides :class:`DataDirUse`."""
    _settings: Settings | None = None
    _engine: Engine | None = field(default=None, repr=False)

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            overrides: dict[str, Any] = {}
            if self.log_level:
                overrides["log_level"] = self.log_level
            try:
                settings = load_settings(self.config_file, **overrides)
            except SettingsError as exc:
                fail(str(exc))
            for name in unknown_variables(os.environ):
                warn(f"{name} is not a setting and is ignored{_did_you_mean(name, _SETTING_NAMES)}")
            check_required_features(settings)
            use = data_dir_use(self.command)
            if use is DataDirUse.existing and not gateway_exists(settings):
                fail(
                    f"no gateway data in {settings.data_dir} (TACE_DATA_DIR): start the gateway with "
                    "`tace up`, or point TACE_DATA_DIR (or --config) at the data dir of the one that runs"
                )
            from tace.process import init_process

            init_process(settings, data_dir=use is not DataDirUse.none or settings.data_dir.is_dir())
            self._settings = settings
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


class DataDirUse(enum.Enum):
    """What a command does with the data dir: make it, need an existing one, or use it if there."""

    create = "create"
    existing = "existing"
    none = "none"


DATA_DIR_USE: dict[str, DataDirUse] = {
    "up": DataDirUse.create,
    "listen": DataDirUse.create,
    "hl7": DataDirUse.create,
    "worker": DataDirUse.create,
    "relay": DataDirUse.create,
    "api": DataDirUse.create,
    "stow": DataDirUse.create,
    "db upgrade": DataDirUse.create,
    "labs import": DataDirUse.create,
    "labs show": DataDirUse.existing,
    "outcomes import": DataDirUse.create,
    "outcomes unlinked": DataDirUse.existing,
    "outcomes link": DataDirUse.existing,
    "model performance": DataDirUse.existing,
    "cohort export": DataDirUse.existing,
    "jobs list": DataDirUse.existing,
    "jobs show": DataDirUse.existing,
    "jobs replay": DataDirUse.existing,
    "hl7 send": DataDirUse.none,
    "example": DataDirUse.none,
    "model demo": DataDirUse.none,
    "model cohort": DataDirUse.none,
    "model info": DataDirUse.none,
    "train": DataDirUse.none,
    "evaluate": DataDirUse.none,
    "predict": DataDirUse.none,
    "bench model": DataDirUse.none,
    "bench ingest": DataDirUse.none,
    "bench hl7": DataDirUse.none,
    "bench pipeline": DataDirUse.none,
    "series classify": DataDirUse.none,
}
"""Every command, by its path without the program name; a test checks that none is missing."""

_SETTING_NAMES = sorted(f"TACE_{name.upper()}" for name in Settings.model_fields)


def data_dir_use(command: str) -> DataDirUse:
    return DATA_DIR_USE.get(command, DataDirUse.none)


def gateway_exists(settings: Settings) -> bool:
    """A gateway has run with this data dir: it exists, with its database when that is SQLite."""
    if not settings.data_dir.is_dir():
        return False
    return settings.database_url is not None or (settings.data_dir / "tace.db").is_file()


def warn(message: str) -> None:
    typer.echo(f"tace: warning: {message}", err=True)


def _did_you_mean(name: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(name, choices, n=1, cutoff=0.75)
    return f" (did you mean {close[0]}?)" if close else ""


def check_required_features(settings: Settings) -> None:
    """Every name in TACE_REQUIRED_FEATURES must be a feature of the schema, or jobs wait for nothing."""
    if not settings.required_features:
        return
    from model.schema import DEFAULT_SCHEMA, FeatureSchema, SchemaError

    try:
        schema = FeatureSchema.load(settings.feature_schema)
    except (SchemaError, OSError) as exc:
        fail(f"TACE_FEATURE_SCHEMA: {exc}")
    names = [feature.name for feature in schema.features]
    unknown = [name for name in settings.required_features if name not in names]
    if unknown:
        source = settings.feature_schema or f"model/schemas/{DEFAULT_SCHEMA}"
        fail(
            f"TACE_REQUIRED_FEATURES: {', '.join(repr(u) for u in unknown)} "
            f"{'is not a feature' if len(unknown) == 1 else 'are not features'} of the schema "
            f"{schema.name}{_did_you_mean(unknown[0], names)}; the names are listed in {source}"
        )


def runtime_of(ctx: typer.Context) -> Runtime:
    runtime = ctx.find_object(Runtime)
    assert runtime is not None
    runtime.command = ctx.command_path.partition(" ")[2]
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
