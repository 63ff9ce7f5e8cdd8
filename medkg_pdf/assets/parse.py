"""Stage 3: every page sent to the model server, concurrently, each answer stored as it arrives.

Pages of every document in the step are in flight together (a backfill run keeps the server
busy), and a page whose `ok` answer is already in the content-keyed cache is never sent again.
"""


from collections import Counter

from dagster import AssetExecutionContext, Failure, MaterializeResult, MetadataValue, asset

from medkg_pdf import layout
from medkg_pdf.assets.common import DocumentError, quarantine, require, run_per_document
from medkg_pdf.partitions import document_backfill_policy, documents
from medkg_pdf.resources.storage import DocumentStorage
from medkg_pdf.resources.vllm import ModelServerError, PageRequest, VLLMResource
from medkg_pdf.schemas import PageImages, PageParse, PageParses

PREVIEW_CHARS = 1500


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


@asset(
    partitions_def=documents,
    backfill_policy=document_backfill_policy,
    group_name="documents",
    deps=["page_images"],
    pool="vllm",
    kinds={"json"},
    description="The VLM's markdown for every page (vLLM OpenAI API, temperature 0, seed 42), one JSON per page.",
)
def vlm_page_parses(context: AssetExecutionContext, storage: DocumentStorage, vllm: VLLMResource) -> MaterializeResult:
    manifests: dict[str, PageImages] = {}
    results: dict[tuple[str, int], PageParse] = {}
    requests: list[PageRequest] = []
    cached: Counter[str] = Counter()
    fresh: set[tuple[str, int]] = set()

    for document_id in context.partition_keys:
        manifest = storage.read_model_or_none(layout.page_images(document_id), PageImages)
        if manifest is None:
            continue  # reported per document below
        manifests[document_id] = manifest
        for image in manifest.pages:
            key = vllm.cache_key(manifest.sha256, image.index, manifest.dpi)
            previous = storage.read_model_or_none(layout.page_parse(manifest.sha256, image.index, key), PageParse)
            if previous is not None and previous.status.usable:
                results[(document_id, image.index)] = previous.model_copy(update={"document_id": document_id})
                cached[document_id] += 1
                continue
            requests.append(
                PageRequest(
                    document_id=document_id,
                    page_index=image.index,
                    cache_key=key,
                    load_png=lambda k=image.key: storage.read_bytes(k),
                    blank=image.blank,
                )
            )

    def store(parse: PageParse) -> None:
        sha = manifests[parse.document_id].sha256
        storage.write_model(layout.page_parse(sha, parse.page_index, parse.cache_key), parse)
        results[(parse.document_id, parse.page_index)] = parse
        fresh.add((parse.document_id, parse.page_index))

    stats = None
    if requests:
        context.log.info(
            f"sending {len(requests)} pages to {vllm.url} (model {vllm.model}, concurrency {vllm.max_concurrency}); "
            f"{sum(cached.values())} pages reused from the cache"
        )
        try:
            stats = vllm.parse_pages(requests, store, context.log)
        except ModelServerError as error:
            done = sum(1 for parse in results.values() if parse.status.usable)
            for document_id in manifests:
                quarantine(storage, document_id, "vlm_page_parses", DocumentError(str(error), retryable=True, reason="model_server"))
            raise Failure(
                description=f"{error} ({done} pages are stored and will be reused by the next run)",
                metadata={"model_server": vllm.url, "model": vllm.model, "pages_stored": done},
                allow_retries=True,
            ) from None

    def assemble(document_id: str) -> dict:
        # read once above; `require` only to report a missing manifest with its path
        manifest = manifests.get(document_id) or require(storage, layout.page_images(document_id), PageImages, "the page images")
        parses = [results[(document_id, image.index)] for image in manifest.pages if (document_id, image.index) in results]
        record = PageParses(
            document_id=document_id,
            sha256=manifest.sha256,
            model=vllm.model,
            prompt_version=vllm.effective_prompt_version,
            pages=parses,
            model_calls=sum(parse.attempts for parse in parses if (document_id, parse.page_index) in fresh),
            cached_pages=cached[document_id],
        )
        storage.write_model(layout.page_parses(document_id), record)
        counts = Counter(parse.status.value for parse in parses)
        failed = [parse for parse in parses if not parse.status.usable]
        metadata = {
            "pages": len(parses),
            "pages_ok": counts.get("ok", 0),
            "pages_blank": counts.get("blank", 0),
            "pages_failed": len(failed),
            "pages_from_cache": cached[document_id],
            "model_calls": record.model_calls,
            "status_counts": dict(counts),
            "prompt_tokens": sum(p.prompt_tokens for p in parses),
            "completion_tokens": sum(p.completion_tokens for p in parses),
            "model": vllm.model,
            "prompt_version": vllm.effective_prompt_version,
            "profile": vllm.model_profile.name,
            "model_server": vllm.url,
            "page_status": MetadataValue.md(_status_table(parses)),
            "first_page_preview": MetadataValue.md(safe_preview(parses[0].markdown if parses else "")),
        }
        if stats is not None:
            metadata["run_stats"] = stats.summary()
        if failed:
            listing = "; ".join(f"page {p.page_index + 1}: {p.status.value} ({p.error})" for p in failed[:10])
            raise DocumentError(
                f"{len(failed)} of {len(parses)} pages failed: {listing}", retryable=True, reason="pages_failed"
            )
        return metadata

    def run_stats() -> dict:
        return {"run_stats": stats.summary()} if stats is not None else {"model_calls": 0}

    return run_per_document(context, storage, "vlm_page_parses", assemble, run_stats)
