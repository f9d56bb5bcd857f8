"""Long-running services: `tace listen`."""

from __future__ import annotations

from typing import Annotated

import typer

from tace.cli.base import app, runtime_of, stop_on_signals


@app.command()
def listen(
    ctx: typer.Context,
    processes: Annotated[
        int | None, typer.Option(help="Receiving processes sharing the port (TACE_LISTENER_PROCESSES).")
    ] = None,
) -> None:
    """Run the DICOM listener (C-STORE SCP), series completion and the relay until stopped."""
    from listener.service import serve

    runtime = runtime_of(ctx)
    settings = runtime.settings
    if processes is not None:
        settings = settings.model_copy(update={"listener_processes": processes})
    engine = runtime.engine()
    stop = stop_on_signals()
    serve(settings, engine, stop)
