"""`tace hl7` (the MLLP listener) and `tace hl7 send` (a client to try it or replay captured messages)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from tace.app.cli.base import app, fail, runtime_of, stop_on_signals
from tace.app.cli.labs import feature_definitions

hl7_app = typer.Typer(
    help=(
        "Run the HL7 v2 MLLP listener for lab results (ORU^R01) until stopped; "
        "`tace hl7 send FILE...` is a client for it."
    ),
)
app.add_typer(hl7_app, name="hl7")


@hl7_app.callback(invoke_without_command=True)
def hl7_listen(ctx: typer.Context) -> None:
    """Run the HL7 v2 MLLP listener for lab results (ORU^R01) until stopped."""
    if ctx.invoked_subcommand is not None:
        return
    from hl7_clinical.codes import CodeMapError
    from hl7_clinical.service import serve
    from tace.app.cli.services import check_ports
    from tace.app.ports import unavailable_message

    runtime = runtime_of(ctx)
    settings = runtime.settings
    check_ports([(settings.bind_host, settings.hl7_port, "TACE_HL7_PORT")])
    definitions = feature_definitions(settings.feature_schema)
    engine = runtime.engine()
    stop = stop_on_signals()
    try:
        serve(settings, engine, definitions, stop)
    except CodeMapError as exc:
        fail(str(exc))
    except OSError as exc:
        fail(
            unavailable_message(settings.hl7_port, "TACE_HL7_PORT", exc)
            or f"cannot listen on port {settings.hl7_port} (TACE_HL7_PORT): {exc.strerror or exc}"
        )


@hl7_app.command("send")
def hl7_send(
    ctx: typer.Context,
    files: Annotated[
        list[Path], typer.Argument(help="Files of HL7 v2 messages (one or more per file, CR or LF endings).")
    ],
    host: Annotated[str, typer.Option(help="The MLLP listener's host.")] = "localhost",
    port: Annotated[int | None, typer.Option(help="Its port (default TACE_HL7_PORT).")] = None,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for each ACK.")] = 30.0,
    tls_ca: Annotated[
        Path | None, typer.Option(help="Use TLS, trusting the listener's certificate from this CA file.")
    ] = None,
    tls_cert: Annotated[Path | None, typer.Option(help="Client certificate (with --tls-ca).")] = None,
    tls_key: Annotated[Path | None, typer.Option(help="Key of the client certificate.")] = None,
) -> None:
    """Send HL7 messages over MLLP and print each ACK code; exit 1 when any is not accepted (AE, AR)."""
    import ssl

    from tace.app.mllp_client import MllpClientError, send, split_messages

    settings = runtime_of(ctx).settings
    target = port or settings.hl7_port
    batches: list[tuple[Path, list[bytes]]] = []
    for path in files:
        try:
            messages = split_messages(path.read_bytes())
        except OSError as exc:
            fail(f"{path}: {exc.strerror or exc}")
        if not messages:
            fail(f"{path}: no HL7 message in the file")
        batches.append((path, messages))
    tls = None
    if tls_ca is not None:
        try:
            tls = ssl.create_default_context(cafile=tls_ca)
            if tls_cert is not None:
                tls.load_cert_chain(tls_cert, tls_key)
        except (OSError, ssl.SSLError) as exc:
            fail(f"TLS files: {exc}")
    refused = 0
    try:
        for path, messages in batches:
            for ack in send(host, target, messages, timeout=timeout, tls=tls):
                detail = f" {ack.text}" if ack.text else ""
                typer.echo(f"{path}: {ack.control_id or '-'}: {ack.code}{detail}")
                refused += not ack.accepted
    except MllpClientError as exc:
        fail(f"{exc} (TACE_HL7_PORT, or --host/--port)")
    if refused:
        raise typer.Exit(1)
