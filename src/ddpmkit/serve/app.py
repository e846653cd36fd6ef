"""The web application: one page and the JSON API it calls (Starlette, an ASGI app).

    GET  /                              the page (page.html: one file, its script and style inline)
    GET  /api/runs                      the runs, newest first, with the defaults the page starts from
    POST /api/upload                    a picture (the body, at most the upload limit) -> {"id", ...}
    GET  /api/face?run=R&upload=ID      a face as run R sees it (also job=J&index=K, demo=K): PNG
    GET  /api/mask?run=R&name=eyes      a built-in mask for run R's faces: PNG, white = fill
    POST /api/jobs                      a job (forms.py) -> {"id", "position", ...}
    GET  /api/jobs, /api/jobs/J         where the jobs stand
    GET  /api/jobs/J/events             the job's events as Server-Sent Events (`jobs.py`)
    GET  /api/jobs/J/frames/K.png       a live denoising picture
    POST /api/jobs/J/cancel             cancel a job
    GET  /files/J/PATH                  a file job J wrote

Errors are JSON {"error": one line}: 400 for a bad request, 404 for what is not there, 413 for
an upload over the limit. Requests that change something must come from the page itself (an
Origin header naming another site is refused), and while the server listens on the loopback
address only requests addressed to a loopback name are answered (a web page elsewhere cannot
reach it through a rebound DNS name).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from importlib import resources
from pathlib import Path
from typing import Any, AsyncIterator, Callable
from urllib.parse import unquote, urlsplit

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from ddpmkit.errors import DdpmkitError
from ddpmkit.masks import MASKS
from ddpmkit.serve.faces import face_png, mask_png
from ddpmkit.serve.forms import check_request, optional_int, source
from ddpmkit.serve.jobs import JobQueue, Missing
from ddpmkit.serve.runs import ServedRuns
from ddpmkit.serve.uploads import TooBig, Uploads

LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})
POLL_S = 0.05  # how often an event stream looks for news
CSP = ("default-src 'self'; img-src 'self' data: blob:; style-src 'unsafe-inline'; script-src 'unsafe-inline'; "
       "connect-src 'self'; frame-ancestors 'none'")


def failure(e: DdpmkitError) -> JSONResponse:
    status = 404 if isinstance(e, Missing) else 413 if isinstance(e, TooBig) else 400
    return JSONResponse({"error": str(e)}, status_code=status)


class Guard:
    """Refuse what a page on another site could send: a state-changing request with a foreign
    Origin, and (when `local_only`) any request addressed to a host that is not a loopback name."""

    def __init__(self, app: ASGIApp, local_only: bool) -> None:
        self.app, self.local_only = app, local_only

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
            host = headers.get("host", "")
            origin = headers.get("origin")
            why = None
            if self.local_only and urlsplit("//" + host).hostname not in LOOPBACK:
                why = f"this server answers only requests to 127.0.0.1 or localhost, not {host[:60]!r}"
            elif scope["method"] not in ("GET", "HEAD") and origin and urlsplit(origin).netloc != host:
                why = f"a request from another site ({origin[:60]}) is refused"
            if why is not None:
                await JSONResponse({"error": why}, status_code=403)(scope, receive, send)
                return
        await self.app(scope, receive, send)


def make_app(runs: ServedRuns, out_dir: Path, *, max_upload_bytes: int, local_only: bool = True,
             log: Callable[[str], None] = lambda line: None) -> Starlette:
    """The server's application: jobs run in `out_dir` (one folder each), uploads in out_dir/uploads.
    The job queue's worker starts and stops with the application."""
    queue = JobQueue(out_dir, log)
    uploads = Uploads(out_dir / "uploads", max_upload_bytes)
    page = resources.files("ddpmkit.serve").joinpath("page.html").read_text(encoding="utf-8")
    api = Api(runs, queue, uploads)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        queue.start()
        try:
            yield
        finally:
            await run_in_threadpool(queue.close)

    async def index(request: Request) -> Response:
        return HTMLResponse(page, headers={"Content-Security-Policy": CSP, "Cache-Control": "no-store"})

    routes = [
        Route("/", index),
        Route("/api/runs", api.runs_list),
        Route("/api/upload", api.upload, methods=["POST"]),
        Route("/api/face", api.face),
        Route("/api/mask", api.mask),
        Route("/api/jobs", api.submit, methods=["POST"]),
        Route("/api/jobs", api.jobs),
        Route("/api/jobs/{job}", api.job),
        Route("/api/jobs/{job}/events", api.events),
        Route("/api/jobs/{job}/frames/{index:int}.png", api.frame),
        Route("/api/jobs/{job}/cancel", api.cancel, methods=["POST"]),
        Route("/files/{job}/{path:path}", api.file),
    ]
    app = Starlette(routes=routes, lifespan=lifespan, exception_handlers={DdpmkitError: _handler})
    app.state.queue = queue
    app.add_middleware(Guard, local_only=local_only)
    return app


async def _handler(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, DdpmkitError)
    return failure(exc)


class Api:
    """The API's handlers over the runs, the queue and the uploads. Work that reads files or
    decodes pictures runs in a thread, so the event streams keep flowing."""

    def __init__(self, runs: ServedRuns, queue: JobQueue, uploads: Uploads) -> None:
        self.served, self.queue, self.uploads = runs, queue, uploads

    async def runs_list(self, request: Request) -> Response:
        def describe() -> dict[str, Any]:
            listed = self.served.listing()
            return {"runs": [self.served.describe(r) for r in listed], "problems": self.served.problems,
                    "masks": list(MASKS), "max_upload": self.uploads.max_bytes}

        return JSONResponse(await run_in_threadpool(describe))

    async def upload(self, request: Request) -> Response:
        name = unquote(request.headers.get("x-filename", "upload"))  # the page sends it URI-encoded
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.uploads.max_bytes:
            raise self.uploads.too_big(int(declared), name)
        data = bytearray()
        async for chunk in request.stream():
            data += chunk
            if len(data) > self.uploads.max_bytes:  # a body longer than it said, or chunked
                raise self.uploads.too_big(len(data), name)
        return JSONResponse(await run_in_threadpool(self.uploads.store, bytes(data), name))

    def _source(self, request: Request) -> str:
        q = request.query_params
        if "upload" in q:
            spec: Any = {"upload": q["upload"]}
        elif "job" in q:
            spec = {"job": q["job"], "index": optional_int(q.get("index"))}
        else:
            spec = {"demo": optional_int(q.get("demo"))}
        return source(spec, self.uploads, self.queue, "face")

    async def face(self, request: Request) -> Response:
        run = await run_in_threadpool(self.served.find, request.query_params.get("run"))
        src = self._source(request)
        return Response(await run_in_threadpool(face_png, src, run.settings), media_type="image/png")

    async def mask(self, request: Request) -> Response:
        run = await run_in_threadpool(self.served.find, request.query_params.get("run"))
        name = request.query_params.get("name", "")
        if name not in MASKS:
            raise DdpmkitError(f"mask {name[:40]!r} is not one of: {', '.join(MASKS)}")
        seed = optional_int(request.query_params.get("seed")) or 0
        return Response(await run_in_threadpool(mask_png, name, seed, run.settings), media_type="image/png")

    async def submit(self, request: Request) -> Response:
        if not request.headers.get("content-type", "").startswith("application/json"):
            raise DdpmkitError("a job is sent as JSON (Content-Type: application/json)")
        try:
            body = json.loads(await request.body())
        except ValueError:
            raise DdpmkitError("the job is not valid JSON") from None
        checked = await run_in_threadpool(check_request, body, self.served, self.uploads, self.queue)
        job = self.queue.submit(checked.kind, checked.run, checked.job.work(self.served))
        return JSONResponse({**self.queue.public(job), "seeds": checked.job.seeds()})

    async def jobs(self, request: Request) -> Response:
        return JSONResponse({"jobs": self.queue.listing()})

    async def job(self, request: Request) -> Response:
        return JSONResponse(self.queue.public(self.queue.job(request.path_params["job"])))

    async def cancel(self, request: Request) -> Response:
        return JSONResponse(self.queue.public(self.queue.cancel(request.path_params["job"])))

    async def frame(self, request: Request) -> Response:
        png = self.queue.frame(request.path_params["job"], request.path_params["index"])
        return Response(png, media_type="image/png", headers={"Cache-Control": "max-age=3600"})

    async def file(self, request: Request) -> Response:
        return FileResponse(self.queue.file(request.path_params["job"], request.path_params["path"]))

    async def events(self, request: Request) -> Response:
        """The job's events from the first (or after Last-Event-ID, when the browser reconnects)
        until it finishes."""
        job = self.queue.job(request.path_params["job"])
        last = request.headers.get("last-event-id", "")
        start = int(last) + 1 if last.isdigit() else 0

        async def stream() -> AsyncIterator[str]:
            k = start
            yield "retry: 1000\n\n"
            while True:
                new, finished = self.queue.events(job, k)
                for event in new:
                    yield f"id: {k}\nevent: {event['type']}\ndata: {json.dumps(event)}\n\n"
                    k += 1
                if finished:
                    return
                await asyncio.sleep(POLL_S)

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
