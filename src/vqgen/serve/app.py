"""The HTTP API: OpenAI-shaped image generation over a batched text-to-image pipeline.

Routes: ``POST /v1/images/generations``, ``GET /v1/images/files/{id}.png`` (images asked for as
``response_format="url"``), ``GET /v1/models``, ``GET /health``, ``GET /metrics``, the web page at
``/`` and the OpenAPI docs at ``/docs``. Every error answers in the OpenAI error shape
``{"error": {"message", "type", "param", "code"}}``; no stack trace ever reaches a client.
"""
from __future__ import annotations

import asyncio
import base64
import gc
import hmac
import logging
import secrets
import time
from collections import OrderedDict
from contextlib import asynccontextmanager
from dataclasses import dataclass
from importlib import resources
from typing import Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from vqgen import __version__
from vqgen.config import require
from vqgen.errors import ConfigError, VqgenError
from vqgen.sampling.settings import MAX_RERANK, MAX_SEED
from vqgen.serve.batcher import Batcher, Job, NotRunning, QueueFull

log = logging.getLogger("vqgen.serve")

# Routes answered without the API key: health; the page shell (static HTML with a key field: a
# browser cannot send the header before the page has loaded); image file URLs are unguessable
# expiring tokens, as OpenAI's signed URLs are. The API schema and docs need the key like the API.
PUBLIC_PATHS = ("/health", "/")
PUBLIC_PREFIXES = ("/v1/images/files/",)
SETTING_FIELDS = ("guidance_scale", "temperature", "top_k", "top_p", "cluster", "rerank", "decoder")
# OpenAI request options with no vqgen meaning: named in the error instead of "unknown field".
OPENAI_UNSUPPORTED = ("quality", "style", "background", "moderation", "output_compression", "partial_images")


@dataclass(frozen=True)
class ServeConfig:
    """Server limits. ``max_batch``: images per sampling loop; ``max_queue``: waiting requests;
    ``max_n``: images per request; ``timeout``: seconds a request may wait and run;
    ``batch_window``: seconds an idle server waits to batch the first request with others (request
    batching; a continuous loop starts at once);
    ``continuous``: requests join the running decode loop at its next step (else they wait for
    the running batch to end);
    ``url_ttl``/``max_stored_images``: lifetime and count of images kept for ``url`` responses;
    ``max_body_bytes``: the largest request body read (more is answered 413)."""

    model_id: str = "vqgen"
    api_key: str | None = None
    max_batch: int = 32
    max_queue: int = 64
    max_n: int = 8
    timeout: float = 300.0
    batch_window: float = 0.01
    continuous: bool = True
    url_ttl: float = 3600.0
    max_stored_images: int = 1024
    max_body_bytes: int = 65536

    def __post_init__(self):
        require(self.max_batch >= 1, "max_batch", "must be at least 1")
        require(self.max_queue >= 1, "max_queue", "must be at least 1")
        require(self.max_n >= 1, "max_n", "must be at least 1")
        require(self.timeout > 0, "timeout", "must be positive")
        require(self.batch_window >= 0, "batch_window", "must not be negative")
        require(self.url_ttl > 0, "url_ttl", "must be positive")
        require(self.max_stored_images >= 1, "max_stored_images", "must be at least 1")
        require(self.max_body_bytes >= 1024, "max_body_bytes", "must be at least 1024")
        require(self.api_key is None or len(self.api_key) > 0, "api_key", "must not be empty")


# request and response shapes -------------------------------------------------------------------
class ImageRequest(BaseModel):
    """The OpenAI images request plus vqgen's sampling extras (send them with ``extra_body``)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    prompt: str = Field(description="what to draw")
    model: str | None = Field(None, description="the served model's id (see /v1/models); optional")
    n: int | None = Field(None, description="number of images (default 1)")
    size: str | None = Field(None, description='"{S}x{S}" for a size the model makes, or "auto"')
    response_format: Literal["b64_json", "url"] | None = Field(
        None, description="b64_json (default): PNG inline; url: a link that expires")
    output_format: Literal["png"] | None = Field(None, description="only png")
    stream: Literal[False] | None = Field(None, description="only false: no streaming")
    user: str | None = Field(None, description="accepted and ignored")
    safety_identifier: str | None = Field(None, description="accepted and ignored")
    # vqgen's sampling settings: each is checked by vqgen.sampling.SamplingConfig, as on the command line
    guidance_scale: float | None = Field(None, description="classifier-free guidance, 0..100 (1 = off); "
                                                           "default: the model's")
    seed: int | None = Field(None, ge=0, le=MAX_SEED, description="same seed, same images (as `vqgen generate`)")
    temperature: float | None = Field(None, description="0: greedy; default: the model's")
    top_k: int | None = Field(None, description="keep the k most likely codes (0 = off)")
    top_p: float | None = Field(None, description="nucleus mass in (0, 1] (1 = off)")
    cluster: int | None = Field(None, description="keep the N most likely codebook clusters (models with "
                                                  "clusters; 0 = off)")
    rerank: int | None = Field(None, description=f"draw this many candidates per image (1..{MAX_RERANK}), keep "
                                                 "the best-scored (models with a reranker)")
    decoder: str | None = Field(None, description="the decoder that writes the codes (default: the model's)")


class ImageData(BaseModel):
    b64_json: str | None = None
    url: str | None = None
    revised_prompt: str | None = None


class ImagesResponse(BaseModel):
    created: int
    data: list[ImageData]
    size: str
    output_format: str = "png"


class APIError(Exception):
    """An error answered in the OpenAI shape."""

    def __init__(self, status: int, message: str, param: str | None = None,
                 code: str | None = None, type: str = "invalid_request_error", headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = status, message, param, code, type
        self.headers = headers


def error_response(status: int, message: str, param=None, code=None, type="invalid_request_error",
                   headers=None) -> JSONResponse:
    """A JSON response in the OpenAI error shape."""
    body = {"error": {"message": message, "type": type, "param": param, "code": code}}
    return JSONResponse(body, status_code=status, headers=headers)


# in-memory store for url responses --------------------------------------------------------------
class ImageStore:
    """PNG bytes under random tokens, each kept ``ttl`` seconds; the oldest go past ``max_items``."""

    def __init__(self, ttl: float, max_items: int):
        self.ttl, self.max_items = ttl, max_items
        self._items: OrderedDict[str, tuple[float, bytes]] = OrderedDict()

    def put(self, png: bytes) -> str:
        now = time.monotonic()
        while self._items and (len(self._items) >= self.max_items or next(iter(self._items.values()))[0] < now):
            self._items.popitem(last=False)
        token = secrets.token_urlsafe(16)
        self._items[token] = (now + self.ttl, png)
        return token

    def get(self, token: str) -> bytes | None:
        item = self._items.get(token)
        if item is None or item[0] < time.monotonic():
            return None
        return item[1]

    def __len__(self) -> int:
        return len(self._items)


# authentication --------------------------------------------------------------------------------
class BearerAuth:
    """ASGI middleware: every route but the public ones needs ``Authorization: Bearer <key>``."""

    def __init__(self, app, api_key: str):
        self.app, self.api_key = app, api_key.encode()

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and not _is_public(scope["path"]):
            header = dict(scope["headers"]).get(b"authorization", b"")
            scheme, _, token = header.partition(b" ")
            if scheme.lower() != b"bearer" or not hmac.compare_digest(token.strip(), self.api_key):
                message = ("missing API key: send 'Authorization: Bearer <key>'" if not header
                           else "invalid API key")
                response = error_response(401, message, code="invalid_api_key",
                                          headers={"WWW-Authenticate": "Bearer"})
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _is_public(path: str) -> bool:
    return path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES)


class BodyLimit:
    """ASGI middleware: read a request body up to ``max_bytes`` (more: 413), then hand it on."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_bytes:
                response = error_response(413, f"the request body is larger than {self.max_bytes} bytes",
                                          code="request_too_large")
                await response(scope, receive, send)
                return
            if not message.get("more_body", False):
                break
        first = {"type": "http.request", "body": b"".join(chunks), "more_body": False}

        async def replay():
            nonlocal first
            if first is not None:
                message, first = first, None
                return message
            return await receive()  # later messages (the client's disconnect) pass through

        await self.app(scope, replay, send)


# the application -------------------------------------------------------------------------------
@dataclass
class ServeState:
    pipe: object
    config: ServeConfig
    batcher: Batcher
    store: ImageStore
    sizes: dict[str, bool]  # "SxS" -> super_resolution
    started: float


def supported_sizes(pipe) -> dict[str, bool]:
    """``{"SxS": super_resolution}`` for the pipeline's own size and its super-resolved one, if any."""
    sizes = {f"{pipe.image_size}x{pipe.image_size}": False}
    scale = pipe.upsample_scale
    if scale:
        side = pipe.image_size * scale
        sizes[f"{side}x{side}"] = True
    return sizes


def create_app(pipe, config: ServeConfig | None = None) -> FastAPI:
    """The FastAPI application serving ``pipe`` (a ``TextToImagePipeline`` or one of its shape)."""
    config = config or ServeConfig()
    state = ServeState(
        pipe=pipe, config=config,
        batcher=Batcher(pipe, max_batch=config.max_batch, max_queue=config.max_queue,
                        window=config.batch_window, continuous=config.continuous),
        store=ImageStore(config.url_ttl, config.max_stored_images),
        sizes=supported_sizes(pipe), started=time.time())

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await state.batcher.start()
        # The pipeline, torch and the libraries are hundreds of thousands of objects that live as long
        # as the server. Left in the collector's oldest generation, each full collection walks them
        # all: a 90-150 ms pause of every thread, about once a minute under load (docs/serve.md).
        # Frozen, they are skipped, and a full collection walks only what requests created.
        gc.collect()
        gc.freeze()
        try:
            yield
        finally:
            await state.batcher.stop()
            gc.unfreeze()

    app = FastAPI(title="vqgen", version=__version__, lifespan=lifespan,
                  description="Text-to-image generation in the OpenAI images API shape, batched "
                              "across clients. Point the `openai` client at `http://HOST:PORT/v1`.")
    app.state.vqgen = state
    app.add_middleware(BodyLimit, max_bytes=config.max_body_bytes)
    if config.api_key is not None:  # added last, so checked first: no body is read without the key
        app.add_middleware(BearerAuth, api_key=config.api_key)
    _add_error_handlers(app)
    _add_routes(app, state)
    return app


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def api_error(request: Request, e: APIError):
        return error_response(e.status, e.message, e.param, e.code, e.type, e.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, e: RequestValidationError):
        message, param = describe_validation_error(e.errors())
        content_type = request.headers.get("content-type", "")
        if param is None and "json" not in content_type:
            message = f"send the body as JSON with 'Content-Type: application/json' (got {content_type!r})"
        return error_response(400, message, param, code="invalid_value")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, e: StarletteHTTPException):
        message, code = {
            400: ("the request body could not be parsed as JSON", "invalid_value"),
            404: (f"no route {request.url.path}", "not_found"),
            405: (f"method {request.method} is not allowed on {request.url.path}", "method_not_allowed"),
        }.get(e.status_code, (str(e.detail), None))
        return error_response(e.status_code, message, code=code, headers=getattr(e, "headers", None))

    @app.exception_handler(Exception)
    async def internal_error(request: Request, e: Exception):
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(500, "internal server error (see the server log)", type="server_error")


def describe_validation_error(errors) -> tuple[str, str | None]:
    """A one-line message and the offending field for pydantic's first error."""
    err = errors[0]
    loc = [str(p) for p in err.get("loc", ()) if p != "body"]
    param = ".".join(loc) or None
    kind = err.get("type", "")
    if kind == "json_invalid":
        return f"the request body is not valid JSON: {err.get('ctx', {}).get('error', err['msg'])}", None
    if kind == "missing":
        return (f"missing required field {param!r}", param) if param else ("missing request body", None)
    if kind == "extra_forbidden" and param in OPENAI_UNSUPPORTED:
        return f"{param!r} is an OpenAI option vqgen does not support; leave it out", param
    if kind == "extra_forbidden":
        fields = ", ".join(ImageRequest.model_fields)
        return f"unknown field {param!r} (supported: {fields})", param
    if param is None:
        return f"the request body must be a JSON object: {err['msg']}", None
    if param == "stream":
        return "streaming is not supported: leave 'stream' out or send false", param
    return f"{param}: {err['msg']}", param


def _add_routes(app: FastAPI, state: ServeState) -> None:
    config, pipe = state.config, state.pipe

    @app.get("/", include_in_schema=False)
    async def page():
        html = resources.files("vqgen.serve").joinpath("static/index.html").read_text(encoding="utf-8")
        return HTMLResponse(html)

    @app.get("/health", summary="Liveness and the limits the web page needs (no API key needed)")
    async def health():
        return {
            "status": "ok" if state.batcher.running else "unavailable",
            "model": config.model_id,
            "sizes": list(state.sizes),
            "max_n": config.max_n,
            "max_prompt_length": pipe.max_prompt_length,
            "default_guidance_scale": pipe.sampling.guidance_scale,
            "auth_required": config.api_key is not None,
        }

    @app.get("/metrics", summary="Batching and queue counters")
    async def metrics():
        return {**state.batcher.metrics(), "stored_images": len(state.store),
                "uptime_s": round(time.time() - state.started, 1)}

    def model_card() -> dict:
        return {"id": config.model_id, "object": "model", "created": int(state.started), "owned_by": "vqgen"}

    @app.get("/v1/models", summary="The served model")
    async def list_models():
        return {"object": "list", "data": [model_card()]}

    @app.get("/v1/models/{model_id}", summary="One model")
    async def get_model(model_id: str):
        if model_id != config.model_id:
            raise APIError(404, f"the model {model_id!r} does not exist (this server serves "
                                f"{config.model_id!r})", "model", "model_not_found")
        return model_card()

    @app.get("/v1/images/files/{name}", summary="An image made with response_format=url",
             response_class=Response, responses={200: {"content": {"image/png": {}}}})
    async def image_file(name: str):
        png = state.store.get(name.removesuffix(".png")) if name.endswith(".png") else None
        if png is None:
            raise APIError(404, "no such image (image URLs expire after "
                                f"{config.url_ttl:g} s)", code="not_found")
        return Response(png, media_type="image/png")

    @app.post("/v1/images/generations", response_model=ImagesResponse, response_model_exclude_none=True,
              summary="Create images from a prompt (OpenAI images API shape)",
              responses={400: {"description": "bad request"}, 401: {"description": "bad API key"},
                         429: {"description": "queue full"}, 503: {"description": "not running"},
                         504: {"description": "timed out"}})
    async def generate(body: ImageRequest, request: Request):
        job = _make_job(body, state)
        try:
            future = state.batcher.submit(job)
        except QueueFull as e:
            raise APIError(429, f"server busy: {e}", code="queue_full", type="rate_limit_error",
                           headers={"Retry-After": "1"})
        except NotRunning as e:
            raise APIError(503, str(e), code="unavailable", type="server_error")
        pngs = await _wait(job, future, request, state)
        size = body.size if body.size in state.sizes else next(iter(state.sizes))
        if body.response_format == "url":
            base = str(request.base_url).rstrip("/")
            data = [ImageData(url=f"{base}/v1/images/files/{state.store.put(p)}.png") for p in pngs]
        else:
            data = [ImageData(b64_json=base64.b64encode(p).decode("ascii")) for p in pngs]
        return ImagesResponse(created=int(time.time()), data=data, size=size)


def _make_job(body: ImageRequest, state: ServeState) -> Job:
    """Check the limits that depend on the model and server, and build the batcher's job."""
    config, pipe = state.config, state.pipe
    if body.model is not None and body.model != config.model_id:
        raise APIError(404, f"the model {body.model!r} does not exist (this server serves "
                            f"{config.model_id!r}; leave 'model' out or use that)", "model", "model_not_found")
    prompt = body.prompt.strip()
    try:
        pipe.validate_prompt(prompt)  # empty, too long, characters the model can't take
    except VqgenError as e:
        raise APIError(400, str(e), "prompt", "invalid_value")
    n = 1 if body.n is None else body.n
    if not 1 <= n <= config.max_n:
        raise APIError(400, f"n must be between 1 and {config.max_n}, got {n}", "n", "invalid_value")
    size = body.size or "auto"
    if size != "auto" and size not in state.sizes:
        raise APIError(400, f"unsupported size {size!r}; this model makes {', '.join(state.sizes)}",
                       "size", "invalid_value")
    try:
        settings = pipe.check_settings(pipe.sampling.merged(**{f: getattr(body, f) for f in SETTING_FIELDS}))
    except ConfigError as e:
        raise APIError(400, str(e), e.field if e.field in SETTING_FIELDS else None, "invalid_value")
    seed = body.seed if body.seed is not None else secrets.randbits(63)
    return Job(prompt=prompt, n=n, seed=seed, settings=settings, super_resolution=state.sizes.get(size, False))


async def _wait(job: Job, future: asyncio.Future, request: Request, state: ServeState) -> list[bytes]:
    """The job's images; cancels it when the client disconnects or the timeout passes."""
    disconnect = asyncio.ensure_future(_disconnected(request))
    try:
        done, _ = await asyncio.wait({future, disconnect}, timeout=state.config.timeout,
                                     return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:  # the server is stopping this handler
        state.batcher.cancel(job, "cancelled")
        raise
    finally:
        disconnect.cancel()
    if future in done:
        error = future.exception() if not future.cancelled() else NotRunning("the request was cancelled")
        if error is None:
            return future.result()
        if isinstance(error, NotRunning):
            raise APIError(503, str(error), code="unavailable", type="server_error")
        if isinstance(error, VqgenError):
            raise APIError(400, str(error), code="invalid_value")
        raise error
    if disconnect in done:
        state.batcher.cancel(job, "cancelled")
        log.info("client went away; request cancelled")
        raise APIError(499, "client closed the request", code="cancelled")
    state.batcher.cancel(job, "timed_out")
    raise APIError(504, f"the request did not finish within {state.config.timeout:g} s; "
                        "the server is overloaded or the request too large", code="timeout",
                   type="server_error")


async def _disconnected(request: Request) -> None:
    """Return when the client closes the connection (the body has already been read)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass
