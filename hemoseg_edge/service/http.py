"""``hemoseg-edge serve``: the HTTP API (FastAPI on uvicorn) in front of one loaded model.

Endpoints (``docs/integration.md`` has the contract, OpenAPI at ``/docs`` and ``/openapi.json``):

- ``POST /v1/segment`` — an image as the raw body or as one multipart file; answers the JSON
  result, or with ``?return=overlay`` / ``?return=mask`` the overlay JPEG / mask PNG.
- ``GET /health`` — liveness and load; ``GET /version`` — tool, model and backend identity.

Guarantees:

- one model, loaded before the socket is served, shared by every request; inference runs in
  a thread pool of the backend's ``concurrency`` threads, never on the event loop;
- a bounded queue: at most ``queue`` segment requests are admitted at once (reading their
  body, waiting or running); one more gets 503 with ``Retry-After`` before its body is read,
  so memory stays within ``queue x max_bytes`` (plus the decoded frames); a body must arrive
  within ``read_timeout`` seconds (408), so a slow client cannot hold a slot for ever;
- the body limit is enforced while reading, before decoding: a declared ``Content-Length``
  over the limit gets 413 at once, a chunked body is cut off at the limit;
- every error is a JSON ``{"error": "one line"}``: bad input 4xx, a bug 500 with a one-line
  message, never a traceback in a response;
- ``--token`` / ``HEMOSEG_TOKEN``: ``Authorization: Bearer <token>`` required on ``/v1/*`` and
  ``/version`` (compared in constant time); ``/health`` and the docs stay open;
- SIGTERM / SIGINT: stop accepting, finish the requests in flight, exit 0.
"""

import asyncio
import contextlib
import hashlib
import hmac
import math
import os
import re
import signal
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from .. import __version__
from ..errors import EXIT_MODEL, EXIT_OK, EXIT_USAGE, HemosegError, install_hint
from ..inputs import decode_image
from ..outputs import render_outputs
from ..outputs.encode import encode_png_mask
from ..segmenter import Segmenter
from .log import log

DEFAULT_MAX_BYTES = 64 * 1024 * 1024
DEFAULT_QUEUE = 8
_NAME_OK = re.compile(r"[^A-Za-z0-9._ ()+-]")


@dataclass(frozen=True)
class HttpConfig:
    host: str = "127.0.0.1"
    port: int = 8080
    token: str | None = None
    max_bytes: int = DEFAULT_MAX_BYTES
    queue: int = DEFAULT_QUEUE  # segment requests admitted at once (reading, waiting, running)
    model: str | None = None
    backend: str = "auto"
    assume_defaults: bool = False
    throughput: bool = False  # OpenVINO streams: several inferences at once, each slower
    overlay_max_side: int = 2048
    graceful_timeout: float = 60.0  # seconds SIGTERM waits for requests in flight
    read_timeout: float = 60.0  # seconds a client may take to send its body (408 beyond)
    access_log: bool = True


class ApiError(Exception):
    """An answer other than 200, with its one-line reason."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.headers = status, one_line(message), headers or {}


def one_line(msg: object, limit: int = 500) -> str:
    s = " ".join(str(msg).split())
    return s[:limit] if s else "error"


def safe_name(name: str | None, default: str = "upload") -> str:
    """A client-given file name reduced to a short, printable base name (it appears in the
    JSON and in error lines)."""
    base = (name or "").replace("\\", "/").rsplit("/", 1)[-1]
    base = _NAME_OK.sub("_", base).strip(" .")[:120]
    return base or default


def model_identity(seg: Segmenter) -> dict[str, Any]:
    """Name, version, precision and sha256 of the loaded model file, and the backend."""
    sha = None
    with contextlib.suppress(OSError):
        h = hashlib.sha256()
        with open(seg.source, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        sha = h.hexdigest()
    return {
        "name": os.path.basename(seg.source),
        "version": seg.metadata.version,
        "precision": seg.metadata.precision,
        "sha256": sha,
        "input_hw": list(seg.metadata.input_hw),
        "backend": seg.backend.name,
        "providers": list(seg.backend.providers),
    }


class Admission:
    """The bounded queue: a counter on the event loop (no lock: one thread touches it) and an
    estimate of the wait for ``Retry-After`` from the recent service times."""

    def __init__(self, limit: int, workers: int):
        self.limit, self.workers = max(1, limit), max(1, workers)
        self.active = 0
        self.served = 0
        self.refused = 0
        self._avg_s = 1.0

    def try_enter(self) -> bool:
        if self.active >= self.limit:
            self.refused += 1
            return False
        self.active += 1
        return True

    def leave(self, seconds: float | None) -> None:
        self.active -= 1
        if seconds is not None:
            self.served += 1
            self._avg_s = 0.8 * self._avg_s + 0.2 * seconds

    def retry_after(self) -> int:
        return max(1, min(120, math.ceil(self._avg_s * self.active / self.workers)))


def _check_token(expected: bytes | None, authorization: str | None) -> None:
    if expected is None:
        return
    scheme, _, given = (authorization or "").partition(" ")
    digest = hashlib.sha256(given.strip().encode()).digest()  # equal lengths: no length leak
    ok = scheme.lower() == "bearer" and hmac.compare_digest(digest, expected)
    if not ok:
        raise ApiError(401, "missing or wrong bearer token", {"WWW-Authenticate": "Bearer"})


def _content_length(headers) -> int | None:
    value = headers.get("content-length")
    if value is None:
        return None
    try:
        n = int(value)
    except ValueError:
        raise ApiError(400, f"bad Content-Length header {value[:40]!r}") from None
    if n < 0:
        raise ApiError(400, f"bad Content-Length header {value[:40]!r}")
    return n


async def read_limited(request, max_bytes: int) -> bytes:
    """The body, refused with 413 as soon as it passes ``max_bytes`` (declared or streamed)."""
    from starlette.requests import ClientDisconnect

    declared = _content_length(request.headers)
    if declared is not None and declared > max_bytes:
        raise ApiError(413, f"request body too large ({declared} bytes > {max_bytes})")
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > max_bytes:
                raise ApiError(413, f"request body too large (more than {max_bytes} bytes)")
            chunks.append(chunk)
    except ClientDisconnect:
        raise ApiError(400, "client disconnected before the body was complete") from None
    return b"".join(chunks)


async def image_from_request(request, body: bytes, name: str | None) -> tuple[bytes, str]:
    """``(image bytes, input name)`` from a raw body or from a multipart form's one file."""
    ctype = request.headers.get("content-type", "").lower()
    if not ctype.startswith("multipart/form-data"):
        if not body:
            raise ApiError(400, "empty request body: send the image as the body or as a file")
        return body, safe_name(name)
    from starlette.datastructures import UploadFile
    from starlette.exceptions import HTTPException
    from starlette.requests import Request

    sent = False

    async def replay():  # the body already read (and limited) once more, for the form parser
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    form_request = Request(request.scope, replay)
    try:
        form = await form_request.form(max_files=1, max_fields=16)
    except HTTPException as e:
        raise ApiError(400, f"bad multipart body ({e.detail})") from None
    try:
        files = [v for v in form.values() if isinstance(v, UploadFile)]
        if not files:
            raise ApiError(400, "multipart body has no file part (send it as field 'file')")
        upload = files[0]
        data = await upload.read()
        if not data:
            raise ApiError(400, "the uploaded file is empty (0 bytes)")
        return data, safe_name(name or upload.filename)
    finally:
        await form.close()


class Engine:
    """The shared model and the pool that runs it; ``process`` runs on a pool thread."""

    def __init__(self, seg: Segmenter, overlay_max_side: int):
        self.seg = seg
        self.overlay_max_side = overlay_max_side
        self.workers = max(1, int(seg.backend.concurrency))
        self.pool = ThreadPoolExecutor(self.workers, thread_name_prefix="hemoseg-http")
        self.identity = model_identity(seg)

    def process(self, data: bytes, name: str, want: str) -> tuple[dict, bytes | None]:
        loaded = decode_image(data, name, self.seg.metadata.input_hw)
        result = self.seg.segment(loaded)
        d = result.to_dict()
        d["input"] = name
        d["model"] = {**d["model"], **self.identity}
        d["tool"] = {"name": "hemoseg-edge", "version": __version__}
        if want == "mask":
            return d, encode_png_mask(result.mask_windows)
        if want == "overlay":
            with tempfile.TemporaryDirectory(prefix="hemoseg-http-") as tmp:
                path = Path(tmp) / (name or "upload")
                path.write_bytes(data)
                files = render_outputs(result, path, path.stem, self.overlay_max_side)
            return d, list(files.values())[1]
        return d, None

    def close(self) -> None:
        self.pool.shutdown(wait=True)
        with contextlib.suppress(Exception):  # noqa: BLE001 - best effort at exit
            self.seg.backend.close()


def create_app(engine: Engine, config: HttpConfig):
    """The FastAPI application around ``engine`` (tests and embedders may mount it)."""
    from fastapi import Depends, FastAPI, Query, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, Response
    from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
    from starlette.exceptions import HTTPException as StarletteHTTPException

    token = hashlib.sha256(config.token.encode()).digest() if config.token else None
    admission = Admission(config.queue, engine.workers)
    bearer = HTTPBearer(auto_error=False, description="--token / HEMOSEG_TOKEN, when set")
    app = FastAPI(
        title="hemoseg-edge",
        version=__version__,
        description="Retinal hemorrhage segmentation of colour fundus photographs.",
    )
    app.state.admission = admission

    def error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
        return JSONResponse({"error": one_line(message)}, status, headers=headers)

    @app.exception_handler(ApiError)
    async def _api_error(_request, exc: ApiError):
        return error(exc.status, exc.message, exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_request, exc: StarletteHTTPException):
        return error(exc.status_code, str(exc.detail), dict(exc.headers or {}))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_request, exc: RequestValidationError):
        parts = []
        for e in exc.errors()[:3]:
            where = ".".join(str(x) for x in e.get("loc", ()) if x not in ("query", "body"))
            parts.append(f"{where}: {e.get('msg', 'invalid')}" if where else e.get("msg", ""))
        return error(422, "invalid request: " + "; ".join(parts))

    @app.exception_handler(Exception)
    async def _internal_error(_request, exc: Exception):  # a bug: one line, no traceback
        log("http_internal_error", "error", error=f"{type(exc).__name__}: {one_line(exc)}")
        return error(500, f"internal error ({type(exc).__name__}); see the server log")

    def authorized(
        request: Request, _creds: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]
    ) -> None:
        _check_token(token, request.headers.get("authorization"))

    @app.get("/health", summary="Liveness and load")
    async def health() -> dict:
        return {
            "status": "ok",
            "in_flight": admission.active,
            "queue": admission.limit,
            "workers": engine.workers,
            "served": admission.served,
            "refused": admission.refused,
        }

    @app.get("/version", summary="Tool, model and backend", dependencies=[Depends(authorized)])
    async def version() -> dict:
        return {
            "tool": "hemoseg-edge",
            "version": __version__,
            "model": engine.identity,
            "backend": engine.seg.backend.name,
            "concurrency": engine.workers,
            "max_bytes": config.max_bytes,
            "queue": admission.limit,
        }

    binary = {"type": "string", "format": "binary"}
    kinds = ("image/jpeg", "image/png", "image/tiff", "application/dicom")
    image_types = {t: {"schema": binary} for t in (*kinds, "application/octet-stream")}
    form = {"type": "object", "properties": {"file": binary}, "required": ["file"]}
    multipart = {"schema": form}

    @app.post(
        "/v1/segment",
        summary="Segment one fundus photograph",
        dependencies=[Depends(authorized)],
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {**image_types, "multipart/form-data": multipart},
            }
        },
        responses={
            200: {
                "description": "JSON result; with return=overlay a JPEG, with return=mask a PNG",
                "content": {"image/jpeg": {}, "image/png": {}},
            },
            400: {"description": "empty or malformed request"},
            401: {"description": "missing or wrong bearer token"},
            413: {"description": "body over --max-bytes"},
            422: {"description": "not a usable image (one-line reason)"},
            503: {"description": "queue full: retry after Retry-After seconds"},
        },
    )
    async def segment(
        request: Request,
        return_: Literal["json", "overlay", "mask"] = Query("json", alias="return"),
        name: str | None = Query(None, description="input name for a raw body (JSON 'input')"),
    ):
        declared = _content_length(request.headers)
        if declared is not None and declared > config.max_bytes:  # before taking a slot
            raise ApiError(413, f"request body too large ({declared} bytes > {config.max_bytes})")
        if not admission.try_enter():
            raise ApiError(
                503,
                f"busy: {admission.limit} requests in progress; retry later",
                {"Retry-After": str(admission.retry_after())},
            )
        t0 = time.perf_counter()
        served: float | None = None
        handed_off = False
        status, label = 200, "upload"
        try:
            try:
                body = await asyncio.wait_for(
                    read_limited(request, config.max_bytes), config.read_timeout
                )
            except asyncio.TimeoutError:
                raise ApiError(
                    408, f"request body not received within {config.read_timeout:g} s"
                ) from None
            data, label = await image_from_request(request, body, name)
            del body
            loop = asyncio.get_running_loop()
            job = engine.pool.submit(engine.process, data, label, return_)
            try:
                d, payload = await asyncio.wrap_future(job)
            except asyncio.CancelledError:  # the slot is freed when the pool is, not before
                handed_off = True
                job.cancel()
                job.add_done_callback(lambda _: loop.call_soon_threadsafe(admission.leave, None))
                raise
            except HemosegError as e:
                raise ApiError(422, str(e)) from None
            except MemoryError:
                raise ApiError(503, "out of memory; retry later", {"Retry-After": "5"}) from None
            served = time.perf_counter() - t0
            if payload is None:
                return JSONResponse(d)
            headers = {
                "X-Hemoseg-Lesion-Count": str(d["lesion_count"]),
                "X-Hemoseg-Burden-Percent": str(d["burden_percent"]),
                "X-Hemoseg-Flags": ",".join(d["flags"]),
            }
            media = "image/png" if return_ == "mask" else "image/jpeg"
            return Response(payload, media_type=media, headers=headers)
        except ApiError as e:
            status = e.status
            raise
        except Exception as e:  # noqa: BLE001 - a bug: one line to the client, logged here
            status = 500
            log("http_internal_error", "error", input=label, error=f"{type(e).__name__}: {e}")
            if os.environ.get("HEMOSEG_DEBUG"):
                import traceback

                traceback.print_exc()
            raise ApiError(
                500, f"internal error ({type(e).__name__}); see the server log"
            ) from None
        finally:
            if not handed_off:
                admission.leave(served)
            if config.access_log:
                ms = round(1000 * (time.perf_counter() - t0), 1)
                log("http_segment", "info", status=status, input=label, ms=ms, ret=return_)

    return app


def _server_class():
    import uvicorn

    class Server(uvicorn.Server):
        """uvicorn's server, but a signal ends the process with our exit code: uvicorn would
        re-raise SIGTERM after its graceful shutdown (the process then dies of it)."""

        stopped_by: str | None = None

        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            if threading.current_thread() is not threading.main_thread():
                yield
                return

            def handle(sig, frame):
                self.stopped_by = signal.Signals(sig).name
                self.handle_exit(sig, frame)

            sigs = (signal.SIGINT, signal.SIGTERM)
            old = {s: signal.signal(s, handle) for s in sigs}
            try:
                yield
            finally:
                for s, h in old.items():
                    signal.signal(s, h)

    return Server


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.create_server((host, port), family=family, backlog=128)
    sock.set_inheritable(True)
    return sock


def run_http(config: HttpConfig) -> int:
    """Load the model, serve until SIGTERM/SIGINT, finish what is in flight; the exit code."""
    try:
        import uvicorn  # noqa: F401
        from fastapi import FastAPI  # noqa: F401
    except ImportError as e:
        print(
            f"hemoseg-edge: error: the HTTP API needs the [http] extra "
            f"({install_hint('http')}): {e}",
            file=sys.stderr,
        )
        return EXIT_USAGE
    if config.max_bytes < 1 or config.queue < 1:
        print("hemoseg-edge: error: --max-bytes and --queue must be >= 1", file=sys.stderr)
        return EXIT_USAGE
    try:
        seg = Segmenter.from_engine(
            config.model,
            backend=config.backend,  # type: ignore[arg-type]
            allow_defaults=config.assume_defaults,
            throughput=config.throughput,
        )
    except HemosegError as e:
        log("model_error", "error", error=one_line(e))
        return EXIT_MODEL
    engine = Engine(seg, config.overlay_max_side)
    try:
        sock = bind(config.host, config.port)
    except OSError as e:
        log("bind_error", "error", host=config.host, port=config.port, error=e.strerror or e)
        engine.close()
        return EXIT_USAGE
    import uvicorn

    app = create_app(engine, config)
    host, port = sock.getsockname()[:2]
    uv = uvicorn.Config(
        app,
        log_level="warning",
        access_log=False,
        lifespan="off",
        server_header=False,
        timeout_graceful_shutdown=max(1, round(config.graceful_timeout)),
        # connections beyond this get uvicorn's own 503: a bound on idle sockets too
        limit_concurrency=config.queue + 64,
    )
    server = _server_class()(uv)
    shown = f"[{host}]" if ":" in host else host
    log(
        "http_listening",
        url=f"http://{shown}:{port}",
        model=engine.identity["name"],
        version=engine.identity["version"],
        backend=seg.backend.name,
        workers=engine.workers,
        queue=config.queue,
        max_bytes=config.max_bytes,
        auth="bearer" if config.token else "none",
    )
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
        engine.close()
    log("http_stopped", signal=server.stopped_by, served=app.state.admission.served)
    return EXIT_OK
