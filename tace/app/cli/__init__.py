"""The one command line, ``tace``: it wires the packages together.

It belongs to the app wing, the only part of ``tace`` allowed to import the
feature packages, and it imports them inside the commands that need them, so
``tace listen`` never loads torch and ``tace --help`` stays fast.
"""

from __future__ import annotations

import sys

import typer

from tace.app.cli import example, hl7cmd, jobs, labs, modelcmd, ops, outcomes, series, services
from tace.app.cli.base import app


def main(args: list[str] | None = None) -> None:
    """Console entry point; ``args`` lets tests run the CLI in-process."""
    command = typer.main.get_command(app)
    try:
        command.main(args=args, prog_name="tace", standalone_mode=True)
    except KeyboardInterrupt:
        sys.exit(130)


__all__ = [
    "app",
    "example",
    "hl7cmd",
    "jobs",
    "labs",
    "main",
    "modelcmd",
    "ops",
    "outcomes",
    "series",
    "services",
]
