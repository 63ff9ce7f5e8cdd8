"""One page, from PNG to PageParse: sizing, the tries, and judging each answer.

A model answer can be cut, stuck in a loop, empty or sideways; each has its own remedy (one
more ask with the same deterministic sampling, a turned image). That logic lives here, apart from the HTTP
transport (`client.py`), so it reads as the policy it is.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import io
import json
import math
import re
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

import pymupdf

from medkg_pdf.chat_contract import page_messages, png_size
from medkg_pdf.metrics import numeric_tokens, words
from medkg_pdf.model_client.errors import PageFailure, RetryableError
from medkg_pdf.profiles import InvalidAnswerError, ModelProfile, get_profile
from medkg_pdf.schemas import PageParse, PageStatus, SamplingParams

MIN_IMAGE_TOKENS = 64  # below this a page image is unreadable: fail the page rather than send it


@dataclass(frozen=True)
class PageRequest:
    """A page to parse: its PNG in hand (just rendered) or loaded from storage when its turn comes."""

    document_id: str
    page_index: int
    cache_key: str
    load_png: Callable[[], bytes] | None = None
    blank: bool = False  # white paper: answered `blank` without asking
    near_blank: bool = False  # only scan noise on it: asked, and an empty answer is `blank`, not a failure
    png: bytes | None = None
    # the page's own text layer when it is judged usable, else None; read only if an answer looks like a loop
    load_text_layer: Callable[[], str | None] | None = None


@dataclass(frozen=True)
class PageRecipe:
    """Everything that decides a page's answer, hence also what its cache key is made of."""

    model: str
    profile: ModelProfile
    prompt: str
    prompt_version: str
    sampling: SamplingParams
    model_revision: str = ""  # the served weights, set by the operator: the name alone survives a redeploy
    max_model_len: int | None = None  # configured context (None: the server's); it can shrink the image sent
    logprobs: bool = True  # ask for token log-probabilities (blocks' confidence); not part of the cache key: no answer changes

    @classmethod
    def for_model(cls, model: str, profile: str | None = None) -> PageRecipe:
        """The recipe a model gets with no overrides: its profile's prompt and `max_tokens`, temperature 0, seed 42."""
        chosen = get_profile(profile, model)
        return cls(model, chosen, chosen.prompt, chosen.prompt_version, SamplingParams(max_tokens=chosen.max_tokens))

    def cache_key(self, pdf_sha256: str, page_index: int, render_target: str, image_sha256: str | None = None) -> str:
        """A stored answer is reused only when everything that decides it is the same: the image sent (the
        PNG's hash, and the profile's and context's sizing of it), the served model and its revision, the
        prompt's very text (a version label alone misses an edit) and the sampling."""
        identity = {
            "pdf": pdf_sha256,
            "page": page_index,
            "render_target": render_target,
            "image_sha256": image_sha256,
            "model": self.model,
            "model_revision": self.model_revision,
            "profile": {"class": type(self.profile).__name__, **dataclasses.asdict(self.profile)},
            "prompt_sha256": hashlib.sha256(self.prompt.encode()).hexdigest(),
            "prompt_version": self.prompt_version,  # a bump alone still re-asks, as operators expect
            "max_model_len": self.max_model_len,
            "sampling": self.sampling.model_dump(),
        }
        return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:24]

    def labels(self) -> dict[str, str]:
        """What every result records about who answered it."""
        return {"model": self.model, "profile": self.profile.name, "prompt_version": self.prompt_version}

    def body(self, png: bytes, sampling: SamplingParams) -> dict[str, Any]:
        return {
            "model": self.model,
            "messages": page_messages(png, self.prompt),
            **sampling.model_dump(exclude_none=True),
            **({"logprobs": True} if self.logprobs else {}),  # the model's confidence in each block; changes no token
            **self.profile.extra_body,
        }


_TABLE_RULE = re.compile(r"^\s*\|?[\s:|-]*-[\s:|-]*\|?\s*$")  # |---|:--:| under a markdown table header
_EMPTY_ROW = re.compile(r"^\s*\|[\s|]*\|\s*$")  # |  |  |: a markdown row of empty cells
_EMPTY_CELLS = re.compile(r"<(t[dh])\b[^>]*>\s*</\1>|<tr\b[^>]*>\s*</tr>", re.IGNORECASE)


def _table_structure_removed(text: str) -> str:
    """Rule rows, the header row above each, and empty HTML cells repeat in legitimate tables."""
    lines = text.splitlines()
    kept = [
        line
        for i, line in enumerate(lines)
        if not (_TABLE_RULE.match(line) or _EMPTY_ROW.match(line))
        and not (i + 1 < len(lines) and _TABLE_RULE.match(lines[i + 1]) and "|" in line)
    ]
    return _EMPTY_CELLS.sub("", "\n".join(kept))


def looks_repetitive(text: str, window: int = 800, max_period: int = 200, min_repeats: int = 6) -> bool:
    """Degenerate decoding loops (DeepSeek-OCR #151): the tail is one short unit repeated, or one
    line comes back over and over. Table scaffolding is not content and is left out first: ten
    small tables share a header and a `|---|` rule, a form's table has rows of empty cells."""
    text = _table_structure_removed(text)
    tail = text[-window:]
    if len(tail) < 120:
        return False
    for period in range(1, min(max_period, len(tail) // min_repeats) + 1):
        unit = tail[-period:]
        if unit.strip() and tail.endswith(unit * min_repeats) and len(unit * min_repeats) >= 60:
            return True
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return len(lines) >= 12 and any(lines.count(line) >= 10 and len(line) >= 8 for line in set(lines[-40:]))


def repeats_the_page(answer: str, text_layer: str, min_word_share: float = 0.9) -> bool:
    """A repetitive answer is the page's own content when the page's text layer holds every number as
    many times as the answer does (a dose table repeats "5 mg" row after row; a loop repeats it past
    what the page has) and nearly all of its words; numbers are checked exactly, not penalised."""
    numbers, layer_numbers = Counter(numeric_tokens(answer)), Counter(numeric_tokens(text_layer))
    if any(count > layer_numbers[number] for number, count in numbers.items()):
        return False
    said, layer_words = Counter(words(_table_structure_removed(answer))), Counter(words(text_layer))
    total = sum(said.values())
    return total > 0 and sum(min(count, layer_words[word]) for word, count in said.items()) >= min_word_share * total


def judge(answer: dict[str, Any], max_tokens: int) -> tuple[PageStatus, str | None]:
    """A 200 is not yet a page: a cut, looping or empty answer gets its own status (and remedy)."""
    text = answer["text"]
    if answer.get("finish_reason") == "length":
        if looks_repetitive(text):
            return PageStatus.repetition, "degenerate repeated output until max_tokens"
        return PageStatus.truncated, f"answer cut at max_tokens={max_tokens} (finish_reason=length)"
    if looks_repetitive(text):
        return PageStatus.repetition, "degenerate repeated output"
    if not text.strip():
        return PageStatus.empty, "empty answer for a page with ink"
    return PageStatus.ok, None


def _char_logprobs(text: str, tokens: list[tuple[str, float]] | None) -> list[float] | None:
    """Each character of the answer with its token's log-probability; None unless the tokens spell the answer."""
    if not tokens or "".join(token for token, _ in tokens) != text:
        return None
    return [logprob for token, logprob in tokens for _ in token]


def _confidence(per_char: list[float], start: int, stop: int) -> float | None:
    """exp(mean log-probability) of the characters in [start, stop), each weighted as its token: 0..1."""
    values = [per_char[k] for k in range(max(start, 0), min(stop, len(per_char)))]
    return round(math.exp(sum(values) / len(values)), 4) if values else None


def confidences(
    answer: str, markdown: str, regions: list, tokens: list[tuple[str, float]] | None
) -> tuple[list[float | None] | None, list[float | None]]:
    """The model's confidence in each line of the page's markdown (where it stands in the answer: after
    a front matter or a code fence) and in each located region (its text found in the answer, in
    order); (None, all None) when the server gave no log-probabilities that spell the answer."""
    per_char = _char_logprobs(answer, tokens)
    if per_char is None:
        return None, [None] * len(regions)
    lines, start = None, answer.find(markdown) if markdown else -1
    if start >= 0:
        lines, offset = [], start
        for line in markdown.split("\n"):
            lines.append(_confidence(per_char, offset, offset + len(line)) if line.strip() else None)
            offset += len(line) + 1
    scores, cursor = [], 0
    for region in regions:
        at = answer.find(region.text, cursor) if region.text else -1
        scores.append(_confidence(per_char, at, at + len(region.text)) if at >= 0 else None)
        cursor = at + len(region.text) if at >= 0 else cursor
    return lines, scores


def resize_png(png: bytes, width: int, height: int) -> bytes:
    return pymupdf.Pixmap(pymupdf.Pixmap(png), width, height, None).tobytes("png")


def rotate_png(png: bytes, degrees_clockwise: int) -> tuple[bytes, int, int]:
    from PIL import Image  # Pillow: PyMuPDF pixmaps cannot rotate

    with Image.open(io.BytesIO(png)) as image:
        turned = image.rotate(-degrees_clockwise, expand=True)
        out = io.BytesIO()
        turned.save(out, format="PNG")
        return out.getvalue(), turned.width, turned.height


@dataclass
class WaitBudget:
    """Seconds one page may still spend waiting between tries (back-off, Retry-After, an open breaker)."""

    left_s: float


Complete = Callable[[dict[str, Any], WaitBudget], Awaitable[tuple[dict[str, Any], int]]]


@dataclass(frozen=True)
class PageParser:
    """The per-page policy of one run; `complete` posts a body (with retries) and returns (answer, tries)."""

    recipe: PageRecipe
    complete: Complete
    max_model_len: int
    redact: Callable[[str], str] = lambda text: text
    wait_budget_s: float = 300.0

    async def parse(self, page: PageRequest, enqueued: float) -> PageParse:
        queue_wait = time.perf_counter() - enqueued
        recipe, profile = self.recipe, self.recipe.profile
        sampling = recipe.sampling
        base = dict(
            document_id=page.document_id,
            page_index=page.page_index,
            cache_key=page.cache_key,
            queue_wait_s=round(queue_wait, 4),
            **recipe.labels(),
        )
        if page.blank:
            return PageParse(**base, sampling=sampling, status=PageStatus.blank)
        png = page.png if page.png is not None else await asyncio.to_thread(page.load_png)
        width, height = png_size(png)
        try:
            png, width, height = await asyncio.to_thread(self.size_for_model, png, width, height)
        except PageFailure as failure:
            return PageParse(**base, sampling=sampling, status=failure.status, error=str(failure))
        attempts, rotation = 0, 0
        started = time.perf_counter()
        answer: dict[str, Any] = {}
        parsed = None
        asked_again = False
        budget = WaitBudget(self.wait_budget_s)
        for round_ in range(4):  # one retry for truncation/repetition, one for a rotated page, one for an empty answer
            try:
                answer, tries = await self.complete(recipe.body(png, sampling), budget)
                attempts += tries
            except (RetryableError, PageFailure) as exc:
                attempts += getattr(exc, "attempts", 1)
                status, error = exc.status, self.redact(str(exc))
                break
            status, error = judge(answer, sampling.max_tokens)
            if status is PageStatus.repetition and answer.get("finish_reason") != "length" and await self.page_repeats_itself(page, answer["text"]):
                status, error = PageStatus.ok, None  # the page's text layer repeats it too: content, not a loop
            if status in (PageStatus.truncated, PageStatus.repetition):
                # asked once more with the same deterministic sampling (a loop can come from batching on the
                # server); no repetition/frequency penalty: it would push the model off the repeated numbers
                # that dose tables are made of
                if round_ == 0:
                    continue
                break
            if status is PageStatus.empty and page.near_blank:  # specks and bleed-through: nothing to read
                status, error = PageStatus.blank, None
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
                if page.near_blank:
                    status, error = PageStatus.blank, None
                    break
                if not asked_again:
                    asked_again, parsed = True, None
                    continue
            break
        usage = answer.get("usage") or {}
        confidence = None
        regions = parsed.regions if parsed is not None and status is PageStatus.ok else []
        if parsed is not None:
            markdown = parsed.markdown
            confidence, scores = confidences(answer["text"], markdown, regions, answer.get("logprobs"))
            if any(score is not None for score in scores):
                regions = [region.model_copy(update={"confidence": score}) for region, score in zip(regions, scores)]
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
            line_confidence=confidence,
            regions=regions,
            rotation_applied=rotation,
            image_width=width,
            image_height=height,
            prompt_tokens=int(usage.get("prompt_tokens") or 0),
            completion_tokens=int(usage.get("completion_tokens") or 0),
            latency_s=round(time.perf_counter() - started, 4),
            attempts=attempts,
            finish_reason=answer.get("finish_reason"),
        )

    async def page_repeats_itself(self, page: PageRequest, text: str) -> bool:
        if page.load_text_layer is None:
            return False
        layer = await asyncio.to_thread(page.load_text_layer)
        return bool(layer) and repeats_the_page(text, layer)

    def size_for_model(self, png: bytes, width: int, height: int) -> tuple[bytes, int, int]:
        """The profile's size, then small enough for the context; the PNG is re-encoded at most once per step."""
        profile = self.recipe.profile
        target_w, target_h = profile.target_size(width, height)
        if (target_w, target_h) != (width, height):
            png, width, height = resize_png(png, target_w, target_h), target_w, target_h
        available = self.image_token_budget()
        fit_w, fit_h = profile.size_within(width, height, available)
        if (fit_w, fit_h) != (width, height):
            png, width, height = resize_png(png, fit_w, fit_h), fit_w, fit_h
        return png, width, height

    def image_token_budget(self) -> int:
        """Never send a request the server must reject: what is left for the image after prompt and answer."""
        max_tokens = self.recipe.sampling.max_tokens
        prompt_tokens = len(self.recipe.prompt) // 3 + 32
        available = self.max_model_len - max_tokens - prompt_tokens
        if available < MIN_IMAGE_TOKENS:
            raise PageFailure(
                f"context too small: max_model_len {self.max_model_len} leaves {available} tokens for the image after "
                f"max_tokens {max_tokens} and the prompt; lower max_tokens or raise --max-model-len",
                PageStatus.context_overflow,
            )
        return available
