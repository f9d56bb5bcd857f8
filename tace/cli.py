"""The one command line, ``tace``: it wires the packages together.

This is the only module of the kernel allowed to import the feature packages, and
it imports them inside the commands that need them, so ``tace listen`` never loads
torch and ``tace --help`` stays fast.
"""

from __future__ import annotations

import json
import signal
import sys
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
app.add_typer(jobs_app, name="jobs")
app.add_typer(labs_app, name="labs")
app.add_typer(model_app, name="model")
app.add_typer(db_app, name="db")


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
            from tace import phi
            from tace.logging import configure_logging

            configure_logging(self._settings.log_level, self._settings.log_format)
            phi.load_hash_key(self._settings.data_dir)
        return self._settings

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


def _runtime(ctx: typer.Context) -> Runtime:
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


def _stop_on_signals() -> threading.Event:
    """An event set by SIGINT or SIGTERM, so loops finish their unit of work and exit."""
    stop = threading.Event()

    def handler(signum: int, _frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)
    return stop


# --- database --------------------------------------------------------------------------


@db_app.command("upgrade")
def db_upgrade(ctx: typer.Context) -> None:
    """Create or migrate the schema to the current version."""
    from tace.db import describe
    from tace.schema import current_revision

    engine = _runtime(ctx).engine(upgrade=True)
    typer.echo(f"database {describe(engine)} at revision {current_revision(engine)}")


# --- relay -----------------------------------------------------------------------------


@app.command()
def relay(ctx: typer.Context) -> None:
    """Publish committed jobs to the broker and re-publish lost ones (runs until stopped)."""
    from tace.queue import Publisher, make_celery
    from tace.relay import Relay

    runtime = _runtime(ctx)
    settings = runtime.settings
    engine = runtime.engine()
    stop = _stop_on_signals()
    Relay(
        engine,
        Publisher(make_celery(settings)),
        stall_seconds=settings.job_stall_seconds,
    ).run(stop, settings.relay_interval_seconds)


# --- jobs ------------------------------------------------------------------------------


def _print_json(value: Any) -> None:
    from tace.admin import to_jsonable

    typer.echo(json.dumps(to_jsonable(value), indent=2))


def _short_time(value: datetime | None) -> str:
    return value.astimezone().strftime("%Y-%m-%d %H:%M:%S") if value else "-"


@jobs_app.command("list")
def jobs_list(
    ctx: typer.Context,
    state: Annotated[
        str | None, typer.Option(help="Only jobs in this state (e.g. failed, queued).")
    ] = None,
    since: Annotated[
        datetime | None, typer.Option(help="Only jobs updated at or after this time.")
    ] = None,
    patient_hash: Annotated[str | None, typer.Option(help="Only this patient's jobs.")] = None,
    limit: Annotated[int, typer.Option(min=1, help="At most this many, newest first.")] = 100,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """List jobs, newest first."""
    from tace.admin import list_jobs
    from tace.db import JobState, session_scope

    wanted: JobState | None = None
    if state is not None:
        try:
            wanted = JobState(state)
        except ValueError:
            fail(f"unknown state {state!r}; states: {', '.join(s.value for s in JobState)}")
    if since is not None and since.tzinfo is None:
        since = since.astimezone()
    with session_scope(_runtime(ctx).engine()) as session:
        jobs = list_jobs(session, state=wanted, since=since, patient_hash=patient_hash, limit=limit)
    if as_json:
        _print_json(jobs)
        return
    if not jobs:
        typer.echo("no jobs")
        return
    typer.echo(f"{'ID':>6}  {'STATE':<17} {'STAGE':<6} {'TRY':>3}  {'UPDATED':<19}  SERIES")
    for job in jobs:
        line = (
            f"{job.id:>6}  {job.state:<17} {job.stage:<6} {job.attempts:>3}  "
            f"{_short_time(job.updated_at):<19}  {job.series_instance_uid}"
        )
        if job.error:
            line += f"  ({job.error})"
        typer.echo(line)


@jobs_app.command("show")
def jobs_show(
    ctx: typer.Context,
    job_id: Annotated[int, typer.Argument(help="Job id, as in `tace jobs list`.")],
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Show one job: its series, timeline, error and prediction."""
    from tace.admin import job_detail
    from tace.db import session_scope

    with session_scope(_runtime(ctx).engine()) as session:
        detail = job_detail(session, job_id)
    if detail is None:
        fail(f"no job {job_id}", EXIT_NOT_FOUND)
    if as_json:
        _print_json(detail)
        return
    job = detail.job
    typer.echo(f"job {job.id}  {job.state} (stage {job.stage}, generation {job.generation})")
    typer.echo(
        f"  series   {job.series_instance_uid} ({detail.modality or '?'}, "
        f"{detail.instance_count} instances)"
    )
    typer.echo(f"  study    {detail.study_instance_uid}")
    typer.echo(f"  patient  {job.patient_hash}")
    typer.echo(f"  attempts {job.attempts}, published {detail.publish_count} time(s)")
    if job.error:
        typer.echo(f"  error    {job.error}")
    if detail.superseded_by_id:
        typer.echo(f"  superseded by job {detail.superseded_by_id}")
    typer.echo("  timeline")
    for event in detail.events:
        suffix = f"  {event.detail}" if event.detail else ""
        typer.echo(f"    {_short_time(event.at)}  {event.state:<17} {event.stage:<6}{suffix}")
    if detail.prediction:
        p = detail.prediction
        typer.echo(
            f"  prediction {p['label']} (p={p['probability']:.3f}) by {p['model_name']} "
            f"{p['model_version']}"
        )
        if p.get("sr_sop_instance_uid"):
            typer.echo(f"  SR       {p['sr_sop_instance_uid']}")


# --- commands that later work adds -----------------------------------------------------

_PENDING = "not available yet"


def _pending(typer_app: typer.Typer, name: str, summary: str) -> None:
    def command() -> None:
        fail(f"`{name}` is {_PENDING} in this version")

    command.__doc__ = f"({_PENDING}) {summary}"
    typer_app.command(
        name.split()[-1],
        context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    )(command)


for _app, _name, _summary in (
    (app, "up", "Start everything on one machine with embedded defaults."),
    (app, "listen", "Run the DICOM listener (C-STORE SCP) and the relay."),
    (app, "hl7", "Run the HL7 v2 MLLP listener for lab results."),
    (app, "worker", "Run a worker that turns series into SRs."),
    (app, "train", "Train CLDCA with k-fold cross-validation on a manifest."),
    (app, "evaluate", "Evaluate a checkpoint on a manifest."),
    (app, "bench", "Run a performance benchmark."),
    (app, "api", "Run the admin API and web page."),
    (app, "predict", "Predict one series folder without services."),
    (jobs_app, "jobs replay", "Re-run jobs from a stage."),
    (labs_app, "labs import", "Import clinical values from a CSV file."),
    (labs_app, "labs show", "Show a patient's clinical features at a date."),
    (model_app, "model demo", "Write a demo checkpoint trained on synthetic data."),
    (model_app, "model info", "Show a checkpoint's metadata and parameter counts."),
):
    _pending(_app, _name, _summary)


def main(args: list[str] | None = None) -> None:
    """Console entry point; ``args`` lets tests run the CLI in-process."""
    command = typer.main.get_command(app)
    try:
        command.main(args=args, prog_name="tace", standalone_mode=True)
    except KeyboardInterrupt:
        sys.exit(130)


__all__ = ["app", "main"]
