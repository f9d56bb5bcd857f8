"""`tace jobs`: what administrators look at when a case did not arrive."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

import typer

from tace.app.cli.base import EXIT_NOT_FOUND, fail, jobs_app, print_json, runtime_of, short_time


@jobs_app.command("list")
def jobs_list(
    ctx: typer.Context,
    state: Annotated[str | None, typer.Option(help="Only jobs in this state (e.g. failed, queued).")] = None,
    since: Annotated[datetime | None, typer.Option(help="Only jobs updated at or after this time.")] = None,
    patient_hash: Annotated[str | None, typer.Option(help="Only this patient's jobs.")] = None,
    limit: Annotated[int, typer.Option(min=1, help="At most this many, newest first.")] = 100,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """List jobs, newest first."""
    from tace.app.admin import list_jobs
    from tace.db import JobState, session_scope

    wanted: JobState | None = None
    if state is not None:
        try:
            wanted = JobState(state)
        except ValueError:
            fail(f"unknown state {state!r}; states: {', '.join(s.value for s in JobState)}")
    if since is not None and since.tzinfo is None:
        since = since.astimezone()
    with session_scope(runtime_of(ctx).engine()) as session:
        jobs = list_jobs(session, state=wanted, since=since, patient_hash=patient_hash, limit=limit)
    if as_json:
        print_json(jobs)
        return
    if not jobs:
        typer.echo("no jobs")
        return
    typer.echo(f"{'ID':>6}  {'STATE':<17} {'STAGE':<6} {'TRY':>3}  {'UPDATED':<19}  SERIES")
    for job in jobs:
        line = (
            f"{job.id:>6}  {job.state:<17} {job.stage:<6} {job.attempts:>3}  "
            f"{short_time(job.updated_at):<19}  {job.series_instance_uid}"
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
    """Show one job: its study, the phase decision per series, timeline, error, prediction and deliveries."""
    from tace.app.admin import deliveries, job_detail, state_words, to_jsonable
    from tace.db import session_scope

    with session_scope(runtime_of(ctx).engine()) as session:
        detail = job_detail(session, job_id)
        sent = deliveries(session, job_id)
    if detail is None:
        fail(f"no job {job_id}", EXIT_NOT_FOUND)
    if as_json:
        print_json({**to_jsonable(detail), "deliveries": sent})
        return
    job = detail.job
    typer.echo(f"job {job.id}  {state_words(job.state)} (stage {job.stage}, generation {job.generation})")
    typer.echo(
        f"  series   {job.series_instance_uid} ({detail.modality or '?'}, {detail.instance_count} instances)"
    )
    typer.echo(f"  study    {detail.study_instance_uid}")
    typer.echo(f"  patient  {job.patient_hash}")
    typer.echo(f"  attempts {job.attempts}, published {detail.publish_count} time(s)")
    if job.error:
        typer.echo(f"  error    {job.error}")
    if detail.superseded_by_id:
        typer.echo(f"  superseded by job {detail.superseded_by_id}")
    if detail.predecessor_job_id:
        typer.echo(f"  replaces job {detail.predecessor_job_id} (its SR is withdrawn when this one is sent)")
    if detail.no_sr_reason and detail.no_sr_reason != job.error:
        typer.echo(f"  no SR    {detail.no_sr_reason}")
    if detail.series_decisions:
        typer.echo("  series of the study (phase, confidence: evidence -> use)")
        for s in detail.series_decisions:
            number = "?" if s.series_number is None else s.series_number
            phase = f"{s.phase or '-'}, {s.confidence or '-'}: {s.evidence or '-'}"
            typer.echo(
                f"    {number:>4} {s.series_description or '(no description)'!r:<28} {phase} -> {s.reason}"
            )
    typer.echo("  timeline")
    for event in detail.events:
        suffix = f"  {event.detail}" if event.detail else ""
        typer.echo(f"    {short_time(event.at)}  {event.state:<17} {event.stage:<6}{suffix}")
    if detail.prediction:
        p = detail.prediction
        typer.echo(
            f"  prediction {p['label']} (p={detail.probability}) by {p['model_name']} {p['model_version']}"
        )
        typer.echo(f"  clinical {detail.clinical_missing}")
        for used in detail.features_used:
            observed = f"observed {used.observed_at}" if used.observed_at else "no observation date"
            typer.echo(f"    {used.label}: {used.value} {used.unit or ''} ({observed}; {used.source})")
        if p.get("sr_sop_instance_uid"):
            typer.echo(f"  SR       {p['sr_sop_instance_uid']}")
    if sent:
        typer.echo("  deliveries (object -> destination: state, attempts, detail)")
        for d in sent:
            where = f"{d['channel']} -> {d['destination']}"
            typer.echo(f"    {where}: {d['state']}, {d['attempts']}, {d['detail'] or '-'}")


@jobs_app.command("replay")
def jobs_replay(
    ctx: typer.Context,
    job_id: Annotated[int | None, typer.Argument(help="Job id to replay.")] = None,
    series: Annotated[
        str | None, typer.Option(help="Replay the current job of this SeriesInstanceUID.")
    ] = None,
    state: Annotated[str | None, typer.Option(help="Replay every job in this state (e.g. failed).")] = None,
    from_stage: Annotated[
        str, typer.Option(help="infer (model and SR again) or send (SR to the PACS again).")
    ] = "infer",
    new_generation: Annotated[
        bool, typer.Option(help="New SR UIDs: the PACS gets a second, superseding SR. Off by default.")
    ] = False,
) -> None:
    """Re-run jobs from a stage; the relay publishes them."""
    from tace.app.cli.progress import progress_bars
    from tace.app.replay import ReplayRefused, replay_job, select_jobs
    from tace.db import JobState, Stage

    if sum(x is not None for x in (job_id, series, state)) != 1:
        fail("give exactly one of JOB_ID, --series or --state")
    try:
        stage = Stage(from_stage)
        wanted_state = JobState(state) if state else None
    except ValueError as exc:
        fail(str(exc))
    runtime = runtime_of(ctx)
    engine = runtime.engine()
    ids = select_jobs(engine, job_id=job_id, series_uid=series, state=wanted_state)
    if not ids:
        fail("no job matches", EXIT_NOT_FOUND)
    refused = 0
    with progress_bars() as report:
        for done, selected in enumerate(ids, start=1):
            try:
                outcome = replay_job(
                    engine,
                    selected,
                    stage,
                    new_generation=new_generation,
                    stall_seconds=runtime.settings.job_stall_seconds,
                    reason="replayed by an administrator",
                )
                target = f" as job {outcome.replayed_as}" if outcome.replayed_as != selected else ""
                typer.echo(f"job {selected}: replaying from {outcome.stage}{target}")
            except ReplayRefused as exc:
                refused += 1
                typer.echo(f"job {selected}: not replayed: {exc}", err=True)
            report("replaying jobs", done, len(ids))
    if refused:
        raise typer.Exit(1)
