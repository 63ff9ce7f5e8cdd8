"""The model server as a Dagster resource: configuration and lifecycle, nothing else.

Production points `base_url` at a vLLM Service; with no `base_url` the resource starts the
embedded CPU OCR engine on a free loopback port for the run. Everything that talks to the server
is the plain `medkg_pdf.model_client.ModelClient`, which this resource builds per call, so the
CLI and the benchmarks get the very same behaviour without Dagster.
"""

from __future__ import annotations

import dataclasses
import logging
from contextlib import ExitStack
from typing import Any, Iterable

import httpx
from dagster import ConfigurableResource, InitResourceContext
from pydantic import Field, PrivateAttr

from medkg_pdf.chat_contract import EMBEDDED_MODEL, image_tokens, png_size
from medkg_pdf.model_client import (
    Backoff,
    FatalRequestError,
    ModelClient,
    ModelNotServedError,
    ModelServerError,
    OnResult,
    PageRecipe,
    PageRequest,
    RunStats,
    ServerUnavailableError,
    looks_repetitive,
    shown_url,
)
from medkg_pdf.model_client.breaker import shared_breaker
from medkg_pdf.page_render import RenderTarget
from medkg_pdf.profiles import ModelProfile, get_profile
from medkg_pdf.schemas import SamplingParams

__all__ = [
    "EMBEDDED_MODEL",
    "FatalRequestError",
    "ModelNotServedError",
    "ModelServerError",
    "PageRequest",
    "RunStats",
    "ServerUnavailableError",
    "VLLMResource",
    "image_tokens",
    "looks_repetitive",
    "png_size",
]


class VLLMResource(ConfigurableResource):
    """Client of a vLLM (or vLLM-compatible) server, shared politely by every page of a run."""

    base_url: str | None = Field(
        default=None, description="vLLM server URL, e.g. http://vllm:8000. Unset: start the embedded CPU engine."
    )
    model: str = Field(default=EMBEDDED_MODEL, description="Served model name, as in GET /v1/models.")
    model_revision: str = Field(
        default="",
        description="The served weights' revision (e.g. the Hugging Face commit). Bump it when the weights change "
        "under the same name: it is part of every page's cache key, so old answers are not reused.",
    )
    api_key: str | None = Field(
        default=None, repr=False, description="Bearer token (vLLM --api-key). From a secret only; never shown by repr()."
    )
    max_concurrency: int = Field(default=8, ge=1, description="Requests in flight per run.")
    connect_timeout_s: float = 10.0
    read_timeout_s: float = Field(default=300.0, description="Generous: a page can queue for minutes under load.")
    write_timeout_s: float = 60.0
    pool_timeout_s: float = 60.0
    preflight_timeout_s: float = 5.0
    max_attempts: int = Field(default=3, ge=1)
    backoff_initial_s: float = 1.0
    backoff_max_s: float = 20.0
    retry_after_max_s: float = Field(
        default=60.0, ge=0, description="Cap on a server's Retry-After: a page waits at most this long per retry."
    )
    page_wait_budget_s: float = Field(
        default=300.0,
        ge=0,
        description="All of a page's waits together (back-off, capped Retry-After, an open breaker's recovery): "
        "past it the page fails with its last error instead of holding its pool slot longer.",
    )
    breaker_failure_threshold: int = 5
    breaker_recovery_s: float = Field(
        default=60.0, description="Open time before a trial call; the breaker is shared by the process, per server URL."
    )
    breaker_success_threshold: int = 2
    temperature: float = 0.0
    seed: int = 42
    max_tokens: int | None = Field(default=None, description="Completion budget; unset: the profile's max_tokens.")
    max_model_len: int | None = Field(default=None, description="Context length; unset: read from /v1/models, else 8192.")
    image_patch_px: int | None = Field(default=None, description="Override of the profile's patch size (px per token tile).")
    request_logprobs: bool = Field(
        default=True,
        description="Ask for token log-probabilities (vLLM `logprobs: true`) to give each block the model's confidence; "
        "off saves the response bytes (about 100 per token).",
    )
    render_longest_side: int | None = Field(
        default=None,
        ge=16,
        description="Override of the profile's render target: every page drawn with this longest side in px, "
        "scaled up or down (the profile's image budget still caps what is sent).",
    )
    profile: str | None = Field(
        default=None, description="qwen2.5-vl | deepseek-ocr | olmocr-2 | embedded-ocr; unset: inferred from the model name."
    )
    prompt: str | None = Field(default=None, description="Override of the profile's prompt (set prompt_version too).")
    prompt_version: str | None = None
    engine_concurrency: int = Field(default=2, description="OCR threads of the embedded engine.")

    _engine: Any = PrivateAttr(default=None)
    _started_url: str | None = PrivateAttr(default=None)

    def __repr_args__(self):
        """repr() and str() show the server URL without `user:password@` (and never the key, `repr=False`)."""
        for name, value in super().__repr_args__():
            yield name, shown_url(value) if name == "base_url" and value else value

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
        profile = get_profile(self.profile, self.model)
        if self.image_patch_px is not None:
            profile = dataclasses.replace(profile, patch_px=self.image_patch_px)
        return profile

    def render_target(self) -> RenderTarget:
        """What every page is drawn to for this model: the profile's image budget, unless overridden."""
        if self.render_longest_side is not None:
            return RenderTarget(longest_side=self.render_longest_side)
        return self.model_profile.render_target()

    @property
    def effective_prompt(self) -> str:
        return self.prompt or self.model_profile.prompt

    @property
    def effective_prompt_version(self) -> str:
        return self.prompt_version or self.model_profile.prompt_version

    def sampling(self) -> SamplingParams:
        max_tokens = self.max_tokens if self.max_tokens is not None else self.model_profile.max_tokens
        return SamplingParams(temperature=self.temperature, seed=self.seed, max_tokens=max_tokens)

    def recipe(self) -> PageRecipe:
        return PageRecipe(
            self.model,
            self.model_profile,
            self.effective_prompt,
            self.effective_prompt_version,
            self.sampling(),
            model_revision=self.model_revision,
            max_model_len=self.max_model_len,
            logprobs=self.request_logprobs,
        )

    def cache_key(self, pdf_sha256: str, page_index: int, render_target: str, image_sha256: str | None = None) -> str:
        return self.recipe().cache_key(pdf_sha256, page_index, render_target, image_sha256)

    @property
    def shown_url(self) -> str:
        """The server URL for logs and metadata: without `user:password@`."""
        return shown_url(self.url)

    # ----- the plain client --------------------------------------------------------------------
    def client(self) -> ModelClient:
        """The configured client; needs the server URL, so after setup when the engine is embedded."""
        return ModelClient(
            url=self.url,
            recipe=self.recipe(),
            api_key=self.api_key,
            max_concurrency=self.max_concurrency,
            timeout=httpx.Timeout(
                connect=self.connect_timeout_s, read=self.read_timeout_s, write=self.write_timeout_s, pool=self.pool_timeout_s
            ),
            preflight_timeout_s=self.preflight_timeout_s,
            backoff=Backoff(
                max_attempts=self.max_attempts,
                initial_s=self.backoff_initial_s,
                max_s=self.backoff_max_s,
                retry_after_max_s=self.retry_after_max_s,
                wait_budget_s=self.page_wait_budget_s,
            ),
            breaker=shared_breaker(
                self.url,
                failure_threshold=self.breaker_failure_threshold,
                recovery_s=self.breaker_recovery_s,
                success_threshold=self.breaker_success_threshold,
            ),
            max_model_len=self.max_model_len,
        )

    def parse_pages(self, pages: Iterable[PageRequest], on_result: OnResult, logger: logging.Logger | None = None) -> RunStats:
        """See `ModelClient.parse_pages`: streamed, at most `max_concurrency` pages ahead."""
        return self.client().parse_pages(pages, on_result, logger)
