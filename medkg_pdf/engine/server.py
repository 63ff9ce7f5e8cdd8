"""vLLM's OpenAI-compatible HTTP contract in front of the embedded OCR engine.

The pipeline talks to every model server the same way: GET /health, GET /v1/models, POST
/v1/chat/completions with the page as a base64 PNG data URL, Prometheus text on GET /metrics. This
module answers that contract, including vLLM's validation and error shapes, so the pipeline's client
cannot tell the CPU engine from a GPU vLLM. Recognition runs in worker threads, at most
`max_concurrency` at a time; the event loop only parses, validates and answers.

Run it with `python -m medkg_pdf.engine.server --port 8000`; the API key, if any, comes from the
environment variable MEDKG_ENGINE_API_KEY only (command lines show up in `ps`).
"""

from __future__ import annotations

import argparse
import base64
import binascii
import hmac
import json
import logging
import math
import os
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import anyio
import anyio.to_thread
import uvicorn
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, generate_latest
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from medkg_pdf.chat_contract import (
    EMBEDDED_MODEL,
    ChatContractError,
    data_url_payload,
    image_tokens_by_area,
    read_messages,
)
from medkg_pdf.engine.ocr import ImageDecodeError, OcrEngine, decode_image, image_size

__all__ = ["API_KEY_ENV", "DEFAULT_MODEL_NAME", "MAX_IMAGE_BYTES", "create_app", "main", "serve"]

DEFAULT_MODEL_NAME = EMBEDDED_MODEL
API_KEY_ENV = "MEDKG_ENGINE_API_KEY"
MAX_IMAGE_BYTES = 10 * 1024 * 1024
MAX_BODY_BYTES = 16 * 1024 * 1024  # a 10 MB image is 13.4 MB of base64, plus the prompt and JSON
CHARS_PER_TOKEN = 4
GROUNDING_TAG = "<|grounding|>"

log = logging.getLogger(__name__)

RecognizePage = Callable[[bytes], str]
# Optional: the same page as DeepSeek-OCR-style grounded regions, for prompts that ask for them.
RecognizeGrounded = Callable[[bytes], "str | list[tuple[str, float]]"]  # text, or pieces with log-probabilities

_ERROR_TYPES = {
    400: "BadRequestError",
    401: "AuthenticationError",
    404: "NotFoundError",
    405: "MethodNotAllowedError",
    413: "BadRequestError",
    500: "InternalServerError",
}


class ApiError(Exception):
    """An error answered in OpenAI's shape: {"object": "error", "error": {message, type, param, code}}."""

    def __init__(self, status: int, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param


def _error_response(status: int, message: str, param: str | None = None) -> JSONResponse:
    error_type = _ERROR_TYPES.get(status, "BadRequestError" if status < 500 else "InternalServerError")
    body = {"object": "error", "error": {"message": message, "type": error_type, "param": param, "code": status}}
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse(body, status_code=status, headers=headers)


# --------------------------------------------------------------------------------------------------
# Request parsing and validation (pure, run off the event loop: bodies reach 16 MB)
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ChatRequest:
    image: bytes
    width: int
    height: int
    prompt: str
    max_tokens: int | None
    logprobs: bool = False  # OpenAI's `logprobs: true`: the answer's pieces with their log-probabilities

    @property
    def prompt_chars(self) -> int:
        return len(self.prompt)

    @property
    def grounding(self) -> bool:
        """DeepSeek-OCR's convention: `<|grounding|>` in the prompt asks for located regions."""
        return GROUNDING_TAG in self.prompt


def parse_chat_request(raw: bytes, model_name: str) -> ChatRequest:
    """Validate a chat completion body in vLLM's order (JSON, model, messages, sampling, image)."""
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise ApiError(400, "request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise ApiError(400, "request body must be a JSON object")
    model = body.get("model")
    if model is not None and model != model_name:
        raise ApiError(404, f"The model `{model}` does not exist. This server serves `{model_name}`.", param="model")
    prompt, image_urls = _read_messages(body.get("messages"))
    max_tokens = _check_sampling(body)
    if not image_urls:
        raise ApiError(
            400,
            "the request has no image: this OCR engine reads one page image per request, sent as a "
            "content part {'type': 'image_url', 'image_url': {'url': 'data:image/png;base64,...'}}",
            param="messages",
        )
    if len(image_urls) > 1:
        raise ApiError(400, f"At most 1 image(s) may be provided in one request; got {len(image_urls)}.", param="messages")
    image = _decode_data_url(image_urls[0])
    try:
        width, height = image_size(image)
    except ImageDecodeError as error:
        raise ApiError(400, f"invalid image: {error}", param="messages") from None
    return ChatRequest(image=image, width=width, height=height, prompt=prompt, max_tokens=max_tokens, logprobs=body.get("logprobs") is True)


def _read_messages(messages: Any) -> tuple[str, list[Any]]:
    """(text prompt, image URLs) of an OpenAI messages list, validated like vLLM."""
    try:
        texts, urls = read_messages(messages, strict=True)
    except ChatContractError as error:
        raise ApiError(400, str(error), param="messages") from None
    return "\n".join(texts), urls


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


# (field, test, message): vLLM's SamplingParams checks for the fields the pipeline may send.
_SAMPLING_CHECKS: Sequence[tuple[str, Callable[[Any], bool], str]] = (
    ("temperature", lambda v: _is_number(v) and v >= 0, "temperature must be non-negative"),
    ("top_p", lambda v: _is_number(v) and 0 < v <= 1, "top_p must be in (0, 1]"),
    ("top_k", lambda v: _is_int(v) and v >= -1, "top_k must be -1 (disable), 0, or at least 1"),
    ("seed", _is_int, "seed must be an integer"),
    ("n", lambda v: v == 1 and _is_int(v), "n must be 1: this engine returns one choice"),
    ("presence_penalty", lambda v: _is_number(v) and -2 <= v <= 2, "presence_penalty must be in [-2, 2]"),
    ("frequency_penalty", lambda v: _is_number(v) and -2 <= v <= 2, "frequency_penalty must be in [-2, 2]"),
    ("repetition_penalty", lambda v: _is_number(v) and v > 0, "repetition_penalty must be greater than zero"),
)


def _check_sampling(body: dict[str, Any]) -> int | None:
    """Check sampling parameters like vLLM; they don't change OCR output. Returns max_tokens."""
    if body.get("stream"):
        raise ApiError(400, "streaming is not supported by the embedded engine; send stream=false", param="stream")
    for field, valid, message in _SAMPLING_CHECKS:
        value = body.get(field)
        if value is not None and not valid(value):
            raise ApiError(400, f"{message}, got {value!r}.", param=field)
    field = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    max_tokens = body.get(field)
    if max_tokens is not None and (not _is_int(max_tokens) or max_tokens < 1):
        raise ApiError(400, f"{field} must be at least 1, got {max_tokens!r}.", param=field)
    return max_tokens


def _decode_data_url(url: Any) -> bytes:
    if not isinstance(url, str) or not url:
        raise ApiError(400, "image_url.url must be a non-empty string", param="messages")
    if url.split(":", 1)[0].lower() in ("http", "https"):
        raise ApiError(
            400,
            "image URLs are not fetched: the embedded engine runs offline. Send the page inline as a "
            "data:image/png;base64,... URL",
            param="messages",
        )
    payload = data_url_payload(url)
    if payload is None:
        raise ApiError(400, "the image must be a base64 data URL: data:image/png;base64,...", param="messages")
    if len(payload) // 4 * 3 > MAX_IMAGE_BYTES + 2:
        raise ApiError(400, f"image is larger than the {MAX_IMAGE_BYTES // (1024 * 1024)} MB limit", param="messages")
    try:
        image = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(400, "the image data is not valid base64", param="messages") from None
    if len(image) > MAX_IMAGE_BYTES:
        raise ApiError(400, f"image is larger than the {MAX_IMAGE_BYTES // (1024 * 1024)} MB limit", param="messages")
    return image


def estimate_prompt_tokens(prompt_chars: int, width: int, height: int) -> int:
    """Text at about 4 characters a token, plus the image by area in Qwen2.5-VL patches."""
    return math.ceil(prompt_chars / CHARS_PER_TOKEN) + image_tokens_by_area(width, height)


def limit_completion(text: str, max_tokens: int) -> tuple[str, int, str]:
    """(text, completion tokens, finish_reason): a model stops at max_tokens with finish_reason "length"."""
    tokens = math.ceil(len(text) / CHARS_PER_TOKEN)
    if tokens <= max_tokens:
        return text, tokens, "stop"
    return text[: max_tokens * CHARS_PER_TOKEN], max_tokens, "length"


# --------------------------------------------------------------------------------------------------
# The app
# --------------------------------------------------------------------------------------------------


class _Metrics:
    """vLLM's metric names, in a registry of the app's own (several apps may live in one process)."""

    def __init__(self, model_name: str, limiter: anyio.CapacityLimiter) -> None:
        self.registry = CollectorRegistry()
        labels = {"model_name": model_name}
        running = Gauge("vllm:num_requests_running", "Requests being recognized now.", ["model_name"], registry=self.registry)
        running.labels(**labels).set_function(lambda: limiter.borrowed_tokens)
        waiting = Gauge("vllm:num_requests_waiting", "Requests waiting for a worker.", ["model_name"], registry=self.registry)
        waiting.labels(**labels).set_function(lambda: limiter.statistics().tasks_waiting)
        self.prompt_tokens = Counter(
            "vllm:prompt_tokens", "Prompt tokens processed (estimated).", ["model_name"], registry=self.registry
        ).labels(**labels)
        self.generation_tokens = Counter(
            "vllm:generation_tokens", "Generation tokens produced (estimated).", ["model_name"], registry=self.registry
        ).labels(**labels)
        self._success = Counter(
            "vllm:request_success", "Requests answered.", ["model_name", "finished_reason"], registry=self.registry
        )
        self._model_name = model_name

    def succeeded(self, finish_reason: str) -> None:
        self._success.labels(model_name=self._model_name, finished_reason=finish_reason).inc()


class _EngineApi:
    def __init__(self, recognize_page: RecognizePage, model_name: str, api_key: str | None, max_model_len: int,
                 max_concurrency: int, recognize_grounded: RecognizeGrounded | None = None):  # fmt: skip
        self.recognize_page = recognize_page
        self.recognize_grounded = recognize_grounded
        self.model_name = model_name
        self.max_model_len = max_model_len
        self._key = api_key.encode("utf-8") if api_key else None
        self.limiter = anyio.CapacityLimiter(max_concurrency)
        self.metrics = _Metrics(model_name, self.limiter)

    # ----- routes -----------------------------------------------------------------------------

    async def health(self, request: Request) -> Response:
        return Response(status_code=200)

    async def models(self, request: Request) -> Response:
        self._authorize(request)
        card = {
            "id": self.model_name,
            "object": "model",
            "created": int(time.time()),
            "owned_by": "medkg-pdf",
            "root": self.model_name,
            "parent": None,
            "max_model_len": self.max_model_len,
        }
        return JSONResponse({"object": "list", "data": [card]})

    async def metrics_text(self, request: Request) -> Response:
        return Response(generate_latest(self.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    async def chat_completions(self, request: Request) -> Response:
        self._authorize(request)
        raw = await _read_body(request)
        chat = await anyio.to_thread.run_sync(parse_chat_request, raw, self.model_name)
        del raw
        prompt_tokens = estimate_prompt_tokens(chat.prompt_chars, chat.width, chat.height)
        max_tokens = self._check_context(prompt_tokens, chat.max_tokens)
        grounded = chat.grounding and self.recognize_grounded is not None
        answer = await self._recognize(chat.image, self.recognize_grounded if grounded else self.recognize_page)
        pieces = answer if isinstance(answer, list) else None
        markdown = "".join(piece for piece, _ in pieces) if pieces is not None else answer
        content, completion_tokens, finish_reason = limit_completion(markdown, max_tokens)
        logprobs = None
        if chat.logprobs and pieces is not None and content == markdown:  # a cut answer's pieces would not spell it
            logprobs = {"content": [{"token": t, "logprob": lp, "bytes": list(t.encode()), "top_logprobs": []} for t, lp in pieces]}
        self.metrics.prompt_tokens.inc(prompt_tokens)
        self.metrics.generation_tokens.inc(completion_tokens)
        self.metrics.succeeded(finish_reason)
        return JSONResponse(
            {
                "id": f"chatcmpl-{secrets.token_hex(16)}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": self.model_name,
                "choices": [
                    {"index": 0, "message": {"role": "assistant", "content": content}, "logprobs": logprobs, "finish_reason": finish_reason}
                ],
                "usage": {
                    "prompt_tokens": prompt_tokens,
                    "completion_tokens": completion_tokens,
                    "total_tokens": prompt_tokens + completion_tokens,
                },
            }
        )

    # ----- helpers ------------------------------------------------------------------------------

    def _authorize(self, request: Request) -> None:
        """vLLM's --api-key: every /v1 route needs `Authorization: Bearer <key>`. The key is compared in
        constant time and never repeated in an answer or a log line."""
        if self._key is None:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode("utf-8"), self._key):
            raise ApiError(401, "invalid or missing API key: send the header Authorization: Bearer <key>")

    def _check_context(self, prompt_tokens: int, max_tokens: int | None) -> int:
        """vLLM refuses requests that cannot fit in the model's context; without max_tokens it may
        generate up to the end of the context."""
        if prompt_tokens >= self.max_model_len:
            raise ApiError(
                400,
                f"This model's maximum context length is {self.max_model_len} tokens. However, your request has "
                f"{prompt_tokens} input tokens. Please reduce the length of the input messages.",
                param="messages",
            )
        if max_tokens is None:
            return self.max_model_len - prompt_tokens
        if prompt_tokens + max_tokens > self.max_model_len:
            raise ApiError(
                400,
                f"This model's maximum context length is {self.max_model_len} tokens. However, you requested "
                f"{prompt_tokens + max_tokens} tokens ({prompt_tokens} in the messages, {max_tokens} in the completion). "
                "Please reduce the length of the messages or completion.",
                param="max_tokens",
            )
        return max_tokens

    async def _recognize(self, image: bytes, recognize: RecognizePage | RecognizeGrounded) -> str | list[tuple[str, float]]:
        def work() -> str | list[tuple[str, float]]:
            decode_image(image)  # the pixels must decode, whatever recognize_page does with them
            return recognize(image)

        try:
            markdown = await anyio.to_thread.run_sync(work, limiter=self.limiter)
        except ImageDecodeError as error:
            raise ApiError(400, f"invalid image: {error}", param="messages") from None
        except Exception:
            log.exception("page recognition failed")
            raise ApiError(500, "the engine failed to recognize the page") from None
        if not isinstance(markdown, (str, list)):
            log.error("recognize_page returned %s, not str", type(markdown).__name__)
            raise ApiError(500, "the engine failed to recognize the page")
        return markdown


async def _read_body(request: Request) -> bytes:
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise ApiError(413, f"request body is larger than {MAX_BODY_BYTES // (1024 * 1024)} MB")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise ApiError(413, f"request body is larger than {MAX_BODY_BYTES // (1024 * 1024)} MB")
        chunks.append(chunk)
    return b"".join(chunks)


async def _api_error(request: Request, error: Exception) -> Response:
    assert isinstance(error, ApiError)
    return _error_response(error.status, error.message, error.param)


async def _http_error(request: Request, error: Exception) -> Response:
    assert isinstance(error, HTTPException)
    return _error_response(error.status_code, str(error.detail))


async def _unexpected_error(request: Request, error: Exception) -> Response:
    log.error("unhandled error on %s %s: %s", request.method, request.url.path, type(error).__name__)
    return _error_response(500, "internal server error")


def create_app(
    recognize_page: RecognizePage,
    *,
    model_name: str = DEFAULT_MODEL_NAME,
    api_key: str | None = None,
    max_model_len: int = 8192,
    max_concurrency: int = 2,
    recognize_grounded: RecognizeGrounded | None = None,
) -> Starlette:
    """The OpenAI-compatible app. `recognize_page(png_bytes) -> markdown` is called in a worker thread,
    at most `max_concurrency` at once. An empty `api_key` means no key, as with vLLM."""
    if max_concurrency < 1:
        raise ValueError("max_concurrency must be at least 1")
    api = _EngineApi(recognize_page, model_name, api_key, max_model_len, max_concurrency, recognize_grounded)
    routes = [
        Route("/health", api.health, methods=["GET"]),
        Route("/v1/models", api.models, methods=["GET"]),
        Route("/metrics", api.metrics_text, methods=["GET"]),
        Route("/v1/chat/completions", api.chat_completions, methods=["POST"]),
    ]
    handlers = {ApiError: _api_error, HTTPException: _http_error, Exception: _unexpected_error}
    app = Starlette(routes=routes, exception_handlers=handlers)  # type: ignore[arg-type]
    app.state.engine_api = api
    return app


# --------------------------------------------------------------------------------------------------
# Running it
# --------------------------------------------------------------------------------------------------


def default_concurrency() -> int:
    """Pages recognized at once: one per two cores, at least one. ONNX Runtime already spreads one page
    over several cores, and more pages at once only interleave them."""
    return max(1, (os.cpu_count() or 1) // 2)


class _AnnouncingServer(uvicorn.Server):
    """uvicorn, plus one line for humans once the socket is listening (programs poll /health)."""

    async def startup(self, sockets: list[Any] | None = None) -> None:
        await super().startup(sockets=sockets)
        if self.started and self.servers:
            port = self.servers[0].sockets[0].getsockname()[1]
            host = f"[{self.config.host}]" if ":" in self.config.host else self.config.host
            print(f"medkg-pdf engine listening on http://{host}:{port}", flush=True)


def serve(
    host: str = "127.0.0.1",
    port: int = 8000,
    *,
    api_key: str | None = None,
    model_name: str = DEFAULT_MODEL_NAME,
    max_concurrency: int | None = None,
) -> None:
    """Load the OCR model, then serve until interrupted. The model is loaded before the socket opens, so
    /health answering 200 means ready, as with vLLM."""
    concurrency = max_concurrency or default_concurrency()
    engine = OcrEngine(num_threads=max(1, (os.cpu_count() or 1) // concurrency))
    engine.load()
    app = create_app(
        lambda png: engine.to_markdown(png).markdown,
        model_name=model_name,
        api_key=api_key,
        max_concurrency=concurrency,
        recognize_grounded=engine.to_grounded,
    )
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False, lifespan="off")
    _AnnouncingServer(config).run()


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError("must be a TCP port, 0-65535")
    return value


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m medkg_pdf.engine.server",
        description=f"Serve the embedded CPU OCR engine over vLLM's OpenAI-compatible API. API key: ${API_KEY_ENV} only.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1, this machine only)")
    parser.add_argument("--port", type=_port, default=8000, help="TCP port (default 8000; 0 picks a free one)")
    parser.add_argument("--model-name", default=DEFAULT_MODEL_NAME, help=f"served model name (default {DEFAULT_MODEL_NAME})")
    parser.add_argument("--max-concurrency", type=_positive_int, default=None, help="pages recognized at once (default: cores / 2)")
    args = parser.parse_args(argv)
    serve(
        args.host,
        args.port,
        api_key=os.environ.get(API_KEY_ENV) or None,
        model_name=args.model_name,
        max_concurrency=args.max_concurrency,
    )


if __name__ == "__main__":
    main()
