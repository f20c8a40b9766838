"""The HTTP face of `Service`: a FastAPI app with the page, the query API and gallery images.

Every refusal is JSON {"error", "hint"} with a 4xx status, the framework's own (an unknown
route, a malformed parameter) included. Static files are a fixed list read from the package:
no request names a path on the server.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from importlib import resources
from typing import Any

import anyio
import anyio.to_thread
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

from zscir_cli.jobs.service.service import ApiError, Service, Upload, too_large

FORM_SLACK = 1024 * 1024  # the form's other fields, beyond the image's own limit
STATIC = {"app.js": "text/javascript; charset=utf-8", "app.css": "text/css; charset=utf-8"}
# the page loads nothing from elsewhere: a CDN is neither needed nor allowed
CSP = ("default-src 'self'; img-src 'self' blob:; script-src 'self'; style-src 'self'; "
       "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")


def _static(name: str) -> bytes:
    return resources.files("zscir_cli.web").joinpath("static", name).read_bytes()


def _printable(s: str) -> str:
    """A request path for the log: control characters escaped, so a line stays one line."""
    return "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in s)


class Guard:
    """Outermost layer: refuses a POST body over the limit before it is read (by its
    Content-Length; a body without one is refused too), and logs one line per request."""

    def __init__(self, app: ASGIApp, service: Service, log: Callable[[str], None]):
        self.app, self.service, self.log = app, service, log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start, status = time.perf_counter(), [0]

        async def send_logged(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        refusal = self.refusal(scope)
        if refusal is not None:
            await JSONResponse(refusal.to_json(), refusal.status)(scope, receive, send_logged)
        else:
            await self.app(scope, receive, send_logged)
        client = scope.get("client") or ("-", 0)
        self.log(f"{client[0]} {scope['method']} {_printable(scope['path'])} {status[0]} "
                 f"{(time.perf_counter() - start) * 1000:.1f} ms")

    def refusal(self, scope: Scope) -> ApiError | None:
        if scope["method"] != "POST":
            return None
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        if length is None:
            return ApiError(411, "The request has no Content-Length.", "Send the form with its length "
                                                                       "(browsers and HTTP clients do).")
        limit = self.service.limits.max_upload_bytes + FORM_SLACK
        if not length.isdigit():
            return ApiError(400, "The request's Content-Length is not a number.", "Send a valid request.")
        if int(length) > limit:
            return too_large(int(length), self.service.limits)
        return None


def _error(e: ApiError) -> JSONResponse:
    return JSONResponse(e.to_json(), e.status)


def create_app(service: Service, log: Callable[[str], None] | None = None, io_threads: int = 4) -> ASGIApp:
    """The ASGI app serving `service`; `log` receives one line per request; gallery images are
    read by at most `io_threads` worker threads at once."""
    app = FastAPI(title="zscir", docs_url=None, redoc_url=None, openapi_url=None)
    _handlers(app)
    _routes(app, service, io_threads)
    return Guard(app, service, log or service.ctx.reporter.info)


def _handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(_request: Request, e: ApiError) -> JSONResponse:
        return _error(e)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, e: StarletteHTTPException) -> JSONResponse:
        if e.status_code == 404:
            return _error(ApiError(404, f"No such page: {_printable(request.url.path)}.",
                                   "The page is at /, the API under /api (query, info, ids, images, health)."))
        if e.status_code == 405:
            return _error(ApiError(405, f"{request.method} is not allowed on {_printable(request.url.path)}.",
                                   "Queries are POSTed to /api/query; everything else is GET."))
        return _error(ApiError(e.status_code, str(e.detail), "Check the request."))

    @app.exception_handler(RequestValidationError)
    async def invalid(_request: Request, e: RequestValidationError) -> JSONResponse:
        first = e.errors()[0] if e.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ())[1:]) or "the request"
        return _error(ApiError(400, f"{where}: {first.get('msg', 'invalid value')}.",
                               "Check the parameter's type (sizes, offsets and k are whole numbers)."))


def _routes(app: FastAPI, service: Service, io_threads: int) -> None:
    limiter: list[anyio.CapacityLimiter] = []  # made on the event loop, on first use
    @app.get("/", response_class=HTMLResponse)
    async def page() -> Response:
        return Response(_static("index.html"), media_type="text/html; charset=utf-8",
                        headers={"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff"})

    @app.get("/favicon.ico")
    async def favicon() -> Response:
        return Response(status_code=204)  # no icon; a 204 keeps the browser from logging a 404

    @app.get("/static/{name}")
    async def static(name: str) -> Response:
        if name not in STATIC:  # a fixed list: no path from the request reaches the disk
            raise ApiError(404, f"No such file: {_printable(name)}.", "The page loads app.js and app.css only.")
        return Response(_static(name), media_type=STATIC[name], headers={"X-Content-Type-Options": "nosniff"})

    @app.get("/api/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "model": service.backbone.spec.label(), "indexes": list(service.indexes)}

    @app.get("/api/info")
    async def info() -> dict[str, Any]:
        return service.info()

    @app.get("/api/ids")
    async def ids(index: str | None = None, offset: int = 0, limit: int = 60) -> dict[str, Any]:
        return service.ids(index, offset, limit)

    @app.get("/api/images/{image_id:path}")
    async def image(image_id: str, index: str | None = None, size: int | None = None) -> Response:
        if not limiter:
            limiter.append(anyio.CapacityLimiter(io_threads))
        png = await anyio.to_thread.run_sync(service.image_png, index, image_id, size, limiter=limiter[0])
        return Response(png, media_type="image/png",
                        headers={"Cache-Control": "max-age=3600", "X-Content-Type-Options": "nosniff"})

    @app.post("/api/query")
    async def query(request: Request) -> dict[str, Any]:
        form = await request.form(max_files=1, max_fields=16)
        fields = {name: form.get(name) for name in ("text", "reference", "method", "k", "index")}
        for name, value in fields.items():
            if value is not None and not isinstance(value, str):
                raise ApiError(400, f"Field '{name}' must be text, not a file.", "Send it as a plain form field.")
        upload = await _upload(form.get("image"), service)
        # ranked on the event loop itself: model calls are one at a time anyway, and the hop to a
        # worker thread cost 6 ms a query on 2 cores (serve/in-process p50 1.44 -> 1.10); image
        # reads still go to worker threads
        res = service.query(text=fields["text"] or "", reference=fields["reference"] or None, upload=upload,
                            method=fields["method"] or None, k=fields["k"], index=fields["index"] or None)
        return res.to_json()


async def _upload(value: Any, service: Service) -> Upload | None:
    """The form's image field, read up to the limit (a larger file is refused, not read whole)."""
    if value is None:
        return None
    if isinstance(value, str):
        if value == "":
            return None
        raise ApiError(400, "Field 'image' must be a file.", "Send the image as a file part, or its id "
                                                             "in the field 'reference'.")
    limit = service.limits.max_upload_bytes
    data = await value.read(limit + 1)
    if len(data) > limit:
        raise too_large(int(value.size or len(data)), service.limits)
    return Upload(data, value.filename or "")
