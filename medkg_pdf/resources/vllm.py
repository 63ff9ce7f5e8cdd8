"""The model server resource: the one way assets reach a VLM over vLLM's OpenAI-compatible API.

Production points `base_url` at a vLLM Service; with no `base_url` the resource starts the
embedded CPU OCR engine on a free loopback port and talks to it over the very same HTTP path.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import json
import logging
import math
import threading
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import httpx
import pymupdf
from dagster import ConfigurableResource, InitResourceContext
from pydantic import Field, PrivateAttr
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, stop_after_attempt, wait_exponential_jitter

from medkg_pdf.metrics import nearest_rank
from medkg_pdf.profiles import InvalidAnswerError, ModelProfile, get_profile
from medkg_pdf.resources.breaker import BreakerOpenError, BreakerState, CircuitBreaker
from medkg_pdf.schemas import PageParse, PageStatus, SamplingParams

log = logging.getLogger("medkg_pdf.vllm")

EMBEDDED_MODEL = "medkg-embedded-ocr"
MAX_ANSWER_CHARS = 200_000  # model output is untrusted text: cap what we keep
_FATAL_HINTS = {
    401: "the server refused the API key: set MEDKG_VLLM_API_KEY to the key vLLM was started with (--api-key)",
    403: "the server forbids this client: check the API key and any proxy in front of vLLM",
    404: "the server does not serve this model or path: check MEDKG_VLLM_MODEL and MEDKG_VLLM_BASE_URL",
}


class ModelServerError(RuntimeError):
    """Base of the errors a run reports about the model server, always naming URL and model."""


class ServerUnavailableError(ModelServerError):
    pass


class ModelNotServedError(ModelServerError):
    pass


class FatalRequestError(ModelServerError):
    """A 401/403/404: every page would fail the same way, so the run stops at once."""


class RetryableError(Exception):
    def __init__(self, message: str, status: PageStatus, retry_after: float | None = None):
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after


class PageFailure(Exception):
    def __init__(self, message: str, status: PageStatus):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class PageRequest:
    """A page to parse: its PNG in hand (just rendered) or loaded from storage when its turn comes."""

    document_id: str
    page_index: int
    cache_key: str
    load_png: Callable[[], bytes] | None = None
    blank: bool = False
    png: bytes | None = None


@dataclass
class RunStats:
    pages: int = 0
    model_calls: int = 0
    retries: int = 0
    breaker_trips: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    wall_s: float = 0.0
    latencies: list[float] = field(default_factory=list)
    status_counts: dict[str, int] = field(default_factory=dict)

    def percentile(self, q: float) -> float | None:
        return nearest_rank(self.latencies, q)

    def summary(self) -> dict[str, Any]:
        wall = max(self.wall_s, 1e-9)
        return {
            "pages": self.pages,
            "model_calls": self.model_calls,
            "retries": self.retries,
            "breaker_trips": self.breaker_trips,
            "pages_per_s": round(self.pages / wall, 3) if self.model_calls else None,
            "tokens_per_s": round((self.prompt_tokens + self.completion_tokens) / wall, 1),
            "latency_p50_s": self.percentile(0.50),
            "latency_p95_s": self.percentile(0.95),
            "latency_p99_s": self.percentile(0.99),
            "status_counts": dict(self.status_counts),
        }


def image_tokens(width: int, height: int, patch_px: int) -> int:
    """Qwen2.5-VL style: one token per patch_px x patch_px tile (28 px = 14 px patches merged 2x2)."""
    return math.ceil(width / patch_px) * math.ceil(height / patch_px)


def looks_repetitive(text: str, window: int = 800, max_period: int = 200, min_repeats: int = 6) -> bool:
    """Degenerate decoding loops (DeepSeek-OCR #151): the tail is one short unit repeated."""
    tail = text[-window:]
    if len(tail) < 120:
        return False
    for period in range(1, min(max_period, len(tail) // min_repeats) + 1):
        unit = tail[-period:]
        if unit.strip() and tail.endswith(unit * min_repeats) and len(unit * min_repeats) >= 60:
            return True
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return len(lines) >= 12 and any(lines.count(line) >= 10 and len(line) >= 8 for line in set(lines[-40:]))


def resize_png(png: bytes, width: int, height: int) -> bytes:
    return pymupdf.Pixmap(pymupdf.Pixmap(png), width, height, None).tobytes("png")


def rotate_png(png: bytes, degrees_clockwise: int) -> tuple[bytes, int, int]:
    from PIL import Image  # Pillow: PyMuPDF pixmaps cannot rotate

    with Image.open(io.BytesIO(png)) as image:
        turned = image.rotate(-degrees_clockwise, expand=True)
        out = io.BytesIO()
        turned.save(out, format="PNG")
        return out.getvalue(), turned.width, turned.height


def png_size(png: bytes) -> tuple[int, int]:
    # PNG IHDR: width and height are big-endian ints at bytes 16..24
    return int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")


class VLLMResource(ConfigurableResource):
    """Client of a vLLM (or vLLM-compatible) server, shared politely by every page of a run."""

    base_url: str | None = Field(
        default=None, description="vLLM server URL, e.g. http://vllm:8000. Unset: start the embedded CPU engine."
    )
    model: str = Field(default=EMBEDDED_MODEL, description="Served model name, as in GET /v1/models.")
    api_key: str | None = Field(default=None, description="Bearer token (vLLM --api-key). From a secret only.")
    max_concurrency: int = Field(default=8, ge=1, description="Requests in flight per run.")
    connect_timeout_s: float = 10.0
    read_timeout_s: float = Field(default=300.0, description="Generous: a page can queue for minutes under load.")
    write_timeout_s: float = 60.0
    pool_timeout_s: float = 60.0
    preflight_timeout_s: float = 5.0
    max_attempts: int = Field(default=3, ge=1)
    backoff_initial_s: float = 1.0
    backoff_max_s: float = 20.0
    breaker_failure_threshold: int = 5
    breaker_recovery_s: float = 60.0
    breaker_success_threshold: int = 2
    temperature: float = 0.0
    seed: int = 42
    max_tokens: int = 4096
    max_model_len: int | None = Field(default=None, description="Context length; unset: read from /v1/models, else 8192.")
    image_patch_px: int = 28
    profile: str | None = Field(
        default=None, description="qwen2.5-vl | deepseek-ocr | olmocr-2 | embedded-ocr; unset: inferred from the model name."
    )
    prompt: str | None = Field(default=None, description="Override of the profile's prompt (set prompt_version too).")
    prompt_version: str | None = None
    engine_concurrency: int = Field(default=2, description="OCR threads of the embedded engine.")

    _engine: Any = PrivateAttr(default=None)
    _started_url: str | None = PrivateAttr(default=None)

    # ----- lifecycle -------------------------------------------------------------------------
    def setup_for_execution(self, context: InitResourceContext) -> None:
        if self.base_url is None:
            from medkg_pdf.engine.process import EmbeddedEngine

            self._engine = ExitStack()
            engine = self._engine.enter_context(
                EmbeddedEngine(model_name=self.model, api_key=self.api_key, max_concurrency=self.engine_concurrency)
            )
            self._started_url = engine.url

    def teardown_after_execution(self, context: InitResourceContext) -> None:
        if self._engine is not None:
            self._engine.close()
            self._engine = None

    @property
    def url(self) -> str:
        url = self.base_url or self._started_url
        if not url:
            raise ModelServerError("no model server: set MEDKG_VLLM_BASE_URL or let the resource start the engine")
        return url.rstrip("/")

    # ----- identity of a result ----------------------------------------------------------------
    @property
    def model_profile(self) -> ModelProfile:
        return get_profile(self.profile, self.model)

    @property
    def effective_prompt(self) -> str:
        return self.prompt or self.model_profile.prompt

    @property
    def effective_prompt_version(self) -> str:
        return self.prompt_version or self.model_profile.prompt_version

    def sampling(self) -> SamplingParams:
        return SamplingParams(temperature=self.temperature, seed=self.seed, max_tokens=self.max_tokens)

    def cache_key(self, pdf_sha256: str, page_index: int, dpi: int) -> str:
        """A page result is reusable only under the same PDF, page, DPI, model, prompt and sampling."""
        identity = {
            "pdf": pdf_sha256,
            "page": page_index,
            "dpi": dpi,
            "model": self.model,
            "profile": self.model_profile.name,
            "prompt_version": self.effective_prompt_version,
            "sampling": self.sampling().model_dump(),
        }
        return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:24]

    def redact(self, text: str) -> str:
        return text.replace(self.api_key, "***") if self.api_key else text

    # ----- public entry ------------------------------------------------------------------------
    def parse_pages(
        self,
        pages: Iterable[PageRequest],
        on_result: Callable[[PageParse], None],
        logger: logging.Logger | None = None,
    ) -> RunStats:
        """Parse pages concurrently (bounded); `on_result` stores each result as it arrives.

        `pages` may be a generator that renders as it goes: it is drawn in a thread of its own,
        at most `max_concurrency` pages ahead of the requests, so the first request leaves as soon
        as the first page exists and rendering runs beside the requests with bounded memory.

        Raises ModelServerError when the server is unusable (preflight, auth, breaker open):
        results that arrived before are already stored, so a re-run only does the rest. An
        exception raised by `pages` is raised here once the pages in flight have been stored.
        """
        return asyncio.run(self._parse_all(pages, on_result, logger or log))

    async def _parse_all(self, pages: Iterable[PageRequest], on_result, logger) -> RunStats:
        stats = RunStats()
        started = time.perf_counter()

        def on_change(old: BreakerState, new: BreakerState, why: str) -> None:
            (logger.warning if new is BreakerState.open else logger.info)(
                f"circuit breaker {old.value} -> {new.value} for {self.url}: {self.redact(why)}"
            )

        breaker = CircuitBreaker(
            failure_threshold=self.breaker_failure_threshold,
            recovery_s=self.breaker_recovery_s,
            success_threshold=self.breaker_success_threshold,
            on_change=on_change,
        )
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        timeout = httpx.Timeout(
            connect=self.connect_timeout_s, read=self.read_timeout_s, write=self.write_timeout_s, pool=self.pool_timeout_s
        )
        limits = httpx.Limits(max_connections=self.max_concurrency, max_keepalive_connections=self.max_concurrency)
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        room = threading.Semaphore(self.max_concurrency)  # pages drawn from `pages` but not yet taken by a worker
        stop = threading.Event()
        done = object()
        producer_error: list[BaseException] = []

        def produce() -> None:
            """Draw pages (rendering them, when `pages` renders) and hand them to the event loop."""
            iterator = iter(pages)
            try:
                while not stop.is_set():
                    while not room.acquire(timeout=0.2):
                        if stop.is_set():
                            return
                    try:
                        page = next(iterator)
                    except StopIteration:
                        return
                    loop.call_soon_threadsafe(queue.put_nowait, page)
            except BaseException as error:  # noqa: BLE001 - raised by parse_pages once in-flight pages are stored
                producer_error.append(error)
            finally:
                loop.call_soon_threadsafe(queue.put_nowait, done)
                close = getattr(iterator, "close", None)
                if close is not None:
                    close()

        async with httpx.AsyncClient(base_url=self.url, headers=headers, timeout=timeout, limits=limits) as client:
            producer = threading.Thread(target=produce, name="medkg-pages", daemon=True)
            producer.start()
            fatal: list[BaseException] = []
            try:
                max_model_len = await self._preflight(client)

                async def worker() -> None:
                    while True:
                        page = await queue.get()
                        if page is done:
                            queue.put_nowait(done)  # for the other workers
                            return
                        room.release()
                        if fatal:
                            continue
                        stats.pages += 1
                        try:
                            result = await self._parse_one(client, page, breaker, max_model_len, stats, time.perf_counter())
                        except FatalRequestError as error:
                            fatal.append(error)
                            stop.set()
                            continue
                        del page
                        stats.status_counts[result.status.value] = stats.status_counts.get(result.status.value, 0) + 1
                        if result.status is PageStatus.ok:
                            stats.latencies.append(result.latency_s)
                        await asyncio.to_thread(on_result, result)

                await asyncio.gather(*(worker() for _ in range(self.max_concurrency)))
            finally:
                stop.set()
                await asyncio.to_thread(producer.join)
        stats.breaker_trips = breaker.trips
        stats.wall_s = time.perf_counter() - started
        if fatal:
            raise fatal[0]
        if producer_error:
            raise producer_error[0]
        return stats

    # ----- preflight ---------------------------------------------------------------------------
    async def _preflight(self, client: httpx.AsyncClient) -> int:
        """Fail within seconds, before any page work, when the server is down or serves another model."""
        where = f"model server {self.url} (model {self.model!r})"
        quick = httpx.Timeout(self.preflight_timeout_s)
        try:
            health = await client.get("/health", timeout=quick)
        except httpx.HTTPError as error:
            raise ServerUnavailableError(f"{where} is unreachable: {type(error).__name__}: {self.redact(str(error))}") from None
        if health.status_code != 200:
            raise ServerUnavailableError(f"{where} is unhealthy: GET /health answered HTTP {health.status_code}")
        try:
            models = await client.get("/v1/models", timeout=quick)
        except httpx.HTTPError as error:
            raise ServerUnavailableError(f"{where}: GET /v1/models failed: {type(error).__name__}") from None
        if models.status_code in _FATAL_HINTS:
            raise FatalRequestError(f"{where}: GET /v1/models answered HTTP {models.status_code}: {_FATAL_HINTS[models.status_code]}")
        try:
            served = {entry["id"]: entry for entry in models.json()["data"]}
        except (ValueError, KeyError, TypeError):
            raise ServerUnavailableError(f"{where}: GET /v1/models did not return an OpenAI model list") from None
        if self.model not in served:
            raise ModelNotServedError(
                f"{where}: the server serves {sorted(served)}, not {self.model!r}; set MEDKG_VLLM_MODEL to one of them"
            )
        return self.max_model_len or int(served[self.model].get("max_model_len") or 8192)

    # ----- one page ----------------------------------------------------------------------------
    async def _parse_one(self, client, page: PageRequest, breaker, max_model_len, stats, enqueued) -> PageParse:
        queue_wait = time.perf_counter() - enqueued
        profile = self.model_profile
        sampling = self.sampling()
        base = dict(
            document_id=page.document_id,
            page_index=page.page_index,
            cache_key=page.cache_key,
            model=self.model,
            profile=profile.name,
            prompt_version=self.effective_prompt_version,
            queue_wait_s=round(queue_wait, 4),
        )
        if page.blank:
            return PageParse(**base, sampling=sampling, status=PageStatus.blank)
        png = page.png if page.png is not None else await asyncio.to_thread(page.load_png)
        width, height = png_size(png)
        try:
            png, width, height = await asyncio.to_thread(self._size_for_model, profile, png, width, height, sampling, max_model_len)
        except PageFailure as failure:
            return PageParse(**base, sampling=sampling, status=failure.status, error=str(failure))
        attempts, rotation = 0, 0
        started = time.perf_counter()
        answer: dict[str, Any] = {}
        parsed = None
        asked_again = False
        for round_ in range(4):  # one retry for truncation/repetition, one for a rotated page, one for an empty answer
            data_url = "data:image/png;base64," + base64.b64encode(png).decode("ascii")
            try:
                answer, tries = await self._complete(client, data_url, sampling, breaker, stats, profile)
                attempts += tries
            except BreakerOpenError as exc:
                status, error = PageStatus.breaker_open, str(exc)
                break
            except (RetryableError, PageFailure) as exc:
                attempts += getattr(exc, "attempts", 1)
                status, error = exc.status, self.redact(str(exc))
                break
            status, error = self._judge(answer)
            if status in (PageStatus.truncated, PageStatus.repetition):
                if round_ == 0 and sampling.repetition_penalty is None:
                    sampling = sampling.model_copy(update={"repetition_penalty": 1.1, "frequency_penalty": 0.3})
                    continue
                break
            if status is PageStatus.empty and not asked_again:  # an empty answer is final only when it comes twice
                asked_again = True
                continue
            if status is not PageStatus.ok:
                break
            try:
                parsed = profile.parse(answer["text"])
            except InvalidAnswerError as exc:
                status, error = PageStatus.invalid_response, f"{profile.name} answer: {exc}"
                break
            if parsed.rotation_correction and not rotation:
                # the model says the page is sideways: turn the image and ask once more
                rotation = parsed.rotation_correction
                png, width, height = await asyncio.to_thread(rotate_png, png, rotation)
                parsed = None
                continue
            if not parsed.markdown.strip() and not parsed.regions:
                status, error = PageStatus.empty, "the answer had no text after parsing"
                if not asked_again:
                    asked_again, parsed = True, None
                    continue
            break
        usage = answer.get("usage") or {}
        if parsed is not None:
            markdown = parsed.markdown
        elif status is PageStatus.truncated:
            markdown = answer.get("text", "")
        else:
            markdown = ""
        return PageParse(
            **base,
            sampling=sampling,
            status=status,
            error=error,
            markdown=markdown,
            regions=parsed.regions if parsed is not None and status is PageStatus.ok else [],
            rotation_applied=rotation,
            image_width=width,
            image_height=height,
            prompt_tokens=int(usage.get("prompt_tokens") or 0),
            completion_tokens=int(usage.get("completion_tokens") or 0),
            latency_s=round(time.perf_counter() - started, 4),
            attempts=attempts,
            finish_reason=answer.get("finish_reason"),
        )

    def _size_for_model(self, profile: ModelProfile, png: bytes, width: int, height: int, sampling, max_model_len):
        target_w, target_h = profile.target_size(width, height)
        if (target_w, target_h) != (width, height):
            png, width, height = resize_png(png, target_w, target_h), target_w, target_h
        return self._fit_context(png, width, height, sampling, max_model_len)

    def _fit_context(self, png: bytes, width: int, height: int, sampling: SamplingParams, max_model_len: int):
        """Never send a request the server must reject: shrink the image until prompt + image + answer fit."""
        prompt_tokens = len(self.effective_prompt) // 3 + 32
        available = max_model_len - sampling.max_tokens - prompt_tokens
        min_image_tokens = 64
        if available < min_image_tokens:
            raise PageFailure(
                f"context too small: max_model_len {max_model_len} leaves {available} tokens for the image after "
                f"max_tokens {sampling.max_tokens} and the prompt; lower max_tokens or raise --max-model-len",
                PageStatus.context_overflow,
            )
        needed = image_tokens(width, height, self.image_patch_px)
        if needed <= available:
            return png, width, height
        factor = math.sqrt(available / needed) * 0.98
        while True:
            new_w, new_h = max(1, int(width * factor)), max(1, int(height * factor))
            if image_tokens(new_w, new_h, self.image_patch_px) <= available:
                return resize_png(png, new_w, new_h), new_w, new_h  # the size is found first, encoded once
            factor *= 0.95

    async def _complete(self, client, data_url: str, sampling: SamplingParams, breaker: CircuitBreaker, stats: RunStats, profile: ModelProfile):
        body = {
            "model": self.model,
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "image_url", "image_url": {"url": data_url}},
                        {"type": "text", "text": self.effective_prompt},
                    ],
                }
            ],
            **sampling.model_dump(exclude_none=True),
            **profile.extra_body,
        }
        tries = 0

        def wait(state: RetryCallState) -> float:
            backoff = wait_exponential_jitter(initial=self.backoff_initial_s, max=self.backoff_max_s)(state)
            error = state.outcome.exception() if state.outcome else None
            retry_after = getattr(error, "retry_after", None)
            return min(max(backoff, retry_after or 0.0), max(self.backoff_max_s, retry_after or 0.0))

        def count_retry(state: RetryCallState) -> None:
            stats.retries += 1

        try:
            async for attempt in AsyncRetrying(
                retry=retry_if_exception_type(RetryableError),
                stop=stop_after_attempt(self.max_attempts),
                wait=wait,
                before_sleep=count_retry,
                reraise=True,
            ):
                with attempt:
                    tries += 1
                    breaker.before_call(self.url)
                    stats.model_calls += 1
                    try:
                        answer = await self._post(client, body)
                    except RetryableError as error:
                        breaker.record_failure(str(error))
                        raise
                    breaker.record_success()
                    return answer, tries
        except (RetryableError, PageFailure) as error:
            error.attempts = tries  # type: ignore[attr-defined]
            raise
        raise AssertionError("unreachable")

    async def _post(self, client: httpx.AsyncClient, body: dict) -> dict[str, Any]:
        try:
            response = await client.post("/v1/chat/completions", json=body)
        except httpx.TimeoutException as error:
            raise RetryableError(f"{type(error).__name__} after {self.read_timeout_s:.0f} s read timeout", PageStatus.timeout) from None
        except httpx.TransportError as error:
            raise RetryableError(f"connection error: {type(error).__name__}: {error}", PageStatus.http_error) from None
        code = response.status_code
        if code == 429 or code >= 500:
            retry_after = _retry_after_s(response.headers.get("retry-after"))
            raise RetryableError(f"HTTP {code} from {self.url}: {_error_message(response)}", PageStatus.http_error, retry_after)
        if code in _FATAL_HINTS:
            raise FatalRequestError(f"HTTP {code} from {self.url} for model {self.model!r}: {_FATAL_HINTS[code]}")
        if code >= 400:
            raise PageFailure(f"HTTP {code} (not retried): {_error_message(response)}", PageStatus.http_error)
        try:
            payload = response.json()
            choice = payload["choices"][0]
            text = choice["message"]["content"]
            if text is not None and not isinstance(text, str):
                raise TypeError("content is not a string")
        except (ValueError, KeyError, IndexError, TypeError) as error:
            raise PageFailure(f"invalid response from server: {type(error).__name__}: {str(error)[:200]}", PageStatus.invalid_response) from None
        return {"text": (text or "")[:MAX_ANSWER_CHARS], "finish_reason": choice.get("finish_reason"), "usage": payload.get("usage")}

    def _judge(self, answer: dict[str, Any]) -> tuple[PageStatus, str | None]:
        text = answer["text"]
        if answer.get("finish_reason") == "length":
            if looks_repetitive(text):
                return PageStatus.repetition, "degenerate repeated output until max_tokens"
            return PageStatus.truncated, f"answer cut at max_tokens={self.max_tokens} (finish_reason=length)"
        if looks_repetitive(text):
            return PageStatus.repetition, "degenerate repeated output"
        if not text.strip():
            return PageStatus.empty, "empty answer for a page with ink"
        return PageStatus.ok, None


def _retry_after_s(value: str | None) -> float | None:
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


def _error_message(response: httpx.Response) -> str:
    try:
        error = response.json().get("error")
        message = error.get("message") if isinstance(error, dict) else error
    except (ValueError, AttributeError):
        message = None
    return str(message or response.text)[:300]
