"""The HTTP side of talking to a vLLM (or vLLM-compatible) server, without Dagster.

One `ModelClient.parse_pages` call is one run: a preflight that fails in seconds, then pages
streamed through a bounded set of workers on one httpx connection pool, each request retried by
tenacity, fewer requests in flight after a 429 (`limiter.py`), and all of them guarded by the
process's circuit breaker for that server. The Dagster resource, the CLI and the
benchmarks all build this same client.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import httpx
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, wait_exponential_jitter

from medkg_pdf.metrics import nearest_rank
from medkg_pdf.model_client.breaker import BreakerOpenError, BreakerState, CircuitBreaker, shared_breaker
from medkg_pdf.model_client.errors import (
    FatalRequestError,
    ModelNotServedError,
    PageFailure,
    RetryableError,
    ServerUnavailableError,
)
from medkg_pdf.model_client.limiter import AdaptiveLimit
from medkg_pdf.model_client.page_parser import PageParser, PageRecipe, PageRequest, WaitBudget
from medkg_pdf.schemas import PageParse, PageStatus

log = logging.getLogger("medkg_pdf.vllm")

MAX_ANSWER_CHARS = 200_000  # model output is untrusted text: cap what we keep
MAX_RESPONSE_BYTES = 8 * 2**20  # and what we read: 200 k characters of JSON-escaped text fit with room to spare
OnResult = Callable[[PageParse], None]  # stores one result; called in a worker thread, as results arrive
_FATAL_HINTS = {
    401: "the server refused the API key: set MEDKG_VLLM_API_KEY to the key vLLM was started with (--api-key)",
    403: "the server forbids this client: check the API key and any proxy in front of vLLM",
    404: "the server does not serve this model or path: check MEDKG_VLLM_MODEL and MEDKG_VLLM_BASE_URL",
}


@dataclass
class RunStats:
    """What one run cost, for the asset's metadata and the benchmarks."""

    pages: int = 0  # drawn from the iterable, blank ones included
    model_calls: int = 0  # HTTP requests, retries and re-asks included
    retries: int = 0  # tenacity's sleeps
    breaker_trips: int = 0  # while this run went on (the breaker is shared by the process)
    rate_limited: int = 0  # 429 answers
    lowest_concurrency: int = 0  # requests in flight after the deepest cut for 429s
    prompt_tokens: int = 0  # the server's usage, summed over the pages' final answers
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
            "rate_limited": self.rate_limited,
            "lowest_concurrency": self.lowest_concurrency,
            "pages_per_s": round(self.pages / wall, 3) if self.model_calls else None,
            "tokens_per_s": round((self.prompt_tokens + self.completion_tokens) / wall, 1),
            "latency_p50_s": self.percentile(0.50),
            "latency_p95_s": self.percentile(0.95),
            "latency_p99_s": self.percentile(0.99),
            "status_counts": dict(self.status_counts),
        }


@dataclass(frozen=True)
class Backoff:
    """tenacity's policy for one request: exponential with jitter, but never sooner than Retry-After.

    Each wait holds a pool slot, so each is capped (`retry_after_max_s`) and all of a page's waits
    together are bounded by its wait budget (`wait_budget_s`): a page whose next wait would
    overdraw it stops there with its last error.
    """

    max_attempts: int = 3  # failed requests per body (5xx, timeouts, resets); 429s and breaker waits are not failures
    initial_s: float = 1.0
    max_s: float = 20.0
    retry_after_max_s: float = 60.0  # a server asking for an hour must not park a page (and its pool slot) for one
    wait_budget_s: float = 300.0  # per page: all its waits (back-off, Retry-After, an open breaker) together

    def wait(self, state: RetryCallState) -> float:
        backoff = wait_exponential_jitter(initial=self.initial_s, max=self.max_s)(state)
        error = state.outcome.exception() if state.outcome else None
        retry_after = min(getattr(error, "retry_after", None) or 0.0, self.retry_after_max_s)
        return min(max(backoff, retry_after), max(self.max_s, retry_after))


@dataclass
class _Run:
    """What the requests of one run share: the process's breaker, this run's in-flight limit, its stats."""

    breaker: CircuitBreaker
    limiter: AdaptiveLimit
    stats: RunStats
    outlasted: bool = False  # a page waited out its budget on the open breaker: later pages do not wait again


def redact(text: str, *secrets: str | None) -> str:
    """Error texts may echo the request; an API key or a URL's password must never reach a log or a stored result."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


def shown_url(url: str) -> str:
    """The URL without `user:password@`, for logs, errors and metadata (the client itself keeps the credentials)."""
    try:
        return str(httpx.URL(url).copy_with(username=None, password=None))
    except httpx.InvalidURL:
        return "<invalid URL>"


def url_credentials(url: str) -> httpx.BasicAuth | None:
    """`user:password@` of a server URL (e.g. a reverse proxy's basic auth) as httpx auth."""
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL:
        return None
    return httpx.BasicAuth(parsed.username, parsed.password) if parsed.username or parsed.password else None


def url_password(url: str) -> str | None:
    try:
        return httpx.URL(url).password or None
    except httpx.InvalidURL:
        return None


@dataclass(frozen=True)
class ModelClient:
    """A model server shared politely by every page of a run; `breaker` unset: the process's one for `url`."""

    url: str
    recipe: PageRecipe
    api_key: str | None = None
    max_concurrency: int = 8
    timeout: httpx.Timeout = field(default_factory=lambda: httpx.Timeout(300.0, connect=10.0, write=60.0, pool=60.0))
    preflight_timeout_s: float = 5.0
    backoff: Backoff = Backoff()
    breaker: CircuitBreaker | None = None
    max_model_len: int | None = None  # unset: what GET /v1/models says, else 8192

    def redact(self, text: str) -> str:
        return redact(text, self.api_key, url_password(self.url))

    @property
    def shown_url(self) -> str:
        return shown_url(self.url)

    def parse_pages(
        self,
        pages: Iterable[PageRequest],
        on_result: OnResult,
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
                f"circuit breaker {old.value} -> {new.value} for {self.shown_url}: {self.redact(why)}"
            )

        breaker = self.breaker or shared_breaker(self.url)
        trips_before = breaker.trips
        run = _Run(breaker, AdaptiveLimit(self.max_concurrency), stats)
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
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

        async with httpx.AsyncClient(
            base_url=self.shown_url, auth=url_credentials(self.url), headers=headers, timeout=self.timeout, limits=limits
        ) as client:  # the credentials go in `auth`, so no URL that httpx logs carries them
            producer = threading.Thread(target=produce, name="medkg-pages", daemon=True)
            producer.start()
            fatal: list[BaseException] = []
            try:
                max_model_len = await self._preflight(client)

                async def complete(body: dict, budget: WaitBudget) -> tuple[dict[str, Any], int]:
                    return await self._complete(client, body, budget, run)

                parser = PageParser(self.recipe, complete, max_model_len, self.redact, self.backoff.wait_budget_s)

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
                            result = await parser.parse(page, time.perf_counter())
                        except FatalRequestError as error:
                            fatal.append(error)
                            stop.set()
                            continue
                        del page
                        stats.status_counts[result.status.value] = stats.status_counts.get(result.status.value, 0) + 1
                        stats.prompt_tokens += result.prompt_tokens
                        stats.completion_tokens += result.completion_tokens
                        if result.status is PageStatus.ok:
                            stats.latencies.append(result.latency_s)
                        await asyncio.to_thread(on_result, result)

                with breaker.watch(on_change):
                    await asyncio.gather(*(worker() for _ in range(self.max_concurrency)))
            finally:
                stop.set()
                await asyncio.to_thread(producer.join)
        stats.breaker_trips = breaker.trips - trips_before
        stats.lowest_concurrency = run.limiter.lowest
        stats.wall_s = time.perf_counter() - started
        if fatal:
            raise fatal[0]
        if producer_error:
            raise producer_error[0]
        return stats

    async def _preflight(self, client: httpx.AsyncClient) -> int:
        """Fail within seconds, before any page work, when the server is down or serves another model."""
        model = self.recipe.model
        where = f"model server {self.shown_url} (model {model!r})"
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
        if model not in served:
            raise ModelNotServedError(
                f"{where}: the server serves {sorted(served)}, not {model!r}; set MEDKG_VLLM_MODEL to one of them"
            )
        return self.max_model_len or int(served[model].get("max_model_len") or 8192)

    async def _complete(self, client: httpx.AsyncClient, body: dict, budget: WaitBudget, run: _Run):
        """One answer for one body, retried by tenacity.

        A failure of the server (5xx, timeout, reset) spends one of `max_attempts` and counts for the
        breaker. A wait (a 429, an open breaker) spends neither: the page waits (capped Retry-After,
        or until the breaker's trial call) while its wait budget lasts.
        """
        tries = failures = 0

        def stop(state: RetryCallState) -> bool:
            if failures >= self.backoff.max_attempts:
                return True
            if isinstance(state.outcome.exception(), BreakerOpenError) and run.outlasted:
                return True  # the outage already outlasted a page's budget in this run: do not wait it out again
            return state.upcoming_sleep > budget.left_s

        def before_sleep(state: RetryCallState) -> None:
            run.stats.retries += 1
            budget.left_s -= state.upcoming_sleep

        try:
            async for attempt in AsyncRetrying(
                retry=retry_if_exception_type(RetryableError),
                stop=stop,
                wait=self.backoff.wait,
                before_sleep=before_sleep,
                reraise=True,
            ):
                with attempt:
                    tries += 1
                    try:
                        return await self._try(client, body, run), tries
                    except RetryableError as error:
                        failures += not error.throttled
                        raise
        except (RetryableError, PageFailure) as error:
            error.attempts = tries  # type: ignore[attr-defined]
            run.outlasted |= isinstance(error, BreakerOpenError)
            raise
        raise AssertionError("unreachable")

    async def _try(self, client: httpx.AsyncClient, body: dict, run: _Run) -> dict[str, Any]:
        """One request through the breaker and the in-flight limit, telling both how it went."""
        ticket = run.breaker.before_call(self.shown_url)
        try:
            async with run.limiter.slot() as sent_at:
                run.stats.model_calls += 1
                try:
                    answer = await self._post(client, body)
                except RetryableError as error:
                    if error.throttled:  # a 429: a busy server asking to slow down, not a broken one
                        run.stats.rate_limited += 1
                        run.limiter.slow_down(sent_at)
                    else:
                        run.breaker.record_failure(str(error), ticket)
                    raise
                run.limiter.speed_up()
                run.breaker.record_success(ticket)
                return answer
        finally:
            run.breaker.release(ticket)

    async def _post(self, client: httpx.AsyncClient, body: dict) -> dict[str, Any]:
        try:
            async with client.stream("POST", "/v1/chat/completions", json=body) as response:
                raw = await _read_capped(response, MAX_RESPONSE_BYTES)
        except httpx.TimeoutException as error:
            raise RetryableError(f"{type(error).__name__} after {self.timeout.read:.0f} s read timeout", PageStatus.timeout) from None
        except httpx.TransportError as error:
            raise RetryableError(f"connection error: {type(error).__name__}: {error}", PageStatus.http_error) from None
        code = response.status_code
        if code == 429 or code >= 500:
            retry_after = _retry_after_s(response.headers.get("retry-after"))
            raise RetryableError(
                f"HTTP {code} from {self.shown_url}: {self.redact(_error_message(raw))}", PageStatus.http_error, retry_after, throttled=code == 429
            )
        if code in _FATAL_HINTS:
            raise FatalRequestError(f"HTTP {code} from {self.shown_url} for model {self.recipe.model!r}: {_FATAL_HINTS[code]}")
        if code >= 400:
            raise PageFailure(f"HTTP {code} (not retried): {_error_message(raw)}", PageStatus.http_error)
        try:
            payload = json.loads(raw)
            choice = payload["choices"][0]
            text = choice["message"]["content"]
            if text is not None and not isinstance(text, str):
                raise TypeError("content is not a string")
        except (ValueError, KeyError, IndexError, TypeError) as error:
            raise PageFailure(f"invalid response from server: {type(error).__name__}: {str(error)[:200]}", PageStatus.invalid_response) from None
        return {
            "text": (text or "")[:MAX_ANSWER_CHARS],
            "finish_reason": choice.get("finish_reason"),
            "usage": payload.get("usage"),
            "logprobs": token_logprobs(choice.get("logprobs")),
        }


def token_logprobs(logprobs: Any) -> list[tuple[str, float]] | None:
    """`choices[0].logprobs.content` as (token text, log-probability) pairs; None when absent or malformed
    (a server that gives none, or an odd one, costs the confidence, never the page)."""
    content = logprobs.get("content") if isinstance(logprobs, dict) else None
    if not isinstance(content, list):
        return None
    pairs = []
    for entry in content:
        token, logprob = (entry.get("token"), entry.get("logprob")) if isinstance(entry, dict) else (None, None)
        if not isinstance(token, str) or not isinstance(logprob, (int, float)) or logprob != logprob or logprob > 0:
            return None
        pairs.append((token, float(max(logprob, -100.0))))  # vLLM sends -9999.0 for "impossible"
    return pairs


async def _read_capped(response: httpx.Response, limit: int) -> bytes:
    """The body, read while it stays under `limit` bytes: a runaway answer is cut off on the wire, not after."""
    chunks, size = [], 0
    async for chunk in response.aiter_bytes():
        size += len(chunk)
        if size > limit:
            raise PageFailure(f"response body over {limit // 2**20} MiB: not read further", PageStatus.invalid_response)
        chunks.append(chunk)
    return b"".join(chunks)


def _retry_after_s(value: str | None) -> float | None:
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


def _error_message(raw: bytes) -> str:
    try:
        error = json.loads(raw).get("error")
        message = error.get("message") if isinstance(error, dict) else error
    except (ValueError, AttributeError):
        message = None
    return str(message or raw.decode("utf-8", "replace"))[:300]
