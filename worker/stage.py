"""Running one stage of a job under its lease: the part infer and send share.

A delivery that cannot claim the job does nothing (another worker holds it or it
is already past this stage); while the stage runs a heartbeat keeps the lease; a
lost lease stops quietly (the new holder finishes the job); anything unexpected
fails the job with the exception named, so it shows in `tace jobs show` and can
be replayed, instead of being retried forever by the broker.

Stage bodies only decide: they return a :class:`StageResult`, and
:func:`run_claimed` is the one place that moves the job to its next state,
together with whatever rows the stage produced.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from sqlmodel import Session

from tace.db import JobState, Stage
from tace.jobs import Heartbeat, Lease, LeaseLost, claim, finish
from tace.logging import get_logger, unit_of_work
from worker.context import WorkerContext


class StageOutcome(enum.StrEnum):
    """What happened to one delivery of a job (for the caller, logs and tests)."""

    predicted = "predicted"
    waiting_for_labs = "waiting_for_labs"
    retrying = "retrying"
    sent = "sent"
    no_destination = "no_destination"
    failed = "failed"
    not_claimed = "not claimed"
    lease_lost = "lease lost"


_TRANSITIONS: dict[StageOutcome, tuple[JobState, Stage | None]] = {
    StageOutcome.predicted: (JobState.predicted, Stage.send),
    StageOutcome.waiting_for_labs: (JobState.waiting_for_labs, None),
    StageOutcome.retrying: (JobState.predicted, None),
    StageOutcome.sent: (JobState.sent, None),
    StageOutcome.no_destination: (JobState.no_destination, None),
    StageOutcome.failed: (JobState.failed, None),
}
"""The job state (and next stage, when it changes) that each decided outcome leads to."""


@dataclass(frozen=True)
class StageResult:
    outcome: StageOutcome
    detail: str | None = None
    error: str | None = None
    not_before: datetime | None = None
    """When the relay may publish the job again (waiting for labs, a PACS to retry)."""
    record: Callable[[Session], None] | None = None
    """Rows that commit in the same transaction as the state change (the prediction, say)."""

    def __post_init__(self) -> None:
        if self.outcome not in _TRANSITIONS:
            raise ValueError(f"outcome {self.outcome!r} is not a decision a stage can return")

    @classmethod
    def failed(cls, error: str) -> StageResult:
        return cls(StageOutcome.failed, error=error)


def _apply(ctx: WorkerContext, lease: Lease, result: StageResult) -> None:
    state, next_stage = _TRANSITIONS[result.outcome]
    with Session(ctx.engine, expire_on_commit=False) as session, session.begin():
        if result.record is not None:
            result.record(session)
        finish(
            ctx.engine,
            lease,
            state,
            stage=next_stage,
            detail=result.detail,
            error=result.error,
            not_before=result.not_before,
            session=session,
        )


def run_claimed(
    ctx: WorkerContext, job_id: int, stage: Stage, body: Callable[[Lease], StageResult]
) -> StageOutcome:
    """Claim, run ``body`` under a heartbeat, and apply what it decided."""
    log = get_logger(f"tace.worker.{stage.value}")
    settings = ctx.settings
    lease = claim(ctx.engine, job_id, stage, stall_seconds=settings.job_stall_seconds)
    if lease is None:
        return StageOutcome.not_claimed
    with (
        unit_of_work(job_id=job_id, stage=stage.value),
        Heartbeat(ctx.engine, lease, settings.job_stall_seconds / 4),
    ):
        try:
            result = body(lease)
        except Exception as exc:
            log.exception(f"job.{stage.value}_crashed")
            result = StageResult.failed(f"{stage.value}: internal error {exc.__class__.__name__}: {exc}")
        try:
            _apply(ctx, lease, result)
        except LeaseLost:
            log.warning("job.lease_lost")
            return StageOutcome.lease_lost
        return result.outcome
