"""Long-running services: `tace listen`."""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Annotated

import typer

from tace.app.cli.base import app, bench_app, fail, runtime_of, stop_on_signals
from tace.settings import Settings


@app.command()
def listen(
    ctx: typer.Context,
    processes: Annotated[
        int | None, typer.Option(help="Receiving processes sharing the port (TACE_LISTENER_PROCESSES).")
    ] = None,
    relay: Annotated[
        bool, typer.Option(help="Also run the outbox relay (off when it runs as its own service).")
    ] = True,
) -> None:
    """Run the DICOM listener (C-STORE SCP), series completion and the relay until stopped."""
    from listener.service import serve
    from tace.app.ports import unavailable_message

    runtime = runtime_of(ctx)
    settings = runtime.settings
    if processes is not None:
        settings = settings.model_copy(update={"listener_processes": processes})
    check_ports([(settings.bind_host, settings.dicom_port, "TACE_DICOM_PORT")])
    engine = runtime.engine()
    stop = stop_on_signals()
    try:
        serve(settings, engine, stop, relay=relay)
    except OSError as exc:
        message = unavailable_message(settings.dicom_port, "TACE_DICOM_PORT", exc)
        if message is None:
            raise
        fail(message)


@bench_app.command("ingest")
def bench_ingest(
    ctx: typer.Context,
    slices: Annotated[int, typer.Option(help="Slices per series (512x512).")] = 100,
    parallel: Annotated[
        str, typer.Option(help="Comma-separated numbers of simultaneous associations.")
    ] = "1,2",
    processes: Annotated[str, typer.Option(help="Comma-separated listener process counts to try.")] = "1,2",
    rounds: Annotated[int, typer.Option(help="Repetitions; the median is reported.")] = 3,
) -> None:
    """Instances/s of `tace listen` against a bare pynetdicom write+fsync SCP and DCMTK storescp."""
    from tace.app.bench.ingest import run_ingest_benchmark
    from tace.app.cli.progress import progress_bars

    runtime = runtime_of(ctx)
    runtime.configure()
    try:
        with progress_bars() as report:
            lines = list(
                run_ingest_benchmark(
                    slices=slices,
                    parallel=[int(p) for p in parallel.split(",")],
                    processes=[int(p) for p in processes.split(",")],
                    rounds=rounds,
                    database_url=runtime.settings.database_url,
                    progress=report,
                )
            )
    except (FileNotFoundError, RuntimeError, TimeoutError) as exc:
        fail(str(exc))
    for line in lines:
        typer.echo(line)


@app.command()
def worker(
    ctx: typer.Context,
    queues: Annotated[
        str, typer.Option(help="infer (GPU/CPU model work), send (PACS delivery), or both.")
    ] = "infer,send",
    concurrency: Annotated[int, typer.Option(min=1, help="Jobs at once (1: solo pool, CUDA-safe).")] = 1,
    name: Annotated[str, typer.Option(help="Worker name as Celery reports it.")] = "tace@%h",
    events: Annotated[
        bool, typer.Option(help="Send task events and heartbeats for monitors such as Flower (Redis).")
    ] = False,
) -> None:
    """Run a worker that turns completed series into SRs in the PACS (until stopped)."""
    from tace.app import celery_console
    from tace.logging import renders_json
    from worker.context import WorkerContext, ensure_checkpoint
    from worker.tasks import build_app, worker_arguments

    runtime = runtime_of(ctx)
    settings = runtime.settings
    context = WorkerContext(settings, runtime.engine())
    try:
        arguments = worker_arguments(
            [q.strip() for q in queues.split(",") if q.strip()],
            concurrency,
            settings.log_level,
            name,
            events=events,
        )
    except ValueError as exc:
        fail(str(exc))
    if "infer" in queues:
        ensure_checkpoint(settings)
        context.warm_up()
    if renders_json():
        arguments = celery_console.json_only(arguments)
    build_app(context).worker_main(arguments)


@bench_app.command("pipeline")
def bench_pipeline(
    ctx: typer.Context,
    series: Annotated[int, typer.Option(min=2, help="Series to run through the pipeline.")] = 4,
    slices: Annotated[int, typer.Option(help="Slices per series (512x512).")] = 100,
    device: Annotated[str | None, typer.Option(help="auto, cpu or cuda (default TACE_DEVICE).")] = None,
    decode_processes: Annotated[int, typer.Option(help="Decode in this many processes (0: threads).")] = 0,
    model_slices: Annotated[
        int | None, typer.Option(min=1, help="Slices the model reads (all are decoded); default every slice.")
    ] = None,
) -> None:
    """Series/s from stored series to SR bytes, the per-stage breakdown and goal 3's budgets (PASS/FAIL)."""
    from tace.app.bench.pipeline import run_pipeline_benchmark
    from tace.app.cli.progress import progress_bars
    from worker.context import decode_pool

    settings = runtime_of(ctx).settings
    settings = settings.model_copy(update={"worker_decode_processes": decode_processes})
    pool = decode_pool(settings)
    name = (
        f"{decode_processes} processes" if decode_processes else f"{settings.worker_decode_threads} threads"
    )
    with progress_bars() as report:
        lines = list(
            run_pipeline_benchmark(
                series=series,
                slices=slices,
                device=device or settings.device,
                pool=pool,
                pool_name=name,
                pool_workers=decode_processes or settings.worker_decode_threads,
                model_slices=model_slices,
                compile_mode=settings.compile,
                progress=report,
            )
        )
    for line in lines:
        typer.echo(line)


@app.command()
def api(ctx: typer.Context) -> None:
    """Run the admin API, web page, /metrics and /healthz on TACE_API_PORT (until stopped)."""
    import uvicorn

    from tace.app import ports
    from tace.app.api.app import create_app

    runtime = runtime_of(ctx)
    settings = runtime.settings
    try:
        sock = ports.bind(settings.api_bind_host, settings.api_port, "TACE_API_PORT")
    except ports.PortUnavailable as exc:
        fail(str(exc))
    config = uvicorn.Config(create_app(settings, runtime.engine()), log_config=None, access_log=False)
    with sock:
        uvicorn.Server(config).run(sockets=[sock])


@app.command()
def stow(ctx: typer.Context) -> None:
    """Run the STOW-RS (DICOMweb store) endpoint on TACE_STOW_PORT until stopped.

    Senders need TACE_STOW_TOKEN, or a client certificate from TACE_STOW_TLS_CA.
    """
    import uvicorn

    from listener.staging import remove_dead_folders
    from listener.stow import create_stow_app, credential_problem
    from tace.app import ports
    from tace.storage import Storage

    runtime = runtime_of(ctx)
    settings = runtime.settings
    problem = credential_problem(settings)
    if problem is not None:
        fail(problem)
    storage = Storage(settings.data_dir)
    storage.ensure()
    remove_dead_folders(storage.staging_dir)
    stow_app = create_stow_app(settings, runtime.engine())
    try:
        sock = ports.bind(settings.bind_host, settings.stow_port, "TACE_STOW_PORT")
    except ports.PortUnavailable as exc:
        fail(str(exc))
    config = uvicorn.Config(
        stow_app,
        log_config=None,
        access_log=False,
        ssl_certfile=settings.stow_tls_cert,
        ssl_keyfile=settings.stow_tls_key,
        ssl_ca_certs=str(settings.stow_tls_ca) if settings.stow_tls_ca else None,
        ssl_cert_reqs=ssl.CERT_REQUIRED if settings.stow_tls_require_client_cert else ssl.CERT_NONE,
    )
    with sock:
        uvicorn.Server(config).run(sockets=[sock])


@app.command()
def up(ctx: typer.Context) -> None:
    """Start everything on one machine: listener, HL7 feed, worker, relay and admin API (Ctrl-C stops)."""
    import os
    import shutil

    from model.checkpoint import CheckpointError, read_meta
    from tace.app.api.auth import operator_token
    from tace.app.cli.progress import progress_bars
    from tace.app.supervisor import GaveUp, Service, Supervisor
    from tace.storage import Storage
    from worker.context import checkpoint_path, demo_cache_path, ensure_checkpoint

    runtime = runtime_of(ctx)
    settings = runtime.settings
    services = [
        Service("listener", ("listen",), settings.dicom_port, "TACE_DICOM_PORT", stop_seconds=20),
        Service("hl7", ("hl7",), settings.hl7_port, "TACE_HL7_PORT", stop_seconds=20),
        Service("worker", ("worker", "--name", "up@%h"), stop_seconds=120),
        Service("api", ("api",), settings.api_port, "TACE_API_PORT", stop_seconds=10),
    ]
    if settings.stow_enabled:
        services.append(Service("stow", ("stow",), settings.stow_port, "TACE_STOW_PORT", stop_seconds=10))
    check_ports(
        [
            (settings.api_bind_host if s.name == "api" else settings.bind_host, s.port, s.setting)
            for s in services
            if s.port and s.setting
        ]
    )
    engine = runtime.engine()
    engine.dispose()
    Storage(settings.data_dir).ensure()
    shutil.rmtree(settings.data_dir / "metrics", ignore_errors=True)
    if settings.model_checkpoint is None and not checkpoint_path(settings).exists():
        cache = demo_cache_path()
        typer.echo(
            f"first start: copying the demo model from {cache}"
            if cache.exists()
            else "first start: training the demo model on synthetic data (a few minutes on a small CPU; "
            f"kept in {cache.parent} for every later data dir)..."
        )
    with progress_bars() as report:
        checkpoint = ensure_checkpoint(settings, progress=report)
    try:
        demo = read_meta(checkpoint).demo
    except (CheckpointError, OSError) as exc:
        fail(f"model checkpoint {checkpoint}: {exc}")
    token = operator_token(settings)
    env = dict(os.environ)
    if runtime.config_file is not None:
        env["TACE_CONFIG"] = str(runtime.config_file.absolute())
    env.setdefault("TACE_DATA_DIR", str(settings.data_dir))
    supervisor = Supervisor(services, env, settings.data_dir / "logs")
    stop = stop_on_signals()
    supervisor.start()
    problems = supervisor.wait_ready(timeout=120, stop=stop)
    if problems:
        supervisor.shutdown()
        fail(f"not ready: {'; '.join(problems)} (logs in {settings.data_dir / 'logs'})")
    if not stop.is_set():
        print_banner(settings, checkpoint, demo, token)
    try:
        supervisor.supervise(stop)
    except GaveUp as exc:
        supervisor.shutdown()
        fail(str(exc), code=1)
    except BaseException:
        supervisor.shutdown()
        raise
    typer.echo("stopping: letting the worker finish the job in hand...")
    supervisor.shutdown()
    typer.echo("stopped")


def print_banner(settings: Settings, checkpoint: Path, demo: bool, token: str) -> None:
    """Where everything listens, then `ready` (scripts and tests wait for that word)."""
    flag = " DEMO model (synthetic training data)" if demo else ""
    stow_line = (
        f"  STOW-RS  http://<host>:{settings.stow_port}/dicomweb/studies\n" if settings.stow_enabled else ""
    )
    destinations = (
        ", ".join(str(d) for d in settings.destinations) or "none: SRs are kept on disk and listed by the API"
    )
    typer.echo(
        f"TACE gateway - research use only.{flag}\n"
        f"  DICOM    AE {settings.ae_title} on port {settings.dicom_port}\n"
        f"  HL7      MLLP on port {settings.hl7_port}\n"
        f"{stow_line}"
        f"  admin    http://localhost:{settings.api_port}/  (token: {token})\n"
        f"  metrics  http://localhost:{settings.api_port}/metrics\n"
        f"  model    {checkpoint}\n"
        f"  SRs to   {destinations}\n"
        f"  data     {settings.data_dir} (logs in {settings.data_dir / 'logs'})\n"
        "ready"
    )


def check_ports(wanted: list[tuple[str, int, str]]) -> None:
    """Stop with one line before anything starts if a (host, port, setting) is taken, or two share a port."""
    from tace.app import ports

    seen: dict[int, str] = {}
    for host, port, setting in wanted:
        if port in seen:
            fail(f"{seen[port]} and {setting} are both {port}: give each service its own port")
        seen[port] = setting
        try:
            ports.ensure_free(host, port, setting)
        except ports.PortUnavailable as exc:
            fail(str(exc))
