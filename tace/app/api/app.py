"""The admin API (token-authenticated JSON) and a small server-rendered page for admins.

Patient names and IDs appear only for the ``phi`` role; everyone else sees the
patient hash. ``/metrics`` and ``/healthz`` are open for scrapers and probes.
"""

from pathlib import Path
from typing import Annotated, Any

from fastapi import Cookie, Depends, FastAPI, Form, HTTPException, Request, status
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from sqlalchemy.engine import Engine

from tace.app import admin
from tace.app.api.auth import Principal, TokenCheck
from tace.app.api.health import health
from tace.app.replay import JobNotFound, ReplayRefused, replay_job
from tace.db import JobState, Stage, session_scope
from tace.settings import Settings

COOKIE = "tace_session"
TEMPLATES = Jinja2Templates(directory=str(Path(__file__).parent / "templates"))


def create_app(settings: Settings, engine: Engine) -> FastAPI:
    app = FastAPI(
        title="TACE response gateway", version="1", docs_url="/api/docs", openapi_url="/api/openapi.json"
    )
    tokens = TokenCheck(settings)

    def bearer(request: Request) -> Principal:
        header = request.headers.get("authorization", "")
        token = header.removeprefix("Bearer ").strip() if header.startswith("Bearer ") else None
        principal = tokens.principal(token)
        if principal is None:
            raise HTTPException(
                status.HTTP_401_UNAUTHORIZED,
                "missing or invalid token",
                headers={"WWW-Authenticate": "Bearer"},
            )
        return principal

    def session_user(tace_session: Annotated[str | None, Cookie()] = None) -> Principal | None:
        return tokens.principal(tace_session)

    Api = Annotated[Principal, Depends(bearer)]
    Page = Annotated[Principal | None, Depends(session_user)]

    def jobs_payload(principal: Principal, state: str | None, limit: int) -> list[dict[str, Any]]:
        wanted = _state(state)
        with session_scope(engine) as session:
            return [admin.to_jsonable(job) for job in admin.list_jobs(session, state=wanted, limit=limit)]

    def detail_payload(principal: Principal, job_id: int) -> dict[str, Any]:
        with session_scope(engine) as session:
            detail = admin.job_detail(session, job_id)
            if detail is None:
                raise HTTPException(status.HTTP_404_NOT_FOUND, f"no job {job_id}")
            payload = admin.to_jsonable(detail)
            payload["deliveries"] = admin.to_jsonable(admin.deliveries(session, job_id))
            if principal.sees_identifiers:
                payload["patient"] = admin.patient_identity(session, job_id)
        return payload

    def replay(job_id: int, from_stage: str, new_generation: bool) -> dict[str, Any]:
        try:
            stage = Stage(from_stage)
        except ValueError:
            stages = ", ".join(s.value for s in Stage)
            raise HTTPException(
                status.HTTP_409_CONFLICT, f"unknown stage {from_stage!r}; use {stages}"
            ) from None
        try:
            outcome = replay_job(
                engine,
                job_id,
                stage,
                new_generation=new_generation,
                stall_seconds=settings.job_stall_seconds,
                reason="replayed from the admin page",
            )
        except JobNotFound as exc:
            raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from None
        except ReplayRefused as exc:
            raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from None
        return {"job_id": outcome.job_id, "replayed_as": outcome.replayed_as, "stage": outcome.stage.value}

    @app.get("/healthz")
    def healthz() -> JSONResponse:
        healthy, checks = health(settings, engine)
        return JSONResponse(checks, status_code=200 if healthy else 503)

    @app.get("/metrics")
    def metrics() -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        from tace.metrics import registry

        return Response(generate_latest(registry(engine)), media_type=CONTENT_TYPE_LATEST)

    @app.get("/api/jobs")
    def api_jobs(principal: Api, state: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        return jobs_payload(principal, state, limit)

    @app.get("/api/jobs/{job_id}")
    def api_job(principal: Api, job_id: int) -> dict[str, Any]:
        return detail_payload(principal, job_id)

    @app.post("/api/jobs/{job_id}/replay")
    def api_replay(
        principal: Api, job_id: int, from_stage: str = "infer", new_generation: bool = False
    ) -> dict[str, Any]:
        return replay(job_id, from_stage, new_generation)

    @app.get("/api/series")
    def api_series(principal: Api, state: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        with session_scope(engine) as session:
            return admin.to_jsonable(admin.list_series(session, state=state, limit=limit))

    @app.get("/api/associations")
    def api_associations(principal: Api, limit: int = 100) -> list[dict[str, Any]]:
        with session_scope(engine) as session:
            return admin.to_jsonable(admin.list_associations(session, limit=limit))

    @app.get("/api/labs/{patient_hash}")
    def api_labs(principal: Api, patient_hash: str) -> dict[str, Any]:
        with session_scope(engine) as session:
            return admin.to_jsonable(admin.lab_status(session, patient_hash))

    @app.get("/api/srs")
    def api_srs(principal: Api, limit: int = 100) -> list[dict[str, Any]]:
        with session_scope(engine) as session:
            return admin.to_jsonable(admin.list_srs(session, limit=limit))

    @app.get("/login", response_class=HTMLResponse)
    def login_page(request: Request, error: str | None = None) -> HTMLResponse:
        return TEMPLATES.TemplateResponse(request, "login.html", {"error": error})

    @app.post("/login")
    def login(token: Annotated[str, Form()]) -> Response:
        if tokens.principal(token) is None:
            return RedirectResponse("/login?error=invalid+token", status_code=status.HTTP_303_SEE_OTHER)
        response = RedirectResponse("/", status_code=status.HTTP_303_SEE_OTHER)
        response.set_cookie(COOKIE, token, httponly=True, samesite="strict", max_age=12 * 3600)
        return response

    @app.post("/logout")
    def logout() -> Response:
        response = RedirectResponse("/login", status_code=status.HTTP_303_SEE_OTHER)
        response.delete_cookie(COOKIE)
        return response

    @app.get("/", response_class=HTMLResponse)
    def jobs_page(request: Request, principal: Page, state: str | None = None) -> Response:
        if principal is None:
            return RedirectResponse("/login", status_code=status.HTTP_303_SEE_OTHER)
        jobs = jobs_payload(principal, state, 200)
        return TEMPLATES.TemplateResponse(
            request,
            "jobs.html",
            {"jobs": jobs, "state": state, "states": [s.value for s in JobState], "role": principal.role},
        )

    @app.get("/jobs/{job_id}", response_class=HTMLResponse)
    def job_page(request: Request, principal: Page, job_id: int, message: str | None = None) -> Response:
        if principal is None:
            return RedirectResponse("/login", status_code=status.HTTP_303_SEE_OTHER)
        return TEMPLATES.TemplateResponse(
            request,
            "job.html",
            {"detail": detail_payload(principal, job_id), "role": principal.role, "message": message},
        )

    @app.post("/jobs/{job_id}/replay")
    def job_replay(
        principal: Page,
        job_id: int,
        from_stage: Annotated[str, Form()] = "infer",
        new_generation: Annotated[bool, Form()] = False,
    ) -> Response:
        if principal is None:
            return RedirectResponse("/login", status_code=status.HTTP_303_SEE_OTHER)
        try:
            outcome = replay(job_id, from_stage, new_generation)
            text = f"replaying from {outcome['stage']}"
        except HTTPException as exc:
            text = f"not replayed: {exc.detail}"
        return RedirectResponse(f"/jobs/{job_id}?message={text}", status_code=status.HTTP_303_SEE_OTHER)

    return app


def _state(state: str | None) -> JobState | None:
    if state is None or state == "":
        return None
    try:
        return JobState(state)
    except ValueError:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, f"unknown state {state!r}") from None
