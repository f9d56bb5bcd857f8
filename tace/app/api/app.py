"""The admin API (token-authenticated JSON) and a small server-rendered page for admins.

Patient names and IDs appear only for the ``phi`` role; everyone else sees the
patient hash. ``/metrics`` and ``/healthz`` are open for scrapers and probes.
The JSON API takes the token in the Authorization header only, so a page of
another site cannot make a browser call it; the pages use a signed session
cookie and CSRF tokens (:mod:`tace.app.api.session`).
"""

from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Query, Request, status
from fastapi.exception_handlers import http_exception_handler, request_validation_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from sqlalchemy.engine import Engine
from starlette.exceptions import HTTPException as StarletteHTTPException

from tace.app import admin
from tace.app.api.auth import Principal, TokenCheck
from tace.app.api.health import health
from tace.app.api.pages import TEMPLATES, page_routes
from tace.app.api.session import CsrfRefused, Sessions
from tace.app.api.views import JobId, JobViews
from tace.app.performance_metrics import PerformanceCollector
from tace.db import session_scope
from tace.logging import get_logger
from tace.settings import Settings

log = get_logger("tace.api")
Limit = Annotated[int, Query(ge=1, le=1000)]
Offset = Annotated[int, Query(ge=0, le=2**31)]
_SECURITY_HEADERS = {
    "Cache-Control": "no-store",
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": "frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}


def create_app(settings: Settings, engine: Engine) -> FastAPI:
    app = FastAPI(
        title="TACE response gateway", version="1", docs_url="/api/docs", openapi_url="/api/openapi.json"
    )
    tokens = TokenCheck(settings)
    views = JobViews(settings, engine)
    performance_gauges = PerformanceCollector(settings, engine)

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

    Api = Annotated[Principal, Depends(bearer)]

    @app.middleware("http")
    async def security_headers(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        response = await call_next(request)
        for name, value in _SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
        return response

    @app.exception_handler(CsrfRefused)
    async def csrf_refused(request: Request, exc: CsrfRefused) -> Response:
        log.warning("api.csrf_refused", path=request.url.path, reason=str(exc))
        return _error_page(request, status.HTTP_403_FORBIDDEN, f"Refused: {exc}.")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        if _is_api(request):
            return await http_exception_handler(request, exc)
        return _error_page(request, exc.status_code, str(exc.detail))

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> Response:
        if _is_api(request):
            return await request_validation_exception_handler(request, exc)
        problems = "; ".join(
            f"{'.'.join(str(p) for p in error['loc'])}: {error['msg']}" for error in exc.errors()
        )
        return _error_page(request, 422, problems)

    @app.get("/healthz")
    def healthz() -> JSONResponse:
        healthy, checks = health(settings, engine)
        return JSONResponse(checks, status_code=200 if healthy else 503)

    @app.get("/metrics")
    def metrics() -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        from tace.metrics import registry

        collected = registry(engine)
        collected.register(performance_gauges)
        return Response(generate_latest(collected), media_type=CONTENT_TYPE_LATEST)

    @app.get("/api/jobs")
    def api_jobs(
        principal: Api,
        response: Response,
        state: str | None = None,
        q: Annotated[
            str | None, Query(max_length=128, description="start of a patient hash or series UID")
        ] = None,
        limit: Limit = 100,
        offset: Offset = 0,
    ) -> list[dict[str, Any]]:
        jobs, total = views.jobs(state, q, limit, offset)
        response.headers["X-Total-Count"] = str(total)
        return jobs

    @app.get("/api/jobs/counts")
    def api_job_counts(principal: Api) -> dict[str, int]:
        return views.counts()

    @app.get("/api/jobs/{job_id}")
    def api_job(principal: Api, job_id: JobId) -> dict[str, Any]:
        return views.detail(principal, job_id)

    @app.get("/api/jobs/{job_id}/sr")
    def api_job_sr(principal: Api, job_id: JobId) -> FileResponse:
        path = views.sr_file(principal, job_id)
        return FileResponse(path, media_type="application/dicom", filename=f"job-{job_id}-sr.dcm")

    @app.post("/api/jobs/{job_id}/replay")
    def api_replay(
        principal: Api, job_id: JobId, from_stage: str = "infer", new_generation: bool = False
    ) -> dict[str, Any]:
        return views.replay(job_id, from_stage, new_generation, "replayed from the admin page")

    @app.get("/api/performance")
    def api_performance(
        principal: Api, window: Annotated[str, Query(max_length=8)] = "all"
    ) -> dict[str, Any]:
        return admin.to_jsonable(views.performance(principal, window))

    @app.get("/api/series")
    def api_series(principal: Api, state: str | None = None, limit: Limit = 100) -> list[dict[str, Any]]:
        with session_scope(engine) as session:
            return admin.to_jsonable(admin.list_series(session, state=state, limit=limit))

    @app.get("/api/associations")
    def api_associations(principal: Api, limit: Limit = 100) -> list[dict[str, Any]]:
        with session_scope(engine) as session:
            return admin.to_jsonable(admin.list_associations(session, limit=limit))

    @app.get("/api/labs/{patient_hash}")
    def api_labs(principal: Api, patient_hash: str) -> dict[str, Any]:
        with session_scope(engine) as session:
            return admin.to_jsonable(admin.lab_status(session, patient_hash))

    @app.get("/api/srs")
    def api_srs(principal: Api, limit: Limit = 100) -> list[dict[str, Any]]:
        with session_scope(engine) as session:
            return admin.to_jsonable(admin.list_srs(session, limit=limit))

    app.include_router(page_routes(views, tokens, Sessions(settings, tokens)))
    return app


def _is_api(request: Request) -> bool:
    return request.url.path.startswith("/api/") or request.url.path in ("/healthz", "/metrics")


def _error_page(request: Request, code: int, message: str) -> Response:
    return TEMPLATES.TemplateResponse(
        request, "error.html", {"code": code, "message": message, "role": None}, status_code=code
    )
