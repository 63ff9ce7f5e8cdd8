"""Checks of `source_pdf`: the stored copy is the file that was validated, and it is a valid PDF."""

import hashlib

from dagster import AssetCheckExecutionContext, AssetCheckResult, asset_check

from medkg_pdf import layout
from medkg_pdf.schemas import QuarantineRecord
from medkg_pdf.assets.source import source_pdf
from medkg_pdf.checks.common import CHECK_PARTITIONS, Finding, run_documents, summarize
from medkg_pdf.resources.storage import DocumentStorage
from medkg_pdf.schemas import SourceInfo
from medkg_pdf.validation import InvalidPdfError, validate_pdf


def judge_source(storage: DocumentStorage, document_id: str) -> Finding:
    """Re-open the stored bytes: same sha256 and page count as recorded, still a valid PDF."""
    info = storage.read_model_or_none(layout.source_info(document_id), SourceInfo)
    if info is None:
        record = storage.read_model_or_none(layout.quarantine(document_id), QuarantineRecord)
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
