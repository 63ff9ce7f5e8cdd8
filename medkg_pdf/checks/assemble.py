"""Checks of `structured_document`: the JSON is a valid StructuredDocument of *this* PDF, and no page
that has a text layer came out empty."""

from dagster import AssetCheckExecutionContext, AssetCheckResult, asset_check
from pydantic import ValidationError

from medkg_pdf import layout
from medkg_pdf.assets.assemble import structured_document
from medkg_pdf.checks.common import CHECK_PARTITIONS, Finding, missing, run_documents, summarize
from medkg_pdf.resources.storage import DocumentStorage
from medkg_pdf.schemas import PageImages, SourceInfo, StructuredDocument


def judge_schema(storage: DocumentStorage, document_id: str) -> Finding:
    key = layout.structured_json(document_id)
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
    info = storage.read_model_or_none(layout.source_info(document_id), SourceInfo)
    if info is not None:
        if document.sha256 != info.sha256:
            problems.append("made from another PDF (sha256 differs from source.json)")
        if document.page_count != info.page_count:
            problems.append(f"{document.page_count} pages, the PDF has {info.page_count}")
    outside = sorted({b.page for b in document.blocks() if not 1 <= b.page <= document.page_count})
    if outside:
        problems.append(f"blocks on pages outside 1..{document.page_count}: {outside[:5]}")
    if not storage.exists(layout.structured_markdown(document_id)):
        problems.append("structured.md is missing")
    if problems:
        return Finding(document_id, "fail", 0.0, "; ".join(problems))
    return Finding(document_id, "pass", 1.0, f"{len(document.sections)} sections, {len(document.blocks())} blocks")


def judge_text_pages(storage: DocumentStorage, document_id: str) -> Finding:
    document = storage.read_model_or_none(layout.structured_json(document_id), StructuredDocument)
    info = storage.read_model_or_none(layout.source_info(document_id), SourceInfo)
    if document is None or info is None:
        return missing(storage, document_id, "structured_document", "structured.json or source.json")
    manifest = storage.read_model_or_none(layout.page_images(document_id), PageImages)
    blank = {image.index + 1 for image in manifest.pages if image.blank} if manifest else set()
    with_text = [i + 1 for i, has_text in enumerate(info.pages_with_text) if has_text]
    # a page whose text layer renders to nothing (white or clipped text) cannot be read from its image
    judged = [page for page in with_text if page not in blank]
    empty = [page for page in judged if not document.page_text(page).strip()]
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
