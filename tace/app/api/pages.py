"""The admin pages: log in, the job list, one job, replay and the SR download.

Pages authenticate with the signed session cookie of :mod:`tace.app.api.session`,
never with the operator token itself, and every form that changes something is
checked for its CSRF token and origin before it acts.
"""

import math
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Cookie, Depends, Form, HTTPException, Query, Request, status
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates

from tace.app.admin import state_words
from tace.app.api.auth import TokenCheck
from tace.app.api.session import (
    COOKIE,
    MAX_AGE_SECONDS,
    BrowserSession,
    Sessions,
    check_csrf,
    check_same_origin,
    is_tls,
)
from tace.app.api.views import MAX_ROW_ID, JobId, JobViews
from tace.db import TERMINAL_JOB_STATES, JobState
from tace.display import probability_text

PAGE_SIZE = 50
REFRESH_SECONDS = 15
TEMPLATES = Jinja2Templates(directory=str(Path(__file__).parent / "templates"))


def _moment(value: str | datetime | None) -> str:
    """A time with its zone: UTC for our own timestamps, "local" for lab times sent without one."""
    if value is None or value == "":
        return ""
    moment = datetime.fromisoformat(value) if isinstance(value, str) else value
    if moment.tzinfo is None:
        return f"{moment:%Y-%m-%d %H:%M} (sender's local time)"
    return f"{moment.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC"


def _until(value: str | None) -> str:
    if not value:
        return ""
    seconds = (datetime.fromisoformat(value) - datetime.now(UTC)).total_seconds()
    if seconds <= 0:
        return "passed"
    minutes = math.ceil(seconds / 60)
    return f"in {minutes} min" if minutes < 120 else f"in {minutes / 60:.1f} h"


TEMPLATES.env.filters["moment"] = _moment
TEMPLATES.env.filters["until"] = _until
TEMPLATES.env.filters["label"] = lambda name: str(name).replace("_", " ")
TEMPLATES.env.filters["state"] = state_words
TEMPLATES.env.filters["probability"] = probability_text


def _to_login() -> Response:
    return RedirectResponse("/login", status_code=status.HTTP_303_SEE_OTHER)


def page_routes(views: JobViews, tokens: TokenCheck, sessions: Sessions) -> APIRouter:
    router = APIRouter()

    def browser_session(tace_session: Annotated[str | None, Cookie()] = None) -> BrowserSession | None:
        return sessions.read(tace_session)

    Page = Annotated[BrowserSession | None, Depends(browser_session)]

    def render(request: Request, name: str, session: BrowserSession | None, **context: Any) -> Response:
        context.update(
            role=session.principal.role if session else None,
            csrf_token=session.csrf_token if session else None,
        )
        return TEMPLATES.TemplateResponse(request, name, context)

    @router.get("/login", response_class=HTMLResponse)
    def login_page(request: Request, error: Annotated[str | None, Query(max_length=200)] = None) -> Response:
        return render(request, "login.html", None, error=error)

    @router.post("/login")
    def login(request: Request, token: Annotated[str, Form()]) -> Response:
        check_same_origin(request)
        principal = tokens.principal(token)
        if principal is None:
            return RedirectResponse("/login?error=invalid+token", status_code=status.HTTP_303_SEE_OTHER)
        response = RedirectResponse("/", status_code=status.HTTP_303_SEE_OTHER)
        response.set_cookie(
            COOKIE,
            sessions.issue(principal),
            max_age=MAX_AGE_SECONDS,
            path="/",
            secure=is_tls(request),
            httponly=True,
            samesite="strict",
        )
        return response

    @router.post("/logout")
    def logout(request: Request, session: Page, csrf_token: Annotated[str | None, Form()] = None) -> Response:
        if session is not None:
            check_csrf(request, session, csrf_token)
        response = _to_login()
        response.delete_cookie(COOKIE, path="/", secure=is_tls(request), httponly=True, samesite="strict")
        return response

    @router.get("/", response_class=HTMLResponse)
    def jobs_page(
        request: Request,
        session: Page,
        state: str | None = None,
        q: Annotated[str | None, Query(max_length=128)] = None,
        page: Annotated[int, Query(ge=1, le=1_000_000)] = 1,
    ) -> Response:
        if session is None:
            return _to_login()
        search = (q or "").strip() or None
        jobs, total = views.jobs(state, search, PAGE_SIZE, (page - 1) * PAGE_SIZE)
        pages = max(1, math.ceil(total / PAGE_SIZE))

        def link(**change: object) -> str:
            query = {"state": state or None, "q": search, "page": page} | change
            kept = {k: v for k, v in query.items() if v not in (None, "", 1)}
            return "/?" + urlencode(kept) if kept else "/"

        return render(
            request,
            "jobs.html",
            session,
            jobs=jobs,
            state=state or None,
            q=search,
            counts=views.counts(),
            total=total,
            first=(page - 1) * PAGE_SIZE + 1,
            page=page,
            pages=pages,
            newer=link(page=page - 1) if page > 1 else None,
            older=link(page=page + 1) if page < pages else None,
            state_link=lambda s: link(state=s, page=1),
            refresh_seconds=REFRESH_SECONDS,
        )

    @router.get("/jobs/{job_id}", response_class=HTMLResponse)
    def job_page(
        request: Request,
        session: Page,
        job_id: JobId,
        message: Annotated[str | None, Query(max_length=300)] = None,
    ) -> Response:
        if session is None:
            return _to_login()
        detail = views.detail(session.principal, job_id)
        settled = detail["job"]["state"] in {s.value for s in TERMINAL_JOB_STATES}
        return render(
            request,
            "job.html",
            session,
            detail=detail,
            message=message,
            sees_identifiers=session.principal.sees_identifiers,
            refresh_seconds=None if settled else REFRESH_SECONDS,
            waiting=detail["job"]["state"] == JobState.waiting_for_labs.value,
        )

    @router.get("/jobs/{job_id}/sr")
    def job_sr(session: Page, job_id: JobId) -> Response:
        if session is None:
            return _to_login()
        path = views.sr_file(session.principal, job_id)
        return FileResponse(path, media_type="application/dicom", filename=f"job-{job_id}-sr.dcm")

    @router.post("/jobs/{job_id}/replay")
    def job_replay(
        request: Request,
        session: Page,
        job_id: JobId,
        from_stage: Annotated[str, Form()] = "infer",
        new_generation: Annotated[bool, Form()] = False,
        csrf_token: Annotated[str | None, Form()] = None,
    ) -> Response:
        if session is None:
            return _to_login()
        check_csrf(request, session, csrf_token)
        try:
            outcome = views.replay(job_id, from_stage, new_generation, "replayed from the admin page")
            text = f"replaying from {outcome['stage']}"
        except HTTPException as exc:
            text = f"not replayed: {exc.detail}"
        return RedirectResponse(
            f"/jobs/{job_id}?{urlencode({'message': text})}", status_code=status.HTTP_303_SEE_OTHER
        )

    @router.get("/performance", response_class=HTMLResponse)
    def performance_page(
        request: Request,
        session: Page,
        window: Annotated[str, Query(max_length=8)] = "all",
        message: Annotated[str | None, Query(max_length=300)] = None,
    ) -> Response:
        if session is None:
            return _to_login()
        return render(
            request,
            "performance.html",
            session,
            view=views.performance(session.principal, window),
            message=message,
            sees_identifiers=session.principal.sees_identifiers,
        )

    @router.post("/outcomes/{outcome_id}/link")
    def outcome_link(
        request: Request,
        session: Page,
        outcome_id: JobId,
        job_id: Annotated[int, Form(ge=1, le=MAX_ROW_ID)],
        csrf_token: Annotated[str | None, Form()] = None,
    ) -> Response:
        if session is None:
            return _to_login()
        check_csrf(request, session, csrf_token)
        try:
            views.link_outcome(outcome_id, job_id)
            text = f"outcome {outcome_id} linked to job {job_id}"
        except HTTPException as exc:
            text = f"not linked: {exc.detail}"
        return RedirectResponse(
            f"/performance?{urlencode({'message': text})}", status_code=status.HTTP_303_SEE_OTHER
        )

    return router
