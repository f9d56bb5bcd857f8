"""Long-running services: `tace listen`."""

from __future__ import annotations

from typing import Annotated

import typer

from tace.cli.base import app, bench_app, runtime_of, stop_on_signals


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


@bench_app.command("ingest")
def bench_ingest(
    ctx: typer.Context,
    slices: Annotated[int, typer.Option(help="Slices per series (512x512).")] = 100,
    parallel: Annotated[
        str, typer.Option(help="Comma-separated numbers of simultaneous associations.")
    ] = "1,2,4",
    processes: Annotated[str, typer.Option(help="Comma-separated listener process counts to try.")] = "1,2",
    rounds: Annotated[int, typer.Option(help="Repetitions; the median is reported.")] = 3,
) -> None:
    """Instances/s and MB/s of `tace listen` against DCMTK storescp, and their ratio."""
    from listener.bench import run_ingest_benchmark
    from tace.cli.base import fail
    from tace.cli.progress import progress_bars

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
) -> None:
    """Run a worker that turns completed series into SRs in the PACS (until stopped)."""
    from tace.cli.base import fail
    from worker.context import WorkerContext, ensure_checkpoint
    from worker.tasks import build_app, worker_arguments

    runtime = runtime_of(ctx)
    settings = runtime.settings
    context = WorkerContext(settings, runtime.engine())
    try:
        arguments = worker_arguments(
            [q.strip() for q in queues.split(",") if q.strip()], concurrency, settings.log_level, name
        )
    except ValueError as exc:
        fail(str(exc))
    if "infer" in queues:
        ensure_checkpoint(settings)
    build_app(context).worker_main(arguments)


@bench_app.command("pipeline")
def bench_pipeline(
    ctx: typer.Context,
    series: Annotated[int, typer.Option(min=2, help="Series to run through the pipeline.")] = 4,
    slices: Annotated[int, typer.Option(help="Slices per series (512x512).")] = 100,
    device: Annotated[str | None, typer.Option(help="auto, cpu or cuda (default TACE_DEVICE).")] = None,
    decode_processes: Annotated[int, typer.Option(help="Decode in this many processes (0: threads).")] = 0,
) -> None:
    """Series/s from stored series to SR bytes, with the per-stage breakdown."""
    from tace.cli.progress import progress_bars
    from worker.bench import run_pipeline_benchmark
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
                progress=report,
            )
        )
    for line in lines:
        typer.echo(line)
