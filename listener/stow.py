"""STOW-RS (PS3.18 Store Instances): DICOMweb's door into the same ingest path as C-STORE.

``POST /dicomweb/studies`` and ``POST /dicomweb/studies/{study}`` take a
``multipart/related; type="application/dicom"`` body. Each part is stored as a
C-STORE instance would be (durable file and committed rows before it is listed,
the same dataset checks, CT only kept, series completed by the scanner of
`tace listen`), and the response (application/dicom+json) lists every part:
ReferencedSOPSequence for the stored, FailedSOPSequence with a FailureReason for
the rest. 200: all stored; 202: some failed; 409: none stored; 400: not a
multipart body, or no part; 415: another media type.

Who may send: peers inside ``allowed_peer_networks`` (403 otherwise) with the
STOW bearer token (401 otherwise) or, when no token is configured, a client
certificate from the configured CA, which the TLS handshake (uvicorn) demands.
"""

from __future__ import annotations

import hmac
import ipaddress
from email.message import Message

import anyio
from pydicom.dataset import Dataset
from sqlalchemy.engine import Engine
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from listener.ingest import AssociationLedger, Ingestor
from listener.staging import own_folder
from listener.stow_body import BodyStore, PartResult
from tace.logging import get_logger
from tace.settings import Settings
from tace.storage import Storage

log = get_logger("tace.listener.stow")

DICOM_JSON = "application/dicom+json"
SENDER = "STOW-RS"
"""What Instance.calling_ae records for instances received by DICOMweb."""


def credential_problem(settings: Settings) -> str | None:
    """Why the endpoint would take instances from anyone, or None."""
    if not settings.stow_enabled:
        return (
            "STOW-RS senders need a credential: set TACE_STOW_TOKEN, or TACE_STOW_TLS_CERT, "
            "TACE_STOW_TLS_KEY, TACE_STOW_TLS_CA and TACE_STOW_TLS_REQUIRE_CLIENT_CERT=true"
        )
    return None


def create_stow_app(settings: Settings, engine: Engine) -> Starlette:
    problem = credential_problem(settings)
    if problem is not None:
        raise ValueError(problem)
    token = settings.stow_token.get_secret_value().encode() if settings.stow_token is not None else None
    storage = Storage(settings.data_dir)
    ingestor = Ingestor(
        engine,
        storage,
        min_free_bytes=settings.min_free_bytes,
        default_issuer=settings.default_issuer,
        max_instance_bytes=settings.dicom_max_instance_bytes,
    )
    max_part = settings.stow_max_part_bytes or settings.dicom_max_instance_bytes
    networks = settings.allowed_peer_networks

    async def store(request: Request) -> Response:
        host = request.client.host if request.client else ""
        if networks and not _inside(host, networks):
            log.warning("stow.network_refused", peer=host)
            return _problem(403, "peer address is not in TACE_ALLOWED_PEER_NETWORKS")
        if token is not None and not _token_matches(request, token):
            return _problem(401, "missing or invalid token", {"WWW-Authenticate": "Bearer"})
        media, params = _content_type(request.headers.get("content-type", ""))
        if media != "multipart/related":
            return _problem(415, 'expected multipart/related; type="application/dicom"')
        if params.get("type", "application/dicom").lower() != "application/dicom":
            return _problem(415, "only application/dicom parts are accepted")
        boundary = params.get("boundary")
        if not boundary:
            return _problem(400, "multipart/related without a boundary")
        study = request.path_params.get("study")
        ledger = AssociationLedger(association_id=None, calling_ae=SENDER)
        body = BodyStore(
            boundary,
            ingestor=ingestor,
            staging=own_folder(storage.staging_dir),
            max_part_bytes=max_part,
            study_uid=study,
            ledger=ledger,
        )
        try:
            async for chunk in request.stream():
                if chunk:
                    await anyio.to_thread.run_sync(body.feed, chunk)
        except ClientDisconnect:
            log.warning("stow.client_gone", stored=ledger.stored)
            return Response(status_code=400)
        except Exception as exc:  # noqa: BLE001 - the multipart parser raises several types on a bad body
            log.warning("stow.malformed_body", reason=exc.__class__.__name__)
            return _problem(400, "malformed multipart body", results=body.results)
        finally:
            body.close()
            ledger.close()
        if not body.finished:
            return _problem(400, "multipart body ends before its closing boundary", results=body.results)
        if not body.results:
            return _problem(400, "no part in the body")
        failed = sum(result.failure is not None for result in body.results)
        code = 200 if failed == 0 else 409 if failed == len(body.results) else 202
        log.info("stow.request", stored=len(body.results) - failed, failed=failed, status=code)
        return JSONResponse(_response(body.results), status_code=code, media_type=DICOM_JSON)

    routes = [
        Route("/dicomweb/studies", store, methods=["POST"]),
        Route("/dicomweb/studies/{study}", store, methods=["POST"]),
    ]
    return Starlette(routes=routes)


def _token_matches(request: Request, token: bytes) -> bool:
    header = request.headers.get("authorization", "")
    offered = header.removeprefix("Bearer ").strip().encode() if header.startswith("Bearer ") else b""
    return bool(offered) and hmac.compare_digest(offered, token)


def _inside(host: str, networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network]) -> bool:
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return any(address in network for network in networks)


def _content_type(value: str) -> tuple[str, dict[str, str]]:
    message = Message()
    message["content-type"] = value
    params = {key.lower(): str(val) for key, val in message.get_params(failobj=[])[1:]}
    return message.get_content_type() if value else "", params


def _response(results: list[PartResult]) -> dict[str, object]:
    """The Store Instances Response Module (PS3.18 Table 10.5.3-1) as DICOM JSON."""
    answer = Dataset()
    stored, failed = [], []
    for result in results:
        item = Dataset()
        if result.sop_class_uid:
            item.ReferencedSOPClassUID = result.sop_class_uid
        if result.sop_instance_uid:
            item.ReferencedSOPInstanceUID = result.sop_instance_uid
        if result.failure is None:
            stored.append(item)
        else:
            item.FailureReason = result.failure
            failed.append(item)
    if stored:
        answer.ReferencedSOPSequence = stored
    if failed:
        answer.FailedSOPSequence = failed
    return answer.to_json_dict()


def _problem(
    code: int, message: str, headers: dict[str, str] | None = None, results: list[PartResult] | None = None
) -> Response:
    body: dict[str, object] = {"detail": message}
    if results:
        body["instances"] = _response(results)
    return JSONResponse(body, status_code=code, headers=headers)
