"""The FastAPI application: `create_app(ServeConfig(...))`.

Routes (JSON unless noted; OpenAPI at /openapi.json, docs at /docs):

* ``GET /healthz`` (no key): the process answers; ``GET /readyz`` (no key): models loaded;
  ``GET /metrics`` (no key): Prometheus text.
* ``GET /v1/info`` (read): model and database in use, limits.
* ``POST /v1/analyze`` (read): ``image`` upload or ``url``; ``identify=true`` adds the
  identity match of every face.
* ``POST /v1/verify`` (read): ``image_a`` and ``image_b`` or ``identity``.
* ``POST /v1/search`` (read): ``image`` (or ``url``), ``k``, ``face``.
* ``POST /v1/clips`` (read): ``video`` upload (a short clip); class probabilities from the
  clip model of ``--clips-run`` (404 when none is loaded).
* ``GET /v1/identities`` (read), ``GET /v1/identities/{name}`` (read),
  ``GET /v1/identities/{name}/faces/{face_id}/crop`` (read, JPEG),
  ``POST /v1/identities`` (write: ``name`` + ``images``),
  ``DELETE /v1/identities/{name}`` (admin; erases as `facelab db delete`, audited).
* ``GET/POST /v1/keys``, ``DELETE /v1/keys/{id}``, ``GET /v1/audit`` (admin).
* ``/`` and ``/ui/``: the web page (static HTML + JS calling this API).

Keys travel in ``X-API-Key: <key>`` or ``Authorization: Bearer <key>`` (never in the URL).
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any

import anyio
from fastapi import Depends, FastAPI, File, Form, Query, Request, UploadFile
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, RedirectResponse, Response
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException

from facelab.errors import ConfigError, DataFormatError, FacelabError, ImageDecodeError
from facelab.serve import schemas as S
from facelab.serve.config import ServeConfig
from facelab.serve.images import (
    TooLargeImage,
    UnsupportedMediaType,
    check_content_type,
    check_video_content_type,
)
from facelab.serve.keys import ApiKey, ApiKeyError, KeyStore, sha256_hex
from facelab.serve.metrics import Metrics
from facelab.serve.ratelimit import RateLimiter
from facelab.serve.service import FaceService, NotFound, Unavailable

log = logging.getLogger(__name__)
STATIC = Path(__file__).parent / "static"
API_VERSION = "1"
CSP = (b"default-src 'self'; img-src 'self' blob: data:; script-src 'self'; style-src 'self'; "
       b"connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'")

_api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="an API key")
_bearer = HTTPBearer(auto_error=False, description="Authorization: Bearer <API key>")
ERRORS: dict[int | str, dict[str, Any]] = {
    c: {"model": S.ErrorOut} for c in (400, 401, 403, 404, 413, 415, 422, 429, 502, 503)}


class BodyTooLarge(HTTPException):
    """Raised from the receive channel when a streamed body passes the limit."""


# -- errors ---------------------------------------------------------------------------------------
def error_status(exc: FacelabError) -> tuple[int, str]:
    """(HTTP status, short type) of a facelab error."""
    from facelab.collect.fetch import BadURL, HTTPStatus, NotImage, Refused, TooLarge, Transient
    from facelab.facedb.db import AmbiguousFaceError, EnrollError, NoFaceError

    table: list[tuple[type, int, str]] = [
        (UnsupportedMediaType, 415, "unsupported_media_type"), (NotImage, 415, "unsupported_media_type"),
        (TooLargeImage, 413, "too_large"), (TooLarge, 413, "too_large"),
        (NoFaceError, 422, "no_face"), (AmbiguousFaceError, 422, "ambiguous_face"),
        (EnrollError, 422, "enroll_refused"), (ImageDecodeError, 422, "bad_image"),
        (Refused, 400, "url_refused"), (BadURL, 400, "bad_url"),
        (HTTPStatus, 502, "url_fetch_failed"), (Transient, 502, "url_fetch_failed"),
        (NotFound, 404, "not_found"), (ApiKeyError, 404, "not_found"),
        (Unavailable, 503, "unavailable"), (ConfigError, 400, "bad_request"),
        (DataFormatError, 422, "bad_input"),
    ]
    for cls, status, kind in table:
        if isinstance(exc, cls):
            return status, kind
    return 500, "error"


def _error(status: int, kind: str, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": {"status": status, "type": kind, "message": message}},
                        status_code=status, headers=headers)


HTTP_KINDS = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
              405: "method_not_allowed", 413: "too_large", 415: "unsupported_media_type",
              429: "rate_limited", 503: "unavailable"}


# -- middleware -------------------------------------------------------------------------------------
class GuardMiddleware:
    """Pure ASGI: body limit (413 by Content-Length before reading, or while streaming),
    security headers, request metrics."""

    def __init__(self, app, max_body: int, metrics: Metrics) -> None:
        self.app, self.max_body, self.metrics = app, max_body, metrics

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        status = {"code": 500}
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        path = scope.get("path", "")

        async def send_wrapped(message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
                extra = [(b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"no-referrer"),
                         (b"x-frame-options", b"DENY")]
                if path.startswith("/v1/"):
                    extra.append((b"cache-control", b"no-store"))
                if path == "/" or path.startswith("/ui"):
                    extra.append((b"content-security-policy", CSP))
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        self.metrics.add_in_flight(1)
        try:
            too_big = False
            if length is not None:
                try:
                    too_big = int(length) > self.max_body
                except ValueError:
                    too_big = True
            if too_big:
                self.metrics.refuse("body_too_large")
                resp = _error(413, "too_large", f"request body over the limit of {self.max_body} bytes")
                await resp(scope, receive, send_wrapped)
                return
            seen = {"n": 0}
            limit = self.max_body

            async def receive_counted():
                message = await receive()
                if message["type"] == "http.request":
                    seen["n"] += len(message.get("body", b""))
                    if seen["n"] > limit:
                        self.metrics.refuse("body_too_large")
                        raise BodyTooLarge(413, f"request body over the limit of {limit} bytes")
                return message

            await self.app(scope, receive_counted, send_wrapped)
        finally:
            self.metrics.add_in_flight(-1)
            route = scope.get("route")
            name = getattr(route, "path", None) or ("/ui" if path.startswith("/ui") else "unmatched")
            self.metrics.observe_request(scope.get("method", ""), name, status["code"],
                                         time.perf_counter() - t0)


# -- the app ----------------------------------------------------------------------------------------
def create_app(config: ServeConfig | None = None) -> FastAPI:
    """The service as an ASGI app (run it with uvicorn, or mount it in another app).

    Example:
        >>> app = create_app(ServeConfig(db="faces.db", run="runs/mt"))   # doctest: +SKIP
        >>> uvicorn.run(app, host="127.0.0.1", port=8000)                 # doctest: +SKIP
    """
    config = config or ServeConfig()
    service = FaceService(config)
    metrics = Metrics()
    limiter = RateLimiter(config.rate_per_minute)
    state: dict[str, Any] = {}

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        state["keys"] = KeyStore(config.keys_path)
        state["workers"] = anyio.CapacityLimiter(config.workers)
        threading.Thread(target=service.load, name="facelab-serve-load", daemon=True).start()
        try:
            yield
        finally:
            await anyio.to_thread.run_sync(service.close)
            state["keys"].close()

    app = FastAPI(
        title="facelab", version=f"{API_VERSION}.0",
        description=("Face analysis (boxes, landmarks, mask / gender / age, 18-class id), 1:1 "
                     "verification, 1:N search and identity management over a facelab face "
                     "database. Send an API key in `X-API-Key` (or `Authorization: Bearer`). "
                     "Scopes: read (analyze, verify, search, clips, identities), write (enroll), "
                     "admin (delete, keys, audit)."),
        lifespan=lifespan,
    )
    app.state.service = service
    app.state.metrics = metrics
    app.state.config = config
    app.state.extra = state

    if config.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=list(config.cors_origins), allow_credentials=False,
                           allow_methods=["GET", "POST", "DELETE"], allow_headers=["X-API-Key", "Authorization"])
    app.add_middleware(GuardMiddleware, max_body=config.max_body_bytes, metrics=metrics)

    # -- error handlers: JSON, one clear message, never a traceback -------------------------------
    @app.exception_handler(FacelabError)
    async def _facelab_error(request: Request, exc: FacelabError):
        status, kind = error_status(exc)
        if status == 500:
            return await _unexpected(request, exc)
        return _error(status, kind, str(exc).splitlines()[0] if str(exc) else kind)

    @app.exception_handler(HTTPException)
    async def _http_error(request: Request, exc: HTTPException):
        return _error(exc.status_code, HTTP_KINDS.get(exc.status_code, "error"), str(exc.detail),
                      getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError):
        parts = []
        for e in exc.errors()[:5]:
            where = ".".join(str(x) for x in e.get("loc", ()) if x not in ("body", "query", "path"))
            parts.append(f"{where or 'request'}: {e.get('msg', 'invalid')}")
        return _error(422, "invalid_request", "; ".join(parts) or "invalid request")

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        ref = uuid.uuid4().hex[:12]
        log.error("facelab serve: unexpected error %s on %s %s", ref, request.method, request.url.path,
                  exc_info=exc)
        return _error(500, "internal", f"internal error (reference {ref}); the server log has the details")

    # -- auth ---------------------------------------------------------------------------------------
    def need(scope: str):
        async def dep(request: Request,
                      x_api_key: Annotated[str | None, Depends(_api_key_header)] = None,
                      bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)] = None,
                      ) -> ApiKey:
            secret = x_api_key or (bearer.credentials if bearer else None)
            if not secret:
                metrics.refuse("no_key")
                raise HTTPException(401, "an API key is required (X-API-Key header or Authorization: Bearer)",
                                    headers={"WWW-Authenticate": "Bearer"})
            key = await anyio.to_thread.run_sync(state["keys"].authenticate, secret)
            if key is None:
                metrics.refuse("bad_key")
                raise HTTPException(401, "unknown or revoked API key", headers={"WWW-Authenticate": "Bearer"})
            if scope not in key.scopes:
                metrics.refuse("scope")
                raise HTTPException(403, f"this key lacks the {scope!r} scope (it has: {', '.join(key.scopes)})")
            ok, wait = limiter.take(key.id)
            if not ok:
                metrics.refuse("rate_limited")
                raise HTTPException(429, f"rate limit of {config.rate_per_minute} requests per minute "
                                    f"for this key; retry in {wait:.1f} s",
                                    headers={"Retry-After": str(max(1, int(wait + 0.999)))})
            request.state.key = key
            return key
        return Depends(dep)

    def multipart(request: Request) -> None:
        ct = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if ct not in ("multipart/form-data", "application/x-www-form-urlencoded"):
            raise HTTPException(415, f"send multipart/form-data (got {ct or 'no content type'!r})")

    async def blocking(fn, *args):
        """Run a blocking call in the worker pool (models and databases never block the loop)."""
        return await anyio.to_thread.run_sync(fn, *args, limiter=state["workers"])

    async def read_upload(upload: UploadFile, what: str) -> bytes:
        check_content_type(upload.content_type, what)
        data = await upload.read()
        if len(data) > config.max_body_bytes:
            raise TooLargeImage(f"{what}: over the limit of {config.max_body_bytes} bytes")
        return data

    async def image_from(upload: UploadFile | None, url: str | None, what: str):
        if (upload is None) == (not url):
            raise ConfigError(f"give {what} as an uploaded file or as url (exactly one)")
        if upload is not None:
            data = await read_upload(upload, what)
        else:
            data = await blocking(service.fetch_url, url)
        return await blocking(service.decode, data, what)

    def client(request: Request) -> str | None:
        return request.client.host if request.client else None

    read, write, admin = need("read"), need("write"), need("admin")
    upload = [Depends(multipart)]

    # -- health -------------------------------------------------------------------------------------
    @app.get("/healthz", response_model=S.Health, tags=["health"])
    async def healthz():
        """The process is up and its event loop answers (no model involved)."""
        return {"status": "ok"}

    @app.get("/readyz", response_model=S.Health, tags=["health"], responses={503: {"model": S.Health}})
    async def readyz():
        """200 once the models and the database are loaded; 503 while loading or if loading failed."""
        if not service.ready.is_set():
            return JSONResponse({"status": "loading", "detail": None}, status_code=503)
        if service.error:
            return JSONResponse({"status": "failed", "detail": service.error}, status_code=503)
        return {"status": "ready"}

    @app.get("/metrics", response_class=PlainTextResponse, tags=["health"])
    async def metrics_text():
        """Prometheus text format: requests, latency histograms, refusals, model load time."""
        if service.load_seconds is not None:
            metrics.set_gauge("facelab_model_load_seconds", service.load_seconds)
        metrics.set_gauge("facelab_ready", float(service.ready.is_set() and not service.error))
        return PlainTextResponse(metrics.render(), media_type="text/plain; version=0.0.4")

    @app.get("/v1/info", tags=["info"], responses=ERRORS)
    async def info(key: ApiKey = read) -> dict:
        """The attribute model and the database in use, and the service's limits."""
        out = await blocking(service.info)
        out["key"] = {"id": key.id, "name": key.name, "scopes": key.scopes}
        return out

    # -- analysis -------------------------------------------------------------------------------------
    @app.post("/v1/analyze", response_model=S.AnalyzeOut, tags=["analyze"], dependencies=upload,
              responses=ERRORS)
    async def analyze(key: ApiKey = read,
                      image: Annotated[UploadFile | None, File(description="a photo (JPEG, PNG, WebP, ...)")] = None,
                      url: Annotated[str | None, Form(description="or: an http(s) URL of a photo (public hosts only)")] = None,
                      identify: Annotated[bool, Form(description="look every face up in the face database")] = False):
        """Every face of a photo: box, landmarks, mask / gender / age with probabilities, the
        18-class id and, with identify=true, the nearest enrolled identity."""
        arr = await image_from(image, url, "image")
        return await blocking(service.analyze, arr, identify)

    @app.post("/v1/verify", response_model=S.VerifyOut, tags=["faces"], dependencies=upload, responses=ERRORS)
    async def verify(image_a: Annotated[UploadFile, File(description="the probe photo")],
                     key: ApiKey = read,
                     image_b: Annotated[UploadFile | None, File(description="a second photo, or ...")] = None,
                     identity: Annotated[str | None, Form(description="... an enrolled identity")] = None,
                     face: Annotated[str | None, Form(description="largest | central | <index> when a photo shows several faces")] = None):
        """1:1: is the face of image_a the person of image_b (or of an enrolled identity)?"""
        a = await image_from(image_a, None, "image_a")
        b = await image_from(image_b, None, "image_b") if image_b is not None else None
        return await blocking(service.verify, a, b, identity, face)

    @app.post("/v1/search", response_model=S.SearchOut, tags=["faces"], dependencies=upload, responses=ERRORS)
    async def search(key: ApiKey = read,
                     image: Annotated[UploadFile | None, File(description="the probe photo")] = None,
                     url: Annotated[str | None, Form(description="or: an http(s) URL of it")] = None,
                     k: Annotated[int, Form(ge=1, le=1000)] = 5,
                     face: Annotated[str | None, Form(description="largest | central | all | <index>")] = None):
        """1:N: the k nearest enrolled faces, with distances and the calibrated decision."""
        arr = await image_from(image, url, "image")
        return await blocking(service.search, arr, k, face)

    @app.post("/v1/clips", response_model=S.ClipOut, tags=["clips"], dependencies=upload, responses=ERRORS)
    async def clips(video: Annotated[UploadFile, File(description="a short video (MP4, AVI, MKV, WebM)")],
                    key: ApiKey = read):
        """Classify one short video clip with the clip model of ``--clips-run`` (e.g. fall vs
        adl): every class's probability, the top label, frames used and the model's run."""
        check_video_content_type(video.content_type, "video")
        data = await video.read()
        if len(data) > config.max_body_bytes:
            raise TooLargeImage(f"video: over the limit of {config.max_body_bytes} bytes")
        return await blocking(service.classify_clip, data, "video")

    # -- identities ------------------------------------------------------------------------------------
    @app.get("/v1/identities", response_model=S.IdentityList, tags=["identities"], responses=ERRORS)
    async def identities(key: ApiKey = read, limit: Annotated[int, Query(ge=1, le=1000)] = 100,
                         offset: Annotated[int, Query(ge=0, le=10**9)] = 0):
        """Enrolled identities, by name, with face counts."""
        return await blocking(service.identities, limit, offset)

    @app.post("/v1/identities", response_model=S.EnrollOut, status_code=201, tags=["identities"],
              dependencies=upload, responses=ERRORS)
    async def enroll(request: Request,
                     name: Annotated[str, Form(min_length=1, max_length=200)],
                     images: Annotated[list[UploadFile], File(description="photos showing this person")],
                     key: ApiKey = write,
                     face: Annotated[str | None, Form(description="largest | central | <index> for group photos")] = None):
        """Enroll photos under a name: all of them or none (each must show one face)."""
        uploads = [(await read_upload(u, f"image {i}"), u.filename) for i, u in enumerate(images, 1)]
        try:
            out = await blocking(service.enroll, name, uploads, face)
        except FacelabError as exc:
            await blocking(state["keys"].audit, "enroll", key.id, f"refused: {error_status(exc)[1]}", None,
                           sha256_hex(name), None, client(request))
            raise
        await blocking(state["keys"].audit, "enroll", key.id, "ok", None, sha256_hex(name),
                       json.dumps({"images": len(uploads)}), client(request))
        return out

    @app.get("/v1/identities/{name}", response_model=S.IdentityDetail, tags=["identities"], responses=ERRORS)
    async def identity(name: Annotated[str, PathParam(max_length=200)], key: ApiKey = read):
        """One identity and its stored faces."""
        return await blocking(service.identity, name)

    @app.get("/v1/identities/{name}/faces/{face_id}/crop", tags=["identities"],
             response_class=Response, responses={200: {"content": {"image/jpeg": {}}}, **ERRORS})
    async def face_crop(name: Annotated[str, PathParam(max_length=200)],
                        face_id: Annotated[int, PathParam(ge=0, le=2**62)], key: ApiKey = read):
        """The stored crop of one face (JPEG), for thumbnails."""
        data = await blocking(service.face_crop, name, face_id)
        return Response(data, media_type="image/jpeg")

    @app.delete("/v1/identities/{name}", response_model=S.DeleteOut, tags=["identities"], responses=ERRORS)
    async def delete_identity(request: Request, name: Annotated[str, PathParam(max_length=200)],
                              key: ApiKey = admin):
        """Erase an identity: faces, embeddings, index entries, crops, managed image copies and
        journal rows (as `facelab db delete`). Audited (the name is kept only as its SHA-256)."""
        try:
            out = await blocking(service.delete, name)
        except FacelabError as exc:
            await blocking(state["keys"].audit, "delete_identity", key.id, f"refused: {error_status(exc)[1]}",
                           None, sha256_hex(name), None, client(request))
            raise
        await blocking(state["keys"].audit, "delete_identity", key.id, "ok", None, sha256_hex(name),
                       json.dumps({k: out[k] for k in ("embedding_ids", "image_paths", "crop_paths")}),
                       client(request))
        return out

    # -- keys and audit -----------------------------------------------------------------------------------
    @app.get("/v1/keys", response_model=list[S.KeyOut], tags=["admin"], responses=ERRORS)
    async def list_keys(key: ApiKey = admin):
        """Every API key (never its secret)."""
        return [k.to_dict() for k in await blocking(state["keys"].list)]

    @app.post("/v1/keys", response_model=S.KeyCreated, status_code=201, tags=["admin"], responses=ERRORS)
    async def add_key(request: Request, body: S.KeyIn, key: ApiKey = admin):
        """Create a key; its secret is in this response only."""
        new, secret = await blocking(state["keys"].add, body.name, body.scopes)
        await blocking(state["keys"].audit, "add_key", key.id, "ok", new.id, None,
                       json.dumps({"scopes": new.scopes}), client(request))
        return {**new.to_dict(), "key": secret}

    @app.delete("/v1/keys/{key_id}", response_model=S.KeyOut, tags=["admin"], responses=ERRORS)
    async def revoke_key(request: Request, key_id: Annotated[str, PathParam(max_length=64)], key: ApiKey = admin):
        """Revoke a key (audited)."""
        revoked = await blocking(state["keys"].revoke, key_id)
        await blocking(state["keys"].audit, "revoke_key", key.id, "ok", key_id, None, None, client(request))
        return revoked.to_dict()

    @app.get("/v1/audit", tags=["admin"], responses=ERRORS)
    async def audit(key: ApiKey = admin, limit: Annotated[int, Query(ge=1, le=1000)] = 100,
                    action: Annotated[str | None, Query(max_length=40)] = None) -> list[dict]:
        """The newest audit rows (deletes, enrollments, key changes)."""
        return await blocking(state["keys"].audit_rows, limit, action)

    # -- the web page ----------------------------------------------------------------------------------------
    @app.get("/", include_in_schema=False)
    async def root():
        return RedirectResponse("/ui/")

    if STATIC.is_dir():
        app.mount("/ui", StaticFiles(directory=STATIC, html=True), name="ui")
    return app
