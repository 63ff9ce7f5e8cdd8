"""Storage keys: every key the pipeline reads, writes or lists is built (and parsed) here, nowhere else.

Per-document records live under `documents/<id>/`; page images and page parses live under
`cache/<pdf sha256>/`, keyed by content, so identical PDFs under two names share their work and
a re-run reuses every finished page.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from medkg_pdf.document_ids import is_document_id


DOCUMENTS_PREFIX = "documents"
QUARANTINE_PREFIX = "quarantine"
_SOURCE_REF = "source-ref.json"


def _doc(document_id: str) -> str:
    if not is_document_id(document_id):
        raise ValueError(f"not a document id: {document_id[:200]!r}")
    return f"{DOCUMENTS_PREFIX}/{document_id}"


def registered_document_id(key: str) -> str | None:
    """The document a listed key registers (`documents/<id>/source-ref.json`), or None for any other key."""
    head, _, name = key.rpartition("/")
    prefix, _, document_id = head.partition("/")
    if name != _SOURCE_REF or prefix != DOCUMENTS_PREFIX or not is_document_id(document_id):
        return None
    return document_id


def _document_record(file_name: str, why: str = "") -> Callable[[str], str]:
    """A key builder for one file under `documents/<id>/` (the id is checked every time)."""

    def key(document_id: str) -> str:
        return f"{_doc(document_id)}/{file_name}"

    key.__doc__ = f"`documents/<id>/{file_name}`" + (f": {why}" if why else "")
    return key


source_ref = _document_record(_SOURCE_REF, "registration, where the document comes from (sensor or CLI)")
source_pdf = _document_record("source.pdf", "the validated PDF, stored as-is")
source_info = _document_record("source.json", "what was validated (sha256, pages, ETag)")
page_images = _document_record("page-images.json", "the manifest of the page PNGs")
page_parses = _document_record("page-parses.json", "every page's answer and status")
structured_json = _document_record("structured.json")
structured_markdown = _document_record("structured.md")
docling_json = _document_record("docling.json", "the structured document as Docling's DoclingDocument (optional asset)")
baseline = _document_record("baseline.json", "the PDF's text layer per page")
quality = _document_record("quality.json")
accepted_baseline = _document_record("accepted-baseline.json", "which pinned document is the accepted baseline")
regression = _document_record("regression.json")


def quarantine(document_id: str) -> str:
    return f"{QUARANTINE_PREFIX}/{document_id}.json"


CACHE_PREFIX = "cache"  # content-keyed work that a re-run may reuse and `medkg-pdf cache gc` may remove


def page_png(sha256: str, render_target: str, page_index: int) -> str:
    """A page's PNG, per render target (`RenderTarget.label`, e.g. "long-2000"): each model profile's budget its own image."""
    if not re.fullmatch(r"(long|px)-\d+", render_target):
        raise ValueError(f"not a render target label: {render_target[:60]!r}")
    return f"{CACHE_PREFIX}/{sha256}/images/{render_target}/page-{page_index + 1:05d}.png"


def page_parses_prefix(sha256: str) -> str:
    """Every stored answer for the pages of one PDF: listed once per document before its pages are sent."""
    return f"{CACHE_PREFIX}/{sha256}/parses"


def page_parse(sha256: str, page_index: int, cache_key: str) -> str:
    return f"{page_parses_prefix(sha256)}/page-{page_index + 1:05d}-{cache_key}.json"


def safe_segment(name: str) -> str:
    """A model name or prompt version as one storage key segment ("Qwen/Qwen2.5-VL" -> "Qwen--Qwen2.5-VL")."""
    segment = re.sub(r"[^A-Za-z0-9._-]", "-", name.replace("/", "--")).lstrip("._-")[:128]
    if not segment:
        raise ValueError(f"cannot make a storage key segment of {name[:200]!r}")
    return segment


def pinned_structured(model: str, prompt_version: str, document_id: str, suffix: str = ".json") -> str:
    """A structured document accepted as the regression baseline, kept per model and prompt version."""
    _doc(document_id)
    return f"baselines/{safe_segment(model)}/{safe_segment(prompt_version)}/{document_id}{suffix}"


def pinned_quality(model: str, prompt_version: str, document_id: str) -> str:
    """The quality record pinned beside its structured document."""
    return pinned_structured(model, prompt_version, document_id, suffix=".quality.json")


def quality_report(day: str, name: str) -> str:
    """Files of the daily quality report, e.g. reports/quality/2026-11-23/documents.csv."""
    if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", day):
        raise ValueError(f"not a report day: {day[:50]!r}")
    return f"reports/quality/{day}/{name}"


def quality_report_latest() -> str:
    """Pointer to the newest quality report (its day and evaluation time), read by the SLO checks."""
    return "reports/quality/latest.json"
