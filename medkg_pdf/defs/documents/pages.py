"""Stages 2 and 3 in one step: pages rendered and sent to the model server as they are rendered.

`page_images` and `vlm_page_parses` stay two assets (two records, two materializations, each
selectable alone), but one step produces both: rendering runs in a thread beside the requests,
at most `max_concurrency` pages ahead of them, so the first request leaves when the first page
exists and the server is never idle while the rest of the document renders. A page whose usable
answer is in the content-keyed cache is never sent again, and a retry of the step reuses the
page images of the same PDF instead of rendering them again.
"""


import functools
import time
from collections import Counter
from collections.abc import Iterable, Iterator

from dagster import AssetExecutionContext, AssetKey, AssetSpec, MaterializeResult, MetadataValue, multi_asset

from medkg_pdf import storage_keys
from medkg_pdf.defs.document_steps import (
    DocumentError,
    clear_quarantine,
    current_source,
    fail_document,
    require_version,
    the_document,
)
from medkg_pdf.defs.documents.text_layer import usable_page_text
from medkg_pdf.page_render import RenderTarget
from medkg_pdf.rendering import RenderConfig, iter_rendered
from medkg_pdf.defs.partitions import document_backfill_policy, documents
from medkg_pdf.resources.quality import QualityTargets
from medkg_pdf.resources.storage import DocumentStorage
from medkg_pdf.resources.vllm import ModelServerError, PageRequest, VLLMResource
from medkg_pdf.schemas import PageImage, PageImages, PageParse, PageParses, PageStatus

PREVIEW_CHARS = 1500
PAGE_IMAGES, VLM_PAGE_PARSES = AssetKey("page_images"), AssetKey("vlm_page_parses")
RENDER_FAILURES = frozenset({"render_failed", "image_too_large"})  # reasons render.py gives: the page_images stage failed
# A page that failed this way failed for good: the same image and prompt at temperature 0 give the
# same answer (the client already asked twice), or it cannot fit the model's context at all.
PERMANENT_PAGE_STATUSES = frozenset({PageStatus.context_overflow, PageStatus.truncated, PageStatus.repetition, PageStatus.empty})


def _status_table(parses: list[PageParse]) -> str:
    rows = ["| page | status | tokens out | latency s | attempts | error |", "|---|---|---|---|---|---|"]
    for parse in parses:
        error = (parse.error or "").replace("|", "/")[:120]
        rows.append(
            f"| {parse.page_index + 1} | {parse.status.value} | {parse.completion_tokens} | "
            f"{parse.latency_s:.2f} | {parse.attempts} | {error} |"
        )
    return "\n".join(rows)


def safe_preview(markdown: str) -> str:
    """Model output is untrusted: show it as a fenced block so no HTML or script reaches the UI."""
    return "```text\n" + markdown[:PREVIEW_CHARS].replace("```", "ʼʼʼ") + "\n```"


def page_summary(parse: PageParse) -> PageParse:
    """What the step keeps of a page once it is stored: everything but its text (markdown, regions),
    so a document's pages are never all in memory at once, however long it is."""
    return parse.model_copy(update={"markdown": "", "regions": [], "line_confidence": None})


def page_parses_json(header: dict, pages: Iterable[PageParse]) -> Iterator[bytes]:
    """A `PageParses` record as JSON, one page at a time (what `PageParses(...).model_dump_json()` holds whole)."""
    yield PageParses(**header, pages=[]).model_dump_json(exclude={"pages"})[:-1].encode() + b', "pages": ['
    for number, page in enumerate(pages):
        yield (b"," if number else b"") + page.model_dump_json().encode()
    yield b"]}"


def reusable_manifest(storage: DocumentStorage, document_id: str, sha256: str, target: RenderTarget) -> PageImages | None:
    """The stored page images of this very PDF drawn for this render target, when every PNG is still there."""
    manifest = storage.read_model_or_none(storage_keys.page_images(document_id), PageImages)
    if manifest is None or manifest.sha256 != sha256 or manifest.render_target != target.label:
        return None
    if not all(storage.exists(image.key) for image in manifest.pages):
        return None
    return manifest


def failed_pages_error(parses: list[PageParse], max_share: float) -> DocumentError | None:
    """The one failed-page policy, whatever launched the run: over the budget, the document fails."""
    failed = [parse for parse in parses if not parse.status.usable]
    if not failed or len(failed) / len(parses) <= max_share:  # the same rule as the blocking check
        return None
    listing = "; ".join(f"page {p.page_index + 1}: {p.status.value} ({p.error})" for p in failed[:10])
    permanent = all(parse.status in PERMANENT_PAGE_STATUSES for parse in failed)
    return DocumentError(
        f"{len(failed)} of {len(parses)} pages failed (budget {max_share:.2%} of pages): {listing}",
        retryable=not permanent,
        reason="pages_failed" if not permanent else "pages_unreadable",
    )


@multi_asset(
    name="page_images_and_parses",
    specs=[
        AssetSpec(key, deps=[upstream], group_name="documents", kinds={kind}, skippable=True, description=description)
        for key, upstream, kind, description in (
            ("page_images", "source_pdf", "png", "One PNG per page drawn to the model profile's image budget, whatever the page's size (each at most 10 MB), plus blank-page detection."),
            ("vlm_page_parses", "page_images", "json", "The VLM's markdown for every page (vLLM OpenAI API, temperature 0, seed 42), one JSON per page."),
        )
    ],
    partitions_def=documents,
    backfill_policy=document_backfill_policy,
    can_subset=True,
    pool="vllm",
    # ahead of baseline_parse, which needs only source_pdf too: the model server gets the pages first
    op_tags={"dagster/priority": "10"},
)
def page_images_and_parses(
    context: AssetExecutionContext,
    config: RenderConfig,
    storage: DocumentStorage,
    vllm: VLLMResource,
    quality_targets: QualityTargets,
) -> Iterator[MaterializeResult]:
    document_id = the_document(context)
    render_wanted = PAGE_IMAGES in context.selected_asset_keys
    parse_wanted = VLM_PAGE_PARSES in context.selected_asset_keys
    stage = "vlm_page_parses" if parse_wanted else "page_images"
    try:
        yield from _pages(context, document_id, render_wanted, parse_wanted, config, storage, vllm, quality_targets)
    except DocumentError as error:
        failed_stage = "page_images" if error.reason in RENDER_FAILURES else stage
        raise fail_document(context, storage, failed_stage, document_id, error) from None
    clear_quarantine(storage, document_id, stage)


def _pages(context, document_id, render_wanted, parse_wanted, config, storage, vllm, quality_targets):
    info = current_source(storage, document_id)
    target = vllm.render_target()  # the model's image budget, from the resource's config: pages are drawn to it
    manifest = reusable_manifest(storage, document_id, info.sha256, target)
    if manifest is None and not render_wanted:
        require_version(storage, storage_keys.page_images(document_id), PageImages, "the page images", info.sha256)
    images: dict[int, PageImage] = {}
    rendered = {"done": False, "reused": manifest is not None, "processes": 0}
    results: dict[int, PageParse] = {}  # page summaries (no text), see page_summary
    preview = {"markdown": ""}  # the first page's text, for the UI
    cached = 0
    fresh: set[int] = set()
    started = time.perf_counter()

    @functools.cache
    def source_bytes() -> bytes:  # read only when an answer looks like a loop, then kept for the step's other pages
        return storage.read_bytes(info.stored_at)

    def pages() -> Iterator[tuple[PageImage, bytes | None]]:
        if manifest is not None:
            yield from ((image, None) for image in manifest.pages)
        else:
            yield from iter_rendered(storage.read_bytes(info.stored_at), info.sha256, config, storage, target, rendered)
        rendered["done"] = True

    def requests() -> Iterator[PageRequest]:
        """Runs in the page thread: each page rendered, looked up in the cache, and sent unless found."""
        nonlocal cached
        # one listing of the PDF's stored answers instead of one GET per page (most of them misses on a new PDF)
        stored = set(storage.list_keys(storage_keys.page_parses_prefix(info.sha256))) if parse_wanted and not config.force else set()
        for image, png in pages():
            images[image.index] = image
            if not parse_wanted:
                continue
            key = vllm.cache_key(info.sha256, image.index, target.label, image.png_sha256)
            stored_at = storage_keys.page_parse(info.sha256, image.index, key)
            previous = storage.read_model_or_none(stored_at, PageParse) if stored_at in stored else None
            if previous is not None and previous.status.usable:
                results[image.index] = page_summary(previous.model_copy(update={"document_id": document_id}))
                if image.index == 0:
                    preview["markdown"] = previous.markdown[:PREVIEW_CHARS]
                cached += 1
                continue
            yield PageRequest(
                document_id=document_id,
                page_index=image.index,
                cache_key=key,
                load_png=lambda k=image.key: storage.read_bytes(k),
                blank=image.blank,
                near_blank=image.near_blank,
                png=png,
                load_text_layer=lambda i=image.index: usable_page_text(source_bytes(), i),
            )

    def store(parse: PageParse) -> None:
        storage.write_model(storage_keys.page_parse(info.sha256, parse.page_index, parse.cache_key), parse)
        if parse.page_index == 0:
            preview["markdown"] = parse.markdown[:PREVIEW_CHARS]
        results[parse.page_index] = page_summary(parse)  # the page is on disk: its text is not kept
        fresh.add(parse.page_index)

    stats = None
    server_error: ModelServerError | None = None
    if parse_wanted:
        context.log.info(
            f"rendering {info.page_count} pages and sending them to {vllm.shown_url} as they are rendered "
            f"(model {vllm.model}, {vllm.max_concurrency} in flight)"
        )
        try:
            stats = vllm.parse_pages(requests(), store, context.log)
        except ModelServerError as error:
            server_error = error
    else:
        for _ in requests():
            pass

    if rendered["done"]:
        ordered = [images[index] for index in sorted(images)]
        if manifest is None:
            manifest = PageImages(document_id=document_id, sha256=info.sha256, render_target=target.label, pages=ordered)
            storage.write_model(storage_keys.page_images(document_id), manifest)
        if render_wanted:
            seconds = time.perf_counter() - started
            yield MaterializeResult(
                asset_key=PAGE_IMAGES,
                metadata={
                    "pages": len(ordered),
                    "blank_pages": sum(image.blank for image in ordered),
                    "near_blank_pages": sum(image.near_blank for image in ordered),
                    "render_target": target.label,
                    "dpi_min": min((image.dpi for image in ordered), default=0.0),
                    "dpi_max": max((image.dpi for image in ordered), default=0.0),
                    "png_mb": round(sum(image.png_bytes for image in ordered) / 2**20, 2),
                    "reused_from_earlier_attempt": rendered["reused"],
                    "render_processes": rendered["processes"],
                    "render_and_parse_s": round(seconds, 3),
                },
            )
    if server_error is not None:
        done = sum(1 for parse in results.values() if parse.status.usable)
        raise DocumentError(
            f"{server_error} ({done} pages are stored and will be reused by the next attempt)", retryable=True, reason="model_server"
        )
    if not parse_wanted:
        return
    parses = [results[index] for index in sorted(results)]
    header = {
        "document_id": document_id,
        "sha256": info.sha256,
        "model": vllm.model,
        "prompt_version": vllm.effective_prompt_version,
        "model_calls": sum(parse.attempts for parse in parses if parse.page_index in fresh),
        "cached_pages": cached,
    }
    PageParses(**header, pages=[])  # the record's own validation, before anything is written
    if len(parses) != info.page_count:  # cannot happen unless a page went missing on the way: never record it as done
        raise DocumentError(f"{info.page_count - len(parses)} pages have no result", retryable=True, reason="pages_missing")
    error = failed_pages_error(parses, quality_targets.max_failed_page_share)
    if error is not None:
        storage.delete(storage_keys.page_parses(document_id))  # no record of another attempt stands in for this one
        raise error

    def stored_pages() -> Iterator[PageParse]:
        for summary in parses:  # each page read back from its own file, written out, and dropped
            key = storage_keys.page_parse(info.sha256, summary.page_index, summary.cache_key)
            page = storage.read_model_or_none(key, PageParse)
            if page is None:
                raise DocumentError(f"page {summary.page_index + 1}'s result is gone from {storage.uri(key)}", retryable=True, reason="pages_missing")
            yield page.model_copy(update={"document_id": document_id})

    storage.write_chunks(storage_keys.page_parses(document_id), page_parses_json(header, stored_pages()))
    counts = Counter(parse.status.value for parse in parses)
    metadata = {
        "pages": len(parses),
        "pages_ok": counts.get("ok", 0),
        "pages_blank": counts.get("blank", 0),
        "pages_failed": sum(not parse.status.usable for parse in parses),
        "pages_from_cache": cached,
        "model_calls": header["model_calls"],
        "status_counts": dict(counts),
        "prompt_tokens": sum(p.prompt_tokens for p in parses),
        "completion_tokens": sum(p.completion_tokens for p in parses),
        "model": vllm.model,
        "prompt_version": vllm.effective_prompt_version,
        "profile": vllm.model_profile.name,
        "model_server": vllm.shown_url,
        "page_status": MetadataValue.md(_status_table(parses)),
        "first_page_preview": MetadataValue.md(safe_preview(preview["markdown"])),
    }
    if stats is not None:
        metadata["run_stats"] = stats.summary()
    yield MaterializeResult(asset_key=VLM_PAGE_PARSES, metadata=metadata)
