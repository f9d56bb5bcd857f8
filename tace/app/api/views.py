"""What the JSON API and the admin pages both show and do: job lists, job details, replay, the SR file.

Identifiers are added to a job's detail only for the ``phi`` role; everything
else carries the patient hash alone (job errors and timelines are scrubbed when
they are written, see :mod:`tace.jobs`).
"""

from __future__ import annotations

from pathlib import Path as FilePath
from typing import Annotated, Any

from fastapi import HTTPException, Path, status
from sqlalchemy.engine import Engine

from tace.app import admin
from tace.app.api.auth import Principal
from tace.app.replay import JobNotFound, ReplayRefused, replay_job
from tace.db import JobState, Stage, session_scope
from tace.settings import Settings
from tace.storage import Storage

MAX_ROW_ID = 2**63 - 1
"""Row ids are 64-bit signed integers in PostgreSQL and SQLite; a larger id names no job."""

JobId = Annotated[int, Path(ge=1, le=MAX_ROW_ID, description="job id (a positive 64-bit integer)")]


def parse_state(state: str | None) -> JobState | None:
    if state is None or state == "":
        return None
    try:
        return JobState(state)
    except ValueError:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, f"unknown state {state!r}") from None


class JobViews:
    def __init__(self, settings: Settings, engine: Engine) -> None:
        self._settings = settings
        self._engine = engine
        self._storage = Storage(settings.data_dir)

    def jobs(
        self, state: str | None, search: str | None, limit: int, offset: int = 0
    ) -> tuple[list[dict[str, Any]], int]:
        """One page of jobs, newest first, and how many match in all."""
        wanted = parse_state(state)
        with session_scope(self._engine) as session:
            rows = admin.list_jobs(session, state=wanted, search=search, limit=limit, offset=offset)
            total = admin.count_jobs(session, state=wanted, search=search)
            return [admin.to_jsonable(job) for job in rows], total

    def counts(self) -> dict[str, int]:
        with session_scope(self._engine) as session:
            return admin.job_counts(session)

    def detail(self, principal: Principal, job_id: int) -> dict[str, Any]:
        with session_scope(self._engine) as session:
            detail = admin.job_detail(
                session, job_id, labs_deadline_seconds=self._settings.labs_deadline_seconds
            )
            if detail is None:
                raise HTTPException(status.HTTP_404_NOT_FOUND, f"no job {job_id}")
            payload = admin.to_jsonable(detail)
            payload["deliveries"] = admin.to_jsonable(admin.deliveries(session, job_id))
            if principal.sees_identifiers:
                payload["patient"] = admin.patient_identity(session, job_id)
        return payload

    def replay(self, job_id: int, from_stage: str, new_generation: bool, reason: str) -> dict[str, Any]:
        try:
            stage = Stage(from_stage)
        except ValueError:
            stages = ", ".join(s.value for s in Stage)
            raise HTTPException(
                status.HTTP_409_CONFLICT, f"unknown stage {from_stage!r}; use {stages}"
            ) from None
        try:
            outcome = replay_job(
                self._engine,
                job_id,
                stage,
                new_generation=new_generation,
                stall_seconds=self._settings.job_stall_seconds,
                reason=reason,
            )
        except JobNotFound as exc:
            raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from None
        except ReplayRefused as exc:
            raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from None
        return {"job_id": outcome.job_id, "replayed_as": outcome.replayed_as, "stage": outcome.stage.value}

    def sr_file(self, principal: Principal, job_id: int) -> FilePath:
        """The stored SR of a job; it names the patient, so only the ``phi`` role gets it."""
        if not principal.sees_identifiers:
            raise HTTPException(
                status.HTTP_403_FORBIDDEN, "the SR carries the patient's name and ID: it needs the phi role"
            )
        with session_scope(self._engine) as session:
            relative = admin.sr_file(session, job_id)
        if relative is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"job {job_id} has no stored SR")
        path = self._storage.resolve(relative)
        if not path.is_file():
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"the SR of job {job_id} is missing from {path}")
        return path

    def performance(self, principal: Principal, window: str) -> dict[str, Any]:
        """Live performance, drift and outcomes (see :mod:`tace.app.performance_view`)."""
        from tace.app.performance import WINDOWS
        from tace.app.performance_view import performance_page

        if window not in WINDOWS:
            raise HTTPException(status.HTTP_400_BAD_REQUEST, f"unknown window {window!r}; use 90d or all")
        return performance_page(
            self._settings, self._engine, window=window, identifiers=principal.sees_identifiers
        )

    def link_outcome(self, outcome_id: int, job_id: int) -> None:
        from tace.outcomes import LinkError, link_manually

        try:
            with self._engine.begin() as connection:
                link_manually(connection, outcome_id, job_id)
        except LinkError as exc:
            raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from None
