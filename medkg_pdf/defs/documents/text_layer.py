"""The model-free baseline: each page's own text layer, extracted by PyMuPDF and judged before use."""

from collections import Counter

import pymupdf
from dagster import AssetExecutionContext, MaterializeResult

from medkg_pdf import storage_keys
from medkg_pdf.text_layer_judge import USABLE, judge_page
from medkg_pdf.defs.document_steps import current_source, run_document
from medkg_pdf.defs.partitions import document_asset
from medkg_pdf.resources.storage import DocumentStorage
from medkg_pdf.schemas import BaselinePage, BaselineParse


def baseline_page(page: pymupdf.Page) -> BaselinePage:
    # sorted blocks: reading order top-left to bottom-right, as a person reads. The text page's
    # own extractText is ~40x faster than get_text("text", sort=True), which also pads a layout
    # with spaces that no metric here uses (and holds the GIL all along).
    text = page.get_textpage().extractText(sort=True).strip()
    judged = judge_page(page, text)
    return BaselinePage(index=page.number, has_text_layer=bool(text), text=text, verdict=judged.verdict, reason=judged.reason)


def extract_baseline(pdf: bytes, document_id: str, sha256: str) -> BaselineParse:
    with pymupdf.open(stream=pdf, filetype="pdf") as doc:
        pages = [baseline_page(page) for page in doc]
    return BaselineParse(document_id=document_id, sha256=sha256, pages=pages)


def usable_page_text(pdf: bytes, index: int) -> str | None:
    """One page's text layer, only when it is judged usable (the evidence a repetitive answer is checked against)."""
    with pymupdf.open(stream=pdf, filetype="pdf") as doc:
        page = baseline_page(doc[index])
    return page.text if page.verdict == USABLE else None


@document_asset(
    group_name="documents",
    deps=["source_pdf"],
    kinds={"json"},
    description="The PDF's own text layer per page (PyMuPDF, no model): evidence to compare against, not truth.",
)
def baseline_parse(context: AssetExecutionContext, storage: DocumentStorage) -> MaterializeResult:
    def extract(document_id: str) -> dict:
        info = current_source(storage, document_id)
        baseline = extract_baseline(storage.read_bytes(info.stored_at), document_id, info.sha256)
        storage.write_model(storage_keys.baseline(document_id), baseline)
        return {
            "pages": len(baseline.pages),
            "pages_with_text_layer": sum(p.has_text_layer for p in baseline.pages),
            "characters": sum(len(p.text) for p in baseline.pages),
            **{f"verdict_{v}": n for v, n in sorted(Counter(p.verdict for p in baseline.pages).items())},
        }

    return run_document(context, storage, "baseline_parse", extract)
