"""Running one stage of a job under its lease: the part infer and send share.

A delivery that cannot claim the job does nothing (another worker holds it or it
is already past this stage); while the stage runs a heartbeat keeps the lease; a
lost lease stops quietly (the new holder finishes the job); anything unexpected
fails the job with the exception named, so it shows in `tace jobs show` and can
be replayed, instead of being retried forever by the broker.
"""

from __future__ import annotations

from collections.abc import Callable

from tace.db import JobState, Stage
from tace.jobs import Heartbeat, Lease, LeaseLost, claim, finish
from tace.logging import get_logger, unit_of_work
from worker.context import WorkerContext


def run_claimed(ctx: WorkerContext, job_id: int, stage: Stage, body: Callable[[Lease], str]) -> str:
    """``body``'s outcome, or "not claimed", "lease lost" or "failed"."""
    log = get_logger(f"tace.worker.{stage.value}")
    settings = ctx.settings
    lease = claim(ctx.engine, job_id, stage, stall_seconds=settings.job_stall_seconds)
    if lease is None:
        return "not claimed"
    with (
        unit_of_work(job_id=job_id, stage=stage.value),
        Heartbeat(ctx.engine, lease, settings.job_stall_seconds / 4),
    ):
        try:
            return body(lease)
        except LeaseLost:
            log.warning("job.lease_lost")
            return "lease lost"
        except Exception as exc:
            log.exception(f"job.{stage.value}_crashed")
            finish(
                ctx.engine,
                lease,
                JobState.failed,
                error=f"{stage.value}: internal error {exc.__class__.__name__}: {exc}",
            )
            return "failed"
