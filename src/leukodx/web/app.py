"""The application factory `create_app(settings, analyzer=None)`: its middlewares and error answers."""

from __future__ import annotations

import asyncio
import json
import logging
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import HTTPException, RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from sqlalchemy import select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import sessionmaker

from leukodx import __version__
from leukodx.errors import LeukodxError
from leukodx.web import api, pages, words
from leukodx.web.adapt import Adaptation
from leukodx.web.analysis import AnalysisError, AnalysisService
from leukodx.web.auth import LoginThrottle
from leukodx.web.cases.rules import field_basis
from leukodx.web.db import Field, open_database
from leukodx.web.deps import CsrfFailed, LoginRequired, session_principal
from leukodx.web.settings import Settings
from leukodx.web.storage import FileStore
from leukodx.web.uploads import UploadRejected

HERE = Path(__file__).resolve().parent
log = logging.getLogger("leukodx.web")

DESCRIPTION = """AI-assisted review of peripheral blood smear fields for Acute Lymphoblastic Leukemia.

**Decision support only: the AI suggests, a clinician decides.**

Authenticate with `Authorization: Bearer <token>`; create a token with `leukodx token create --name NAME`.
Uploads: multipart field `files` (JPEG, PNG, TIFF or BMP), limits per file and per request answer 413,
other types 415.
"""


@dataclass
class AppContext:
    settings: Settings
    engine: Engine
    sessions: sessionmaker
    store: FileStore
    service: AnalysisService
    templates: Jinja2Templates
    adaptation: Adaptation = field(default_factory=Adaptation)  # the admin page's, in the background


def make_templates() -> Jinja2Templates:
    t = Jinja2Templates(directory=str(HERE / "templates"))
    t.env.globals["version"] = __version__
    t.env.globals.update(flag_words=words.flag_words, call_words=words.call_words, reason_words=words.reason_words,
                         scale_words=words.scale_words, CLASS_NAMES=words.CLASS_NAMES, BASIS_WORDS=words.BASIS_WORDS, field_basis=field_basis)
    return t


class Limits:
    """413 before reading a body bigger than the upload limits allow (pure ASGI, so streaming stays), and 504
    when a request runs past the time limit before its answer starts."""

    def __init__(self, app, max_bytes: int, seconds: float):
        self.app, self.max_bytes, self.seconds = app, max_bytes, seconds

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            return await _send_json(send, 413, {
                "detail": f"The request is over {self.max_bytes / 2**20:.0f} MB. Send fewer or smaller files."
            })
        seen = 0
        started = False

        async def limited_receive():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise _TooLarge()
            return message

        async def tracking_send(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            async with asyncio.timeout(self.seconds):
                await self.app(scope, limited_receive, tracking_send)
        except _TooLarge:
            if not started:
                await _send_json(send, 413, {"detail": "The request is too large. Send fewer or smaller files."})
        except TimeoutError:
            if not started:
                await _send_json(send, 504, {"detail": f"The request took over {self.seconds:.0f} s. Try again."})


class _TooLarge(Exception):
    pass


class SecurityHeaders:
    """No third-party anything: scripts, styles and images only from this server, no inline script or style,
    never in a frame. Pages and API answers are `Cache-Control: no-store` (Back after logging out must not show a
    case from the browser's cache), and so are the smear images, overlays and cell crops: they are patient data on
    what is often a shared clinic PC. Only the static assets (/static/) may be kept by the browser."""

    HEADERS = [
        (b"content-security-policy",
         b"default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
         b"object-src 'none'; frame-ancestors 'none'; base-uri 'self'; form-action 'self'"),
        (b"x-content-type-options", b"nosniff"),
        (b"x-frame-options", b"DENY"),
        (b"referrer-policy", b"no-referrer"),
    ]
    NO_STORE = [(b"cache-control", b"no-store"), (b"pragma", b"no-cache")]
    CACHEABLE = ("/static/",)

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope.get("path", "")
        extra = self.HEADERS + ([] if path.startswith(self.CACHEABLE) else self.NO_STORE)

        async def add_headers(message):
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                names = {k.lower() for k, _ in headers}
                message["headers"] = headers + [h for h in extra if h[0] not in names]
            await send(message)

        await self.app(scope, receive, add_headers)


async def _send_json(send, status: int, body: dict) -> None:
    data = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]})
    await send({"type": "http.response.body", "body": data})


def _wants_html(request: Request) -> bool:
    return not request.url.path.startswith("/api/") and request.url.path not in ("/healthz", "/readyz")


def create_app(settings: Settings | None = None, analyzer: Any | None = None) -> FastAPI:
    """The web application. `analyzer`: any object with analyze()/summarize() (leukodx.inference.types.Analyzer);
    None loads the models named by `settings` (by default the bundled ones) once, at start-up."""
    settings = settings or Settings()  # the environment (LEUKODX_*) and the defaults
    engine, sessions = open_database(settings.database_url)
    store = FileStore(settings.resolved_files_dir())
    with sessions() as db:
        referenced = {n for col in (Field.image_file, Field.overlay_file, Field.heatmap_file)
                      for n in db.scalars(select(col)) if n}
    removed = store.sweep(referenced)
    if removed:
        log.warning("removed %d stored file(s) left over by an interrupted upload", len(removed))
    service = AnalysisService(settings, analyzer, sessions, store)
    ctx = AppContext(settings, engine, sessions, store, service, make_templates())

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        service.start_loading()
        yield
        service.close()
        engine.dispose()

    # no Swagger UI or ReDoc: they would load scripts from a CDN; /api is a bundled, offline page instead
    app = FastAPI(title="leukodx", version=__version__, description=DESCRIPTION, lifespan=lifespan, docs_url=None,
                  redoc_url=None)
    app.state.ctx = ctx
    app.state.login_failures = LoginThrottle()
    app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")
    app.include_router(api.router)
    app.include_router(pages.router)

    @app.get("/healthz", tags=["health"], summary="Alive")
    def healthz() -> dict:
        return {"status": "ok", "version": __version__}

    @app.get("/readyz", tags=["health"], summary="Models loaded",
             responses={503: {"description": "Models loading or failed"}})
    def readyz():
        body = {"ready": service.ready, "state": service.state, "error": service.error or None,
                "pending_analyses": service.pending}
        analyzer = service.analyzer
        if service.ready and analyzer is not None and hasattr(analyzer, "describe"):
            body["models"] = analyzer.describe()
        if service.is_fake:
            body["warning"] = "a test analyzer is in use; results are not real"
        return JSONResponse(body, status_code=200 if service.ready else 503)

    # --- errors: JSON for the API, pages that say what to do for people ------------------------------
    def page_error(request: Request, status: int, title: str, message: str):
        with sessions() as db:
            who = session_principal(request, db)
        return pages.render(request, "error.html", status, who=who, title=title, message=message,
                            action_url="/cases" if who else "/login", action="Back to the cases" if who else "Log in")

    @app.exception_handler(LoginRequired)
    async def _login_required(request: Request, exc: LoginRequired):
        from urllib.parse import quote

        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse(f"/login?next={quote(target)}", status_code=303)

    @app.exception_handler(CsrfFailed)
    async def _csrf(request: Request, exc: CsrfFailed):
        return page_error(request, 403, "The form expired",
                          "This form was open too long or came from another page. Go back, reload and try again.")

    @app.exception_handler(UploadRejected)
    async def _rejected(request: Request, exc: UploadRejected):
        return JSONResponse({"detail": [r.as_dict() for r in exc.rejections],
                             "message": "Nothing was stored. " + " ".join(
                                 f"{r.file + ': ' if r.file else ''}{r.problem} {r.hint}".strip() for r in exc.rejections)},
                            status_code=exc.status)

    @app.exception_handler(AnalysisError)
    async def _analysis(request: Request, exc: AnalysisError):  # busy or loading 503, too slow 504, failed 500
        return JSONResponse({"detail": str(exc)}, status_code=exc.status, headers=exc.headers)

    @app.exception_handler(LeukodxError)
    async def _user_error(request: Request, exc: LeukodxError):
        status = getattr(exc, "status", 400)  # NotFound 404, Invalid 422, Locked 409 (web.cases.rules)
        if _wants_html(request):
            title = {403: "Not allowed", 404: "Not found", 409: "This case is signed off"}.get(status, "Please check")
            return page_error(request, status, title, exc.message)
        return JSONResponse({"detail": exc.message}, status_code=status)

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException):
        if _wants_html(request) and exc.status_code in (404, 405):
            return page_error(request, exc.status_code, "Not found", "There is no such page.")
        return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        errors = [{"loc": list(e.get("loc", ())), "msg": e.get("msg", "")} for e in exc.errors()]
        if _wants_html(request):
            return page_error(request, 422, "Please check", "; ".join(f"{'/'.join(map(str, e['loc']))}: {e['msg']}"
                                                                   for e in errors))
        return JSONResponse({"detail": errors}, status_code=422)

    limit = settings.max_files * settings.max_file_bytes + 1024 * 1024
    app.add_middleware(Limits, max_bytes=limit, seconds=settings.request_timeout_s)
    app.add_middleware(SecurityHeaders)
    return app
