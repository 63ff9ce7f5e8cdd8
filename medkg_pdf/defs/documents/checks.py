"""Checks of the document chain's stages: the stored source is the validated PDF, the share of pages
without a usable answer stays within budget, and the structured document is valid and complete."""

import hashlib

from dagster import AssetCheckExecutionContext, AssetCheckResult, AssetKey, asset_check
from pydantic import ValidationError

from medkg_pdf import storage_keys
from medkg_pdf.defs.check_support import CHECK_PARTITIONS, Finding, missing, run_documents, summarize
from medkg_pdf.defs.documents.source import source_pdf
from medkg_pdf.defs.documents.structured import structured_document
from medkg_pdf.resources.quality import QualityTargets
from medkg_pdf.resources.storage import DocumentStorage
from medkg_pdf.schemas import PageImages, PageParses, QuarantineRecord, SourceInfo, StructuredDocument
from medkg_pdf.validation import InvalidPdfError, validate_pdf


def judge_source(storage: DocumentStorage, document_id: str) -> Finding:
    """Re-open the stored bytes: same sha256 and page count as recorded, still a valid PDF."""
    info = storage.read_model_or_none(storage_keys.source_info(document_id), SourceInfo)
    if info is None:
        record = storage.read_model_or_none(storage_keys.quarantine(document_id), QuarantineRecord)
        if record is not None and record.stage == "source_pdf":
            return Finding(document_id, "fail", 0.0, f"rejected ({record.reason}): {record.message}")
        return Finding(document_id, "fail", 0.0, "no source record: the document was not ingested")
    try:
        data = storage.read_bytes(info.stored_at)
    except FileNotFoundError:
        return Finding(document_id, "fail", 0.0, f"the stored copy {storage.uri(info.stored_at)} is missing")
    if hashlib.sha256(data).hexdigest() != info.sha256:
        return Finding(document_id, "fail", 0.0, "the stored copy's sha256 differs from the validated file's")
    try:
        valid = validate_pdf(data, max_pages=max(info.page_count, 1), max_bytes=max(len(data), 1))
    except InvalidPdfError as error:
        return Finding(document_id, "fail", 0.0, f"the stored copy is not a valid PDF ({error.reason}): {error}")
    if valid.page_count != info.page_count:
        return Finding(document_id, "fail", 0.0, f"{valid.page_count} pages, but {info.page_count} recorded")
    if info.repaired or info.warnings:
        return Finding(document_id, "warn", 1.0, "; ".join(info.warnings) or "repaired by PyMuPDF")
    return Finding(document_id, "pass", 1.0, f"{info.page_count} pages, {sum(info.pages_with_text)} with a text layer")


@asset_check(
    asset=source_pdf,
    partitions_def=CHECK_PARTITIONS,
    description="The stored PDF is the validated one (sha256) and still opens: magic bytes, not encrypted, "
    "page count as recorded. A rejected upload fails with the reason; a PDF PyMuPDF had to repair warns.",
)
def source_pdf_is_valid(context: AssetCheckExecutionContext, storage: DocumentStorage) -> AssetCheckResult:
    findings = [judge_source(storage, document_id) for document_id in run_documents(context)]
    return summarize(findings, metric="valid", target=1.0, rule="== 1 (valid PDF)", warn_phrase="were repaired on opening")


def judge_pages(storage: DocumentStorage, document_id: str, max_share: float) -> Finding:
    parses = storage.read_model_or_none(storage_keys.page_parses(document_id), PageParses)
    if parses is None:
        return missing(storage, document_id, "vlm_page_parses", "the page parses record")
    manifest = storage.read_model_or_none(storage_keys.page_images(document_id), PageImages)
    expected = len(manifest.pages) if manifest is not None else len(parses.pages)
    bad = [p for p in parses.pages if not p.status.usable]
    absent = max(0, expected - len(parses.pages))  # a page with no answer at all is not usable either
    share = (len(bad) + absent) / expected if expected else 0.0
    note = "; ".join(f"page {p.page_index + 1}: {p.status.value}" for p in bad[:5])
    if absent:
        note = f"{absent} pages without an answer" + (f"; {note}" if note else "")
    if share > max_share:
        return Finding(document_id, "fail", share, note)
    return Finding(document_id, "pass", share, note or f"{expected} pages usable")


@asset_check(
    asset=AssetKey("vlm_page_parses"),
    partitions_def=CHECK_PARTITIONS,
    blocking=True,
    description="Per document, the share of pages whose answer is not usable (HTTP error, timeout, empty, "
    "truncated, repetition...) is at most the budget (default 0.5 %). Blocking: a document over budget "
    "is not assembled into a structured document.",
)
def vlm_page_parses_failed_page_share(
    context: AssetCheckExecutionContext, storage: DocumentStorage, quality_targets: QualityTargets
) -> AssetCheckResult:
    budget = quality_targets.max_failed_page_share
    findings = [judge_pages(storage, document_id, budget) for document_id in run_documents(context)]
    return summarize(
        findings, metric="failed_page_share", target=budget, rule=f"<= {budget:.2%} per document", worst=max, percent=True
    )


def judge_schema(storage: DocumentStorage, document_id: str) -> Finding:
    key = storage_keys.structured_json(document_id)
    try:
        raw = storage.read_bytes(key)
    except FileNotFoundError:
        return missing(storage, document_id, "structured_document", "structured.json")
    try:
        document = StructuredDocument.model_validate_json(raw)
    except ValidationError as error:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors()[:3])
        return Finding(document_id, "fail", 0.0, f"{error.error_count()} schema errors: {problems}")
    problems = []
    if document.document_id != document_id:
        problems.append(f"document_id is {document.document_id!r}")
    info = storage.read_model_or_none(storage_keys.source_info(document_id), SourceInfo)
    if info is not None:
        if document.sha256 != info.sha256:
            problems.append("made from another PDF (sha256 differs from source.json)")
        if document.page_count != info.page_count:
            problems.append(f"{document.page_count} pages, the PDF has {info.page_count}")
    outside = sorted({b.page for b in document.blocks() if not 1 <= b.page <= document.page_count})
    if outside:
        problems.append(f"blocks on pages outside 1..{document.page_count}: {outside[:5]}")
    if not storage.exists(storage_keys.structured_markdown(document_id)):
        problems.append("structured.md is missing")
    if problems:
        return Finding(document_id, "fail", 0.0, "; ".join(problems))
    return Finding(document_id, "pass", 1.0, f"{len(document.sections)} sections, {len(document.blocks())} blocks")


def judge_text_pages(storage: DocumentStorage, document_id: str) -> Finding:
    document = storage.read_model_or_none(storage_keys.structured_json(document_id), StructuredDocument)
    info = storage.read_model_or_none(storage_keys.source_info(document_id), SourceInfo)
    if document is None or info is None:
        return missing(storage, document_id, "structured_document", "structured.json or source.json")
    manifest = storage.read_model_or_none(storage_keys.page_images(document_id), PageImages)
    blank = {image.index + 1 for image in manifest.pages if image.blank} if manifest else set()
    with_text = [i + 1 for i, has_text in enumerate(info.pages_with_text) if has_text]
    # a page whose text layer renders to nothing (white or clipped text) cannot be read from its image
    judged = [page for page in with_text if page not in blank]
    texts = document.page_texts()
    empty = [page for page in judged if not texts.get(page, "").strip()]
    note = ""
    if empty:
        failed = set(document.failed_pages)
        note = "empty: " + ", ".join(f"page {p}" + (" (parse failed)" if p in failed else "") for p in empty[:10])
    invisible = sorted(set(with_text) & blank)
    if invisible:
        note += ("; " if note else "") + f"not judged (text layer on a blank-rendered page): {invisible[:10]}"
    return Finding(document_id, "fail" if empty else "pass", float(len(empty)), note or f"{len(judged)} text pages have text")


@asset_check(
    asset=structured_document,
    partitions_def=CHECK_PARTITIONS,
    blocking=True,
    description="structured.json re-validates against the StructuredDocument model and belongs to this PDF "
    "(same sha256 and page count, blocks on existing pages); structured.md exists. Blocking: an invalid "
    "document is not scored.",
)
def structured_document_schema_valid(context: AssetCheckExecutionContext, storage: DocumentStorage) -> AssetCheckResult:
    findings = [judge_schema(storage, document_id) for document_id in run_documents(context)]
    return summarize(findings, metric="schema_valid", target=1.0, rule="== 1 (valid)")


@asset_check(
    asset=structured_document,
    partitions_def=CHECK_PARTITIONS,
    description="No page that has a text layer in the PDF came out of the parse with no text "
    "(a silently lost page). Pages whose text layer is invisible when rendered are listed, not judged.",
)
def structured_document_no_empty_text_pages(context: AssetCheckExecutionContext, storage: DocumentStorage) -> AssetCheckResult:
    findings = [judge_text_pages(storage, document_id) for document_id in run_documents(context)]
    return summarize(findings, metric="empty_text_layer_pages", target=0.0, rule="== 0", worst=max)
