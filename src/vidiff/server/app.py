"""The HTTP API of ``vidiff serve`` (FastAPI): jobs in, status, progress events and videos out.

Every error is ``{"error": {"message": …, "field": …}}`` with a 4xx/5xx status; with a token, every
route needs ``Authorization: Bearer <token>`` (or ``?token=`` for the page's ``<video>`` and
``EventSource``, which cannot send headers). The routes are listed in the README's "Server and web
page" section.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hmac
import json
import secrets
import shutil
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.staticfiles import StaticFiles

from .. import __version__
from ..cli.commands import COMMANDS
from ..cli.jobs import job_fields
from .requests import JobRefused, check_job
from .store import TERMINAL, JobStore
from .uploads import UPLOAD_FIELDS, check_size, save_image
from .worker import Worker

STATIC = Path(__file__).parent / "static"
PLACEHOLDER = "<!doctype html><title>vidiff</title><p>vidiff server: the page is not installed; the API is at /v1/.</p>"
_EVENT_POLL_SECONDS = 0.1  # how often an event stream looks for a change
_KEEPALIVE_SECONDS = 15.0  # a comment line keeps proxies from closing a quiet stream
_MEDIA_TYPES = {"mp4": "video/mp4", "gif": "image/gif"}


@dataclasses.dataclass
class ServerState:
    """What the routes share: the job table, the workers, the model table and the limits."""

    store: JobStore
    workers: list[Worker]
    data: Path
    models: dict[str, str]  # --model NAME → PATH_OR_ID
    model_pipelines: dict[str, list[str]]  # --model NAME → the pipelines it serves
    token: str | None = None
    max_upload_bytes: int = 20 * 2**20

    def wake_workers(self) -> None:
        for worker in self.workers:
            worker.wake.set()


def error_response(status: int, message: str, field: str | None = None, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "field": field}}, status_code=status, headers=headers)


def video_object(record: dict[str, Any]) -> dict[str, Any]:
    """A job row as the API shows it."""
    step, total = record["step"], record["total"]
    fraction = 1.0 if record["status"] == "succeeded" else (min(step / total, 1.0) if total else 0.0)
    video_id = record["id"]
    return {
        "id": video_id, "status": record["status"],
        "progress": {"step": step, "total": total, "fraction": round(fraction, 4)},
        "eta_seconds": record["eta_seconds"] if record["status"] == "running" else None,
        "error": {"message": record["error"]} if record["error"] else None,
        "job": record["job"], "outputs": record["outputs"],
        "created": record["created"], "started": record["started"], "finished": record["finished"],
        "content_url": f"/v1/videos/{video_id}/content", "sidecar_url": f"/v1/videos/{video_id}/sidecar",
    }


def create_app(state: ServerState) -> FastAPI:
    """The FastAPI application over ``state`` (its workers are started by the caller)."""
    app = FastAPI(title="vidiff", version=__version__, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.vidiff = state

    @app.middleware("http")
    async def require_token(request: Request, call_next):
        if state.token is not None and not _authorized(request, state.token):
            return error_response(401, "this server needs its token: send `Authorization: Bearer <token>` (or ?token=<token>)",
                                  headers={"WWW-Authenticate": "Bearer"})
        return await call_next(request)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException):
        return error_response(error.status_code, str(error.detail))

    @app.exception_handler(JobRefused)
    async def refused(request: Request, error: JobRefused):
        return error_response(error.status, error.message, error.field)

    _add_page_routes(app)
    _add_info_routes(app, state)
    _add_video_routes(app, state)
    return app


def _authorized(request: Request, token: str) -> bool:
    header = request.headers.get("authorization", "")
    given = header[7:].strip() if header.lower().startswith("bearer ") else request.query_params.get("token", "")
    return hmac.compare_digest(given.encode(), token.encode())


def _add_page_routes(app: FastAPI) -> None:
    @app.get("/", include_in_schema=False)
    def page():
        index = STATIC / "index.html"
        return FileResponse(index, media_type="text/html") if index.is_file() else HTMLResponse(PLACEHOLDER)

    app.mount("/static", StaticFiles(directory=STATIC, check_dir=False), name="static")


def _add_info_routes(app: FastAPI, state: ServerState) -> None:
    @app.get("/v1/health")
    def health():
        workers = [{"device": worker.device, "busy": worker.busy} for worker in state.workers]
        return {"status": "ok", "version": __version__, "workers": workers}

    @app.get("/v1/pipelines")
    def pipelines():
        return {"pipelines": [_pipeline_info(name, state) for name in COMMANDS]}


def _pipeline_info(name: str, state: ServerState) -> dict[str, Any]:
    command = COMMANDS[name]
    return {
        "name": name, "takes_image": command.takes_image, "takes_prompt": command.takes_prompt,
        "default_model": command.default_model,
        "models": [model for model, served in state.model_pipelines.items() if name in served],
        "defaults": {flag.param: command.default(flag.param) for flag in command.flags},
        "fields": sorted(job_fields(name)),  # every job field this pipeline takes
    }


def _finder(state: ServerState):
    """``find(id)``: the job's row, or a 404."""

    def find(video_id: str) -> dict[str, Any]:
        record = state.store.get(video_id)
        if record is None:
            raise JobRefused(f"no video with id {video_id!r}", status=404)
        return record

    return find


def _add_video_routes(app: FastAPI, state: ServerState) -> None:
    find = _finder(state)

    @app.post("/v1/videos", status_code=201)
    async def submit(request: Request):
        job, uploads = await _read_submission(request, state.max_upload_bytes)
        record = await run_in_threadpool(_queue, state, job, uploads)
        return JSONResponse(video_object(record), status_code=201)

    @app.get("/v1/videos")
    def videos():
        return {"videos": [video_object(record) for record in state.store.list()]}

    @app.get("/v1/videos/{video_id}")
    def video(video_id: str):
        return video_object(find(video_id))

    @app.delete("/v1/videos/{video_id}")
    def cancel(video_id: str):
        record = find(video_id)
        if not state.store.cancel(video_id):
            raise JobRefused(f"video {video_id} has already ended ({record['status']}); nothing to cancel", status=409)
        return video_object(find(video_id))

    @app.get("/v1/videos/{video_id}/events")
    async def events(video_id: str, request: Request):
        find(video_id)
        return StreamingResponse(_event_stream(state, video_id, request), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    _add_file_routes(app, find)


def _add_file_routes(app: FastAPI, find) -> None:
    """A finished job's video and sidecar."""

    @app.get("/v1/videos/{video_id}/content")
    def content(video_id: str, format: str | None = None):  # noqa: A002 - the API's query name
        record = find(video_id)
        if record["status"] != "succeeded":
            raise JobRefused(f"video {video_id} is {record['status']}, not succeeded: no content yet", status=409)
        chosen = format or record["outputs"][0]
        if chosen not in _MEDIA_TYPES:
            raise JobRefused(f"format must be one of {sorted(_MEDIA_TYPES)}, got {chosen!r}", "format")
        path = (record["files"] or {}).get(chosen)
        if path is None:
            raise JobRefused(f"video {video_id} was made as {record['outputs']}, not {chosen}", "format", status=404)
        return FileResponse(path, media_type=_MEDIA_TYPES[chosen], filename=f"{video_id}.{chosen}")

    @app.get("/v1/videos/{video_id}/sidecar")
    def sidecar(video_id: str):
        record = find(video_id)
        if record["status"] != "succeeded":
            raise JobRefused(f"video {video_id} is {record['status']}, not succeeded: no sidecar yet", status=409)
        first = record["files"][record["outputs"][0]]
        return JSONResponse(json.loads(Path(first + ".json").read_text()))


async def _read_submission(request: Request, limit_bytes: int) -> tuple[Any, dict[str, bytes]]:
    """The job (JSON, or multipart text fields) and the uploaded files' bytes by field."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind == "application/json":
        try:
            return json.loads(await request.body()), {}
        except (ValueError, UnicodeDecodeError) as error:
            raise JobRefused(f"the request body is not valid JSON ({error})", status=400) from None
    if kind not in ("multipart/form-data", "application/x-www-form-urlencoded"):
        raise JobRefused(f"send the job as application/json or multipart/form-data, not {kind or 'no content type'!r}", status=415)
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit_bytes * len(UPLOAD_FIELDS) + 2**20:  # refused before it is read
        raise JobRefused(f"the request is {int(declared) / 2**20:.1f} MiB; this server takes at most "
                         f"{limit_bytes / 2**20:g} MiB per uploaded image (vidiff serve --max-upload-mb)", status=413)
    form = await request.form(max_files=len(UPLOAD_FIELDS), max_fields=500)
    job: dict[str, Any] = {}
    uploads: dict[str, bytes] = {}
    for key in dict.fromkeys(form.keys()):  # each field once, in the order sent
        values = form.getlist(key)
        files = [v for v in values if not isinstance(v, str)]
        if files:
            if key not in UPLOAD_FIELDS or len(values) > 1:
                raise JobRefused(f"only {list(UPLOAD_FIELDS)} may be uploaded files, once each; got a file for {key!r}", key)
            check_size(key, files[0].size or 0, limit_bytes)
            uploads[key] = await files[0].read(limit_bytes + 1)
            check_size(key, len(uploads[key]), limit_bytes)
            continue
        texts = [v for v in values if v != ""]  # an empty form field means "not set"
        if texts:
            job[key] = texts[0] if len(texts) == 1 else texts
    return job, uploads


def _queue(state: ServerState, job: Any, uploads: dict[str, bytes]) -> dict[str, Any]:
    """Check the job, keep its uploads, add it to the queue; returns its row."""
    video_id = secrets.token_hex(8)
    folder = state.data / "uploads" / video_id
    try:
        saved = {field: save_image(field, data, folder) for field, data in uploads.items()}
        shown, run_job, formats, steps = check_job(job, state.models, saved)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    state.store.add(video_id, shown, run_job, formats, steps)
    state.wake_workers()
    return state.store.get(video_id)


async def _event_stream(state: ServerState, video_id: str, request: Request):
    """``event: progress`` with the video object at each change (each step the worker reported,
    even between two polls), then one ``event: done`` when the job has ended."""
    last_sent, quiet, seen, run_started = None, 0.0, 0, None
    while not await request.is_disconnected():
        record = state.store.get(video_id)
        if record is None:
            return
        if record["started"] != run_started:  # a new run (or a re-queued one): its steps count from 0
            seen, run_started = 0, record["started"]
        snapshots = []
        if record["status"] == "running":
            for step, total, eta in state.store.steps_since(video_id, seen):
                seen += 1
                snapshots.append({**record, "step": step, "total": total, "eta_seconds": eta})
        for current in [video_object(snapshot) for snapshot in snapshots] + [video_object(record)]:
            if current != last_sent:
                yield f"event: progress\ndata: {json.dumps(current)}\n\n"
                last_sent, quiet = current, 0.0
        if record["status"] in TERMINAL:
            yield f"event: done\ndata: {json.dumps(last_sent)}\n\n"
            return
        await asyncio.sleep(_EVENT_POLL_SECONDS)
        quiet += _EVENT_POLL_SECONDS
        if quiet >= _KEEPALIVE_SECONDS:
            yield ": keep-alive\n\n"
            quiet = 0.0
